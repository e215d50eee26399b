"""GroupInterestEncoder: lifelong history + candidate → interest vector (DMGIN)."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, MODEL_INPUT_KEYS, NUM_RESERVED_IDS, REQUEST_TIME)
from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.candidate_group_attention import CandidateGroupAttention
from dmgin_tf.layers.candidate_match import candidate_item_match, item_match_features
from dmgin_tf.layers.dense import Dense
from dmgin_tf.layers.feature_embedding import FeatureEmbedding, age_seconds
from dmgin_tf.layers.group_statistics import GroupStatistics
from dmgin_tf.layers.inter_group_transformer import InterGroupTransformer
from dmgin_tf.layers.input_contract import (check_cached_candidates, check_state_rows,
                                            check_structure, check_values, clamp_ids)
from dmgin_tf.layers.intra_group_transformer import IntraGroupTransformer
from dmgin_tf.layers.target_attention import TargetAttention, select_last
from dmgin_tf.layers.transformer_block import Packing
from dmgin_tf.layers.variable_tree import attach_checkpoint_tree
from dmgin_tf.ops import NUM_STATS, CandidateGroup, candidate_groups, group_behaviors
from dmgin_tf.ops.grouping import stat_columns, static_length

GROUP_VECTORS = "group_vectors"
GROUP_MASK = "group_mask"
GROUP_IDS = "group_ids"
USER_STATE_KEYS = (GROUP_VECTORS, GROUP_MASK, GROUP_IDS)
# With recent_window > 0 the state also holds the newest W behaviors as tokens.
RECENT_TOKENS = "recent_tokens"                    # float [U, W, D]
RECENT_MASK = "recent_mask"                        # bool [U, W]
RECENT_STATE_KEYS = (RECENT_TOKENS, RECENT_MASK)
# The candidate-side lookup tables of a cached user state (`lookup_state`): K groups,
# I items, M behaviors per group, T behavior types.
LOOKUP_GROUP_IDS = "lookup_group_ids"              # int32 [U, K], 0 = empty slot
LOOKUP_GROUP_SIZE = "lookup_group_size"            # int32 [U, K], behaviors in the group
LOOKUP_GROUP_COUNTS = "lookup_group_counts"        # float32 [U, K, T]
LOOKUP_GROUP_FIRST_TIME = "lookup_group_first_time"  # time [U, K]
LOOKUP_GROUP_LAST_TIME = "lookup_group_last_time"    # time [U, K]
LOOKUP_ITEMS = "lookup_items"                      # int32 [U, K, M], last M, oldest first
LOOKUP_BEHAVIORS = "lookup_behaviors"              # int32 [U, K, M]
LOOKUP_TIMES = "lookup_times"                      # time [U, K, M]
ITEM_IDS = "item_ids"                              # int32 [U, I], 0 = empty slot
ITEM_COUNTS = "item_counts"                        # float32 [U, I, T]
ITEM_LAST_TIME = "item_last_time"                  # time [U, I]
HISTORY_SIZE = "history_size"                      # int32 [U], non-padding behaviors
LOOKUP_STATE_KEYS = (LOOKUP_GROUP_IDS, LOOKUP_GROUP_SIZE, LOOKUP_GROUP_COUNTS,
                     LOOKUP_GROUP_FIRST_TIME, LOOKUP_GROUP_LAST_TIME, LOOKUP_ITEMS,
                     LOOKUP_BEHAVIORS, LOOKUP_TIMES, ITEM_IDS, ITEM_COUNTS, ITEM_LAST_TIME,
                     HISTORY_SIZE)


def match_feature_dim(num_behavior_types: int, group_shares: bool = False) -> int:
    """Width of the encoder's raw matching features for T behavior types: the candidate
    group's `log1p(counts)` per type + its statistics, the candidate item's
    `log1p(counts)` per type + seen + recency; with `group_shares` also the candidate
    group's share of each type (`group_type_shares`)."""
    t = int(num_behavior_types)
    return (t + NUM_STATS) + (t + 2) + (t if group_shares else 0)


