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

Algorithm (O(L log L) or O(L · bits); designed around XLA:CPU, docs/design.md: Environment):
1. time order: the identity when every row is left-aligned and oldest first (the
   model-input contract; checked at run time by a `cond`), else a stable argsort;
   a dense time rank (equal times share a rank) from one prefix sum;
2. stable sort by group id (padding gets a sentinel and sorts last) → rows ordered by
   (group, time, position); under XLA on CPU with `num_groups` given and L ≥ 512 this
   is an LSD radix sort (`kernels.py`), since XLA:CPU's comparator sort is ~2.5x slower
   than TF's argsort;
3. each group is a run; a float32 `top_k` (a partial sort, fast under XLA too) over the
   run ends scored by dense time rank picks the G groups with the latest behavior, ties
   → lower index → smaller group id;
4. a vectorised binary search finds each selected run's start; per-type counts come
   from prefix sums of one-hot types; the last M behaviors are one small gather.
Which equivalent primitive runs (scan, gather, sort) is chosen per executor at trace
time (`_backend.py`); every choice returns the same integers. Under XLA:CPU the steps run
in a loop over row chunks of ~128k elements (`kernels.map_row_chunks`): XLA:CPU takes
all temporaries of a call in one `malloc` block, and one above 32 MiB is fresh
(page-faulting) memory on every call.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from keras import ops

from dmgin_tf.features import OOV_ID, PAD_ID
from dmgin_tf.ops._backend import current_executor
from dmgin_tf.ops.kernels import (chunk_rows, cumsum_rows, lower_bound_rows,
                                  map_row_chunks, stable_argsort_rows, take_rows)

OOV_GROUP_ID = OOV_ID          # out-of-range group ids are clamped to the unknown group
SECONDS_PER_HOUR = 3600.0
INT32_MAX = 2**31 - 1   # group-id ceiling and sort sentinel (shared with candidate_lookup)

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
    hi = INT32_MAX if num_groups is None else num_groups
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
        checks.append(("hist_group", valid & ((g < 0) | (g >= INT32_MAX)),
                       f"must be in [0, {INT32_MAX})"))
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
            hi = INT32_MAX if num_groups is None else num_groups
            bad = (v < 0) | (v >= hi)
            rule = f"must be in [0, {hi})"
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}: bad value {v[i]} at row {i}: {rule}")


# --- small building blocks ------------------------------------------------------------

def static_length(x, name):
    """L of x [..., L] as a Python int; a clear error when it is not static (XLA needs it)."""
    length = x.shape[-1]
    if length is None:
        raise ValueError(f"{name}: the history length L must be static (got shape "
                         f"{tuple(x.shape)}); pad histories to a fixed L")
    return int(length)


def _log1p_hours(seconds):
    return ops.log1p(ops.maximum(ops.cast(seconds, "float32"), 0.0) / SECONDS_PER_HOUR)


def stat_columns(n, first, last, request, row_total, present):
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


