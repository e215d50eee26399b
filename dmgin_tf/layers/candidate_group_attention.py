"""DGIN's candidate-group attention: the candidate over its own group's behaviors."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.target_attention import TargetAttention
from dmgin_tf.layers.transformer_block import TransformerBlock


@keras.saving.register_keras_serializable(package="dmgin_tf")
class CandidateGroupAttention(keras.layers.Layer):
    """Self-attention over the behaviors of the candidate's own group, then target
    attention with the candidate as query (DGIN, Liu et al. 2023).

    The behaviors come from `dmgin_tf.ops.candidate_groups` (or, serving from a cached
    user state, its lookup tables) — the user's last M behaviors in the candidate's
    group, taken over the *whole* history, so the match is found even when that group
    is not among the G most recent groups.

    Args:
        num_heads: int.
        num_layers: int, self-attention blocks before the target attention (0 = none).
        attention_units: tuple of ints, the target attention MLP.
        dropout: float.

    Call arguments:
        query: float `[B, Dq]`, the candidate representation.
        tokens: float `[B, M, D]`, behavior tokens of the candidate's group.
        token_mask: bool `[B, M]`.
        training: bool.

    Returns:
        float `[B, D]`; zeros when the user never touched the candidate's group.

    Example:

    ```python
    layer = CandidateGroupAttention(num_heads=2)
    q = np.random.normal(size=(2, 8)).astype("float32")
    tokens = np.random.normal(size=(2, 4, 8)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    out = layer(q, tokens, mask)   # [2, 8]
    ```
    """

    def __init__(self, num_heads, num_layers=1, attention_units=(64, 32), dropout=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = A.count("CandidateGroupAttention", "num_heads", num_heads)
        self.num_layers = A.count("CandidateGroupAttention", "num_layers", num_layers, minimum=0)
        self.attention_units = A.units("CandidateGroupAttention", "attention_units",
                                       attention_units)
        self.dropout = A.rate("CandidateGroupAttention", "dropout", dropout)

    def build(self, query_shape, tokens_shape, token_mask_shape=None):
        self.blocks = [TransformerBlock(self.num_heads, dropout=self.dropout,
                                        name=f"block_{i}",
                                        dtype=self.dtype_policy) for i in range(self.num_layers)]
        for b in self.blocks:
            b.build(tuple(tokens_shape))
        self.attention = TargetAttention(self.attention_units, name="target_attention",
                                         dtype=self.dtype_policy)
        self.attention.build(query_shape, tokens_shape)
        self.built = True

    def call(self, query, tokens, token_mask, training=None):
        mask = token_mask
        mask = ops.cast(mask, "bool")
        x = tokens * ops.cast(mask, tokens.dtype)[..., None]
        for b in self.blocks:
            x = b(x, padding_mask=mask, training=training)
        return self.attention(query, x, mask)

    def compute_output_shape(self, query_shape, tokens_shape, token_mask_shape=None):
        return (tokens_shape[0], tokens_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, num_layers=self.num_layers,
                      attention_units=self.attention_units, dropout=self.dropout)
        return config
