"""Candidate-item matching features: how often and how recently the user touched the
candidate item itself, per behavior type (docs/design.md, "Evaluation protocol": on these
sparse sets, matching the candidate against the user's own past wins)."""
from __future__ import annotations

from keras import ops

from dmgin_tf.layers.feature_embedding import age_seconds
from dmgin_tf.ops import candidate_item_hits


def recency_feature(ages, seen):
    """`1 / (1 + log1p(age_hours))` where `seen`, else 0: 1 = just now, → 0 when old.

    Args:
        ages: float `[...]` seconds; seen: bool `[...]`.

    Returns:
        float32 `[...]` in [0, 1].
    """
    hours = ops.maximum(ops.cast(ages, "float32"), 0.0) / 3600.0
    return ops.where(seen, 1.0 / (1.0 + ops.log1p(hours)), 0.0)


def candidate_item_match(hist_item, hist_behavior, hist_time, request_time, cand_item,
                         num_behavior_types):
    """Counts and recency of the candidate item in the user's history.

    Args:
        hist_item, hist_behavior: int `[B, L]` (padding 0; behavior ids 1..T).
        hist_time: int `[B, L]` Unix seconds. request_time: int `[B]`.
        cand_item: int `[B]` (one candidate per history row) or `[B, N]` (N candidates
            per row, e.g. one user x N). Reserved ids (padding, OOV) never match: an
            unknown candidate is not "the same item" as other unknown items.
        num_behavior_types: int, T.

    Returns:
        float32 `[B, T + 2]` (or `[B, N, T + 2]`): `log1p(count of the item per behavior
        type)` (T), a seen flag, and `recency_feature` of the item's last touch.
        The history is scanned once per row, not per candidate
        (`dmgin_tf.ops.candidate_item_hits`).
    """
    cand = ops.cast(cand_item, "int32")
    one = len(cand.shape) == 1
    if one:
        cand = ops.expand_dims(cand, 1)
    counts, seen, last_time = candidate_item_hits(hist_item, hist_behavior, hist_time, cand,
                                                  num_behavior_types=num_behavior_types)
    out = item_match_features(counts, seen, last_time, request_time)
    return out[:, 0] if one else out


def item_match_features(counts, seen, last_time, request_time):
    """The matching features from a candidate's hits: counts float `[B, N, T]`, seen bool
    `[B, N]`, last_time int `[B, N]`, request_time `[B]` → float32 `[B, N, T + 2]`
    (also what a cached user state's item table gives, `GroupInterestEncoder.score_cached`)."""
    last_age = age_seconds(last_time, request_time)                            # [B, N]
    return ops.concatenate([ops.log1p(counts), ops.cast(seen, "float32")[..., None],
                            recency_feature(last_age, seen)[..., None]], axis=-1)
