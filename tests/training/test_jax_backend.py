"""The JAX path: trains without TensorFlow, data-parallel over 2 host devices, and its
weights load into the TF-backend model with equal predictions."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.jax


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    pytest.importorskip("jax")
    out = str(tmp_path_factory.mktemp("jax_run"))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.training.jax_probe", out], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_jax_training_imports_no_tensorflow_and_uses_both_devices(jax_run):
    out, report = jax_run
    assert report["leaked"] == []
    assert report["placement"]["backend"] == "jax"
    assert report["placement"]["strategy"] == "data_parallel"
    assert report["placement"]["replicas"] == 2
    for name in ("model.weights.h5", "metrics.json", "config.json", "history.json",
                 "parity_batch.npz"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "tensorboard"))  # TF-only logger


def test_jax_weights_load_into_tensorflow_backend_model(jax_run):
    """The one weights format moves JAX -> TF with predictions equal within 1e-5."""
    from dmgin_tf.training.parity import check_run_parity, reference_batch
    from tests.training.tiny import tiny_model_fn
    out, _ = jax_run
    _, ref, backend = reference_batch(out)
    assert backend == "jax" and len(ref) == 64
    report = check_run_parity(out, tiny_model_fn)
    assert report.backend == "tensorflow"
    assert report.ok, report
    assert report.max_abs_diff < 1e-5
    assert np.isfinite(ref).all()