def group_type_shares(counts):
    """Each behavior type's share of a group's behaviors: counts float `[..., T]` →
    `[..., T]` summing to 1 (zeros for an empty group). Unlike the counts it does not
    grow with the history's length (a user's taste for the group, not their activity)."""
    counts = ops.maximum(ops.cast(counts, "float32"), 0.0)
    return counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1.0)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class GroupInterestEncoder(keras.layers.Layer):
    """DMGIN's interest encoder, the one layer to drop into a ranking model.

    Pipeline (docs/design.md: Model and tensor contracts): `group_behaviors` (top-G most recently active groups, last M
    behaviors each, per-group statistics) → `GroupStatistics` → `IntraGroupTransformer`
    (self-attention within each group, pooled, fused with group embedding + stats) →
    `InterGroupTransformer` (HSTU or Transformer over the time-ordered groups) → the
    candidate attends over the evolved groups (`TargetAttention`). With
    `use_candidate_group`, DGIN's `CandidateGroupAttention` over the candidate's own
    group (found over the whole history) and the raw matching features (how often and
    how recently, per behavior type, the user touched the candidate's group and the
    candidate item itself) are appended, so they reach the caller's MLP directly.

    The work splits in two (what serving caches per user):
    - `encode_user(inputs) -> user_state` — candidate-independent:
      `{"group_vectors": [B, G, D], "group_mask": [B, G] bool, "group_ids": [B, G]}`.
    - `score_candidates(user_state, inputs) -> [..., output_dim]` — per candidate; the
      state and the history in `inputs` hold the same users: `[U]` candidates (one per
      user) → `[U, output_dim]`, `[U, N]` → `[U, N, output_dim]`, or, with one user,
      `[N]` → `[N, output_dim]`.
    `call(inputs)` is `score_candidates(encode_user(inputs), inputs)`.

    Args:
        item_vocab_size, group_vocab_size: ints, id ranges incl. reserved ids 0/1.
        num_behavior_types: int, T (behavior ids 1..T, 0 = padding).
        max_groups: int, G. max_per_group: int, M.
        embedding_dim: int, D. num_heads: int.
        intra_layers, inter_layers: ints, Transformer/HSTU blocks per level.
        inter_block: `"hstu"` or `"transformer"`.
        attention_units: tuple, target attention MLP.
        dropout: float.
        use_stats, use_intra, use_inter, use_candidate_group: ablation switches.
        group_key: `"group"` (hist_group / cand_group) or `"item"` (DGIN: each item is
            its own group; the item table embeds groups).
        num_time_buckets: int, log2-minute recency buckets.
        item_min_count: int, items seen in fewer training examples share the unknown
            item's embedding row (`FeatureEmbedding`); 0 = off.
        recent_window: int, W > 0 adds target attention over the newest W behaviors,
            one token each (the short-term sequence; kept in the user state as
            `recent_tokens` / `recent_mask`); 0 = groups only.
        item_content_dim: int, width of frozen item content vectors (the multimodal
            encoder's catalog embedding) added to every item embedding through a learned
            projection (`FeatureEmbedding`; load them with
            `encoder.embedding.set_item_content`); 0 = ids only.
        group_shares: bool, with `use_candidate_group` also give the head the
            candidate group's share of each behavior type (`group_type_shares`), which
            unlike its counts does not grow with the user's history length.
        validate: bool. Structure (keys, dense int tensors, shapes) is always checked
            when the layer is called, also symbolically; with `validate=True` (default)
            concrete inputs (eager, numpy) are also checked for id ranges, padding,
            seconds and no history after `request_time` (`input_contract.py`). Either
            way `InputContractError` names the input and the rule; compiled calls map
            out-of-vocabulary ids to OOV (1) instead (`input_contract.clamp_ids`).

    Call arguments:
        inputs: dict with `hist_item, hist_group, hist_behavior_id: [B, L] int`,
            `hist_time: [B, L] int` (Unix s; L static), `request_time: [B] int`,
            `cand_item, cand_group: [B] int` — or `[B, N]` for N candidates per row
            (keys in `dmgin_tf.features`); `[B, 1]` request times and candidates are
            read as `[B]`. Contract: docs/layers.md.
        training: bool.

    Returns:
        float `[B, output_dim]` (`encoder.output_dim`), or `[B, N, output_dim]` for
        `[B, N]` candidates.

    Example:

    ```python
    enc = GroupInterestEncoder(item_vocab_size=100, group_vocab_size=20,
                               num_behavior_types=2, max_groups=4, max_per_group=3,
                               embedding_dim=8)
    L = 10
    inputs = {"hist_item": np.random.randint(2, 100, (2, L)),
              "hist_group": np.random.randint(2, 20, (2, L)),
              "hist_behavior_id": np.random.randint(1, 3, (2, L)),
              "hist_time": np.tile(np.arange(L) * 60, (2, 1)),
              "request_time": np.array([L * 60, L * 60]),
              "cand_item": np.array([5, 6]), "cand_group": np.array([3, 4])}
    interest = enc(inputs)                        # [2, enc.output_dim]
    state = enc.encode_user(inputs)               # cacheable per user
    interest2 = enc.score_candidates(state, inputs)
    ```
    """

    def __init__(self, item_vocab_size, group_vocab_size, num_behavior_types, max_groups=64,
                 max_per_group=16, embedding_dim=16, num_heads=2, intra_layers=1,
                 inter_layers=2, inter_block="hstu", attention_units=(64, 32), dropout=0.0,
                 use_stats=True, use_intra=True, use_inter=True, use_candidate_group=True,
                 group_key="group", num_time_buckets=32, validate=True, item_content_dim=0,
                 recent_window=0, item_min_count=0, group_shares=False, **kwargs):
        super().__init__(**kwargs)
        me = "GroupInterestEncoder"
        # Ids 0 (padding) and 1 (OOV) are reserved: a vocabulary holds at least those.
        self.item_vocab_size = A.count(me, "item_vocab_size", item_vocab_size, minimum=2)
        self.group_vocab_size = A.count(me, "group_vocab_size", group_vocab_size,
                                        minimum=2 if group_key == "group" else 0)
        self.num_behavior_types = A.count(me, "num_behavior_types", num_behavior_types)
        self.max_groups = A.count(me, "max_groups", max_groups)
        self.max_per_group = A.count(me, "max_per_group", max_per_group)
        self.embedding_dim = A.count(me, "embedding_dim", embedding_dim)
        self.num_heads = A.count(me, "num_heads", num_heads)
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"{me}: embedding_dim={embedding_dim!r} must be a multiple of "
                             f"num_heads={num_heads!r} (the heads split the embedding)")
        self.intra_layers = A.count(me, "intra_layers", intra_layers, minimum=0)
        self.inter_layers = A.count(me, "inter_layers", inter_layers, minimum=0)
        self.inter_block = inter_block
        self.attention_units = A.units(me, "attention_units", attention_units)
        self.dropout = A.rate(me, "dropout", dropout)
        self.use_stats = bool(use_stats)
        self.use_intra = bool(use_intra)
        self.use_inter = bool(use_inter)
        self.use_candidate_group = bool(use_candidate_group)
        self.group_shares = bool(group_shares)
        self.group_key = group_key
        self.num_time_buckets = int(num_time_buckets)
        self.validate = bool(validate)
        self.item_content_dim = int(item_content_dim)
        self.recent_window = int(recent_window)
        self.item_min_count = int(item_min_count)
        if self.recent_window < 0:
            raise ValueError(f"recent_window={recent_window!r}: must be >= 0 (0 = off)")

        d = self.embedding_dim
        self.embedding = FeatureEmbedding(
            self.item_vocab_size, self.group_vocab_size, self.num_behavior_types + 1, d,
            num_time_buckets=self.num_time_buckets, group_key=group_key, name="embedding",
            item_content_dim=self.item_content_dim, item_min_count=self.item_min_count,
            dtype=self.dtype_policy)
        self.statistics = None
        if self.use_stats or self.use_candidate_group:
            self.statistics = GroupStatistics(d, name="group_statistics", dtype=self.dtype_policy)
        self.intra = None
        self.fuse = None
        if self.use_intra:
            self.intra = IntraGroupTransformer(self.num_heads, self.intra_layers,
                                               output_dim=d, dropout=self.dropout,
                                               name="intra_group_transformer",
                                               dtype=self.dtype_policy)
        else:
            self.fuse = Dense(d, activation="gelu", name="group_fuse", dtype=self.dtype_policy)
        self.inter = None
        if self.use_inter:
            self.inter = InterGroupTransformer(self.num_heads, self.inter_layers,
                                               block=inter_block,
                                               num_time_buckets=self.num_time_buckets,
                                               dropout=self.dropout,
                                               name="inter_group_transformer",
                                               dtype=self.dtype_policy)
        self.query_proj = Dense(d, name="candidate_query", dtype=self.dtype_policy)
        self.target_attention = TargetAttention(self.attention_units,
                                                name="target_attention", dtype=self.dtype_policy)
        self.recent_attention = None
        if self.recent_window:
            self.recent_attention = TargetAttention(self.attention_units,
                                                    name="recent_attention",
                                                    dtype=self.dtype_policy)
        self.candidate_attention = None
        if self.use_candidate_group:
            self.candidate_attention = CandidateGroupAttention(
                self.num_heads, num_layers=1, attention_units=self.attention_units,
                dropout=self.dropout, name="candidate_group_attention", dtype=self.dtype_policy)

    # ----------------------------------------------------------------- shapes / build
    @property
    def match_feature_dim(self):
        """Width of the raw matching features (`match_feature_dim`), the last columns of
        the output with `use_candidate_group`."""
        return match_feature_dim(self.num_behavior_types, self.group_shares)

    @property
    def output_dim(self):
        """Width of the interest vector returned by `call` / `score_candidates`."""
        d = self.embedding_dim
        width = 2 * d                              # target attention + candidate query
        if self.recent_window:
            width += d                             # attention over the newest behaviors
        if self.use_candidate_group:
            width += 3 * d + self.match_feature_dim  # cand-group attn, stats emb, matched
        return width

    def build(self, input_shape=None):
        g, m, d, t = self.max_groups, self.max_per_group, self.embedding_dim, \
            self.num_behavior_types
        self.embedding.build()
        if self.statistics is not None:
            self.statistics.build((None, g, t), (None, g, NUM_STATS))
        context = d + (d if self.use_stats else 0)
        if self.intra is not None:
            self.intra.build((None, g, m, d), (None, g, m), (None, g, context), (None, g))
        else:
            self.fuse.build((None, g, context))
        if self.inter is not None:
            self.inter.build((None, g, d), (None, g), (None, g))
        self.query_proj.build((None, 2 * d))
        self.target_attention.build((None, d), (None, g, d))
        if self.recent_attention is not None:
            self.recent_attention.build((None, d), (None, self.recent_window, d))
        if self.candidate_attention is not None:
            self.candidate_attention.build((None, d), (None, m, d))
        self.built = True
        if keras.backend.backend() == "tensorflow":
            # tf.train.Checkpoint keys by structure, with a manifest checked on restore
            # (Keras 3 alone skips the list-held blocks there; variable_tree.py).
            attach_checkpoint_tree(self, self)

    # ----------------------------------------------------------------- user side
    def _group_key(self, inputs):
        return inputs[HIST_ITEM] if self.group_key == "item" else inputs[HIST_GROUP]

    def _num_groups(self):
        return self.item_vocab_size if self.group_key == "item" else self.group_vocab_size

    def _cand_key(self, inputs):
        return inputs[CAND_ITEM] if self.group_key == "item" else inputs[CAND_GROUP]

    def encode_user(self, inputs, training=None):
        """Candidate-independent user state (cache it per user).

        Args:
            inputs: dict with the history keys `hist_item, hist_group,
                hist_behavior_id, hist_time: [B, L]` and `request_time: [B]`
                (candidate keys are ignored).

        Returns:
            dict `{"group_vectors": float [B, G, D], "group_mask": bool [B, G],
            "group_ids": int32 [B, G]}`; padded groups have zero vectors.
        """
        if not self.built:
            self.build()
        inputs = self._in_vocab(inputs)
        rt = inputs[REQUEST_TIME]
        num_groups = self._num_groups()
        gh = group_behaviors(inputs[HIST_ITEM], self._group_key(inputs),
                             inputs[HIST_BEHAVIOR_ID], inputs[HIST_TIME], rt,
                             max_groups=self.max_groups, max_per_group=self.max_per_group,
                             num_behavior_types=self.num_behavior_types,
                             num_groups=num_groups)
        mask = ops.cast(gh.group_mask, "bool")
        parts = [self.embedding.group(gh.group_ids)]
        if self.use_stats:
            parts.append(self.statistics(gh.counts, gh.stats, group_mask=mask))
        context = ops.concatenate(parts, axis=-1)
        length = static_length(inputs[HIST_ITEM], HIST_ITEM)
        if self.intra is not None and length < self.max_groups * self.max_per_group:
            # The groups hold at most L real behaviors: pack their ids, embed L tokens
            # per row instead of G * M, and run the blocks (if any) and the pooling on them.
            packing = Packing.from_mask(gh.group_item_mask, length)
            tokens = self.embedding.tokens(packing.pack_values(gh.group_items),
                                           packing.pack_values(gh.group_behaviors),
                                           packing.pack_values(gh.group_times), rt)
            vectors = self.intra.call_packed(tokens, packing, group_context=context,
                                             group_mask=mask, training=training)
        elif self.intra is not None:   # L >= G * M: every slot may be real, no packing
            tokens = self.embedding.tokens(gh.group_items, gh.group_behaviors,
                                           gh.group_times, rt)
            vectors = self.intra(tokens, gh.group_item_mask, group_context=context,
                                 group_mask=mask, training=training)
        else:
            vectors = self.fuse(context) * ops.cast(mask, context.dtype)[..., None]
        if self.inter is not None:
            vectors = self.inter(vectors, mask, age_seconds(gh.last_time, rt),
                                 training=training)
        state = {GROUP_VECTORS: vectors, GROUP_MASK: mask,
                 GROUP_IDS: ops.cast(gh.group_ids, "int32")}
        if self.recent_window:
            state.update(self._recent_tokens(inputs, rt))
        return state

    def _recent_tokens(self, inputs, rt):
        """The newest `recent_window` behaviors (fewer when L is shorter) as tokens:
        `{recent_tokens: [B, W, D], recent_mask: [B, W]}` — the short-term sequence,
        one token per behavior, that grouping folds into group vectors."""
        keep = ops.cast(inputs[HIST_ITEM], "int32") != 0
        w = min(self.recent_window, static_length(inputs[HIST_ITEM], HIST_ITEM))
        idx, mask = select_last(keep, w)
        take = lambda key: ops.take_along_axis(inputs[key], idx, axis=1)  # noqa: E731
        tokens = self.embedding.tokens(take(HIST_ITEM), take(HIST_BEHAVIOR_ID),
                                       take(HIST_TIME), rt)
        return {RECENT_TOKENS: tokens * ops.cast(mask, tokens.dtype)[..., None],
                RECENT_MASK: mask}

    # ----------------------------------------------------------------- candidate side
    def score_candidates(self, user_state, inputs, training=None, candidate_features=None,
                         user_features=None):
        """Interest vectors for candidates given a (cached) user state.

        Args:
            user_state: dict from `encode_user`, batch U.
            inputs: dict with `cand_item, cand_group`: `[U]` (one candidate per user
                row, as in training) or `[U, N]` (N candidates per user, as in ranking);
                with `use_candidate_group` also the history keys `[U, L]` and
                `request_time [U]`: the candidate's own group and item are looked up in
                the history once per user (`dmgin_tf.ops.candidate_groups`,
                `candidate_item_hits`), not rescanned per candidate. Candidates `[N]`
                with a state of static batch 1 are one user × N candidates.
            training: bool.
            candidate_features: optional `candidate_features(inputs)` of the same
                `[U, N]` candidates, computed beforehand (serving runs it beside
                `encode_user`: it does not need the user state); None = computed here.
            user_features: optional `user_features(user_state, inputs)` of the same
                `[U, N]` candidates, computed beforehand (serving computes it right
                after `encode_user`, in the same compiled function); `user_state` is
                then not read and may be None.

        Returns:
            float `[U, output_dim]`, `[U, N, output_dim]` for `[U, N]` candidates, or
            `[N, output_dim]` for one user × `[N]` candidates.
        """
        if not self.built:
            self.build()
        if user_state is not None:
            check_state_rows(inputs, user_state[GROUP_VECTORS].shape[0])
        inputs = self._in_vocab(inputs)
        cand_item = ops.cast(inputs[CAND_ITEM], "int32")
        cand_key = ops.cast(self._cand_key(inputs), "int32")
        if len(cand_item.shape) == 2:
            return self._score_lists(user_state, inputs, cand_item, cand_key, training,
                                     candidate_features, user_features)
        if candidate_features is not None or user_features is not None:
            raise ValueError(
                "GroupInterestEncoder.score_candidates: candidate_features / user_features "
                f"are computed for [U, N] candidates, got cand_item of shape "
                f"{tuple(cand_item.shape)}; pass the candidates as [U, N] (e.g. [U, 1])")
        state_batch = user_state[GROUP_MASK].shape[0]
        if state_batch == 1 and cand_item.shape[0] != 1:
            out = self._score_lists(user_state, inputs, cand_item[None], cand_key[None],
                                    training)
            return out[0]
        out = self._score_lists(user_state, inputs, cand_item[:, None], cand_key[:, None],
                                training)
        return out[:, 0]

    def candidate_features(self, inputs, training=None):
        """Everything about `[U, N]` candidates that needs no user state.

        The candidate query, and with `use_candidate_group` the candidate's own group
        read from the raw history (`candidate_groups`, `candidate_item_match`) with
        its attention and statistics. It can run concurrently with `encode_user`
        (serving does), and `score_candidates(..., candidate_features=)` takes it.

        Args:
            inputs: history keys `[U, L]`, `request_time [U]`, `cand_item, cand_group`
                `[U, N]`.
            training: bool.

        Returns:
            dict of `[U, N, ...]` floats: `query` `[U, N, D]`; with
            `use_candidate_group` also `group_attention` `[U, N, D]` (the candidate over
            its group's behaviors), `group_stats` `[U, N, D]` (the group's statistics
            embedded) and `match_features` `[U, N, match_feature_dim]` (raw counts,
            statistics and item matches).
        """
        if not self.built:
            self.build()
        inputs = self._in_vocab(inputs)
        return self._candidate_features(inputs, ops.cast(inputs[CAND_ITEM], "int32"),
                                        ops.cast(self._cand_key(inputs), "int32"), training)

    def user_features(self, user_state, inputs):
        """The part of scoring `[U, N]` candidates that reads the user state.

        Args:
            user_state: dict from `encode_user`, batch U.
            inputs: `cand_item, cand_group` `[U, N]`.

        Returns:
            dict: `target_attention` `[U, N, D]` (each candidate over the user's G
            groups); with `use_candidate_group` also `group_match` `[U, N, D]` (the
            evolved vector of the candidate's own group when it is among the G, else 0).
        """
        if not self.built:
            self.build()
        if user_state is not None:
            check_state_rows(inputs, user_state[GROUP_VECTORS].shape[0])
        inputs = self._in_vocab(inputs)
        cand_item = ops.cast(inputs[CAND_ITEM], "int32")
        cand_key = ops.cast(self._cand_key(inputs), "int32")
        return self._user_features(user_state, self._query(cand_item, cand_key), cand_key)

    def _query(self, cand_item, cand_key):
        """The candidate representation `[U, N, D]`."""
        return self.query_proj(ops.concatenate(
            [self.embedding.item(cand_item), self.embedding.group(cand_key)], axis=-1))

    def _user_features(self, user_state, query, cand_key):
        """`user_features` given the candidates' query `[U, N, D]`, keys `[U, N]`."""
        vectors = user_state[GROUP_VECTORS]                                  # [U, G, D]
        mask = ops.cast(user_state[GROUP_MASK], "bool")
        features = {"target_attention": self.target_attention(query, vectors, mask)}
        if self.recent_attention is not None:
            features["recent_attention"] = self.recent_attention(
                query, user_state[RECENT_TOKENS], ops.cast(user_state[RECENT_MASK], "bool"))
        if self.use_candidate_group:
            ids = ops.cast(user_state[GROUP_IDS], "int32")
            known = cand_key >= NUM_RESERVED_IDS
            hit = ops.cast((ids[:, None, :] == cand_key[:, :, None]) & mask[:, None, :]
                           & known[:, :, None], vectors.dtype)              # [U, N, G]
            features["group_match"] = ops.einsum("ung,ugd->und", hit, vectors)
        return features

    def _candidate_features(self, inputs, cand_item, cand_key, training):
        """`candidate_features` for candidates already cast to int32 `[U, N]`."""
        query = self._query(cand_item, cand_key)
        features = {"query": query}
        if not self.use_candidate_group:
            return features
        rt = ops.reshape(inputs[REQUEST_TIME], (-1,))
        cg = candidate_groups(inputs[HIST_ITEM], self._group_key(inputs),
                              inputs[HIST_BEHAVIOR_ID], inputs[HIST_TIME], rt, cand_key,
                              max_per_group=self.max_per_group,
                              num_behavior_types=self.num_behavior_types,
                              num_groups=self._num_groups())
        item_match = candidate_item_match(inputs[HIST_ITEM], inputs[HIST_BEHAVIOR_ID],
                                          inputs[HIST_TIME], rt, cand_item,
                                          self.num_behavior_types)          # [U, N, T + 2]
        features.update(self._own_group_features(query, cand_key, rt, cg, item_match,
                                                 training))
        return features

    def _own_group_features(self, query, cand_key, rt, cg, item_match, training):
        """The candidate's own group (`cg`, a `CandidateGroup` with a candidate axis
        `[U, N, ...]`, from the raw history or a cached state) and its item matches
        `[U, N, T + 2]` → `group_attention`, `group_stats`, `match_features`."""
        n = cand_key.shape[1] if cand_key.shape[1] is not None else ops.shape(cand_key)[1]
        # Reserved candidate ids (padding/OOV) match nothing: "unknown" is not a group.
        known = cand_key >= NUM_RESERVED_IDS                                 # [U, N]
        m = self.max_per_group
        # The candidate's own group: one behavior set per candidate, so rows of U * N.
        flat = lambda x, *tail: ops.reshape(x, (-1,) + tail)  # noqa: E731  [U, N, ...] → [U*N, ...]
        cg_mask = ops.cast(flat(cg.mask, m), "bool") & flat(known)[:, None]
        knownf = ops.cast(known, "float32")[..., None]
        counts = ops.cast(cg.counts, "float32") * knownf                    # [U, N, T]
        stats = ops.cast(cg.stats, "float32") * knownf
        tokens = self.embedding.tokens(flat(cg.items, m), flat(cg.behaviors, m),
                                       flat(cg.times, m), _repeat_per_candidate(rt, n))
        attention = self.candidate_attention(flat(query, query.shape[-1]), tokens,
                                             cg_mask, training=training)
        raw = [GroupStatistics.features(counts, stats), ops.cast(item_match, "float32")]
        if self.group_shares:
            raw.append(group_type_shares(counts))
        raw = ops.concatenate(raw, axis=-1)
        return dict(
            group_attention=ops.reshape(attention, (-1, n, attention.shape[-1])),
            group_stats=self.statistics(counts, stats, group_mask=known),
            match_features=ops.cast(raw, query.dtype))

    # ----------------------------------------------------------------- cached state
    def lookup_state(self, inputs, max_lookup_groups=128, max_lookup_items=512):
        """The candidate-side lookup tables of a cached user state (no model weights).

        What `candidate_features` reads from the raw history, precomputed for the
        user's K most recently active groups (keyed like the model's groups: group ids,
        or item ids for DGIN) and I most recently touched items, so that
        `score_cached` needs no history. A candidate whose group (item) is among them
        scores exactly as from the history; one whose group is in the history but not
        among the K (I) most recent is scored as if absent (an old, unseen-looking
        group).

        Args:
            inputs: history keys `[U, L]`, `request_time [U]`.
            max_lookup_groups: K (capped at L). max_lookup_items: I (capped at L).

        Returns:
            dict keyed by `LOOKUP_STATE_KEYS` (shapes beside their names above).
        """
        if not self.built:
            self.build()
        inputs = self._in_vocab(inputs)
        length = static_length(inputs[HIST_ITEM], HIST_ITEM)
        k, i = min(int(max_lookup_groups), length), min(int(max_lookup_items), length)
        if k < 1 or i < 1:
            raise ValueError(f"GroupInterestEncoder.lookup_state: max_lookup_groups="
                             f"{max_lookup_groups!r}, max_lookup_items={max_lookup_items!r} "
                             "must be >= 1")
        rt = ops.reshape(inputs[REQUEST_TIME], (-1,))
        t = self.num_behavior_types
        groups = group_behaviors(inputs[HIST_ITEM], self._group_key(inputs),
                                 inputs[HIST_BEHAVIOR_ID], inputs[HIST_TIME], rt,
                                 max_groups=k, max_per_group=self.max_per_group,
                                 num_behavior_types=t, num_groups=self._num_groups())
        items = group_behaviors(inputs[HIST_ITEM], inputs[HIST_ITEM], inputs[HIST_BEHAVIOR_ID],
                                inputs[HIST_TIME], rt, max_groups=i, max_per_group=1,
                                num_behavior_types=t, num_groups=self.item_vocab_size)
        mask = ops.cast(groups.group_mask, "bool")
        # The op reports a group's size as log1p(count); an integer < 2^24 comes back exactly.
        size = ops.cast(ops.round(ops.expm1(groups.stats[..., 0])), "int32")
        return {
            LOOKUP_GROUP_IDS: ops.where(mask, ops.cast(groups.group_ids, "int32"), 0),
            LOOKUP_GROUP_SIZE: ops.where(mask, size, 0),
            LOOKUP_GROUP_COUNTS: ops.cast(groups.counts, "float32"),
            LOOKUP_GROUP_FIRST_TIME: groups.first_time,
            LOOKUP_GROUP_LAST_TIME: groups.last_time,
            LOOKUP_ITEMS: ops.cast(groups.group_items, "int32"),
            LOOKUP_BEHAVIORS: ops.cast(groups.group_behaviors, "int32"),
            LOOKUP_TIMES: groups.group_times,
            ITEM_IDS: ops.where(ops.cast(items.group_mask, "bool"),
                                ops.cast(items.group_ids, "int32"), 0),
            ITEM_COUNTS: ops.cast(items.counts, "float32"),
            ITEM_LAST_TIME: items.last_time,
            HISTORY_SIZE: ops.sum(ops.cast(ops.cast(inputs[HIST_ITEM], "int32") != 0, "int32"),
                                  axis=1),
        }

    def score_cached(self, user_state, inputs, training=None, candidate_features=None,
                     user_features=None):
        """Interest vectors of `[U, N]` candidates from a cached user state alone.

        Args:
            user_state: `encode_user`'s dict plus `lookup_state`'s, batch U.
            inputs: `cand_item, cand_group` `[U, N]`; `request_time [U]` (the time the
                recency features are measured at; the group vectors stay those of the
                state's own time).
            training: bool.
            candidate_features: optional `cached_candidate_features(user_state, inputs)`
                computed beforehand; user_features: optional `user_features(user_state,
                inputs)` (serving computes the two side by side, as in `rank`).

        Returns:
            float `[U, N, output_dim]`, equal to `score_candidates` on the history the
            state was computed from (same request time) when every candidate's group and
            item is in the state's lookup tables or absent from the history.
        """
        inputs = self._in_vocab(inputs)
        if candidate_features is None:
            candidate_features = self.cached_candidate_features(user_state, inputs, training)
        else:
            self._check_cached_inputs(user_state, inputs)
        cand_item = ops.cast(inputs[CAND_ITEM], "int32")
        cand_key = ops.cast(self._cand_key(inputs), "int32")
        return self._score_lists(user_state, inputs, cand_item, cand_key, training,
                                 candidate_features=candidate_features,
                                 user_features=user_features)

    def cached_candidate_features(self, user_state, inputs, training=None):
        """`candidate_features` of `[U, N]` candidates read from a cached user state's
        lookup tables instead of the history (same dict, same shapes)."""
        if not self.built:
            self.build()
        self._check_cached_inputs(user_state, inputs)
        inputs = self._in_vocab(inputs)
        cand_item = ops.cast(inputs[CAND_ITEM], "int32")
        cand_key = ops.cast(self._cand_key(inputs), "int32")
        query = self._query(cand_item, cand_key)
        features = {"query": query}
        if self.use_candidate_group:
            rt = ops.reshape(inputs[REQUEST_TIME], (-1,))
            cg = self._cached_candidate_groups(user_state, cand_key, rt)
            seen, counts, last = _table_lookup(
                user_state[ITEM_IDS], cand_item,
                (user_state[ITEM_COUNTS], user_state[ITEM_LAST_TIME]))
            item_match = item_match_features(counts, seen, last, rt)
            features.update(self._own_group_features(query, cand_key, rt, cg, item_match,
                                                     training))
        return features

    def _cached_candidate_groups(self, state, cand_key, rt):
        """`candidate_groups` read from the state's lookup tables: `CandidateGroup` with a
        candidate axis `[U, N, ...]`."""
        present, items, behaviors, times, counts, first, last, size = _table_lookup(
            state[LOOKUP_GROUP_IDS], cand_key,
            (state[LOOKUP_ITEMS], state[LOOKUP_BEHAVIORS], state[LOOKUP_TIMES],
             state[LOOKUP_GROUP_COUNTS], state[LOOKUP_GROUP_FIRST_TIME],
             state[LOOKUP_GROUP_LAST_TIME], state[LOOKUP_GROUP_SIZE]))
        rt = ops.cast(ops.reshape(rt, (-1, 1)), times.dtype)
        row_total = ops.cast(ops.reshape(state[HISTORY_SIZE], (-1, 1)), "float32")
        return CandidateGroup(
            items=items, behaviors=behaviors, times=times, mask=items != 0, counts=counts,
            first_time=first, last_time=last,
            stats=stat_columns(ops.cast(size, "float32"), first, last, rt, row_total, present))

    def _score_lists(self, user_state, inputs, cand_item, cand_key, training,
                     candidate_features=None, user_features=None):
        """U users × N candidates: cand_item, cand_key `[U, N]` → `[U, N, output_dim]`.

        The user state is never repeated per candidate: target attention takes the N
        queries of a user against the user's G groups at once.
        """
        c = candidate_features
        if c is None:
            c = self._candidate_features(inputs, cand_item, cand_key, training)
        u = user_features
        if u is None:
            u = self._user_features(user_state, c["query"], cand_key)
        parts = [u["target_attention"], c["query"]]
        if self.recent_attention is not None:
            parts.append(u["recent_attention"])
        if self.use_candidate_group:
            parts += [c["group_attention"], c["group_stats"], u["group_match"],
                      c["match_features"]]
        return ops.concatenate(parts, axis=-1)

    def __call__(self, inputs, *args, **kwargs):
        # Checked before Keras' own __call__, so a broken input raises our error as is
        # (not re-wrapped) and `[B, 1]` candidates are `[B]` before any shape logic.
        inputs = check_structure(inputs)
        if self.validate:
            check_values(inputs, item_vocab_size=self.item_vocab_size,
                         group_vocab_size=self.group_vocab_size,
                         num_behavior_types=self.num_behavior_types)
        return super().__call__(inputs, *args, **kwargs)

    def _check_cached_inputs(self, user_state, inputs):
        """The structure of `score_cached`'s candidates and request time (any mode);
        their values are checked by `_in_vocab`."""
        check_cached_candidates(inputs, user_state[HISTORY_SIZE].shape[0])

    def _in_vocab(self, inputs, check=True):
        """Out-of-vocabulary item/group ids → OOV, identically on every device.

        With `check` (every public entry point but `call`, whose `__call__` has checked
        already) and `validate` on, concrete values are first checked against the input
        contract (`check_values` on the keys present: ids, seconds, no history event
        after the request), so the split and cached paths (`encode_user`,
        `lookup_state`, `score_candidates`, `score_cached`, ...) refuse what `__call__`
        refuses instead of clamping it; compiled calls skip to the clamp. Returns
        `_InVocab`, which later entry points (e.g. `call` → `encode_user` →
        `score_candidates`) take as it is instead of checking and clamping it again."""
        if isinstance(inputs, _InVocab):
            return inputs
        if check and self.validate:
            check_values(inputs, item_vocab_size=self.item_vocab_size,
                         group_vocab_size=self.group_vocab_size,
                         num_behavior_types=self.num_behavior_types,
                         keys=tuple(k for k in MODEL_INPUT_KEYS if inputs.get(k) is not None))
        return _InVocab(clamp_ids(inputs, item_vocab_size=self.item_vocab_size,
                                  group_vocab_size=self.group_vocab_size))

    def call(self, inputs, training=None):
        inputs = self._in_vocab(inputs, check=False)
        return self.score_candidates(self.encode_user(inputs, training=training), inputs,
                                     training=training)

    def compute_output_shape(self, input_shape):
        """`[B]` (or `[B, 1]`, one candidate per row) candidates → `(B, output_dim)`;
        `[U, N]` candidates → `(U, N, output_dim)`."""
        cand = tuple(input_shape[CAND_ITEM])
        if len(cand) == 2 and cand[1] != 1:
            return (cand[0], cand[1], self.output_dim)
        return (cand[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            item_vocab_size=self.item_vocab_size, group_vocab_size=self.group_vocab_size,
            num_behavior_types=self.num_behavior_types, max_groups=self.max_groups,
            max_per_group=self.max_per_group, embedding_dim=self.embedding_dim,
            num_heads=self.num_heads, intra_layers=self.intra_layers,
            inter_layers=self.inter_layers, inter_block=self.inter_block,
            attention_units=self.attention_units, dropout=self.dropout,
            use_stats=self.use_stats, use_intra=self.use_intra, use_inter=self.use_inter,
            use_candidate_group=self.use_candidate_group, group_key=self.group_key,
            num_time_buckets=self.num_time_buckets, validate=self.validate,
            item_content_dim=self.item_content_dim, recent_window=self.recent_window,
            item_min_count=self.item_min_count, group_shares=self.group_shares)
        return config


class _InVocab(dict):
    """Inputs `GroupInterestEncoder._in_vocab` has checked and clamped already."""


def _table_lookup(table_ids, keys, columns):
    """Rows of a per-user table by id: table_ids int32 `[U, K]` (0 = empty slot), keys
    int32 `[U, N]`, columns `[U, K, ...]` each → (found bool `[U, N]`, then each column
    `[U, N, ...]`, zeros where not found). Reserved keys (padding, OOV) find nothing."""
    hit = (table_ids[:, None, :] == keys[:, :, None]) & (keys >= NUM_RESERVED_IDS)[:, :, None]
    found = ops.any(hit, axis=-1)                                           # [U, N]
    slot = ops.cast(ops.argmax(ops.cast(hit, "int32"), axis=-1), "int32")  # [U, N]
    k = table_ids.shape[1]
    rows = ops.arange(ops.shape(table_ids)[0], dtype="int32")[:, None] * k + slot
    out = [found]
    for col in columns:
        tail = tuple(col.shape[2:])
        got = ops.take(ops.reshape(col, (-1,) + tail), rows, axis=0)         # [U, N, ...]
        where = found
        for _ in tail:
            where = ops.expand_dims(where, -1)
        out.append(ops.where(where, got, ops.zeros((), got.dtype)))
    return tuple(out)


def _repeat_per_candidate(x, n):
    """A user-level tensor `[U, ...]` → `[U * N, ...]`, each row repeated for its N
    candidates (N an int or a scalar tensor)."""
    x = ops.expand_dims(x, 1)
    shape = ops.shape(x)
    return ops.reshape(ops.broadcast_to(x, (shape[0], n) + tuple(shape[2:])),
                       (-1,) + tuple(x.shape[2:]))
