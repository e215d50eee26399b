"""`group_behaviors`: the XLA-friendly grouping of a lifelong behavior history.

Backend-agnostic: only `keras.ops`, so one implementation runs on the TensorFlow
backend (eager, `tf.function`, `tf.function(jit_compile=True)`) and on JAX (`jax.jit`,
CPU and GPU). Static shapes throughout; no `unique`/boolean masking.

Conventions (docs/internals.md): `hist_item == 0` marks an empty slot, anywhere in the
row; behavior ids are 1..T (0 = padding / unknown type); times are Unix seconds.

Bad values cannot raise under jit, so the op *clamps*, always the same way (and
`validate_history` raises on them in eager code):

- group id outside `[0, num_groups)` (or negative, or beyond int32 when `num_groups` is
  None) → `OOV_GROUP_ID` (1, the "unknown group"; 0 when `num_groups == 1`);
- behavior id outside `[0, T]` → 0: the behavior still counts in the group's total and
  is kept in `group_behaviors` as 0, but in no per-type count;
- negative `hist_time` / `request_time` → 0; a request time before a group's last
  behavior gives recency 0, never a negative or NaN statistic.

Algorithm (O(L log L); designed around XLA's slow CPU sort, DESIGN §5):
1. stable argsort by time (skipped at run time by a `cond` when the valid entries are
   already in time order, which is the data contract: histories are oldest first);
2. stable argsort by group id (padding gets a sentinel id, so it sorts last) → the row
   is now ordered by (group, time, original position);
3. each group is a contiguous run; `top_k` (float32, which XLA:CPU runs as a fast
   partial sort rather than a full sort) over the run ends scored by the dense time rank
   picks the G groups with the most recent last behavior, ties → smaller group id;
4. a vectorised binary search finds each selected run's start; per-type counts come
   from prefix sums (a log-step scan, since XLA:CPU lowers `cumsum` to an O(L²)
   reduce-window), and the last M behaviors are one gather.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from dmgin_tf.features import OOV_ID, PAD_ID

OOV_GROUP_ID = OOV_ID          # out-of-range group ids are clamped to the unknown group
SECONDS_PER_HOUR = 3600.0
_INT32_MAX = 2**31 - 1

#: Columns of `stats` (float32, all 0 for padded groups). Hours are (seconds / 3600).
STAT_NAMES = (
    "log1p_count",          # log1p(number of behaviors of the group, whole history)
    "log1p_recency_hours",  # log1p(max(request_time - last_time, 0) in hours)
    "log1p_span_hours",     # log1p((last_time - first_time) in hours)
    "log1p_mean_gap_hours",  # log1p(span hours / max(count - 1, 1))
    "share_of_history",     # count / number of non-padding behaviors in the row
    "log1p_age_hours",      # log1p(max(request_time - first_time, 0) in hours)
)
NUM_STATS = len(STAT_NAMES)


class GroupedHistory(NamedTuple):
    """Output of `group_behaviors` (B batch, G max_groups, M max_per_group, T types).

    group_ids [B,G] int32: groups by latest behavior, most recent first (ties → smaller
        id); 0 where `group_mask` is False.
    group_mask [B,G] bool.
    group_items, group_behaviors [B,G,M] int32; group_times [B,G,M] (time dtype): each
        group's last M behaviors, oldest first, left-aligned, zero padded.
    group_item_mask [B,G,M] bool.
    counts [B,G,T] float32: behaviors per type 1..T over the group's whole history.
    first_time, last_time [B,G] (time dtype).
    stats [B,G,NUM_STATS] float32: see `STAT_NAMES`.
    """
    group_ids: object
    group_mask: object
    group_items: object
    group_behaviors: object
    group_times: object
    group_item_mask: object
    counts: object
    first_time: object
    last_time: object
    stats: object


class CandidateGroup(NamedTuple):
    """Output of `candidate_group_history`: the candidate's own group (B batch, M, T).

    items, behaviors [B,M] int32; times [B,M] (time dtype): the group's last M
        behaviors, oldest first, left-aligned, zero padded; mask [B,M] bool.
    counts [B,T] float32 over the group's whole history; first_time, last_time [B].
    stats [B,NUM_STATS] float32, same columns as `GroupedHistory.stats`.
    """
    items: object
    behaviors: object
    times: object
    mask: object
    counts: object
    first_time: object
    last_time: object
    stats: object


# --- clamps shared with the numpy reference (xp is numpy or keras.ops) -----------------

def _oov_group(num_groups):
    return OOV_GROUP_ID if (num_groups is None or num_groups > OOV_GROUP_ID) else 0


def clamp_group(group, num_groups, xp=ops):
    """Group ids outside [0, num_groups) (or [0, 2**31-1) when None) → OOV_GROUP_ID."""
    hi = _INT32_MAX if num_groups is None else num_groups
    bad = xp.logical_or(group < 0, group >= hi)
    return xp.where(bad, _oov_group(num_groups), group)


def clamp_behavior(behavior, num_behavior_types, xp=ops):
    """Behavior ids outside [0, T] → 0 (kept, counted in totals, in no per-type count)."""
    bad = xp.logical_or(behavior < 0, behavior > num_behavior_types)
    return xp.where(bad, 0, behavior)


# --- eager validation ------------------------------------------------------------------

def validate_history(hist_item, hist_group, hist_behavior, hist_time, request_time=None,
                     *, num_behavior_types, num_groups=None, cand_group=None) -> None:
    """Raises ValueError naming the field and the first bad value (eager / numpy only).

    Checks shapes ([B,L] each, request_time/cand_group [B]), item ids >= 0, and on
    non-padding slots: group ids in [0, num_groups), behavior ids in [0, T], times >= 0.
    The op itself clamps these instead (it cannot raise under jit); call this at the
    data boundary to catch broken inputs early.
    """
    arrays = {"hist_item": hist_item, "hist_group": hist_group,
              "hist_behavior": hist_behavior, "hist_time": hist_time}
    arrays = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in arrays.items()}
    shape = arrays["hist_item"].shape
    if len(shape) != 2:
        raise ValueError(f"hist_item: expected shape [B, L], got {shape}")
    for name, a in arrays.items():
        if a.shape != shape:
            raise ValueError(f"{name}: shape {a.shape} differs from hist_item's {shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: expected an integer dtype, got {a.dtype}")
    item = arrays["hist_item"]
    valid = item != PAD_ID

    def first_bad(name, bad):
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            value = arrays[name][pos] if name in arrays else None
            return pos, value
        return None

    checks = [("hist_item", item < 0, "must be >= 0 (0 = padding)")]
    if num_groups is not None:
        g = arrays["hist_group"]
        checks.append(("hist_group", valid & ((g < 0) | (g >= num_groups)),
                       f"must be in [0, {num_groups})"))
    else:
        g = arrays["hist_group"]
        checks.append(("hist_group", valid & ((g < 0) | (g >= _INT32_MAX)),
                       f"must be in [0, {_INT32_MAX})"))
    b = arrays["hist_behavior"]
    checks.append(("hist_behavior", valid & ((b < 0) | (b > num_behavior_types)),
                   f"must be in [0, {num_behavior_types}] (0 = padding)"))
    checks.append(("hist_time", valid & (arrays["hist_time"] < 0), "must be >= 0"))
    for name, bad, rule in checks:
        hit = first_bad(name, bad)
        if hit:
            raise ValueError(f"{name}: bad value {hit[1]} at [row {hit[0][0]}, "
                             f"position {hit[0][1]}]: {rule}")
    for name, vec, rule in (("request_time", request_time, "must be >= 0"),
                            ("cand_group", cand_group, None)):
        if vec is None:
            continue
        v = np.asarray(ops.convert_to_numpy(vec)).reshape(-1)
        if v.shape[0] != shape[0]:
            raise ValueError(f"{name}: expected shape [B]=[{shape[0]}], got {v.shape}")
        if name == "request_time":
            bad = v < 0
        else:
            hi = _INT32_MAX if num_groups is None else num_groups
            bad = (v < 0) | (v >= hi)
            rule = f"must be in [0, {hi})"
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}: bad value {v[i]} at row {i}: {rule}")


# --- small building blocks ------------------------------------------------------------

def _take(x, idx):
    """x [B, L, ...], idx [B, K] int → x gathered along axis 1 → [B, K, ...]."""
    if len(x.shape) == 2:
        return ops.take_along_axis(x, idx, axis=1)
    return ops.take_along_axis(x, ops.expand_dims(idx, -1), axis=1)


def _prefix_sum(x):
    """Inclusive prefix sum along axis 1 of an int tensor [B, L, ...].

    A log-step (Hillis–Steele) scan of pads and adds: XLA:CPU lowers `cumsum` to a
    reduce-window whose cost is quadratic in L (9 s for [256, 10000] here), while this
    fuses into log2(L) linear passes on every backend. Exact for ints.
    """
    length = x.shape[1]
    shift = 1
    rest = [[0, 0]] * (len(x.shape) - 2)
    while shift < length:
        shifted = ops.pad(x[:, :length - shift], [[0, 0], [shift, 0]] + rest)
        x = x + shifted
        shift *= 2
    return x


def _lower_bound(sorted_keys, values, hi):
    """First index i in [0, hi] with sorted_keys[b, i] >= values[b, k] (vectorised).

    sorted_keys [B, L] ascending per row; values, hi [B, K] int32 (hi is an index whose
    key is known to be >= the value). ceil(log2(L)) + 1 rounds of one small gather.
    """
    length = sorted_keys.shape[1]
    lo = ops.zeros_like(hi)
    for _ in range(max(1, math.ceil(math.log2(length + 1)) + 1)):
        mid = (lo + hi) // 2
        below = _take(sorted_keys, mid) < values
        lo = ops.where(below, mid + 1, lo)
        hi = ops.where(below, hi, mid)
    return lo


def _static_length(x, name):
    length = x.shape[-1]
    if length is None:
        raise ValueError(f"{name}: the history length L must be static (got shape "
                         f"{tuple(x.shape)}); pad histories to a fixed L")
    return int(length)


def _log1p_hours(seconds):
    return ops.log1p(ops.maximum(ops.cast(seconds, "float32"), 0.0) / SECONDS_PER_HOUR)


def _stats(n, first, last, request, row_total, present):
    """n, row_total float32; first, last, request ints (broadcastable) → [..., NUM_STATS]."""
    span_h = ops.cast(last - first, "float32") / SECONDS_PER_HOUR
    cols = [
        ops.log1p(n),
        _log1p_hours(request - last),
        ops.log1p(span_h),
        ops.log1p(span_h / ops.maximum(n - 1.0, 1.0)),
        n / ops.maximum(row_total, 1.0),
        _log1p_hours(request - first),
    ]
    stats = ops.stack(cols, axis=-1)
    return ops.where(ops.expand_dims(present, -1), stats, 0.0)


def _prepare(hist_item, hist_group, hist_behavior, hist_time, request_time,
             num_behavior_types, num_groups):
    """Casts, validity mask and the documented clamps."""
    item = ops.cast(hist_item, "int32")
    valid = item != PAD_ID
    group = ops.cast(clamp_group(ops.convert_to_tensor(hist_group), num_groups), "int32")
    behavior = ops.cast(clamp_behavior(ops.convert_to_tensor(hist_behavior),
                                       num_behavior_types), "int32")
    time = ops.convert_to_tensor(hist_time)
    time = ops.maximum(time, ops.zeros_like(time))
    request = ops.reshape(ops.cast(request_time, time.dtype), [-1])
    request = ops.maximum(request, ops.zeros_like(request))
    return item, valid, group, behavior, time, request


def _time_order(valid, time):
    """Permutation [B, L] putting each row's valid entries in stable time order.

    Padding sorts last (its key is above every time).
    """
    length = time.shape[1]
    big = ops.cast(ops.max(time) if length else 0, time.dtype) + 1
    key = ops.where(valid, time, big)
    return ops.cast(ops.argsort(key, axis=1), "int32")


# --- the op ------------------------------------------------------------------------------

def group_behaviors(hist_item, hist_group, hist_behavior, hist_time, request_time, *,
                    max_groups, max_per_group, num_behavior_types,
                    num_groups=None) -> GroupedHistory:
    """Groups each row's history by group id and summarises the most recent groups.

    Args:
      hist_item: [B, L] int item ids, 0 = empty slot (anywhere in the row).
      hist_group: [B, L] int group id of each behavior (see clamps in the module doc).
      hist_behavior: [B, L] int behavior type 1..T (0 = padding / unknown).
      hist_time: [B, L] int Unix seconds (int64 on TF; int32 on JAX).
      request_time: [B] int Unix seconds of the request (for recency).
      max_groups: G, groups kept per row. max_per_group: M, behaviors kept per group.
      num_behavior_types: T. num_groups: size of the group id space, or None.

    Returns:
      `GroupedHistory` (shapes in its docstring). Deterministic and identical in eager,
      `tf.function`, `jit_compile=True` and JAX; rows without behaviors give all-false
      masks and zeros.
    """
    G, M, T = int(max_groups), int(max_per_group), int(num_behavior_types)
    if G < 1 or M < 1 or T < 1:
        raise ValueError(f"max_groups={G}, max_per_group={M}, num_behavior_types={T}: "
                         "each must be >= 1")
    hist_item = ops.convert_to_tensor(hist_item)
    L = _static_length(hist_item, "hist_item")
    item, valid, group, behavior, time, request = _prepare(
        hist_item, hist_group, hist_behavior, hist_time, request_time, T, num_groups)

    # 1. time order, 2. stable group order → (group, time, position) order.
    perm = _time_order(valid, time)
    t_valid = _take(valid, perm)
    t_time = _take(time, perm)
    # Dense time rank (equal times share a rank) in time order; float32-exact (< 2**24).
    step = ops.cast(ops.logical_and(
        t_time != ops.pad(t_time[:, :-1], [[0, 0], [1, 0]], constant_values=-1),
        t_valid), "int32")
    t_rank = _prefix_sum(step)
    group_key = ops.where(_take(valid, perm), _take(group, perm), _INT32_MAX)
    perm2 = ops.cast(ops.argsort(group_key, axis=1), "int32")
    perm = _take(perm, perm2)
    s_valid = _take(valid, perm)
    s_group = _take(group_key, perm2)
    s_rank = _take(t_rank, perm2)
    s_time = _take(time, perm)
    s_item = _take(item, perm)
    s_beh = _take(behavior, perm)

    # 3. run ends, scored by dense time rank; top_k → G most recent groups.
    next_group = ops.pad(s_group[:, 1:], [[0, 0], [0, 1]], constant_values=_INT32_MAX)
    is_end = ops.logical_and(s_valid, s_group != next_group)
    score = ops.where(is_end, ops.cast(s_rank, "float32"), -1.0)
    if L < G:
        score = ops.pad(score, [[0, 0], [0, G - L]], constant_values=-1.0)
    top_score, end = ops.top_k(score, G)
    present = top_score >= 0.0
    end = ops.where(present, ops.cast(end, "int32"), 0)

    # 4. run starts by binary search; counts from prefix sums of one-hot behaviors.
    ids = _take(s_group, end)
    start = _lower_bound(s_group, ids, end)
    one_hot = ops.cast(ops.expand_dims(s_beh, -1) == ops.arange(1, T + 1, dtype="int32"),
                       "int32")
    csum = _prefix_sum(one_hot)                                     # [B, L, T]
    before = _take(csum, ops.maximum(start - 1, 0))
    before = ops.where(ops.expand_dims(start > 0, -1), before, 0)
    counts = _take(csum, end) - before
    n = ops.cast(end - start + 1, "float32")

    first_time = _take(s_time, start)
    last_time = _take(s_time, end)
    row_total = ops.sum(ops.cast(valid, "float32"), axis=1, keepdims=True)
    stats = _stats(n, first_time, last_time, ops.expand_dims(request, 1), row_total, present)

    # Last M behaviors of each group, oldest first, left-aligned.
    kept_start = ops.maximum(start, end - (M - 1))
    slot = ops.expand_dims(kept_start, -1) + ops.arange(M, dtype="int32")   # [B, G, M]
    slot_ok = ops.logical_and(slot <= ops.expand_dims(end, -1), ops.expand_dims(present, -1))
    flat = ops.reshape(ops.minimum(slot, L - 1), [-1, G * M])

    def gather(x):
        return ops.where(slot_ok, ops.reshape(_take(x, flat), [-1, G, M]),
                         ops.zeros((), x.dtype))

    zero_t = ops.zeros((), time.dtype)
    return GroupedHistory(
        group_ids=ops.where(present, ids, 0),
        group_mask=present,
        group_items=gather(s_item),
        group_behaviors=gather(s_beh),
        group_times=gather(s_time),
        group_item_mask=slot_ok,
        counts=ops.where(ops.expand_dims(present, -1), ops.cast(counts, "float32"), 0.0),
        first_time=ops.where(present, first_time, zero_t),
        last_time=ops.where(present, last_time, zero_t),
        stats=stats,
    )


def candidate_group_history(hist_item, hist_group, hist_behavior, hist_time, request_time,
                            cand_group, *, max_per_group, num_behavior_types,
                            num_groups=None) -> CandidateGroup:
    """The candidate's own group: its last M behaviors, counts and stats (DGIN).

    Args: as `group_behaviors`, plus cand_group [B] int (clamped like hist_group).
    Returns: `CandidateGroup` (items/behaviors/times/mask [B,M], counts [B,T],
      first_time/last_time [B], stats [B,NUM_STATS]); a candidate group absent from the
      history gives an all-false mask and zeros.

    No grouping sort: one time ordering plus a float32 `top_k` of size M.
    """
    M, T = int(max_per_group), int(num_behavior_types)
    if M < 1 or T < 1:
        raise ValueError(f"max_per_group={M}, num_behavior_types={T}: each must be >= 1")
    hist_item = ops.convert_to_tensor(hist_item)
    L = _static_length(hist_item, "hist_item")
    item, valid, group, behavior, time, request = _prepare(
        hist_item, hist_group, hist_behavior, hist_time, request_time, T, num_groups)
    cand = ops.reshape(ops.cast(clamp_group(ops.convert_to_tensor(cand_group), num_groups),
                                "int32"), [-1, 1])
    member = ops.logical_and(valid, group == cand)                  # [B, L]

    perm = _time_order(valid, time)
    t_member = _take(member, perm)
    # Score = position in time order (float32-exact); top_k → latest M members, newest first.
    score = ops.where(t_member, ops.cast(ops.arange(L, dtype="int32"), "float32"), -1.0)
    if L < M:
        score = ops.pad(score, [[0, 0], [0, M - L]], constant_values=-1.0)
    top_score, top_idx = ops.top_k(score, M)
    n_kept = ops.sum(ops.cast(top_score >= 0.0, "int32"), axis=1, keepdims=True)  # [B, 1]
    # Slot m (oldest first, left-aligned) is the (n_kept - 1 - m)-th newest.
    m = ops.arange(M, dtype="int32")
    mask = m < n_kept
    src = ops.where(mask, n_kept - 1 - m, 0)
    pos = _take(ops.cast(top_idx, "int32"), src)                    # index in time order
    pos = _take(perm, ops.minimum(pos, L - 1))                       # original index

    def gather(x):
        return ops.where(mask, _take(x, pos), ops.zeros((), x.dtype))

    member_f = ops.cast(member, "float32")
    one_hot = ops.cast(ops.expand_dims(behavior, -1) == ops.arange(1, T + 1, dtype="int32"),
                       "float32")
    counts = ops.sum(one_hot * ops.expand_dims(member_f, -1), axis=1)
    n = ops.sum(member_f, axis=1)
    present = n > 0
    big = ops.cast(ops.max(time) if L else 0, time.dtype) + 1
    zero_t = ops.zeros((), time.dtype)
    first_time = ops.where(present, ops.min(ops.where(member, time, big), axis=1), zero_t)
    last_time = ops.where(present, ops.max(ops.where(member, time, zero_t), axis=1), zero_t)
    row_total = ops.sum(ops.cast(valid, "float32"), axis=1)
    stats = _stats(n, first_time, last_time, request, row_total, present)
    return CandidateGroup(items=gather(item), behaviors=gather(behavior), times=gather(time),
                          mask=mask, counts=counts, first_time=first_time,
                          last_time=last_time, stats=stats)
