"""Packed intra-group blocks: the Transformer over real tokens only equals the padded one."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf.layers.intra_group_transformer import IntraGroupTransformer
from dmgin_tf.layers.transformer_block import Packing


def _groups(seed=0, b=4, g=6, m=5, d=8, fill=0.3):
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(b, g, m, d)).astype("float32")
    mask = rng.random((b, g, m)) < fill
    mask[0] = False                                   # an empty history
    mask[1, :, :] = True                              # a full one
    context = rng.normal(size=(b, g, 3)).astype("float32")
    return tokens, mask, context


def test_packing_keeps_real_slots_in_order_and_round_trips():
    tokens, mask, _ = _groups()
    b, g, m, d = tokens.shape
    capacity = int(mask.reshape(b, -1).sum(1).max())
    packing = Packing.from_mask(mask, capacity)
    flat_mask = mask.reshape(b, -1)
    for row in range(b):
        real = np.flatnonzero(flat_mask[row])
        valid = np.asarray(packing.valid[row])
        assert valid.sum() == len(real) and valid[:len(real)].all()
        np.testing.assert_array_equal(np.asarray(packing.pack_idx[row])[:len(real)], real)
    flat = tokens.reshape(b, g * m, d)
    packed = np.asarray(packing.pack(flat))
    assert packed.shape == (b, capacity, d)
    back = np.asarray(packing.unpack(packed))
    np.testing.assert_array_equal(back, flat * flat_mask[..., None])
    with pytest.raises(ValueError, match="capacity=0 must be in"):
        Packing.from_mask(mask, 0)


@pytest.mark.parametrize("jit", [False, True])
def test_packed_blocks_equal_padded_blocks_with_gradients(jit):
    tokens, mask, context = _groups(seed=1)
    b, g, m, _ = tokens.shape
    # Row 1 is full (g * m real tokens): the bound must cover it, so test a bound below
    # g * m on the other rows by dropping the full row.
    tokens, mask, context = tokens[[0, 2, 3]], mask[[0, 2, 3]], context[[0, 2, 3]]
    bound = int(mask.reshape(len(mask), -1).sum(1).max())
    assert bound < g * m
    layer = IntraGroupTransformer(num_heads=2, num_layers=2, output_dim=8)
    layer(tokens, mask, group_context=context)                   # build

    def run(max_tokens):
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = layer(x, mask, group_context=context, max_tokens=max_tokens)
                loss = tf.reduce_sum(out * tf.cos(out))
            return out, tape.gradient(loss, [x] + layer.trainable_variables)
        fn = tf.function(step, jit_compile=True) if jit else step
        return fn(tf.constant(tokens))

    padded, padded_grads = run(None)
    packed, packed_grads = run(bound)
    np.testing.assert_allclose(np.asarray(packed), np.asarray(padded), atol=1e-5)
    assert len(packed_grads) == len(padded_grads) > 10
    for a, p in zip(packed_grads, padded_grads):
        np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(a)),
                                   np.asarray(tf.convert_to_tensor(p)), atol=1e-5)
    # A bound at or above G * M takes the padded path (nothing to save).
    np.testing.assert_allclose(np.asarray(layer(tokens, mask, group_context=context,
                                                max_tokens=g * m)), np.asarray(padded),
                               atol=1e-6)


@pytest.mark.parametrize("g,m,fill,seed", [
    (1, 4, 1.0, 0),     # one sequence, one chunk: the wrapped neighbour chunks are itself
    (2, 4, 0.9, 1),     # two chunks: chunk 0's previous and next are both chunk 1
    (5, 3, 0.6, 2),     # P not a multiple of S (padded tail), sequences across chunk edges
    (8, 6, 0.5, 3),
])
def test_block_attention_on_packed_tokens_equals_padded_layout(g, m, fill, seed):
    """`call_packed` (chunked window attention on the packed tokens) gives the padded
    `call`'s output and input gradient token for token, whatever the chunk boundaries."""
    from dmgin_tf.layers.transformer_block import TransformerBlock
    rng = np.random.default_rng(seed)
    b, d = 3, 8
    x = rng.normal(size=(b, g, m, d)).astype("float32")
    mask = rng.random((b, g, m)) < fill
    mask[0, 0, 0] = True
    if g == 2:
        # Row 0: sequence 1 starts in chunk 0 and ends in chunk 1 (the wrapped-around
        # neighbour of chunk 0 on both sides), so a key seen twice would be counted twice.
        mask[0] = [[True] * (m - 1) + [False], [True] * m]
    block = TransformerBlock(num_heads=2)
    block.build((None, m, d))
    capacity = int(mask.reshape(b, -1).sum(1).max())
    packing = Packing.from_mask(mask, capacity)
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        padded = tf.reshape(block(xt, padding_mask=mask), (b, g * m, d))
        packed = block.call_packed(packing.pack(tf.reshape(xt, (b, g * m, d))), packing)
        w = tf.constant(rng.normal(size=(b, g * m, d)).astype("float32"))
        loss_padded = tf.reduce_sum(padded * w)
        loss_packed = tf.reduce_sum(packing.unpack(packed) * w)
    np.testing.assert_allclose(np.asarray(packing.unpack(packed)), np.asarray(padded), atol=1e-5)
    np.testing.assert_allclose(np.asarray(tape.gradient(loss_packed, xt)),
                               np.asarray(tape.gradient(loss_padded, xt)), atol=1e-5)


@pytest.mark.parametrize("intra_layers", [0, 2])
def test_encoder_packed_ids_path_equals_padded_tokens(intra_layers):
    """Below G * M the encoder packs the group ids and embeds only the real tokens;
    the same histories padded to L = G * M take the padded token layout. Same outputs
    and weight gradients."""
    from dmgin_tf import features as F
    from dmgin_tf.layers import GroupInterestEncoder
    from .synthetic import synthetic_inputs
    enc = GroupInterestEncoder(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2,
                               max_groups=4, max_per_group=3, embedding_dim=8,
                               intra_layers=intra_layers)
    short = synthetic_inputs(batch=5, length=8, empty_rows=(2,), seed=3)
    padded = {k: (np.pad(v, ((0, 0), (0, 4))) if k in F.HISTORY_INPUT_KEYS else v)
              for k, v in short.items()}
    enc(padded)                                                     # build

    def run(x):
        with tf.GradientTape() as tape:
            out = enc(x)
            loss = tf.reduce_sum(out * tf.cos(out))
        return out, tape.gradient(loss, enc.trainable_variables)

    out_short, grads_short = run(short)
    out_padded, grads_padded = run(padded)
    np.testing.assert_allclose(np.asarray(out_short), np.asarray(out_padded), atol=1e-5)
    for a, p, v in zip(grads_short, grads_padded, enc.trainable_variables):
        np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(a)),
                                   np.asarray(tf.convert_to_tensor(p)), atol=1e-5,
                                   err_msg=v.path)
