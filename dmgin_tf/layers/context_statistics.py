"""Context statistics as model inputs: candidate item/group tables + user aggregates."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.data.context_stats import FOLD_TRAIN_ALL, NUM_ID_FEATURES
from dmgin_tf.layers.candidate_match import recency_feature
from dmgin_tf.layers.feature_embedding import age_seconds
from dmgin_tf.ops import group_behaviors
from dmgin_tf.ops.grouping import static_length


# The context part of a cached user state (`ContextStatistics.user_state`).
CONTEXT_GROUP_IDS = "context_group_ids"
CONTEXT_GROUP_COUNTS = "context_group_counts"
USER_TYPE_COUNTS = "user_type_counts"
USER_LAST_TIME = "user_last_time"
USER_SEEN = "user_seen"
CONTEXT_STATE_KEYS = (CONTEXT_GROUP_IDS, CONTEXT_GROUP_COUNTS, USER_TYPE_COUNTS,
                      USER_LAST_TIME, USER_SEEN)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class ContextStatistics(keras.layers.Layer):
    """Context features of a candidate and its user, for the MLP head of any model.

    - Candidate side: the training-example statistics of the candidate item and of its
      group (`dmgin_tf.data.context_stats`: log counts, smoothed positive rate, seen
      flag), read from non-trainable tables shipped with the model's weights, so a
      serving request carries only ids. Training examples pass their out-of-fold
      `fold` (1..K) and read statistics computed without their own label; every other
      caller (validation, test, serving) leaves `fold` out and reads table 0 (all
      training examples).
    - User side, computed from the history itself (past-only by construction): log count
      and share of each behavior type, log total, and the recency of the last behavior.
    - User x candidate group (the "genre taste" of a user): log count of each behavior
      type in the candidate's group, and each type's share in that group smoothed toward
      the user's overall share with `AFFINITY_PRIOR` pseudo-behaviors — the ratios an MLP
      cannot easily form from log counts.

    Tables start at zero; `set_tables` fills them from the training data (the trainer
    does this before fitting; the tables then travel with `save_weights` / the
    SavedModel). Ids outside the vocabulary read the OOV row (id 1).

    Args:
        item_vocab_size, group_vocab_size: ints (ids incl. reserved 0/1).
        num_behavior_types: int, T (behavior ids 1..T, 0 = padding).
        num_folds: int, K (out-of-fold tables; 0 = only table 0).

    Example:

    ```python
    ctx = ContextStatistics(item_vocab_size=10, group_vocab_size=4, num_behavior_types=2,
                            num_folds=2)
    cand = ctx.candidate_features(np.array([3, 4]), np.array([2, 2]))   # [2, 12]
    hist_item = np.array([[3, 5, 0], [4, 0, 0]])                  # [B, L], 0 = padding
    hist_behavior_id = np.array([[1, 2, 0], [1, 0, 0]])
    hist_time = np.array([[1_600_000_000, 1_600_000_500, 0], [1_600_000_100, 0, 0]])
    request_time = np.array([1_600_001_000, 1_600_001_000])      # [B]
    user = ctx.user_features(hist_item, hist_behavior_id, hist_time, request_time)  # [2, 6]
    ```
    """

    AFFINITY_PRIOR = 2.0

    def __init__(self, item_vocab_size, group_vocab_size, num_behavior_types, num_folds=5,
                 **kwargs):
        super().__init__(**kwargs)
        self.item_vocab_size = int(item_vocab_size)
        self.group_vocab_size = int(group_vocab_size)
        self.num_behavior_types = int(num_behavior_types)
        self.num_folds = int(num_folds)
        for name in ("item_vocab_size", "group_vocab_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"ContextStatistics: {name}={getattr(self, name)!r} must be "
                                 ">= 2 (ids 0/1 are reserved)")
        if self.num_folds < 0:
            raise ValueError(f"ContextStatistics: num_folds={num_folds!r} must be >= 0")

    @property
    def candidate_dim(self) -> int:
        """Width of `candidate_features`: item + group statistics, user x group affinity."""
        return 2 * NUM_ID_FEATURES + 2 * self.num_behavior_types

    @property
    def user_dim(self) -> int:
        """Width of `user_features`: per type log count + share, log total, recency."""
        return 2 * self.num_behavior_types + 2

    @property
    def output_dim(self) -> int:
        return self.candidate_dim + self.user_dim

    def build(self, input_shape=None):
        tables = self.num_folds + 1
        # Flat [tables * V, F]: one gather of fold * V + id, the same on every backend.
        self.item_table = self.add_weight(
            name="item_table", shape=(tables * self.item_vocab_size, NUM_ID_FEATURES),
            initializer="zeros", trainable=False, dtype="float32")
        self.group_table = self.add_weight(
            name="group_table", shape=(tables * self.group_vocab_size, NUM_ID_FEATURES),
            initializer="zeros", trainable=False, dtype="float32")
        self.built = True

    def set_tables(self, item, group) -> None:
        """Loads `[K + 1, V, F]` tables (`context_stats.context_tables`)."""
        if not self.built:
            self.build()
        for name, table, vocab in (("item", item, self.item_vocab_size),
                                   ("group", group, self.group_vocab_size)):
            expected = (self.num_folds + 1, vocab, NUM_ID_FEATURES)
            if tuple(table.shape) != expected:
                raise ValueError(f"ContextStatistics.set_tables: {name} table has shape "
                                 f"{tuple(table.shape)}, expected {expected} (folds + 1, "
                                 f"{name}_vocab_size, features)")
            getattr(self, f"{name}_table").assign(ops.reshape(
                ops.convert_to_tensor(table, "float32"), (-1, NUM_ID_FEATURES)))

    def _lookup(self, table, ids, vocab, fold):
        ids = ops.cast(ids, "int32")
        ids = ops.where((ids >= 0) & (ids < vocab), ids, 1)   # OOV row, same on every backend
        if fold is not None:
            fold = ops.cast(fold, "int32")
            fold = ops.where((fold >= 0) & (fold <= self.num_folds), fold, FOLD_TRAIN_ALL)
            while len(fold.shape) < len(ids.shape):
                fold = ops.expand_dims(fold, -1)
            ids = ids + fold * vocab
        return ops.take(table, ids, axis=0)

    def candidate_features(self, cand_item, cand_group, fold=None, hist_group=None,
                           hist_behavior=None, hist_item=None):
        """Candidates `[B]` or `[B, N]` → float `[..., candidate_dim]`: item + group
        statistics, then the user's affinity to the candidate's group (from the history
        `[B, L]` keys; zeros when they are not given).

        `fold`: int `[B]` out-of-fold index of training examples; None = table 0
        (validation, test, serving).
        """
        if not self.built:
            self.build()
        item = self._lookup(self.item_table, cand_item, self.item_vocab_size, fold)
        group = self._lookup(self.group_table, cand_group, self.group_vocab_size, fold)
        parts = [item, group]
        if hist_group is None:
            parts.append(ops.zeros(ops.shape(item)[:-1] + (2 * self.num_behavior_types,),
                                   "float32"))
        else:
            parts.append(self._affinity(cand_group, hist_group, hist_behavior, hist_item))
        return ops.cast(ops.concatenate(parts, axis=-1), self.compute_dtype)

    def _type_counts(self, hist_item, hist_behavior):
        """One-hot behavior types of the valid history entries: float32 `[B, L, T]`."""
        valid = ops.cast(hist_item, "int32") != 0
        behavior = ops.where(valid, ops.cast(hist_behavior, "int32"), 0)
        return ops.one_hot(behavior, self.num_behavior_types + 1, dtype="float32")[..., 1:]

    def _affinity(self, cand_group, hist_group, hist_behavior, hist_item):
        """Per behavior type: log1p(count in the candidate's group) and the smoothed share
        of the type in that group, `[B(, N), 2T]`."""
        one = len(cand_group.shape) == 1
        cand = ops.cast(cand_group, "int32")
        if one:
            cand = cand[:, None]
        types = self._type_counts(hist_item, hist_behavior)                     # [B, L, T]
        known = cand >= 2                                     # reserved ids match nothing
        same = ops.cast((ops.cast(hist_group, "int32")[:, None, :] == cand[:, :, None])
                        & known[:, :, None], "float32")                          # [B, N, L]
        counts = ops.einsum("bnl,blt->bnt", same, types)                         # [B, N, T]
        out = self._affinity_from_counts(counts, ops.sum(types, axis=1))
        return out[:, 0] if one else out

    def _affinity_from_counts(self, counts, user):
        """Affinity features from the per-type counts in the candidate's group
        `[B, N, T]` and the user's per-type totals `[B, T]` → `[B, N, 2T]`."""
        user_share = user / ops.maximum(ops.sum(user, axis=-1, keepdims=True), 1.0)
        total = ops.sum(counts, axis=-1, keepdims=True)
        share = (counts + self.AFFINITY_PRIOR * user_share[:, None, :]) / (
            total + self.AFFINITY_PRIOR)
        return ops.concatenate([ops.log1p(counts), share], axis=-1)

    def user_features(self, hist_item, hist_behavior, hist_time, request_time):
        """History aggregates `[B, L]` → float `[B, user_dim]`."""
        valid = ops.cast(hist_item, "int32") != 0
        counts = ops.sum(self._type_counts(hist_item, hist_behavior), axis=1)
        seen = ops.any(valid, axis=1)
        last = ops.max(ops.where(valid, hist_time, ops.zeros_like(hist_time)), axis=1)
        return self._user_from_aggregates(counts, seen, last, request_time)

    # ---- cached user state: the history's part of these features, precomputed ----------
    def user_state(self, hist_item, hist_group, hist_behavior, hist_time, request_time,
                   max_groups=128):
        """What `candidate_features`' affinity and `user_features` read of the history,
        for a cached user state.

        Args:
            hist_*: `[B, L]`; request_time `[B]`. max_groups: K, the user's most recently
                active groups kept (capped at L); a candidate group in the history but
                not among them reads zero affinity counts.

        Returns:
            dict: `context_group_ids` int32 `[B, K]` (0 = empty slot),
            `context_group_counts` float32 `[B, K, T]`, `user_type_counts` float32
            `[B, T]`, `user_last_time` `[B]` (hist_time's dtype), `user_seen` bool `[B]`.
        """
        k = min(int(max_groups), static_length(ops.convert_to_tensor(hist_item), "hist_item"))
        grouped = group_behaviors(hist_item, hist_group, hist_behavior, hist_time,
                                  request_time, max_groups=k, max_per_group=1,
                                  num_behavior_types=self.num_behavior_types,
                                  num_groups=self.group_vocab_size)
        valid = ops.cast(hist_item, "int32") != 0
        return {
            CONTEXT_GROUP_IDS: ops.where(ops.cast(grouped.group_mask, "bool"),
                                         ops.cast(grouped.group_ids, "int32"), 0),
            CONTEXT_GROUP_COUNTS: ops.cast(grouped.counts, "float32"),
            USER_TYPE_COUNTS: ops.sum(self._type_counts(hist_item, hist_behavior), axis=1),
            USER_LAST_TIME: ops.max(ops.where(valid, hist_time, ops.zeros_like(hist_time)),
                                    axis=1),
            USER_SEEN: ops.any(valid, axis=1)}

    def cached_features(self, state, cand_item, cand_group, request_time):
        """`candidate_features` + `user_features` of `[B, N]` candidates from `user_state`'s
        dict (no history) → float `[B, N, output_dim]`."""
        if not self.built:
            self.build()
        item = self._lookup(self.item_table, cand_item, self.item_vocab_size, None)
        group = self._lookup(self.group_table, cand_group, self.group_vocab_size, None)
        cand = ops.cast(cand_group, "int32")
        ids = ops.cast(state[CONTEXT_GROUP_IDS], "int32")
        hit = ops.cast((ids[:, None, :] == cand[:, :, None]) & (cand >= 2)[:, :, None],
                       "float32")                                                # [B, N, K]
        counts = ops.einsum("bnk,bkt->bnt", hit, state[CONTEXT_GROUP_COUNTS])
        user_counts = ops.cast(state[USER_TYPE_COUNTS], "float32")
        cand_part = ops.cast(ops.concatenate(
            [item, group, self._affinity_from_counts(counts, user_counts)], axis=-1),
            self.compute_dtype)
        user = self._user_from_aggregates(user_counts, ops.cast(state[USER_SEEN], "bool"),
                                          state[USER_LAST_TIME], request_time)
        user = ops.broadcast_to(user[:, None, :], ops.shape(cand_part)[:2] + (user.shape[-1],))
        return ops.concatenate([cand_part, ops.cast(user, cand_part.dtype)], axis=-1)

    def _user_from_aggregates(self, counts, seen, last, request_time):
        """Per-type counts `[B, T]`, seen `[B]`, last behavior time `[B]` → `[B, user_dim]`."""
        total = ops.sum(counts, axis=-1, keepdims=True)
        share = counts / ops.maximum(total, 1.0)
        recency = recency_feature(age_seconds(last, request_time), seen)
        out = ops.concatenate([ops.log1p(counts), share, ops.log1p(total),
                               recency[:, None]], axis=-1)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape=None):
        return (None, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(item_vocab_size=self.item_vocab_size,
                      group_vocab_size=self.group_vocab_size,
                      num_behavior_types=self.num_behavior_types, num_folds=self.num_folds)
        return config
