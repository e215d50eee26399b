"""Runs the code examples of docs/layers.md exactly as written."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "layers.md"
END_TO_END = "An existing tf.keras ranker, end to end"


def _examples():
    """section title → its ```python blocks, in order."""
    text = DOC.read_text()
    sections = {}
    for title, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        blocks = re.findall(r"```python\n(.*?)```", body, re.S)
        if blocks:
            sections[title.strip()] = blocks
    return sections


EXAMPLES = _examples()
SINGLE = sorted(t for t in EXAMPLES if t != END_TO_END)


def test_docs_have_the_examples():
    assert set(EXAMPLES) == {"In a tf.keras functional ranking model", "In a TFRS model",
                             END_TO_END}
    names = [block.splitlines()[0] for block in EXAMPLES[END_TO_END]]
    assert names == ["# ranker.py — the model code shared by training and serving",
                     "# train.py", "# serve.py — a new process"]


@pytest.mark.slow
@pytest.mark.parametrize("title", SINGLE)
def test_docs_example_runs(title):
    scope = {}
    exec(compile(EXAMPLES[title][0], f"docs/layers.md:{title}", "exec"), scope)  # noqa: S102
    model = scope.get("ranker") or scope.get("model")
    assert model is not None and len(model.trainable_variables) > 20
    enc_vars = [v for v in model.trainable_variables if "embedding" in v.name]
    assert enc_vars, "the encoder's Keras 3 variables must be the model's weights"


@pytest.mark.slow
def test_end_to_end_example_trains_checkpoints_and_serves_in_a_fresh_process(tmp_path):
    """ranker.py as a module; train.py and serve.py each in their own Python process, so
    serve.py restores and serves with nothing left over from training."""
    ranker, train, serve = EXAMPLES[END_TO_END]
    (tmp_path / "ranker.py").write_text(ranker)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
               TF_CPP_MIN_LOG_LEVEL="2")
    for name, code in (("train.py", train), ("serve.py", serve)):
        (tmp_path / name).write_text(code)
        proc = subprocess.run([sys.executable, name], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    assert (tmp_path / "export" / "ranker" / "1" / "saved_model.pb").exists()
