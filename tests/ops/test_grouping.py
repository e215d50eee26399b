"""dmgin_tf.ops.grouping against the numpy reference, across execution modes and backends."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf.ops import (NUM_STATS, OOV_GROUP_ID, STAT_NAMES, CandidateGroup,
                          GroupedHistory, candidate_group_history, group_behaviors,
                          validate_history)
from dmgin_tf.ops import kernels
from dmgin_tf.ops._backend import Executor
from dmgin_tf.ops.reference import (candidate_group_history_reference,
                                    group_behaviors_reference)

from .histories import HISTORY_KEYS, assert_same, random_histories

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# (seed, B, L, G, M, T, time_sorted, num_groups): 9 x 256 = 2304 random histories.
CASES = [
    (0, 256, 50, 4, 3, 4, False, None),
    (1, 256, 120, 8, 5, 3, True, None),
    (2, 256, 17, 16, 2, 2, False, 20),     # G larger than the groups present
    (3, 256, 64, 3, 16, 4, False, None),   # M larger than most groups
    (4, 256, 5, 8, 8, 1, False, None),     # L < G and L < M
    (5, 256, 200, 6, 4, 4, True, 9),       # num_groups given, some ids out of range
    (6, 256, 33, 1, 1, 2, False, None),    # G = M = 1
    (7, 256, 90, 10, 6, 5, False, None),
    (8, 256, 40, 5, 5, 4, True, None),
]


def _kwargs(G, M, T, num_groups):
    return dict(max_groups=G, max_per_group=M, num_behavior_types=T, num_groups=num_groups)


def _cand_kwargs(kw):
    return dict(max_per_group=kw["max_per_group"], num_behavior_types=kw["num_behavior_types"],
                num_groups=kw["num_groups"])


def _run_tf(data, kw, mode):
    """Runs both ops under TF eager / tf.function / tf.function(jit_compile=True)."""
    args = [tf.constant(data[k]) for k in HISTORY_KEYS]
    cand = tf.constant(data["cand_group"])

    def both(*a):
        return (group_behaviors(*a[:5], **kw)._asdict(),
                candidate_group_history(*a, **_cand_kwargs(kw))._asdict())

    if mode != "eager":
        both = tf.function(both, jit_compile=(mode == "xla"))
    g, c = both(*args, cand)
    return (GroupedHistory(**{k: v.numpy() for k, v in g.items()}),
            CandidateGroup(**{k: v.numpy() for k, v in c.items()}))


def _references(data, kw):
    args = [data[k] for k in HISTORY_KEYS]
    return (group_behaviors_reference(*args, **kw),
            candidate_group_history_reference(*args, data["cand_group"], **_cand_kwargs(kw)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}-L{c[2]}")
def test_matches_reference_eager(case):
    seed, B, L, G, M, T, time_sorted, num_groups = case
    data = random_histories(seed, B, L, num_types=T, time_sorted=time_sorted)
    kw = _kwargs(G, M, T, num_groups)
    g, c = _run_tf(data, kw, "eager")
    g_ref, c_ref = _references(data, kw)
    assert_same(g, g_ref, context=f"group_behaviors {case}: ")
    assert_same(c, c_ref, context=f"candidate_group_history {case}: ")
    # The batch really exercises the corner cases it claims to.
    assert (~g.group_mask.any(axis=1)).any(), "no empty row"
    if 1 < G < min(12, L):  # random_histories draws up to 12 groups per row
        assert g.group_mask.all(axis=1).any(), "no row with >= G groups"
    assert (g_ref.counts.sum(-1) > M).any() or M >= L, "no group with more than M behaviors"


@pytest.mark.parametrize("mode", ["function", "xla"])
@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=lambda c: f"seed{c[0]}")
def test_compiled_matches_reference(case, mode):
    seed, B, L, G, M, T, time_sorted, num_groups = case
    data = random_histories(seed + 100, B, L, num_types=T, time_sorted=time_sorted)
    kw = _kwargs(G, M, T, num_groups)
    g_ref, c_ref = _references(data, kw)
    g, c = _run_tf(data, kw, mode)
    assert_same(g, g_ref, context=f"{mode}: ")
    assert_same(c, c_ref, context=f"{mode}: ")


def test_modes_agree_exactly_int32_time():
    """int32 times (the JAX dtype) on TF: eager, tf.function and XLA bit-identical ints."""
    data = random_histories(42, 64, 70, time_dtype=np.int32)
    kw = _kwargs(5, 4, 4, None)
    eager = _run_tf(data, kw, "eager")
    for mode in ("function", "xla"):
        other = _run_tf(data, kw, mode)
        for e, o in zip(eager, other):
            assert_same(o, e, atol=1e-6, context=f"{mode}: ")
    assert eager[0].group_times.dtype == np.int32


def test_hand_example():
    """A row worked out by hand: ties, padding in the middle, > M per group."""
    item = [[5, 6, 0, 7, 8, 9, 3, 0]]
    group = [[2, 3, 9, 2, 3, 4, 2, 2]]
    beh = [[1, 2, 1, 1, 2, 3, 2, 1]]
    time = [[10, 20, 99, 30, 20, 5, 30, 0]]
    g = group_behaviors(item, group, beh, time, [3600 + 30], max_groups=2, max_per_group=2,
                        num_behavior_types=3)
    g = GroupedHistory(*[np.asarray(x) for x in g])
    # Latest times: group 2 -> 30, group 3 -> 20, group 4 -> 5. Group 9 is padding only.
    np.testing.assert_array_equal(g.group_ids, [[2, 3]])
    np.testing.assert_array_equal(g.group_mask, [[True, True]])
    # Group 2: (5,t10) (7,t30) (3,t30) -> last two, equal times keep original order.
    np.testing.assert_array_equal(g.group_items, [[[7, 3], [6, 8]]])
    np.testing.assert_array_equal(g.group_times, [[[30, 30], [20, 20]]])
    np.testing.assert_array_equal(g.counts, [[[2, 1, 0], [0, 2, 0]]])
    np.testing.assert_array_equal(g.first_time, [[10, 20]])
    np.testing.assert_array_equal(g.last_time, [[30, 30 - 10]])
    np.testing.assert_allclose(g.stats[0, 0, 0], np.log1p(3), atol=1e-6)
    np.testing.assert_allclose(g.stats[0, 0, 1], np.log1p(1.0), atol=1e-6)  # 3600 s
    np.testing.assert_allclose(g.stats[0, 0, 4], 3 / 6, atol=1e-6)
    assert g.stats.shape == (1, 2, NUM_STATS) and len(STAT_NAMES) == NUM_STATS


def test_group_tie_prefers_smaller_id_and_empty_row():
    item = [[1, 2, 3], [0, 0, 0]]
    group = [[7, 4, 5], [1, 2, 3]]
    time = [[50, 50, 50], [1, 2, 3]]
    g = group_behaviors(item, group, [[1, 1, 1]] * 2, time, [60, 60], max_groups=4,
                        max_per_group=1, num_behavior_types=1)
    np.testing.assert_array_equal(np.asarray(g.group_ids), [[4, 5, 7, 0], [0, 0, 0, 0]])
    assert not np.asarray(g.group_mask)[1].any()
    assert not np.isnan(np.asarray(g.stats)).any()
    assert (np.asarray(g.stats)[1] == 0).all()


def test_clamps_documented_values():
    """Out-of-range group → OOV group, behavior → 0 (no type count), negative time → 0."""
    item = [[1, 2, 3, 4]]
    group = [[2, 50, -3, 2]]
    beh = [[1, 9, -1, 2]]
    time = [[-5, 10, 20, 30]]
    g = group_behaviors(item, group, beh, time, [-1], max_groups=3, max_per_group=4,
                        num_behavior_types=2, num_groups=10)
    np.testing.assert_array_equal(np.asarray(g.group_ids), [[2, OOV_GROUP_ID, 0]])
    np.testing.assert_array_equal(np.asarray(g.group_behaviors)[0, 1], [0, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(g.counts)[0, 1], [0, 0])
    np.testing.assert_array_equal(np.asarray(g.group_times)[0, 0], [0, 30, 0, 0])
    stats = np.asarray(g.stats)
    assert not np.isnan(stats).any() and (stats >= 0).all()
    assert stats[0, 0, 1] == 0.0  # request before last behavior: recency clamps to 0


def test_length_one():
    data = random_histories(7, 8, 1)
    kw = _kwargs(3, 2, 4, None)
    g, c = _run_tf(data, kw, "xla")
    g_ref, c_ref = _references(data, kw)
    assert_same(g, g_ref)
    assert_same(c, c_ref)


def test_length_100k():
    """L = 100 000 on a small batch, eager and XLA (radix group sort: num_groups given,
    L >= RADIX_MIN_LENGTH), against the reference."""
    data = random_histories(8, 2, 100_000, num_groups=300)
    kw = _kwargs(16, 8, 4, 400)
    g_ref, c_ref = _references(data, kw)
    for mode in ("eager", "xla"):
        g, c = _run_tf(data, kw, mode)
        assert_same(g, g_ref, context=f"{mode}: ")
        assert_same(c, c_ref, context=f"{mode}: ")


def test_xla_row_chunks_match_reference(monkeypatch):
    """XLA:CPU runs the op in a loop over row chunks: unbalanced (B=37 in 4 chunks of
    10 rows, 3 padding rows), a dynamic batch (None at trace time) of several sizes,
    including 0 and fewer rows than one chunk — all equal to the reference."""
    monkeypatch.setattr(kernels, "XLA_CPU_CHUNK_ELEMENTS", 600)     # 10 rows of L=60
    data = random_histories(21, 37, 60, num_types=4)
    kw = _kwargs(5, 4, 4, 12)
    g_ref, c_ref = _references(data, kw)
    g, c = _run_tf(data, kw, "xla")
    assert_same(g, g_ref, context="static B: ")
    assert_same(c, c_ref, context="static B: ")
    args = [tf.constant(data[k]) for k in HISTORY_KEYS]
    sig = [tf.TensorSpec([None] + a.shape[1:], a.dtype) for a in args]
    dynamic = tf.function(lambda *a: group_behaviors(*a, **kw)._asdict(),
                          jit_compile=True, input_signature=sig)
    for b in (37, 23, 3, 0):
        out = GroupedHistory(**{k: v.numpy() for k, v in dynamic(*[a[:b] for a in args]).items()})
        assert_same(out, GroupedHistory(*[x[:b] for x in g_ref]), context=f"dynamic B={b}: ")


def test_chunking_only_under_xla_cpu():
    assert kernels.chunk_rows(1000, Executor(xla=True, slow_sort=True)) == \
        kernels.XLA_CPU_CHUNK_ELEMENTS // 1000
    assert kernels.chunk_rows(10**7, Executor(xla=True, slow_sort=True)) == 1
    assert kernels.chunk_rows(1000, Executor(xla=True, slow_sort=False)) is None   # GPU
    assert kernels.chunk_rows(1000, Executor(xla=False, slow_sort=True)) is None   # graph


@pytest.mark.parametrize("field,value,message", [
    ("hist_group", 12, "hist_group: bad value 12"),
    ("hist_group", -1, "hist_group: bad value -1"),
    ("hist_behavior", 5, "hist_behavior: bad value 5"),
    ("hist_time", -7, "hist_time: bad value -7"),
    ("hist_item", -2, "hist_item: bad value -2"),
])
def test_validate_history_names_field_and_value(field, value, message):
    data = random_histories(3, 4, 6, num_groups=5)
    data["hist_item"][:] = 1
    data[field][2, 3] = value
    with pytest.raises(ValueError, match=message):
        validate_history(*[data[k] for k in HISTORY_KEYS], num_behavior_types=4,
                         num_groups=10)


def test_validate_history_other_checks():
    data = random_histories(3, 4, 6)
    args = [data[k] for k in HISTORY_KEYS]
    validate_history(*args, num_behavior_types=4, cand_group=data["cand_group"])
    with pytest.raises(ValueError, match="request_time: bad value -3"):
        validate_history(*args[:4], np.array([1, 2, -3, 4]), num_behavior_types=4)
    with pytest.raises(ValueError, match="hist_time: shape"):
        validate_history(*args[:3], args[3][:, :2], num_behavior_types=4)
    with pytest.raises(ValueError, match="cand_group: bad value 99"):
        validate_history(*args, num_behavior_types=4, num_groups=50,
                         cand_group=np.array([1, 99, 2, 3]))
    # Bad values on padding slots are ignored: padding carries no meaning.
    data["hist_item"][0, 0] = 0
    data["hist_time"][0, 0] = -1
    validate_history(*[data[k] for k in HISTORY_KEYS], num_behavior_types=4)


def test_bad_static_arguments():
    data = random_histories(3, 2, 6)
    with pytest.raises(ValueError, match="max_groups=0"):
        group_behaviors(*[data[k] for k in HISTORY_KEYS], max_groups=0, max_per_group=2,
                        num_behavior_types=4)


@pytest.mark.jax
def test_jax_backend_matches_tf_and_reference(tmp_path):
    """The same op under KERAS_BACKEND=jax (jax.jit, CPU) gives the TF/reference results."""
    pytest.importorskip("jax")
    data = random_histories(11, 128, 60, num_types=3, time_dtype=np.int32)
    kw = _kwargs(6, 4, 3, 12)
    np.savez(tmp_path / "in.npz", **data)
    # Small chunks: jax.jit on CPU runs the op's row-chunk loop (3 chunks of 43 rows).
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               DMGIN_TEST_CHUNK_ELEMENTS="3000")
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).with_name("jax_runner.py")),
         str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), json.dumps(kw)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    g_jax = GroupedHistory(**{f: out[f"g.{f}"] for f in GroupedHistory._fields})
    c_jax = CandidateGroup(**{f: out[f"c.{f}"] for f in CandidateGroup._fields})
    g_ref, c_ref = _references(data, kw)
    assert_same(g_jax, g_ref, context="jax vs reference: ")
    assert_same(c_jax, c_ref, context="jax vs reference: ")
    g_tf, c_tf = _run_tf(data, kw, "xla")
    assert_same(g_jax, g_tf, context="jax vs tf xla: ")
    assert_same(c_jax, c_tf, context="jax vs tf xla: ")
