"""Keras conventions the public layers keep when a user puts them in a functional model:
symbolic outputs with the structure of eager ones, a sequence axis that is either
dynamic or refused when the model is built (not at the second `predict`), and the same
out-of-vocabulary rule as documented on every backend."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dmgin_tf import features as F
from dmgin_tf import layers as L


def test_target_attention_weights_are_a_symbolic_output_too():
    q, k = keras.Input((8,)), keras.Input((5, 8))
    m = keras.Input((5,), dtype="bool")
    out, w = L.TargetAttention((16,))(q, k, m, return_weights=True)
    assert tuple(out.shape) == (None, 8) and tuple(w.shape) == (None, 5)
    model = keras.Model([q, k, m], [out, w])
    rng = np.random.default_rng(0)
    args = [rng.normal(size=(3, 8)).astype("float32"), rng.normal(size=(3, 5, 8)).astype("float32"),
            np.ones((3, 5), bool)]
    got_out, got_w = model.predict(args, verbose=0)
    assert got_out.shape == (3, 8) and got_w.shape == (3, 5)
    # N queries per row: [B, N, S] weights.
    qn = keras.Input((4, 8))
    _, wn = L.TargetAttention((16,))(qn, k, m, return_weights=True)
    assert tuple(wn.shape) == (None, 4, 5)


@pytest.mark.parametrize("block", ["transformer", "hstu"])
def test_sequence_blocks_take_a_dynamic_sequence_axis(block):
    """Built on keras.Input((None, D)), the first length worked and the second failed
    with "Failed to convert elements of (-1, None, 8) to Tensor"."""
    layer = L.TransformerBlock(num_heads=2) if block == "transformer" else L.HSTUBlock(num_heads=2)
    x = keras.Input((None, 8))
    model = keras.Model(x, layer(x))
    rng = np.random.default_rng(1)
    for s in (5, 7):
        inp = rng.normal(size=(2, s, 8)).astype("float32")
        out = model.predict(inp, verbose=0)
        assert out.shape == (2, s, 8)
        np.testing.assert_allclose(out, np.asarray(layer(inp)), atol=1e-5)


def test_group_layers_refuse_a_dynamic_group_axis_when_built():
    with pytest.raises(ValueError, match=r"IntraGroupTransformer: .*static"):
        L.IntraGroupTransformer(num_heads=2)(keras.Input((4, None, 8)), keras.Input((4, None), dtype="bool"))
    with pytest.raises(ValueError, match=r"InterGroupTransformer: .*static"):
        L.InterGroupTransformer(num_layers=1, num_heads=2)(keras.Input((None, 8)),
                                                          keras.Input((None,), dtype="bool"))


def test_encoder_refuses_a_dynamic_history_length_when_built():
    enc = L.GroupInterestEncoder(item_vocab_size=100, group_vocab_size=20, num_behavior_types=2,
                                 embedding_dim=8,
                                 num_heads=2, max_groups=4, max_per_group=4)
    inputs = {k: keras.Input((None,), dtype="int64" if k == F.HIST_TIME else "int32", name=k)
              for k in F.HISTORY_INPUT_KEYS}
    inputs[F.REQUEST_TIME] = keras.Input((), dtype="int64", name=F.REQUEST_TIME)
    inputs[F.CAND_ITEM] = keras.Input((), dtype="int32", name=F.CAND_ITEM)
    inputs[F.CAND_GROUP] = keras.Input((), dtype="int32", name=F.CAND_GROUP)
    with pytest.raises(ValueError, match=r"hist_item.*static"):
        enc(inputs)


def test_feature_embedding_clamps_out_of_vocabulary_ids_on_jax():
    """The docstring says XLA and JAX clamp; JAX's gather filled such rows with NaN."""
    code = ("import numpy as np\n"
            "from dmgin_tf.layers import FeatureEmbedding\n"
            "e = FeatureEmbedding(10, 5, 3, 4)\n"
            "e.build()\n"
            "out = np.asarray(e.item(np.array([3, 10, 99], 'int32')))\n"
            "last = np.asarray(e.item(np.array([9], 'int32')))\n"
            "assert np.isfinite(out).all(), out\n"
            "np.testing.assert_allclose(out[1:], np.repeat(last, 2, axis=0))\n"
            "print('ok')\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
