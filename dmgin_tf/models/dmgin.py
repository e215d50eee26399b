"""DMGIN (Keras 3): GroupInterestEncoder + MLP head; DGIN is the same with item groups."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP,
                               HIST_ITEM, HIST_TIME, REQUEST_TIME)
from dmgin_tf.layers.group_interest_encoder import GroupInterestEncoder, match_feature_dim
from dmgin_tf.models.cached_state import (DEFAULT_LOOKUP_GROUPS, DEFAULT_LOOKUP_ITEMS,
                                          STATE_TIME, STATE_VERSION, check_state,
                                          model_fingerprint)
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
        num_time_buckets=c.num_time_buckets, item_content_dim=c.item_content_dim,
        recent_window=c.recent_window if c.use_recent else 0,
        item_min_count=c.item_min_count, group_shares=c.group_shares, dtype=dtype,
        name=name)


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
    - `user_state(inputs)` → the complete cacheable state (group vectors + lookup
      tables + context aggregates + version, `dmgin_tf.models.cached_state`) and
      `score_cached(state, {cand_item, cand_group [U, N], request_time})` → ctr
      `[U, N]` with no history: the two-stage serving of docs/serving.md.

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

    def dense_interest_dim(self) -> int:
        # The encoder's raw matching counts/statistics close its output vector.
        c = self.model_cfg
        return (match_feature_dim(c.num_behavior_types, c.group_shares)
                if c.use_candidate_group else 0)

    def interest(self, inputs, training=None):
        return self.encoder(inputs, training=training)

    def encode_user(self, inputs, training=None):
        return self.encoder.encode_user(inputs, training=training)

    def candidate_features(self, inputs, training=None):
        return self.encoder.candidate_features(inputs, training=training)

    def user_features(self, user_state, inputs):
        return self.encoder.user_features(user_state, inputs)

    # ---- serving from a cached user state (dmgin_tf.models.cached_state) -------------
    def state_version(self) -> int:
        """This model's id in its user states (`cached_state.model_fingerprint`)."""
        return model_fingerprint(self)

    def user_state(self, inputs, max_lookup_groups=DEFAULT_LOOKUP_GROUPS,
                   max_lookup_items=DEFAULT_LOOKUP_ITEMS, state_version=None, training=None):
        """The complete, cacheable user state: everything `score_cached` needs.

        Args:
            inputs: history keys `[U, L]`, `request_time [U]` (candidates ignored).
            max_lookup_groups, max_lookup_items: K and I of the lookup tables.
            state_version: int stored in the state; default `self.state_version()`
                (serving passes the exported model's, computed once).

        Returns:
            dict keyed by `cached_state.state_keys(use_context, use_recent)`; shapes in
            `dmgin_tf.models.cached_state`.
        """
        rt = ops.reshape(inputs[REQUEST_TIME], (-1,))
        state = dict(self.encoder.encode_user(inputs, training=training))
        state.update(self.encoder.lookup_state(inputs, max_lookup_groups, max_lookup_items))
        if self.context is not None:
            state.update(self.context.user_state(
                inputs[HIST_ITEM], inputs[HIST_GROUP], inputs[HIST_BEHAVIOR_ID],
                inputs[HIST_TIME], rt, max_groups=max_lookup_groups))
        version = self.state_version() if state_version is None else state_version
        state[STATE_TIME] = rt
        state[STATE_VERSION] = ops.broadcast_to(ops.cast(version, "int32"), ops.shape(rt))
        return state

    def cached_candidate_features(self, user_state, inputs, training=None):
        """The candidate side of `score_cached` (state lookups, own-group attention; no
        group vectors needed); `score_cached(..., candidate_features=)` takes it
        precomputed, as `score` takes `candidate_features`."""
        return self.encoder.cached_candidate_features(user_state, self._cached_inputs(
            user_state, inputs), training=training)

    @staticmethod
    def _cached_inputs(user_state, inputs):
        """inputs with `request_time` `[U]` (the state's own when not given)."""
        rt = inputs.get(REQUEST_TIME)
        rt = user_state[STATE_TIME] if rt is None else ops.reshape(rt, (-1,))
        return dict(inputs, **{REQUEST_TIME: rt})

    def score_cached(self, user_state, inputs, training=None, state_version=None,
                     candidate_features=None, user_features=None):
        """CTR of `[U, N]` candidates from a cached user state alone (no history).

        Args:
            user_state: `user_state`'s dict, batch U.
            inputs: `cand_item, cand_group` `[U, N]`; optional `request_time [U]` (the
                time recency is measured at; default: the state's `state_time`).
            state_version: the version the state must carry; default this model's.
                A state of another version raises `StaleUserStateError` (eager calls;
                compiled serving checks it in the signature).
            candidate_features, user_features: optional precomputed parts
                (`cached_candidate_features`, `user_features`), as `score` takes them.

        Returns:
            ctr float32 `[U, N]`, equal to `score`/`rank` on the history the state came
            from at the same request time, for candidates whose group and item are in
            the state's lookup tables or absent from the history.
        """
        check_state(user_state, self.context is not None,
                    self.state_version() if state_version is None else state_version,
                    use_recent=self.encoder.recent_window > 0)
        inputs = self._cached_inputs(user_state, inputs)
        rt = inputs[REQUEST_TIME]
        interest = self.encoder.score_cached(user_state, inputs, training=training,
                                             candidate_features=candidate_features,
                                             user_features=user_features)
        context = None
        if self.context is not None:
            context = self.context.cached_features(user_state, inputs[CAND_ITEM],
                                                   inputs[CAND_GROUP], rt)
        features = self.join_head_features(interest, context)             # [U, N, F]
        ctr = self.head(ops.reshape(features, (-1, features.shape[-1])), training=training)
        return ops.reshape(ctr, ops.shape(features)[:2])

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
