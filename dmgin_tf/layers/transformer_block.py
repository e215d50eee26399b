"""Masked multi-head self-attention block (pre-LayerNorm Transformer encoder block)."""
from __future__ import annotations

import math

import keras
from keras import ops

from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.dense import Dense


def axis_size(x, axis: int):
    """The size of `x`'s `axis`: a Python int when static, else a scalar tensor (a model
    built on `keras.Input((None, D))` is traced again for each new length)."""
    size = x.shape[axis]
    return int(size) if size is not None else ops.shape(x)[axis]


def require_static(layer: str, shape, axes) -> None:
    """Raises ValueError, when the model is built, if an axis a layer sizes weights or
    packing by (`axes`: {axis: name}) is None in `shape`."""
    for axis, name in axes.items():
        if shape[axis] is None:
            raise ValueError(f"{layer}: the {name} axis of its input must be static, got shape "
                             f"{tuple(shape)}; pad to a fixed size")

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


class Packing:
    """Index maps between a padded layout `[B, N * S]` (N sequences of S slots per row)
    and a packed one `[B, P]` holding each row's real slots first, in slot order.

    Built from the padded layout's mask with `Packing.from_mask(mask, capacity)`; P =
    capacity must be at least the number of real slots of every row (a slot beyond it
    would be dropped: callers pass a bound that holds by construction, e.g. the history
    length L for groups filled from L behaviors).

    Attributes:
        seq: S. slots: N * S.
        pack_idx: int32 `[B, P]`, the slot of the p-th real token (0 past the row's end).
        valid: bool `[B, P]`, p < the row's number of real slots.
        unpack_idx: int32 `[B, N * S]`, the packed position of each real slot (0 else).
        slot_mask: bool `[B, N * S]`, the padded layout's mask.
        sequence_ids: int32 `[B, P]`, the sequence (0..N-1) of each packed token, -1
            where not `valid`.
    """

    def __init__(self, seq, slots, pack_idx, valid, unpack_idx, slot_mask):
        self.seq, self.slots = int(seq), int(slots)
        self.pack_idx, self.valid = pack_idx, valid
        self.unpack_idx, self.slot_mask = unpack_idx, slot_mask
        self.sequence_ids = ops.where(valid, ops.floor_divide(pack_idx, self.seq), -1)

    @classmethod
    def from_mask(cls, mask, capacity):
        """mask: bool `[B, N, S]` (static N, S); capacity: int P, 1 <= P <= N * S."""
        seq, slots = mask.shape[-1], mask.shape[-2] * mask.shape[-1]
        if not 1 <= int(capacity) <= slots:
            raise ValueError(f"Packing: capacity={capacity!r} must be in [1, {slots}] "
                             f"(the padded layout's N * S slots)")
        flat = ops.reshape(ops.cast(mask, "bool"), (-1, slots))
        # Real slots scored by how early they come (exact in float32 below 2^24): top_k
        # lists them first, in slot order; any padding slot fills a row's tail.
        order = ops.cast(slots - ops.arange(slots, dtype="int32"), "float32")
        _, pack_idx = ops.top_k(ops.where(flat, order[None, :], 0.0), int(capacity))
        pack_idx = ops.cast(pack_idx, "int32")
        valid = ops.take_along_axis(flat, pack_idx, axis=1)
        position = ops.cumsum(ops.cast(flat, "int32"), axis=1) - 1
        slot_mask = flat & (position < int(capacity))
        unpack_idx = ops.where(slot_mask, position, 0)
        return cls(seq, slots, pack_idx, valid, unpack_idx, slot_mask)

    def pack(self, x):
        """`[B, N * S, C]` → `[B, P, C]` (zero where not `valid`)."""
        return self._gather(x, self.pack_idx, self.valid)

    def pack_values(self, x):
        """Per-slot values `[B, N, S]` (any dtype; e.g. ids) → `[B, P]` (0 where not
        `valid`): pack ids before an embedding lookup to look up P, not N * S, rows."""
        return self._gather(ops.reshape(x, (-1, self.slots, 1)), self.pack_idx, self.valid)[..., 0]

    def unpack(self, x):
        """`[B, P, C]` → `[B, N * S, C]` (zero at padding slots)."""
        return self._gather(x, self.unpack_idx, self.slot_mask)

    def sequence_mean(self, x):
        """Mean of each sequence's packed tokens: `[B, P, C]` → `[B, N, C]` (zeros for a
        sequence without tokens) — one segment sum, no unpacking to the N * S slots."""
        batch, num, width = ops.shape(x)[0], self.slots // self.seq, x.shape[-1]
        row = ops.arange(batch, dtype="int32")[:, None] * num
        # A token that is not valid adds zeros (to its row's first sequence).
        seg = ops.reshape(ops.where(self.valid, self.sequence_ids, 0) + row, (-1,))
        ones = ops.cast(self.valid, x.dtype)[..., None]
        total = ops.segment_sum(ops.reshape(ops.concatenate([x * ones, ones], -1), (-1, width + 1)),
                                seg, num_segments=batch * num)
        total = ops.reshape(total, (-1, num, width + 1))
        return total[..., :width] / ops.maximum(total[..., width:], 1.0)

    @staticmethod
    def _gather(x, index, keep):
        """Rows `index` `[B, K]` of each row of x `[B, R, C]`, zeroed where not `keep`.
        One flat `take` (its gradient is a sparse row update), not `take_along_axis`,
        which builds a full index grid per channel on the TensorFlow backend."""
        rows, width = x.shape[1], x.shape[-1]
        flat = index + ops.arange(ops.shape(index)[0], dtype="int32")[:, None] * rows
        out = ops.take(ops.reshape(x, (-1, width)), ops.reshape(flat, (-1,)), axis=0)
        out = ops.reshape(out, ops.shape(index) + (width,))
        return out * ops.cast(keep, out.dtype)[..., None]


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
        x: float `[..., S, D]` (S may be dynamic, e.g. `keras.Input((None, D))`).
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
        self.num_heads = A.count("TransformerBlock", "num_heads", num_heads)
        self.ffn_multiplier = A.count("TransformerBlock", "ffn_multiplier", ffn_multiplier)
        self.dropout = A.rate("TransformerBlock", "dropout", dropout)
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
        A.float_input("TransformerBlock", "x", x)
        A.same_size("TransformerBlock", "last dim of x (built for)", x.shape[-1], self._dim)
        mask = padding_mask
        if mask is not None and len(mask.shape) != len(x.shape) - 1:
            raise ValueError(f"TransformerBlock: padding_mask must be x's shape without the "
                             f"last axis, got {tuple(mask.shape)} for x {tuple(x.shape)}")
        if mask is not None:
            for axis, (m, s) in enumerate(zip(mask.shape, x.shape[:-1])):
                A.same_size("TransformerBlock", f"padding_mask axis {axis} (x's)", m, s)
        shape = ops.shape(x)
        seq = axis_size(x, -2)
        lead = shape[:-2]
        x = ops.reshape(x, (-1, seq, self._dim))
        if mask is None:
            mask = ops.ones(ops.shape(x)[:2], "bool")
        else:
            mask = ops.reshape(ops.cast(mask, "bool"), (-1, seq))
            # Padding is dropped, not multiplied away: 0 * NaN (or inf) at a padded
            # position would reach the real ones through the attention sums.
            x = ops.where(mask[..., None], x, ops.zeros_like(x))
        attended = self._attend(self.qkv(self.norm1(x)), mask, attention_bias, training)
        y = self._residuals(x, attended, training) * ops.cast(mask, x.dtype)[..., None]
        return ops.reshape(y, tuple(lead) + (seq, self._dim))

    def call_packed(self, x, packing, training=None):
        """The same block over sequences stored packed: only real tokens, no padding.

        Every step runs on the packed tokens, attention included: a sequence's tokens
        are contiguous in the packed order and at most S long, so each token's
        sequence-mates lie within S - 1 positions of it. The packed row is cut into
        chunks of S tokens and each chunk's queries score the keys of the chunk and its
        two neighbours (3S keys), masked to the token's own sequence
        (`_attend_packed`). So the cost follows the number of real tokens P, not the
        padded `N * S` (`IntraGroupTransformer`: a history of L behaviors fills at most
        L of the G * M group slots), and nothing is scattered to the padded layout.
        Equal to `call` on the padded layout.

        Args:
            x: float `[B, P, D]`, the real tokens of each row packed first.
            packing: `Packing` (the padded layout `[B, N * S]`, the two index maps and
                `valid`, False for the unused tail of a row).
            training: bool.

        Returns:
            float `[B, P, D]`, zero where `packing.valid` is False.
        """
        attended = self._attend_packed(self.qkv(self.norm1(x)), packing, training)
        keep = ops.cast(packing.valid, x.dtype)[..., None]
        return self._residuals(x, attended, training) * keep

    def _attend_packed(self, qkv, packing, training):
        """Attention within each packed sequence: qkv `[B, P, 3D]` → `[B, P, D]`.

        Chunks of C = S tokens; chunk c's queries see chunks c - 1, c, c + 1 (window
        3C), which hold every token of their sequence (a sequence spans at most S
        consecutive packed positions). Scores `[B * P / C, C, 3C]` per head: 3S per
        token, against N * S * S / P in the padded layout (e.g. 48 vs 64 at N = 64,
        S = 16, P = 256), and no scatter of q, k, v to the `[B, N * S]` slots.
        """
        rows, chunk = qkv.shape[1], packing.seq
        chunks = -(-rows // chunk)
        width = chunks * chunk
        seg = packing.sequence_ids                                        # -1: no token
        if width != rows:
            qkv = ops.pad(qkv, ((0, 0), (0, width - rows), (0, 0)))
            seg = ops.pad(seg, ((0, 0), (0, width - rows)), constant_values=-1)
        # [B * C#, C, D] per projection; heads are sliced off the last axis one by one
        # (3-D batched matmuls, no transposes of the head axis).
        q, k, v = (ops.reshape(t, (-1, chunk, self._dim)) for t in ops.split(qkv, 3, axis=-1))
        seg = ops.reshape(seg, (-1, chunks, chunk))
        # Keys and values of chunks c - 1, c, c + 1 side by side. `roll` (its gradient is
        # a roll, where slicing's would build a zero tensor per slice) wraps the first
        # and last chunk around; the window's sequence ids mask those keys.
        window = lambda t: ops.reshape(ops.concatenate(                    # noqa: E731
            [ops.roll(t, 1, axis=1), t, ops.roll(t, -1, axis=1)], axis=2), (-1, 3 * chunk, self._dim))
        edge = ops.full_like(seg[:, :1], -1)
        segw = ops.concatenate([ops.concatenate([edge, seg[:, :-1]], axis=1), seg,
                                ops.concatenate([seg[:, 1:], edge], axis=1)], axis=2)
        mask = (seg[:, :, :, None] == segw[:, :, None, :]) & (segw >= 0)[:, :, None, :]
        mask = ops.reshape(mask, (-1, chunk, 3 * chunk))               # [B * C#, C, 3C]
        chunked = lambda t: ops.reshape(t, (-1, chunks, chunk, self._dim))  # noqa: E731
        kw, vw = window(chunked(k)), window(chunked(v))                # [B * C#, 3C, D]
        heads = []
        scale = 1.0 / math.sqrt(self._head_dim)
        for qh, kh, vh in zip(*(ops.split(t, self.num_heads, axis=-1) for t in (q, kw, vw))):
            weights = masked_softmax(ops.einsum("nqd,nkd->nqk", qh, kh) * scale, mask)
            weights = self.drop(ops.cast(weights, qkv.dtype), training=training)
            heads.append(ops.einsum("nqk,nkd->nqd", weights, vh))      # [B * C#, C, hd]
        attended = ops.concatenate(heads, axis=-1) if len(heads) > 1 else heads[0]
        attended = ops.reshape(attended, (-1, width, self._dim))
        return attended if width == rows else attended[:, :rows]

    def _attend(self, qkv, mask, attention_bias, training):
        """Masked multi-head attention: qkv `[N, S, 3D]`, mask bool `[N, S]` → `[N, S, D]`."""
        seq = axis_size(qkv, -2)
        q, k, v = ops.split(qkv, 3, axis=-1)
        split = lambda t: ops.reshape(t, (-1, seq, self.num_heads, self._head_dim))  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = ops.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(self._head_dim)
        if attention_bias is not None:
            scores = ops.cast(scores, "float32") + ops.cast(
                ops.reshape(attention_bias, (-1, self.num_heads, seq, seq)), "float32")
        weights = masked_softmax(scores, mask[:, None, None, :])
        weights = self.drop(ops.cast(weights, qkv.dtype), training=training)
        attended = ops.einsum("nhqk,nkhd->nqhd", weights, v)
        return ops.reshape(attended, (-1, seq, self._dim))

    def _residuals(self, x, attended, training):
        """`y = x + out(attended); y + FFN(LN(y))` (per token)."""
        y = x + self.drop(self.out(attended), training=training)
        return y + self.drop(self.ffn2(self.ffn1(self.norm2(y))), training=training)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, ffn_multiplier=self.ffn_multiplier,
                      dropout=self.dropout, layer_norm_epsilon=self.layer_norm_epsilon)
        return config
