"""Intra-group level: self-attention over each group's behaviors, pooled per group."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.dense import Dense
from dmgin_tf.layers.transformer_block import Packing, TransformerBlock, require_static


def masked_mean(x, mask, axis):
    """Mean of `x` over `axis` counting only positions where `mask` is True.

    Args:
        x: float `[..., S, D]` (with `axis` the S axis); mask: bool `[..., S]`.

    Returns:
        float with `axis` removed; all-masked rows give zeros.
    """
    m = ops.cast(mask, x.dtype)[..., None]
    total = ops.sum(x * m, axis=axis)
    count = ops.maximum(ops.sum(m, axis=axis), 1.0)
    return total / count


@keras.saving.register_keras_serializable(package="dmgin_tf")
class IntraGroupTransformer(keras.layers.Layer):
    """Multi-head self-attention within each group, mean-pooled, fused with context.

    Each group's last M behaviors (item + behavior type + recency tokens) go through
    `num_layers` masked Transformer blocks; the real positions are mean-pooled into one
    vector per group (the paper's intra-group interest). When `group_context` is given
    (group embedding and statistics embedding), `concat(pooled, context)` is projected
    to `output_dim` — the paper's group vector = concat(intra, stats).

    Args:
        num_heads: int.
        num_layers: int, Transformer blocks (0 = plain masked mean pooling).
        output_dim: int or None; None = D of the tokens.
        ffn_multiplier: int. dropout: float.

    Call arguments:
        tokens: float `[B, G, M, D]`.
        token_mask: bool `[B, G, M]`.
        group_context: optional float `[B, G, C]`.
        group_mask: optional bool `[B, G]`; output zero where False (default: groups
            with at least one real token).
        training: bool.
        max_tokens: optional int, an upper bound on the real tokens of one row (groups
            filled from a history of L behaviors hold at most L). Below G * M the blocks
            run on the real tokens only (`TransformerBlock.call_packed`): the same
            output at a fraction of the per-token cost.

    Returns:
        float `[B, G, output_dim]`.

    Example:

    ```python
    layer = IntraGroupTransformer(num_heads=2, output_dim=8)
    tokens = np.random.normal(size=(2, 3, 4, 8)).astype("float32")
    mask = np.ones((2, 3, 4), bool)
    out = layer(tokens, mask)   # [2, 3, 8]
    ```
    """

    def __init__(self, num_heads, num_layers=1, output_dim=None, ffn_multiplier=2,
                 dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        name = "IntraGroupTransformer"
        self.num_heads = A.count(name, "num_heads", num_heads)
        self.num_layers = A.count(name, "num_layers", num_layers, minimum=0)
        self.output_dim = None if output_dim is None else A.count(name, "output_dim", output_dim)
        self.ffn_multiplier = A.count(name, "ffn_multiplier", ffn_multiplier)
        self.dropout = A.rate(name, "dropout", dropout)

    def build(self, tokens_shape, token_mask_shape=None, group_context_shape=None,
              group_mask_shape=None):
        require_static("IntraGroupTransformer", tokens_shape, {-3: "G", -2: "M", -1: "D"})
        dim = tokens_shape[-1]
        self.blocks = [TransformerBlock(self.num_heads, self.ffn_multiplier, self.dropout,
                                        name=f"block_{i}",
                                        dtype=self.dtype_policy) for i in range(self.num_layers)]
        for block in self.blocks:
            block.build(tuple(tokens_shape))
        out_dim = self.output_dim or dim
        width = dim + (group_context_shape[-1] if group_context_shape is not None else 0)
        self.fuse = None
        if group_context_shape is not None or out_dim != dim:
            self.fuse = Dense(out_dim, activation="gelu", name="fuse", dtype=self.dtype_policy)
            self.fuse.build((None, width))
        self.built = True

    def call(self, tokens, token_mask, group_context=None, group_mask=None, training=None,
             max_tokens=None):
        token_mask = ops.cast(token_mask, "bool")
        x = tokens * ops.cast(token_mask, tokens.dtype)[..., None]
        g, m, d = x.shape[-3], x.shape[-2], x.shape[-1]
        if group_mask is None:
            group_mask = ops.any(token_mask, axis=-1)
        if self.blocks and max_tokens is not None and int(max_tokens) < g * m:
            # At most max_tokens of the G * M slots are real: run the blocks packed.
            packing = Packing.from_mask(token_mask, int(max_tokens))
            return self.call_packed(packing.pack(ops.reshape(x, (-1, g * m, d))), packing,
                                    group_context, group_mask, training=training)
        for block in self.blocks:
            x = block(x, padding_mask=token_mask, training=training)
        return self._pool(masked_mean(x, token_mask, axis=-2), group_context, group_mask)

    def call_packed(self, tokens, packing, group_context=None, group_mask=None, training=None):
        """The layer on tokens already packed: `[B, P, D]` (each row's real tokens
        first, in slot order; `Packing.from_mask` of the `[B, G, M]` token mask) →
        `[B, G, output_dim]`, equal to `call` on the padded layout. Callers that hold
        ids can pack them first (`Packing.pack_values`) and embed P tokens per row
        instead of G * M.

        `group_mask` defaults to the groups with at least one token.
        """
        x = tokens * ops.cast(packing.valid, tokens.dtype)[..., None]
        for block in self.blocks:
            x = block.call_packed(x, packing, training=training)
        if group_mask is None:
            group_mask = ops.any(ops.reshape(packing.slot_mask, (-1, packing.slots // packing.seq,
                                                                 packing.seq)), axis=-1)
        return self._pool(packing.sequence_mean(x), group_context, group_mask)

    def _pool(self, pooled, group_context, group_mask):
        """Pooled tokens `[B, G, D]` (+ context) → `[B, G, output_dim]`, zero where
        `group_mask` is False."""
        if group_context is not None:
            pooled = ops.concatenate([pooled, ops.cast(group_context, pooled.dtype)], -1)
        if self.fuse is not None:
            pooled = self.fuse(pooled)
        return pooled * ops.cast(group_mask, pooled.dtype)[..., None]

    def compute_output_shape(self, tokens_shape, *args, **kwargs):
        return tuple(tokens_shape[:-2]) + (self.output_dim or tokens_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, num_layers=self.num_layers,
                      output_dim=self.output_dim, ffn_multiplier=self.ffn_multiplier,
                      dropout=self.dropout)
        return config
