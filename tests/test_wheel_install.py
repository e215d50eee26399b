"""A wheel of the project, installed outside the checkout, has every CLI command.

Builds the wheel (`pip wheel --no-deps --no-build-isolation`), installs it with
`pip install --no-deps --target` into a temp dir and runs `dmgin --help` and every
`dmgin SUB [SUBSUB] --help` from there, with the checkout off `sys.path`; the command tree
must be the checkout's (e.g. no `dmgin bench` subcommand lost because a module is loaded
from a file of the source tree).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every subcommand path of the `dmgin` parser, as JSON (run in the process under test).
_TREE = r"""
import argparse, json
from dmgin_tf.cli.main import build_parser
def walk(parser, prefix):
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += walk(sub, prefix + [name])
    return out
import dmgin_tf
print(json.dumps({"file": dmgin_tf.__file__, "paths": walk(build_parser(), [])}))
"""


def _env(pythonpath: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _tree(cwd, pythonpath=None) -> dict:
    out = subprocess.run([sys.executable, "-c", _TREE], cwd=cwd, env=_env(pythonpath),
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_installed_wheel_has_every_command(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    # Build from a copy: setuptools builds in the source tree and would leave build/ there.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        "tests", "docs", "benchmarks"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, text=True, timeout=600, cwd=elsewhere)
    (wheel,) = wheels.glob("dmgin_tf-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600, cwd=elsewhere)

    # Every module of the source tree is in the wheel: `find_packages` skips a folder
    # without __init__.py, and dmgin_tf.training / dmgin_tf.export were left out, which
    # only the (lazily importing) Trainer, train and export noticed, in a built image.
    def modules(root):
        return {str(p.relative_to(root)) for pkg in ("dmgin_tf", "transform", "tfx_pipeline")
                for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    missing_files = sorted(modules(src) - modules(target))
    assert not missing_files, f"modules missing from the installed wheel: {missing_files}"
    probe = subprocess.run([sys.executable, "-c", "import dmgin_tf.training.trainer, "
                            "dmgin_tf.export.saved_model, tfx_pipeline.module"],
                           cwd=elsewhere, env=_env(str(target)), capture_output=True, text=True,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]

    installed = _tree(elsewhere, str(target))
    assert installed["file"].startswith(str(target)), installed["file"]
    source = _tree(REPO)
    missing = [" ".join(x) for x in source["paths"] if x not in installed["paths"]]
    assert not missing, f"commands of the checkout missing from the installed wheel: {missing}"
    assert sorted(installed["paths"]) == sorted(source["paths"])
    assert ["bench", "quality"] in installed["paths"] and ["data", "fetch"] in installed["paths"]

    script = target / "bin" / "dmgin"
    failures = []
    for path in installed["paths"]:
        p = subprocess.run([str(script), *path, "--help"], cwd=elsewhere, env=_env(str(target)),
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0 or "usage: dmgin" not in p.stdout:
            failures.append((path, p.returncode, p.stderr[-500:]))
    assert not failures, failures
