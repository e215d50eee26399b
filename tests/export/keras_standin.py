"""A small Keras 3 ranking model with DMGIN's interface (used until/besides the real one).

encode_user: keep the G most recent groups by a keras.ops top_k over times (an XLA-
friendly op like the real grouping); score: candidate dot product + a scan of the
history for each candidate (like the candidate-item features), candidates [U] or
[U, N], sigmoid.
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
        """Candidates [U] (one per user row) or [U, N] (N per user) → ctr [U] / [U, N]."""
        ci, cg = inputs[F.CAND_ITEM], inputs[F.CAND_GROUP]
        lists = len(ci.shape) == 2
        if not lists:
            ci, cg = ci[:, None], cg[:, None]
        cand = self.item_emb(ci) + self.group_emb(cg)                              # [U, N, D]
        mask = ops.cast(state["group_mask"], "float32")[:, None, :]                 # [U, 1, G]
        att = ops.sum(ops.einsum("und,ugd->ung", cand, state["group_vectors"]) * mask,
                      axis=-1, keepdims=True)
        hist = inputs[F.HIST_ITEM][:, None, :]                                     # [U, 1, L]
        seen = ops.sum(ops.cast(hist == ops.cast(ci, hist.dtype)[:, :, None], "float32"),
                       axis=-1, keepdims=True)
        out = ops.squeeze(ops.sigmoid(self.out(ops.concatenate([att, seen, cand], axis=-1))), -1)
        return out if lists else out[:, 0]

    def call(self, inputs, training=None):
        return self.score(self.encode_user(inputs), inputs)
