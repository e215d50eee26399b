"""Random history batches covering the grouping op's corner cases (shared by the tests).

Vectorised numpy: every batch mixes ties in time, padding in the middle of rows, rows
with one group, rows with more than G groups and groups with more than M behaviors,
empty rows, and (optionally) rows not in time order.
"""
from __future__ import annotations

import numpy as np


def random_histories(seed: int, batch: int, length: int, *, num_groups: int = 12,
                     num_types: int = 4, time_sorted: bool = False,
                     time_dtype=np.int64):
    """Returns dict of numpy inputs: hist_item/group/behavior/time [B,L], request_time,
    cand_group [B]."""
    rng = np.random.default_rng(seed)
    B, L = batch, length
    item = rng.integers(1, 50, (B, L))
    # Padding anywhere: a random share of slots per row, plus a padded tail on some rows.
    pad_rate = rng.choice([0.0, 0.1, 0.5, 0.9], size=(B, 1))
    item[rng.random((B, L)) < pad_rate] = 0
    tail = rng.integers(0, L + 1, size=(B, 1))
    item[(np.arange(L)[None, :] >= tail) & (rng.random((B, 1)) < 0.3)] = 0
    item[rng.random(B) < 0.05] = 0                                  # empty rows
    # Groups: per-row group space from 1 (one group) to num_groups (more than G).
    row_groups = rng.integers(1, num_groups + 1, size=(B, 1))
    group = rng.integers(0, 10**6, (B, L)) % row_groups
    group += rng.integers(0, 3, size=(B, 1))                        # ids may start at 0, 1, 2
    behavior = rng.integers(0, num_types + 1, (B, L))               # 0 = unknown type too
    # Times from a small range (many ties) or a wide one (few ties); < 2**31 for JAX.
    spread = rng.choice([3, 20, 10**5], size=(B, 1))
    time = 1_600_000_000 + (rng.integers(0, 10**9, (B, L)) % spread) * 3600
    if time_sorted:
        time = np.sort(time, axis=1)
    request = time.max(axis=1) + rng.integers(-7200, 10**6, B)     # sometimes before last
    cand = group[np.arange(B), rng.integers(0, L, B)]
    cand[rng.random(B) < 0.2] = num_groups + 5                      # absent candidate group
    return dict(hist_item=item.astype(np.int32), hist_group=group.astype(np.int32),
                hist_behavior=behavior.astype(np.int32), hist_time=time.astype(time_dtype),
                request_time=request.astype(time_dtype), cand_group=cand.astype(np.int32))


HISTORY_KEYS = ("hist_item", "hist_group", "hist_behavior", "hist_time", "request_time")


def assert_same(actual, expected, *, atol=1e-6, rtol=1e-6, context=""):
    """Field-by-field comparison of two NamedTuples: exact ints/bools, floats within
    atol + rtol·|expected| (float32 op vs float64 reference: ~1 ulp at values ~10)."""
    for field in expected._fields:
        a = np.asarray(getattr(actual, field))
        e = np.asarray(getattr(expected, field))
        assert a.shape == e.shape, f"{context}{field}: shape {a.shape} != {e.shape}"
        if e.dtype.kind == "f":
            assert not np.isnan(a).any(), f"{context}{field}: NaN"
            np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=f"{context}{field}")
        else:
            bad = np.argwhere(a != e)
            assert bad.size == 0, (f"{context}{field}: {len(bad)} mismatches, first at "
                                   f"{tuple(bad[0])}: {a[tuple(bad[0])]} != {e[tuple(bad[0])]}")
