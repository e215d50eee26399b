"""Candidate-aware (target) attention over a set of keys, DIN-style."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers.transformer_block import masked_softmax


@keras.saving.register_keras_serializable(package="dmgin_tf")
class TargetAttention(keras.layers.Layer):
    """The candidate attends over keys (evolved groups or behaviors).

    Scores come from a small MLP over `[q, k, q - k, q * k]` (DIN's activation unit),
    normalised with a masked softmax; the output is the weighted sum of the keys.
    The query is projected to the key width when the sizes differ.

    Args:
        hidden_units: tuple of ints, the scoring MLP.
        activation: hidden activation.

    Call arguments:
        query: float `[B, Dq]`.
        keys: float `[B, S, D]`.
        key_mask: bool `[B, S]`, True = real key.
        return_weights: bool; also return the weights `[B, S]`.

    Returns:
        float `[B, D]` (zeros for a row without real keys), and optionally the weights.

    Example:

    ```python
    att = TargetAttention(hidden_units=(16,))
    q = np.random.normal(size=(2, 8)).astype("float32")
    keys = np.random.normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    out = att(q, keys, mask)   # [2, 8]; second row zeros
    ```
    """

    def __init__(self, hidden_units=(64, 32), activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation

    def build(self, query_shape, keys_shape, key_mask_shape=None):
        dim = keys_shape[-1]
        self.query_proj = None
        if query_shape[-1] != dim:
            self.query_proj = keras.layers.Dense(dim, name="query_projection")
            self.query_proj.build((None, query_shape[-1]))
        self.mlp = []
        width = 4 * dim
        for i, u in enumerate(self.hidden_units):
            layer = keras.layers.Dense(u, activation=self.activation, name=f"hidden_{i}")
            layer.build((None, width))
            self.mlp.append(layer)
            width = u
        self.score = keras.layers.Dense(1, name="score")
        self.score.build((None, width))
        self.built = True

    def call(self, query, keys, key_mask, return_weights=False):
        mask = key_mask
        if self.query_proj is not None:
            query = self.query_proj(query)
        q = ops.broadcast_to(ops.cast(query, keys.dtype)[:, None, :], ops.shape(keys))
        h = ops.concatenate([q, keys, q - keys, q * keys], axis=-1)
        for layer in self.mlp:
            h = layer(h)
        scores = ops.squeeze(self.score(h), axis=-1)                  # [B, S]
        weights = masked_softmax(scores, mask)
        out = ops.einsum("bs,bsd->bd", ops.cast(weights, keys.dtype), keys)
        return (out, weights) if return_weights else out

    def compute_output_shape(self, query_shape, keys_shape, key_mask_shape=None):
        return (keys_shape[0], keys_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=self.hidden_units, activation=self.activation)
        return config
