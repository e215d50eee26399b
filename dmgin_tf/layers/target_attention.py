"""Candidate-aware (target) attention over a set of keys, DIN-style."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.dense import Dense, matmul_rows
from dmgin_tf.layers.transformer_block import masked_softmax


def select_last(keep, k):
    """Indices of the last `k` True positions of each row, most recent first.

    Args:
        keep: bool `[B, L]` (history is oldest-first; padding may sit anywhere).
        k: int, `k <= L`.

    Returns:
        (idx int32 `[B, k]`, mask bool `[B, k]`); rows with fewer than k True positions
        are padded with mask False (their idx points at valid memory, values unused).
    """
    length = keep.shape[-1]
    pos = ops.arange(length, dtype="int32")[None, :]
    score = ops.where(keep, pos, -1)
    values, idx = ops.top_k(score, k)            # O(L log k); positions are unique
    return ops.cast(idx, "int32"), values >= 0


@keras.saving.register_keras_serializable(package="dmgin_tf")
class TargetAttention(keras.layers.Layer):
    """The candidate attends over keys (evolved groups or behaviors).

    Scores come from a small MLP over `[q, k, q - k, q * k]` (DIN's activation unit),
    normalised with a masked softmax; the output is the weighted sum of the keys.
    The query is projected to the key width when the sizes differ.

    Several queries can share one key set (ranking: N candidates of one user over the
    user's G groups): pass query `[B, N, Dq]`. The first MLP layer is evaluated split
    by its input blocks, `W·[q; k; q-k; q*k] = (W_q + W_d)·q + (W_k - W_d)·k + W_p·(q*k)`:
    the key part once per key set, the query part once per query, and only the `q*k`
    part per (query, key) pair — the same function with the same weights, without
    repeating the keys per query or building the 4D-wide concatenation (about half
    the multiply-adds of the unsplit layer, whatever N).

    Args:
        hidden_units: tuple of ints, the scoring MLP.
        activation: hidden activation.

    Call arguments:
        query: float `[B, Dq]`, or `[B, N, Dq]` (N queries over the same keys).
        keys: float `[B, S, D]`.
        key_mask: bool `[B, S]`, True = real key.
        return_weights: bool; also return the weights `[B, S]` (`[B, N, S]`).

    Returns:
        float `[B, D]` (`[B, N, D]`; zeros for a row without real keys), and optionally
        the weights.

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
        self.hidden_units = A.units("TargetAttention", "hidden_units", hidden_units)
        self.activation = activation

    def build(self, query_shape, keys_shape, key_mask_shape=None):
        dim = keys_shape[-1]
        self._dims = (query_shape[-1], dim)
        self.query_proj = None
        if query_shape[-1] != dim:
            self.query_proj = Dense(dim, name="query_projection", dtype=self.dtype_policy)
            self.query_proj.build((None, query_shape[-1]))
        self.mlp = []
        width = 4 * dim
        for i, u in enumerate(self.hidden_units):
            layer = Dense(u, activation=self.activation, name=f"hidden_{i}",
                          dtype=self.dtype_policy)
            layer.build((None, width))
            self.mlp.append(layer)
            width = u
        self.score = Dense(1, name="score", dtype=self.dtype_policy)
        self.score.build((None, width))
        self.built = True

    def call(self, query, keys, key_mask, return_weights=False):
        self._check(query, keys, key_mask)
        single = len(query.shape) == 2
        # Masked keys are dropped, not multiplied away (0 * NaN at padding is NaN).
        keys = ops.where(ops.cast(key_mask, "bool")[..., None], keys, ops.zeros_like(keys))
        if self.query_proj is not None:
            query = self.query_proj(query)
        q = ops.cast(query, keys.dtype)
        if single:
            q = q[:, None, :]                                          # [B, 1, D]
        mask = ops.cast(key_mask, "bool")[:, None, :]                  # [B, 1, S]
        scores = self._scores(q, keys)                                 # [B, N, S]
        weights = masked_softmax(scores, mask)
        out = ops.einsum("bns,bsd->bnd", ops.cast(weights, keys.dtype), keys)
        if single:
            out, weights = out[:, 0], weights[:, 0]
        return (out, weights) if return_weights else out

    def _check(self, query, keys, key_mask):
        """Ranks, dtypes and static sizes of the call arguments (ValueError naming them)."""
        me = "TargetAttention"
        A.float_input(me, "query", query)
        A.float_input(me, "keys", keys)
        if len(query.shape) not in (2, 3) or len(keys.shape) != 3 or len(key_mask.shape) != 2:
            raise ValueError(f"{me}: expects query [B, Dq] or [B, N, Dq], keys [B, S, D] and "
                             f"key_mask [B, S]; got {tuple(query.shape)}, {tuple(keys.shape)}, "
                             f"{tuple(key_mask.shape)}")
        A.same_size(me, "last dim of query (built for)", query.shape[-1], self._dims[0])
        A.same_size(me, "last dim of keys (built for)", keys.shape[-1], self._dims[1])
        A.same_size(me, "batch of keys (query's)", keys.shape[0], query.shape[0])
        A.same_size(me, "batch of key_mask (keys')", key_mask.shape[0], keys.shape[0])
        A.same_size(me, "key_mask length S (keys')", key_mask.shape[1], keys.shape[1])

    def _scores(self, q, keys):
        """MLP scores of every (query, key) pair: q [B, N, D], keys [B, S, D] → [B, N, S]."""
        dim = keys.shape[-1]
        first = self.mlp[0] if self.mlp else self.score
        w = ops.cast(first.kernel, keys.dtype)                          # [4D, H]
        w_q, w_k, w_d, w_p = (w[i * dim:(i + 1) * dim] for i in range(4))
        h = (matmul_rows(q, w_q + w_d)[:, :, None, :]                   # [B, N, 1, H]
             + matmul_rows(keys, w_k - w_d)[:, None, :, :]              # [B, 1, S, H]
             + matmul_rows(q[:, :, None, :] * keys[:, None, :, :], w_p))  # [B, N, S, H]
        if first.use_bias:
            h = h + ops.cast(first.bias, keys.dtype)
        h = first.activation(h)
        for layer in self.mlp[1:]:
            h = layer(h)
        if self.mlp:
            h = self.score(h)
        return ops.squeeze(h, axis=-1)

    def compute_output_shape(self, query_shape, keys_shape, key_mask_shape=None):
        return tuple(query_shape[:-1]) + (keys_shape[-1],)

    def compute_output_spec(self, query, keys, key_mask=None, return_weights=False):
        """Symbolic outputs with `call`'s structure: `out`, or `(out, weights)`."""
        out = keras.KerasTensor(self.compute_output_shape(query.shape, keys.shape),
                                dtype=self.compute_dtype)
        if not return_weights:
            return out
        weights = keras.KerasTensor(tuple(query.shape[:-1]) + (keys.shape[-2],),
                                    dtype=self.compute_dtype)
        return out, weights

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=self.hidden_units, activation=self.activation)
        return config
