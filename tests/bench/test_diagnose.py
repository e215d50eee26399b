"""Per-user diagnosis of two runs (synthetic predictions: this checks the arithmetic)."""
import numpy as np
import pytest

from dmgin_tf import evaluation
from dmgin_tf.bench import diagnose
from dmgin_tf.errors import DmginError


def _preds(rng, n=2000, users=40, items=60):
    user = rng.integers(0, users, n)
    cand = rng.integers(2, items, n).astype(np.int32)
    label = (rng.random(n) < 0.4).astype(np.int8)
    good = label + rng.normal(0, 0.6, n)          # informative
    noise = rng.random(n)                          # chance
    base = {"label": label, "user": user, "cand_item": cand}
    return {"good": dict(base, score=good.astype(np.float32)),
            "noise": dict(base, score=noise.astype(np.float32))}


def test_breakdowns_and_paired_comparison(tmp_path):
    rng = np.random.default_rng(0)
    preds = _preds(rng)
    # Training split: user u has u + 1 examples; items 2..9 are never candidates (cold).
    train_users = np.repeat(np.arange(40), np.arange(1, 41))
    train_items = rng.integers(10, 60, len(train_users))
    out = diagnose.diagnose(preds, train_users, train_items, baseline="noise")
    for name in ("good", "noise"):
        p = preds[name]
        assert out["overall"][name]["gauc"] == pytest.approx(
            evaluation.gauc(p["label"], p["score"], p["user"]))
    # Activity quartiles partition the test examples; the top bucket holds active users.
    assert sum(r["examples"] for r in out["by_activity"]) == 2000
    assert out["by_activity"][-1]["bucket"].endswith("-40 train examples")
    # Exposure: candidates 2..9 are cold (0 training examples).
    cold = out["by_exposure"][0]
    assert cold["examples"] == int((preds["good"]["cand_item"] < 10).sum())
    assert sum(r["examples"] for r in out["by_exposure"]) == 2000
    paired = out["paired"]["good"]
    assert paired["vs"] == "noise" and paired["mean_user_auc_diff"] > 0.2
    assert paired["users_better"] > 35 and paired["stderr"] > 0
    paths = diagnose.write_outputs(out, str(tmp_path))
    assert "User by user against `noise`" in open(paths[1]).read()


def test_runs_on_different_examples_or_one_run_are_refused():
    rng = np.random.default_rng(1)
    preds = _preds(rng)
    with pytest.raises(DmginError, match="at least two runs"):
        diagnose.diagnose({"good": preds["good"]}, np.zeros(1), np.zeros(1, np.int64))
    preds["noise"] = dict(preds["noise"], cand_item=preds["noise"]["cand_item"] + 1)
    with pytest.raises(DmginError, match="different test examples"):
        diagnose.diagnose(preds, np.zeros(1), np.zeros(1, np.int64))
