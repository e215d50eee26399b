"""DMGIN's optional attention over the newest behaviors (model.use_recent)."""
import numpy as np

from dmgin_tf.config import ModelConfig


def _inputs(rng, b=4, length=20):
    x = {"hist_item": rng.integers(2, 40, (b, length)).astype("int32"),
         "hist_group": rng.integers(2, 8, (b, length)).astype("int32"),
         "hist_behavior_id": rng.integers(1, 4, (b, length)).astype("int32"),
         "hist_time": np.tile(np.arange(length) * 60, (b, 1)).astype("int64"),
         "request_time": np.full(b, length * 60, "int64"),
         "cand_item": rng.integers(2, 40, b).astype("int32"),
         "cand_group": rng.integers(2, 8, b).astype("int32")}
    x["hist_item"][0, :15] = 0          # a short history: 5 behaviors < W
    return x


def test_recent_tokens_hold_the_newest_behaviors_and_scoring_paths_agree():
    from dmgin_tf.layers.group_interest_encoder import RECENT_MASK, RECENT_TOKENS
    from dmgin_tf.models import build_model
    rng = np.random.default_rng(0)
    x = _inputs(rng)
    cfg = ModelConfig(model="dmgin", item_vocab_size=40, group_vocab_size=8, history_length=20,
                      embedding_dim=8, num_heads=2, max_groups=4, max_per_group=4,
                      use_recent=True, recent_window=8)
    model = build_model(cfg)
    off = build_model(cfg.replace(use_recent=False))
    assert model.encoder.output_dim == off.encoder.output_dim + 8
    ctr = np.asarray(model(x))
    state = model.encode_user(x)
    assert state[RECENT_TOKENS].shape == (4, 8, 8)
    np.testing.assert_array_equal(np.asarray(state[RECENT_MASK]).sum(axis=1), [5, 8, 8, 8])
    np.testing.assert_allclose(np.asarray(model.score(state, x)), ctr, rtol=1e-5, atol=1e-6)
    # A behavior older than the newest W leaves the recent tokens alone; a new one does not.
    old, new = dict(x), dict(x)
    old["hist_item"] = x["hist_item"].copy()
    old["hist_item"][1, 0] = 3 if x["hist_item"][1, 0] != 3 else 4
    new["hist_item"] = x["hist_item"].copy()
    new["hist_item"][1, -1] = 3 if x["hist_item"][1, -1] != 3 else 4
    tok = np.asarray(state[RECENT_TOKENS][1])
    np.testing.assert_allclose(np.asarray(model.encode_user(old)[RECENT_TOKENS][1]), tok)
    assert not np.allclose(np.asarray(model.encode_user(new)[RECENT_TOKENS][1]), tok)
    # Keras config round trip keeps the branch.
    again = type(model).from_config(model.get_config())
    assert again.encoder.recent_window == 8
