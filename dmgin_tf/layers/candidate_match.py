"""Candidate-item matching features: how often and how recently the user touched the
candidate item itself, per behavior type (DESIGN §6: what wins on sparse public sets)."""
from __future__ import annotations

from keras import ops

from dmgin_tf.features import NUM_RESERVED_IDS, PAD_ID
from dmgin_tf.layers.feature_embedding import age_seconds


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
        cand_item: int `[B]`. Reserved ids (padding, OOV) never match: an unknown
            candidate is not "the same item" as other unknown items.
        num_behavior_types: int, T.

    Returns:
        float32 `[B, T + 2]`: `log1p(count of the item per behavior type)` (T), a seen
        flag, and `recency_feature` of the item's last touch.
    """
    cand = ops.cast(cand_item, "int32")[:, None]
    items = ops.cast(hist_item, "int32")
    match = (items == cand) & (items != PAD_ID) & (cand >= NUM_RESERVED_IDS)   # [B, L]
    behavior = ops.cast(hist_behavior, "int32")
    # One [B, L] pass per type instead of a [B, L, T] one-hot: T is small and this keeps
    # memory at O(B * L) for "one user x N candidates" scoring.
    counts = ops.stack([ops.sum(ops.cast(match & (behavior == t + 1), "float32"), axis=1)
                        for t in range(num_behavior_types)], axis=-1)            # [B, T]
    seen = ops.any(match, axis=1)
    ages = age_seconds(hist_time, request_time)                                  # [B, L]
    # The most recent touch has the smallest age; non-matches are pushed to +inf-ish.
    last_age = ops.min(ops.where(match, ages, 3.0e9), axis=1)
    return ops.concatenate([ops.log1p(counts), ops.cast(seen, "float32")[:, None],
                            recency_feature(last_age, seen)[:, None]], axis=-1)
