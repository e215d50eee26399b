"""A small Keras 3 ranking model with DMGIN's interface (used until/besides the real one).

encode_user: keep the G most recent groups by a keras.ops top_k over times (an XLA-
friendly op like the real grouping); score: candidate dot product + per-candidate scan
of the history (like the candidate-group features), sigmoid.
"""
import keras
from keras import ops

from dmgin_tf import features as F

G = 3


class StandInRanker(keras.Model):
    def __init__(self, item_vocab=42, group_vocab=7, dim=4, **kw):
        super().__init__(**kw)
        self.item_emb = keras.layers.Embedding(item_vocab, dim)
        self.group_emb = keras.layers.Embedding(group_vocab, dim)
        self.out = keras.layers.Dense(1)

    def encode_user(self, inputs, training=None):
        t = ops.cast(inputs[F.HIST_TIME], "float32")
        _, idx = ops.top_k(t, G)                                     # [B, G] newest
        groups = ops.take_along_axis(inputs[F.HIST_GROUP], idx, axis=1)
        vec = self.group_emb(groups) + self.item_emb(ops.take_along_axis(inputs[F.HIST_ITEM], idx, axis=1))
        return {"group_vectors": vec, "group_mask": groups > 0, "group_ids": ops.cast(groups, "int32")}

    def score(self, state, inputs, training=None):
        cand = self.item_emb(inputs[F.CAND_ITEM]) + self.group_emb(inputs[F.CAND_GROUP])   # [N, D]
        n = ops.shape(cand)[0]
        vec = ops.broadcast_to(state["group_vectors"], (n,) + tuple(state["group_vectors"].shape[1:]))
        mask = ops.cast(ops.broadcast_to(state["group_mask"], (n, G)), "float32")
        att = ops.sum(ops.einsum("nd,ngd->ng", cand, vec) * mask, axis=1, keepdims=True)
        hist = ops.broadcast_to(inputs[F.HIST_ITEM], (n, inputs[F.HIST_ITEM].shape[-1]))
        seen = ops.sum(ops.cast(hist == ops.cast(inputs[F.CAND_ITEM], hist.dtype)[:, None], "float32"),
                       axis=1, keepdims=True)
        return ops.squeeze(ops.sigmoid(self.out(ops.concatenate([att, seen, cand], axis=-1))), -1)

    def call(self, inputs, training=None):
        return self.score(self.encode_user(inputs), inputs)
