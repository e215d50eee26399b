"""DMGIN (Keras 3): GroupInterestEncoder + MLP head; DGIN is the same with item groups."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers.group_interest_encoder import GroupInterestEncoder
from dmgin_tf.models.ranking_model import RankingModel


def encoder_from_config(model_cfg, *, group_key="group", use_inter=None, name="encoder",
                        dtype=None):
    """A `GroupInterestEncoder` from a `ModelConfig` (ablation switches included)."""
    c = model_cfg
    return GroupInterestEncoder(
        item_vocab_size=c.item_vocab_size, group_vocab_size=c.group_vocab_size,
        num_behavior_types=c.num_behavior_types, max_groups=c.max_groups,
        max_per_group=c.max_per_group, embedding_dim=c.embedding_dim,
        num_heads=c.num_heads, intra_layers=c.intra_layers, inter_layers=c.inter_layers,
        inter_block=c.inter_block, attention_units=c.attention_units, dropout=c.dropout,
        use_stats=c.use_stats, use_intra=c.use_intra,
        use_inter=c.use_inter if use_inter is None else use_inter,
        use_candidate_group=c.use_candidate_group, group_key=group_key,
        num_time_buckets=c.num_time_buckets, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class DMGIN(RankingModel):
    """DMGIN ranking model: inputs dict → `ctr` `[B]`.

    Besides `call`, the two halves serving uses (docs/design.md: Export and serving):
    - `encode_user(inputs) -> user_state` (candidate-independent, cache per user):
      `{"group_vectors": [B, G, D], "group_mask": [B, G], "group_ids": [B, G]}`.
    - `score(user_state, inputs) -> ctr`, `inputs` holding the history + `request_time`
      of the state's U users and `cand_item, cand_group`: `[U]` → ctr `[U]`, `[U, N]`
      (N candidates per user; the history is scanned once per user) → ctr `[U, N]`, or
      `[N]` with U = 1 → ctr `[N]`.
    - `candidate_features(inputs)`: the part of `score` for `[U, N]` candidates that
      needs no user state (the candidate's own group read from the raw history and its
      attention); serving runs it beside `encode_user` and passes it to
      `score(..., candidate_features=...)`.
    - `user_features(user_state, inputs)`: the part of `score` for `[U, N]` candidates
      that reads the user state (target attention over the groups); serving computes it
      in the same compiled function as `encode_user` and passes it to
      `score(..., user_features=...)`, so only the MLP head waits for both sides.

    Args:
        model_cfg: `ModelConfig` or its dict; or its fields as keywords
            (`DMGIN(item_vocab_size=..., group_vocab_size=..., embedding_dim=32)`).
    """

    GROUP_KEY = "group"
    MODEL_NAME = "dmgin"

    def __init__(self, model_cfg=None, **kwargs):
        super().__init__(model_cfg, **kwargs)
        self.encoder = encoder_from_config(self.model_cfg, group_key=self.GROUP_KEY,
                                           use_inter=self._use_inter(),
                                           dtype=self.dtype_policy)

    def _use_inter(self):
        return None

    def interest(self, inputs, training=None):
        return self.encoder(inputs, training=training)

    def encode_user(self, inputs, training=None):
        return self.encoder.encode_user(inputs, training=training)

    def candidate_features(self, inputs, training=None):
        return self.encoder.candidate_features(inputs, training=training)

    def user_features(self, user_state, inputs):
        return self.encoder.user_features(user_state, inputs)

    def score(self, user_state, inputs, training=None, candidate_features=None,
              user_features=None):
        interest = self.encoder.score_candidates(user_state, inputs, training=training,
                                                 candidate_features=candidate_features,
                                                 user_features=user_features)
        interest = self.head_features(interest, inputs)
        if len(interest.shape) == 2:
            return self.head(interest, training=training)
        # [U, N, F]: the head takes rows; ctr back as [U, N].
        ctr = self.head(ops.reshape(interest, (-1, interest.shape[-1])), training=training)
        return ops.reshape(ctr, ops.shape(interest)[:2])


@keras.saving.register_keras_serializable(package="dmgin_tf")
class DGIN(DMGIN):
    """DGIN baseline (Liu et al. 2023): the same pipeline with groups = item ids, no
    inter-group level; candidate-group attention over the candidate item's behaviors."""

    GROUP_KEY = "item"
    MODEL_NAME = "dgin"

    def _use_inter(self):
        return False
