"""Masked multi-head self-attention block (pre-LayerNorm Transformer encoder block)."""
from __future__ import annotations

import math

import keras
from keras import ops

from dmgin_tf.layers.dense import Dense

# Scores of masked keys; softmax is taken in float32 so this fits any compute dtype.
_MASK_VALUE = -1e9


def masked_softmax(scores, mask):
    """Softmax over the last axis that ignores masked entries.

    Args:
        scores: float `[..., S]`.
        mask: bool `[..., S]` (broadcastable), True = keep.

    Returns:
        float32 `[..., S]`; rows whose mask is all False are all zeros (not uniform,
        not NaN), so empty histories contribute nothing.
    """
    scores = ops.cast(scores, "float32")
    mask = ops.cast(mask, "bool")
    weights = ops.softmax(ops.where(mask, scores, _MASK_VALUE), axis=-1)
    return weights * ops.cast(mask, "float32")


@keras.saving.register_keras_serializable(package="dmgin_tf")
class TransformerBlock(keras.layers.Layer):
    """Pre-LN Transformer encoder block with key padding mask and optional score bias.

    `y = x + Attn(LN(x)); out = (y + FFN(LN(y))) * mask`. Written with `keras.ops` only
    (runs on TF, XLA and JAX). Leading dimensions beyond `[N, S, D]` are flattened, so
    the same block serves the intra-group level (`[B, G, M, D]`) and sequences.

    Args:
        num_heads: int, attention heads; `D % num_heads == 0`.
        ffn_multiplier: int, feed-forward hidden size = `ffn_multiplier * D`.
        dropout: float, dropout on attention weights and the residual branches.
        layer_norm_epsilon: float.

    Call arguments:
        x: float `[..., S, D]`.
        padding_mask: bool `[..., S]`, True for real positions (None = all real).
        attention_bias: optional float `[..., H, S, S]` added to the attention scores
            (relative position/time biases).
        training: bool.

    Returns:
        float `[..., S, D]`, zero at masked positions. Masked keys never influence
        real positions.

    Example:

    ```python
    block = TransformerBlock(num_heads=2)
    x = np.random.normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    y = block(x, padding_mask=mask)   # [2, 5, 8]
    ```
    """

    def __init__(self, num_heads, ffn_multiplier=2, dropout=0.0, layer_norm_epsilon=1e-5,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.ffn_multiplier = int(ffn_multiplier)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, x_shape):
        dim = x_shape[-1]
        if dim is None or dim % self.num_heads:
            raise ValueError(f"TransformerBlock: last dim {dim} must be a multiple of "
                             f"num_heads={self.num_heads}")
        self._dim = int(dim)
        self._head_dim = self._dim // self.num_heads
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                     name="attention_norm", dtype=self.dtype_policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                     name="ffn_norm", dtype=self.dtype_policy)
        self.qkv = Dense(3 * self._dim, name="qkv", dtype=self.dtype_policy)
        self.out = Dense(self._dim, name="attention_output", dtype=self.dtype_policy)
        self.ffn1 = Dense(self.ffn_multiplier * self._dim, activation="gelu",
                          name="ffn_hidden", dtype=self.dtype_policy)
        self.ffn2 = Dense(self._dim, name="ffn_output", dtype=self.dtype_policy)
        self.drop = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        flat = (None, x_shape[-2], self._dim)
        for layer in (self.norm1, self.norm2, self.qkv):
            layer.build(flat)
        self.out.build(flat)
        self.ffn1.build(flat)
        self.ffn2.build((None, x_shape[-2], self.ffn_multiplier * self._dim))
        self.built = True

    def call(self, x, padding_mask=None, attention_bias=None, training=None):
        mask = padding_mask
        shape = ops.shape(x)
        seq = x.shape[-2]
        lead = shape[:-2]
        x = ops.reshape(x, (-1, seq, self._dim))
        if mask is None:
            mask = ops.ones(ops.shape(x)[:2], "bool")
        mask = ops.reshape(ops.cast(mask, "bool"), (-1, seq))
        maskf = ops.cast(mask, x.dtype)[..., None]

        h = self.norm1(x)
        q, k, v = ops.split(self.qkv(h), 3, axis=-1)
        split = lambda t: ops.reshape(t, (-1, seq, self.num_heads, self._head_dim))  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = ops.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(self._head_dim)
        if attention_bias is not None:
            scores = ops.cast(scores, "float32") + ops.cast(
                ops.reshape(attention_bias, (-1, self.num_heads, seq, seq)), "float32")
        weights = masked_softmax(scores, mask[:, None, None, :])
        weights = self.drop(ops.cast(weights, x.dtype), training=training)
        attended = ops.einsum("nhqk,nkhd->nqhd", weights, v)
        attended = ops.reshape(attended, (-1, seq, self._dim))
        y = x + self.drop(self.out(attended), training=training)
        y = y + self.drop(self.ffn2(self.ffn1(self.norm2(y))), training=training)
        y = y * maskf
        return ops.reshape(y, tuple(lead) + (seq, self._dim))

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, ffn_multiplier=self.ffn_multiplier,
                      dropout=self.dropout, layer_norm_epsilon=self.layer_norm_epsilon)
        return config
