"""Scoring from a cached user state (`DMGIN.user_state` / `score_cached`) equals scoring
from the history, on real Taobao histories, on the TensorFlow and JAX backends."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dmgin_tf import features as F
from dmgin_tf.models.cached_state import StaleUserStateError
from serving.cached_state_probe import compare

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name,overrides", [("dmgin", {}), ("dgin", {}),
                                            ("dmgin", {"group_shares": True})])
def test_score_cached_equals_rank_on_real_histories_tensorflow(name, overrides):
    diff, refused, spread = compare(name, **overrides)
    assert spread > 1e-3          # the scores differ between candidates: a real comparison
    assert diff < 1e-5
    assert refused                # a state of another model version is refused


def test_small_lookup_tables_change_scores_and_missing_keys_are_named():
    """The lookup tables carry the candidate side: cut to 2 groups / items, scores of
    candidates in older groups change (so the equality above rests on them)."""
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.models import build_model
    from serving.real_histories import candidate_lists, taobao_examples
    x, items, groups = taobao_examples(3, 48)
    model = build_model(ModelConfig(item_vocab_size=items, group_vocab_size=groups,
                                    history_length=48, max_groups=8, max_per_group=4,
                                    embedding_dim=8, mlp_units=(16,), attention_units=(8,),
                                    dropout=0.0))
    hist = {k: x[k] for k in F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)}
    ci, cg = candidate_lists(x, 12)
    cands = {F.CAND_ITEM: ci, F.CAND_GROUP: cg}
    full = np.asarray(model.score_cached(model.user_state(hist, 48, 48), cands))
    small = np.asarray(model.score_cached(model.user_state(hist, 2, 2), cands))
    assert np.abs(full - small).max() > 1e-4
    state = model.user_state(hist)
    del state["lookup_items"]
    with pytest.raises(StaleUserStateError, match="missing key.*lookup_items"):
        model.score_cached(state, cands)


@pytest.mark.jax
def test_score_cached_equals_rank_on_real_histories_jax():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, os.path.join("tests", "serving", "cached_state_probe.py")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    for name, (diff, refused, spread) in report["models"].items():
        assert spread > 1e-3 and diff < 1e-5 and refused, (name, diff, refused, spread)
