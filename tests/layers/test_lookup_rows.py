"""Table lookups with a dense gradient: the same values and gradients as `ops.take`,
without the `IndexedSlices` that Keras' optimizers scatter again per moment update."""
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from dmgin_tf.layers.feature_embedding import FeatureEmbedding, lookup_rows
from dmgin_tf.layers.hstu_block import HSTUBlock


@pytest.mark.parametrize("jit", [False, True])
def test_lookup_rows_equals_take_with_a_dense_gradient(jit):
    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(size=(7, 3)).astype("float32"))
    ids = tf.constant(rng.integers(0, 7, size=(4, 5, 6)), tf.int32)   # repeated ids
    dy = tf.constant(rng.normal(size=(4, 5, 6, 3)).astype("float32"))

    @tf.function(jit_compile=jit)
    def grads(fn):
        with tf.GradientTape() as tape:
            out = fn(table, ids)
            loss = tf.reduce_sum(out * dy)
        return out, tape.gradient(loss, table)

    out, grad = grads(lookup_rows)
    ref_out, ref_grad = grads(lambda t, i: ops.take(t, i, axis=0))
    np.testing.assert_array_equal(out.numpy(), ref_out.numpy())
    np.testing.assert_allclose(grad.numpy(), tf.convert_to_tensor(ref_grad).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert isinstance(grad, tf.Tensor), type(grad)       # dense, not IndexedSlices
    if not jit:
        assert isinstance(ref_grad, tf.IndexedSlices)    # what a plain gather gives


def test_embedding_tables_and_hstu_biases_get_dense_gradients():
    emb = FeatureEmbedding(item_vocab_size=20, group_vocab_size=9, num_behavior_ids=4,
                           embedding_dim=4, embeddings_regularizer=0.1)
    block = HSTUBlock(num_heads=2)
    items = tf.constant([[2, 3, 3, 0], [5, 5, 5, 5]], tf.int32)
    times = tf.constant([[10, 20, 30, 0], [1, 2, 3, 4]], tf.int64)
    rt = tf.constant([100, 100], tf.int64)
    with tf.GradientTape() as tape:
        tok = emb.tokens(items, items % 3 + 1, times, rt) + emb.group(items % 9)
        y = block(tok, padding_mask=items > 0, ages=tf.cast(rt[:, None] - times, "float32"))
        loss = tf.reduce_sum(y ** 2) + tf.add_n(emb.losses)
    variables = emb.trainable_variables + [block.position_bias, block.time_bias]
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None and isinstance(g, tf.Tensor), (v.path, type(g))
    # The regularizer still reaches the item table: rows never looked up get 2 * 0.1 * w.
    item = [i for i, v in enumerate(variables) if v.path.endswith("item_embedding/embeddings")][0]
    np.testing.assert_allclose(grads[item].numpy()[10], 0.2 * variables[item].numpy()[10],
                               rtol=1e-5)
