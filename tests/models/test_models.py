"""Models: every baseline builds and trains a step; DMGIN's user/score split; JAX parity;
tf.keras adapter and TFRS model train (all on tiny synthetic data built in code)."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.config import ModelConfig
from dmgin_tf.models import MODELS, build_model
from layers.synthetic import synthetic_inputs  # shared with the layer tests (tests/ is on sys.path)

CFG = ModelConfig(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2,
                  history_length=12, max_groups=3, max_per_group=2, recent_window=4,
                  embedding_dim=8, num_heads=2, mlp_units=(8,), attention_units=(8,),
                  dropout=0.0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_builds_and_trains_one_step(name):
    model = build_model(CFG.replace(model=name))
    x = synthetic_inputs(batch=8, length=12, empty_rows=(2,))
    y = (np.arange(8) % 2).astype("float32")
    # Eager step: one step does not pay for tracing (the trainer's tests cover XLA fit).
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy",
                  run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    ctr = np.asarray(model(x))
    assert ctr.shape == (8,) and np.all((ctr > 0) & (ctr < 1))
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    clone = type(model).from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), ctr, atol=1e-6)


def test_build_model_names_bad_config():
    with pytest.raises(ValueError, match="item_vocab_size"):
        build_model(CFG.replace(item_vocab_size=0))


def test_user_state_split_and_one_user_many_candidates():
    model = build_model(CFG)
    x = synthetic_inputs(batch=5, length=12)
    full = np.asarray(model(x))
    np.testing.assert_allclose(np.asarray(model.score(model.encode_user(x), x)), full,
                               atol=1e-6)
    # One user (row 0) x 5 candidates, history [1, L], equals 5 per-example rows.
    one = {k: v[:1] for k, v in x.items()}
    state = model.encode_user(one)
    cands = dict(one, **{F.CAND_ITEM: x[F.CAND_ITEM], F.CAND_GROUP: x[F.CAND_GROUP]})
    tiled = {k: (np.repeat(v[:1], 5, axis=0) if k not in (F.CAND_ITEM, F.CAND_GROUP) else v)
             for k, v in x.items()}
    np.testing.assert_allclose(np.asarray(model.score(state, cands)),
                               np.asarray(model(tiled)), atol=1e-6)
    # U = 2 users x N = 5 candidates as [U, N] lists equal each (user, candidate) row.
    users = {k: v[:2] for k, v in x.items()}
    lists = dict(users, **{F.CAND_ITEM: np.stack([x[F.CAND_ITEM]] * 2),
                           F.CAND_GROUP: np.stack([x[F.CAND_GROUP]] * 2)})
    got = np.asarray(model.score(model.encode_user(users), lists))
    assert got.shape == (2, 5)
    # Serving's parts (`rank`): the candidate side and the user side computed apart,
    # then only the head — the same scores.
    parts = model.score(None, lists, candidate_features=model.candidate_features(lists),
                        user_features=model.user_features(model.encode_user(users), lists))
    np.testing.assert_allclose(np.asarray(parts), got, atol=1e-6)
    for u in range(2):
        rows = {k: (np.repeat(v[u:u + 1], 5, axis=0) if k not in (F.CAND_ITEM, F.CAND_GROUP)
                    else v) for k, v in x.items()}
        np.testing.assert_allclose(got[u], np.asarray(model(rows)), atol=1e-6)


def test_candidate_matching_features_reach_the_output():
    """Touching the candidate item in the history changes the encoder's raw features."""
    model = build_model(CFG)
    x = synthetic_inputs(batch=2, length=12)
    x[F.CAND_ITEM] = x[F.HIST_ITEM][:, 0].copy()
    enc = model.encoder
    with_match = np.asarray(enc(x))[:, -enc.match_feature_dim:]
    x[F.CAND_ITEM] = np.full(2, 39, "int32")
    x[F.HIST_ITEM] = np.where(x[F.HIST_ITEM] == 39, 38, x[F.HIST_ITEM]).astype("int32")
    no_match = np.asarray(enc(x))[:, -enc.match_feature_dim:]
    t = CFG.num_behavior_types
    item_seen = -2  # columns: group log counts + stats, item log counts (T), seen, recency
    assert np.all(with_match[:, item_seen] == 1) and np.all(no_match[:, item_seen] == 0)
    assert np.all(with_match[:, -2 - t:-2].sum(1) > 0)


_JAX_SCRIPT = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np, keras
from dmgin_tf.config import ModelConfig
from dmgin_tf.models import build_model
d = sys.argv[1]
inputs = dict(np.load(os.path.join(d, "inputs.npz")))
inputs = {k: (v.astype("int32") if v.dtype == np.int64 else v) for k, v in inputs.items()}
out, models = {}, {}
for name, cfg in json.load(open(os.path.join(d, "cfgs.json"))).items():
    model = build_model(ModelConfig.from_dict(cfg))
    model.load_weights(os.path.join(d, name + ".weights.h5"))
    out[name] = np.asarray(model(inputs))
    models[name] = model
# A batch refused inside Keras' JAX predict must not cost the model its weights (eager
# predict: the contract's value checks raise inside its loop), and int64 values that JAX
# would wrap to int32 are refused before it can.
model = models["dmgin"]
model.compile(loss="binary_crossentropy", jit_compile=False)
before = model.predict(inputs, verbose=0)
refused = []
ms = dict(inputs, hist_time=np.where(inputs["hist_time"] > 0,   # 2023 in milliseconds
                                     np.int64(1_697_512_081_920) + inputs["hist_time"], 0))
for bad in (dict(inputs, hist_item=np.full_like(inputs["hist_item"], 10 ** 6)), ms):
    try:
        model.predict(bad, verbose=0)
    except Exception as e:  # noqa: BLE001
        refused.append(type(e).__name__ + ": " + str(e)[:300])
out["predict_before"], out["predict_after"] = before, model.predict(inputs, verbose=0)
json.dump(refused, open(os.path.join(d, "refused.json"), "w"))
np.savez(os.path.join(d, "jax.npz"), **out)
"""


@pytest.mark.jax
def test_jax_backend_parity(tmp_path):
    """Weights trained/saved on TF load on the JAX backend: same outputs within 1e-5."""
    pytest.importorskip("jax")
    x = synthetic_inputs(batch=4, length=12, empty_rows=(1,))
    np.savez(tmp_path / "inputs.npz", **x)
    cfgs, expected = {}, {}
    for name in ("dmgin", "transformer"):
        cfg = CFG.replace(model=name, inter_block="hstu")
        model = build_model(cfg)
        model.save_weights(str(tmp_path / f"{name}.weights.h5"))
        cfgs[name], expected[name] = cfg.to_dict(), np.asarray(model(x))
    (tmp_path / "cfgs.json").write_text(json.dumps(cfgs))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "jax.npz")
    for name in cfgs:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, err_msg=name)
    refused = json.loads((tmp_path / "refused.json").read_text())
    assert len(refused) == 2, refused
    assert "InputContractError" in refused[0] and "hist_item" in refused[0], refused[0]
    assert "InputContractError" in refused[1] and "milliseconds" in refused[1], refused[1]
    np.testing.assert_array_equal(got["predict_after"], got["predict_before"])
