"""docs/internals.md's module map names every module of the packages, and only modules that exist."""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("dmgin_tf", "transform", "tfx_pipeline")


def _modules() -> set[str]:
    out = set()
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            rel = p.relative_to(REPO).as_posix()
            if "sample_data" in rel or (p.name == "__init__.py" and p.stat().st_size < 200):
                continue
            out.add(rel)
    return out


def test_module_map_covers_every_module():
    page = (REPO / "docs" / "internals.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:%s)/[\w/]+\.py)`" % "|".join(PACKAGES), page))
    missing = sorted(_modules() - named)
    assert not missing, f"add these modules to docs/internals.md (python scripts/update_module_map.py): {missing}"
    stale = sorted(m for m in named if not (REPO / m).exists())
    assert not stale, f"docs/internals.md names modules that do not exist: {stale}"
