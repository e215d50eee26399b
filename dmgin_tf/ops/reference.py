"""Plain-numpy reference of the grouping op, written for clarity, not speed.

`group_behaviors_reference` and `candidate_group_history_reference` loop over rows and
groups with Python dicts and stable sorts; the tests compare the XLA-friendly
`dmgin_tf.ops.grouping` implementation against them on thousands of random histories.
They apply the same documented clamps as the real op (see `grouping.py`), so they take
the same inputs and return the same fields as numpy arrays.
"""
from __future__ import annotations

import numpy as np

from dmgin_tf.ops.grouping import (NUM_STATS, SECONDS_PER_HOUR, CandidateGroup,
                                   GroupedHistory, clamp_behavior, clamp_group)


def _stats_row(n: int, first: int, last: int, request: int, row_total: int) -> np.ndarray:
    """The NUM_STATS statistics of one group (see grouping.STAT_NAMES)."""
    if n == 0:
        return np.zeros(NUM_STATS, np.float32)
    span_h = (last - first) / SECONDS_PER_HOUR
    return np.array([
        np.log1p(n),
        np.log1p(max(request - last, 0) / SECONDS_PER_HOUR),
        np.log1p(span_h),
        np.log1p(span_h / max(n - 1, 1)),
        n / max(row_total, 1),
        np.log1p(max(request - first, 0) / SECONDS_PER_HOUR),
    ], np.float64).astype(np.float32)


def _clean(hist_item, hist_group, hist_behavior, hist_time, num_behavior_types, num_groups):
    item = np.asarray(hist_item).astype(np.int64)
    group = clamp_group(np.asarray(hist_group).astype(np.int64), num_groups, np)
    beh = clamp_behavior(np.asarray(hist_behavior).astype(np.int64), num_behavior_types, np)
    time = np.maximum(np.asarray(hist_time).astype(np.int64), 0)
    return item, group, beh, time


def group_behaviors_reference(hist_item, hist_group, hist_behavior, hist_time, request_time,
                              *, max_groups, max_per_group, num_behavior_types,
                              num_groups=None) -> GroupedHistory:
    """Numpy version of `dmgin_tf.ops.group_behaviors` (same arguments and fields)."""
    item, group, beh, time = _clean(hist_item, hist_group, hist_behavior, hist_time,
                                    num_behavior_types, num_groups)
    request = np.maximum(np.asarray(request_time).astype(np.int64).reshape(-1), 0)
    time_dtype = np.asarray(hist_time).dtype
    B, _ = item.shape
    G, M, T = max_groups, max_per_group, num_behavior_types
    out = dict(
        group_ids=np.zeros((B, G), np.int32), group_mask=np.zeros((B, G), bool),
        group_items=np.zeros((B, G, M), np.int32), group_behaviors=np.zeros((B, G, M), np.int32),
        group_times=np.zeros((B, G, M), time_dtype), group_item_mask=np.zeros((B, G, M), bool),
        counts=np.zeros((B, G, T), np.float32), first_time=np.zeros((B, G), time_dtype),
        last_time=np.zeros((B, G), time_dtype), stats=np.zeros((B, G, NUM_STATS), np.float32))
    for b in range(B):
        positions = [j for j in range(item.shape[1]) if item[b, j] != 0]
        members: dict = {}
        for j in positions:
            members.setdefault(int(group[b, j]), []).append(j)
        # Within a group: time order, equal times keep their original order (stable).
        for g in members:
            members[g] = sorted(members[g], key=lambda j: (time[b, j], j))
        # Groups: latest behavior most recent first, ties -> smaller group id.
        order = sorted(members, key=lambda g: (-time[b, members[g][-1]], g))[:G]
        for gi, g in enumerate(order):
            js = members[g]
            kept = js[-M:]
            out["group_ids"][b, gi] = g
            out["group_mask"][b, gi] = True
            for m, j in enumerate(kept):
                out["group_items"][b, gi, m] = item[b, j]
                out["group_behaviors"][b, gi, m] = beh[b, j]
                out["group_times"][b, gi, m] = time[b, j]
                out["group_item_mask"][b, gi, m] = True
            for j in js:
                if 1 <= beh[b, j] <= T:
                    out["counts"][b, gi, beh[b, j] - 1] += 1
            first, last = time[b, js[0]], time[b, js[-1]]
            out["first_time"][b, gi] = first
            out["last_time"][b, gi] = last
            out["stats"][b, gi] = _stats_row(len(js), first, last, request[b], len(positions))
    return GroupedHistory(**out)


def candidate_group_history_reference(hist_item, hist_group, hist_behavior, hist_time,
                                      request_time, cand_group, *, max_per_group,
                                      num_behavior_types, num_groups=None) -> CandidateGroup:
    """Numpy version of `dmgin_tf.ops.candidate_group_history`."""
    item, group, beh, time = _clean(hist_item, hist_group, hist_behavior, hist_time,
                                    num_behavior_types, num_groups)
    request = np.maximum(np.asarray(request_time).astype(np.int64).reshape(-1), 0)
    cand = clamp_group(np.asarray(cand_group).astype(np.int64).reshape(-1), num_groups, np)
    time_dtype = np.asarray(hist_time).dtype
    B, L = item.shape
    M, T = max_per_group, num_behavior_types
    out = dict(
        items=np.zeros((B, M), np.int32), behaviors=np.zeros((B, M), np.int32),
        times=np.zeros((B, M), time_dtype), mask=np.zeros((B, M), bool),
        counts=np.zeros((B, T), np.float32), first_time=np.zeros((B,), time_dtype),
        last_time=np.zeros((B,), time_dtype), stats=np.zeros((B, NUM_STATS), np.float32))
    for b in range(B):
        positions = [j for j in range(L) if item[b, j] != 0]
        js = sorted((j for j in positions if group[b, j] == cand[b]),
                    key=lambda j: (time[b, j], j))
        for m, j in enumerate(js[-M:]):
            out["items"][b, m] = item[b, j]
            out["behaviors"][b, m] = beh[b, j]
            out["times"][b, m] = time[b, j]
            out["mask"][b, m] = True
        for j in js:
            if 1 <= beh[b, j] <= T:
                out["counts"][b, beh[b, j] - 1] += 1
        if js:
            first, last = time[b, js[0]], time[b, js[-1]]
            out["first_time"][b], out["last_time"][b] = first, last
            out["stats"][b] = _stats_row(len(js), first, last, request[b], len(positions))
    return CandidateGroup(**out)
