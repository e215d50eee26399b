"""Runs the code examples of docs/layers.md exactly as written."""
import pathlib
import re

import numpy as np
import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "layers.md"


def _examples():
    text = DOC.read_text()
    sections = {}
    for title, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        blocks = re.findall(r"```python\n(.*?)```", body, re.S)
        if blocks:
            sections[title.strip()] = blocks[0]
    return sections


EXAMPLES = _examples()


def test_docs_have_both_examples():
    assert set(EXAMPLES) == {"In a tf.keras functional ranking model", "In a TFRS model"}


@pytest.mark.slow
@pytest.mark.parametrize("title", sorted(EXAMPLES))
def test_docs_example_runs(title):
    scope = {}
    exec(compile(EXAMPLES[title], f"docs/layers.md:{title}", "exec"), scope)  # noqa: S102
    model = scope.get("ranker") or scope.get("model")
    assert model is not None and len(model.trainable_variables) > 20
    enc_vars = [v for v in model.trainable_variables if "embedding" in v.name]
    assert enc_vars, "the encoder's Keras 3 variables must be the model's weights"
