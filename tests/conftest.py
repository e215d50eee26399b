"""Test setup: Keras 2 for tf.keras (TFRS/TFT need it) before TensorFlow is imported."""
import os
import pathlib
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Bind `tests` to this checkout's folder now, before any library can: IPython (imported
# along with TFX / Beam) ships a package named `tests` in its extensions folder, and a run
# of one test file would otherwise resolve `tests.training` there.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))
import tests  # noqa: E402,F401
# The real public datasets (docs/data.md: taobao-userbehavior/, movielens-latest-small/):
# $DMGIN_DATA_DIR, else data/ in the checkout, else ../shared/data beside it. Tests that
# need the full files skip when none exists; the embedded sample is always there.
_DATA_CANDIDATES = [pathlib.Path(p) for p in [os.environ.get("DMGIN_DATA_DIR")] if p] + [
    REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
SHARED_DATA = next((d for d in _DATA_CANDIDATES if (d / "taobao-userbehavior").is_dir()),
                   _DATA_CANDIDATES[-1])


@pytest.fixture(scope="session")
def shared_data_dir():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found (set DMGIN_DATA_DIR; looked in "
                    f"{', '.join(map(str, _DATA_CANDIDATES))})")
    return SHARED_DATA