def prepare_history(hist_item, hist_group, hist_behavior, hist_time, request_time,
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


def _shift_left(x, fill):
    """x[:, j + 1] at j, `fill` at the last position. x [B, L]."""
    return ops.pad(x[:, 1:], [[0, 0], [0, 1]], constant_values=fill)


def time_order(valid, arrays, time, ex):
    """Puts each row's valid entries in stable time order, padding last.

    Returns (perm [B, L] int32 = original index of each time-ordered slot, the
    `arrays` gathered in that order). Fast path: when every row is left-aligned and
    oldest first (the model-input contract) the order is the identity and neither a sort
    nor a gather runs (`cond` decides at run time for the whole batch). Otherwise a
    stable argsort of time (padding keyed above every time). Both give the same result.
    """
    length = time.shape[1]
    position = ops.broadcast_to(ops.arange(length, dtype="int32"), ops.shape(valid))
    # next slot valid → this slot valid and not later than it.
    next_valid = _shift_left(valid, False)
    in_order = ops.logical_or(ops.logical_not(next_valid), ops.logical_and(
        valid, time <= _shift_left(time, 0)))
    big = ops.max(time, initial=0) + 1    # initial: an empty batch has no max

    def sort_by_time():
        perm = ops.cast(ops.argsort(ops.where(valid, time, big), axis=1), "int32")
        return (perm,) + tuple(take_rows(a, perm, ex) for a in arrays)

    out = ops.cond(ops.all(in_order), lambda: (position,) + tuple(arrays), sort_by_time)
    return out[0], tuple(out[1:])


def one_hot_types(behavior, num_types, dtype, axis=-1):
    """behavior [B, L] in 0..T → one-hot of types 1..T (0 → all zeros) on a new `axis`:
    [B, L, T] (axis=-1) or [B, T, L] (axis=1, row-scan friendly)."""
    types = ops.arange(1, num_types + 1, dtype="int32")
    if axis == 1:
        return ops.cast(ops.expand_dims(behavior, 1) == ops.reshape(types, [1, -1, 1]), dtype)
    return ops.cast(ops.expand_dims(behavior, -1) == types, dtype)


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
      num_behavior_types: T. num_groups: size of the group id space, or None. Giving
        it enables the radix group sort under XLA on CPU (much faster than XLA's sort).

    Returns:
      `GroupedHistory` (shapes in its docstring). Deterministic and identical in eager,
      `tf.function`, `jit_compile=True` and JAX; rows without behaviors give all-false
      masks and zeros. L must be static; B may be dynamic.
    """
    G, M, T = int(max_groups), int(max_per_group), int(num_behavior_types)
    if G < 1 or M < 1 or T < 1:
        raise ValueError(f"max_groups={G}, max_per_group={M}, num_behavior_types={T}: "
                         "each must be >= 1")
    hist_item = ops.convert_to_tensor(hist_item)
    L = static_length(hist_item, "hist_item")
    ex = current_executor()
    rows = chunk_rows(L, ex)
    if rows is None:
        return _group_rows(hist_item, hist_group, hist_behavior, hist_time, request_time,
                           G, M, T, num_groups, ex)
    # XLA:CPU: the same rows, chunk by chunk (bounded temporaries, see kernels.py).
    time = ops.convert_to_tensor(hist_time)
    arrays = (hist_item, hist_group, hist_behavior, time,
              ops.reshape(ops.convert_to_tensor(request_time), [-1]))
    int32, tdt = "int32", time.dtype
    specs = [([G], int32), ([G], "bool"), ([G, M], int32), ([G, M], int32), ([G, M], tdt),
             ([G, M], "bool"), ([G, T], "float32"), ([G], tdt), ([G], tdt),
             ([G, NUM_STATS], "float32")]
    outs = map_row_chunks(
        lambda *a: tuple(_group_rows(*a, G, M, T, num_groups, ex)), arrays, specs, rows)
    return GroupedHistory(*outs)


def _group_rows(hist_item, hist_group, hist_behavior, hist_time, request_time, G, M, T,
                num_groups, ex) -> GroupedHistory:
    """`group_behaviors` on one block of rows (the whole batch, or one chunk)."""
    L = hist_item.shape[1]
    item, valid, group, behavior, time, request = prepare_history(
        hist_item, hist_group, hist_behavior, hist_time, request_time, T, num_groups)

    # 1. Time order (identity for contract inputs) and the dense time rank in it:
    #    equal times share a rank, so top_k ties fall back to position = group order.
    t_perm, (t_valid, t_time, t_group, t_beh) = time_order(
        valid, (valid, time, group, behavior), time, ex)
    prev_time = ops.pad(t_time[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    t_rank = cumsum_rows(ops.cast(ops.logical_and(t_time != prev_time, t_valid), "int32"),
                         ex)                                       # float32-exact: < 2**24

    # 2. Stable sort by group (padding → sentinel, last) → (group, time, position) order.
    if num_groups is None:
        num_bits, sentinel = None, INT32_MAX
    else:
        num_bits = int(num_groups).bit_length()                    # 2**bits - 1 >= num_groups
        sentinel = (1 << num_bits) - 1
    t_key = ops.where(t_valid, t_group, sentinel)
    s_group, g_perm = stable_argsort_rows(t_key, num_bits, ex)
    s_valid = s_group != sentinel
    # rank and behavior share one gather (rank * (T + 1) + behavior < 2**31 for any
    # realistic L, T; checked below).
    if (L + 1) * (T + 1) >= INT32_MAX:
        raise ValueError(f"history length L={L} times num_behavior_types+1={T + 1} "
                         "must stay below 2**31")
    s_rank_beh = take_rows(t_rank * (T + 1) + t_beh, g_perm, ex)
    s_rank, s_beh = s_rank_beh // (T + 1), s_rank_beh % (T + 1)

    # 3. A group is a run of equal keys; score each run's end by its dense time rank and
    #    keep the G best (float32 top_k: a partial sort, fast under XLA too).
    is_end = ops.logical_and(s_valid, s_group != _shift_left(s_group, sentinel))
    score = ops.where(is_end, ops.cast(s_rank, "float32"), -1.0)
    if L < G:
        score = ops.pad(score, [[0, 0], [0, G - L]], constant_values=-1.0)
    top_score, end = ops.top_k(score, G)
    present = top_score >= 0.0
    end = ops.where(present, ops.cast(end, "int32"), 0)
    ids = take_rows(s_group, end, ex)
    start = lower_bound_rows(s_group, ids, end, ex)

    # 4. Counts per type over the whole run, from prefix sums of one-hot types, laid out
    #    [B * T, L] so each is a plain row scan (XLA handles a trailing T axis badly).
    csum = cumsum_rows(ops.reshape(one_hot_types(s_beh, T, "int32", axis=1), [-1, L]), ex)
    bounds = ops.repeat(ops.concatenate([ops.maximum(start - 1, 0), end], axis=1), T, axis=0)
    at = ops.reshape(take_rows(csum, bounds, ex), [-1, T, 2 * G])     # [B, T, 2G]
    before = ops.where(ops.expand_dims(start > 0, 1), at[:, :, :G], 0)
    counts = ops.transpose(at[:, :, G:] - before, [0, 2, 1])         # [B, G, T]
    n = ops.cast(end - start + 1, "float32")

    # 5. Each group's last M behaviors, oldest first, left-aligned: one gather.
    kept_start = ops.maximum(start, end - (M - 1))
    slot = ops.expand_dims(kept_start, -1) + ops.arange(M, dtype="int32")   # [B, G, M]
    slot_ok = ops.logical_and(slot <= ops.expand_dims(end, -1),
                              ops.expand_dims(present, -1))
    # sorted slot → time-ordered slot → original index (small [B, G*M] gathers).
    source = take_rows(g_perm, ops.reshape(ops.minimum(slot, L - 1), [-1, G * M]), ex)
    source = take_rows(t_perm, source, ex)
    ends = take_rows(t_perm, take_rows(g_perm, ops.concatenate([start, end], axis=1), ex),
                     ex)                                                  # [B, 2G]

    def gather(x, index, shape):
        return ops.reshape(take_rows(x, index, ex), shape)

    def kept(x):
        return ops.where(slot_ok, gather(x, source, [-1, G, M]), ops.zeros((), x.dtype))

    zero_t = ops.zeros((), time.dtype)
    first_last = gather(time, ends, [-1, 2, G])
    first_time = ops.where(present, first_last[:, 0], zero_t)
    last_time = ops.where(present, first_last[:, 1], zero_t)
    row_total = ops.sum(ops.cast(valid, "float32"), axis=1, keepdims=True)
    return GroupedHistory(
        group_ids=ops.where(present, ids, 0),
        group_mask=present,
        group_items=kept(item),
        group_behaviors=kept(behavior),
        group_times=kept(time),
        group_item_mask=slot_ok,
        counts=ops.where(ops.expand_dims(present, -1), ops.cast(counts, "float32"), 0.0),
        first_time=first_time,
        last_time=last_time,
        stats=stat_columns(n, first_time, last_time, ops.expand_dims(request, 1), row_total,
                           present),
    )
