"""N candidates per history row (`candidate_groups`, `candidate_item_hits`) against the
per-candidate numpy reference, in eager, tf.function with a dynamic N, and XLA with a
static and a dynamic N (the serving trace, where the candidate search is a while loop)."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf.ops import CandidateGroup, candidate_groups, candidate_item_hits
from dmgin_tf.ops.reference import candidate_group_history_reference

from .histories import HISTORY_KEYS, assert_same, random_histories

B, L, N, M, T = 24, 70, 9, 4, 3
MODES = ("eager", "graph_dynamic_n", "xla", "xla_dynamic_n")


def _data(seed, num_groups=None, length=L):
    data = random_histories(seed, B, length, num_groups=12, num_types=T)
    rng = np.random.default_rng(seed + 100)
    # Candidates: groups present in the row, absent ones, duplicates within a row.
    cand = data["hist_group"][np.arange(B)[:, None], rng.integers(0, length, (B, N))]
    cand[:, 1] = 99                                      # absent (clamped if num_groups)
    cand[:, 2] = cand[:, 0]                              # duplicate
    data["cands"] = cand.astype(np.int32)
    return data


def _run(fn, args, cand, mode):
    args = [tf.constant(a) for a in args]
    if mode == "eager":
        return fn(*args, tf.constant(cand))
    if mode.endswith("dynamic_n"):   # candidates padded at run time in serving: N unknown
        spec = tf.TensorSpec([None, None], tf.int32)
        f = tf.function(lambda *a: fn(*a[:-1], a[-1]), jit_compile=mode.startswith("xla"),
                        input_signature=[tf.TensorSpec(a.shape, a.dtype) for a in args] + [spec])
        return f(*args, tf.constant(cand))
    return tf.function(fn, jit_compile=True)(*args, tf.constant(cand))


def _numpy(x):
    return type(x)(*(np.asarray(v) for v in x)) if isinstance(x, tuple) else np.asarray(x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed,num_groups", [(0, None), (1, 20), (2, 9)])
def test_candidate_groups_equal_per_candidate_reference(mode, seed, num_groups):
    data = _data(seed)
    kw = dict(max_per_group=M, num_behavior_types=T, num_groups=num_groups)
    got = _numpy(_run(lambda *a: candidate_groups(*a, **kw),
                      [data[k] for k in HISTORY_KEYS], data["cands"], mode))
    for n in range(N):
        want = candidate_group_history_reference(*[data[k] for k in HISTORY_KEYS],
                                                 data["cands"][:, n], **kw)
        assert_same(CandidateGroup(*(v[:, n] for v in got)), want,
                    context=f"{mode} candidate {n}: ")


def _item_hits_loop(item, beh, time, cand):
    counts = np.zeros(cand.shape + (T,), np.float32)
    last = np.zeros(cand.shape, time.dtype)
    for b in range(cand.shape[0]):
        for n in range(cand.shape[1]):
            hit = (item[b] == cand[b, n]) & (item[b] != 0) & (cand[b, n] >= 2)
            counts[b, n] = [np.sum(hit & (beh[b] == t + 1)) for t in range(T)]
            last[b, n] = time[b][hit].max() if hit.any() else 0
    return counts, counts.sum(-1) > 0, last


@pytest.mark.parametrize("mode", MODES)
def test_candidate_item_hits_equal_loop(mode):
    data = _data(3)
    item, beh, time = data["hist_item"], data["hist_behavior"], data["hist_time"]
    beh = np.clip(beh, 1, T)                  # every hit has a type, so seen == counts > 0
    cand = item[np.arange(B)[:, None], np.random.default_rng(4).integers(0, L, (B, N))]
    cand[:, 1], cand[:, 2], cand[:, 3] = 0, 1, cand[:, 0]   # padding, OOV, duplicate
    got = _run(lambda i, b, t, c: candidate_item_hits(i, b, t, c, num_behavior_types=T),
               [item, beh, time], cand, mode)
    for g, w, name in zip(got, _item_hits_loop(item, beh, time, cand), ("counts", "seen", "last")):
        np.testing.assert_array_equal(np.asarray(g), w, err_msg=name)


def test_one_user_many_candidates_long_history():
    """The ranking shape: 1 row, L = 3000, 128 candidates, XLA."""
    data = random_histories(7, 1, 3000, num_groups=400, num_types=T, time_sorted=True)
    cand = np.random.default_rng(8).integers(0, 410, (1, 128)).astype(np.int32)
    kw = dict(max_per_group=M, num_behavior_types=T, num_groups=500)
    got = _numpy(_run(lambda *a: candidate_groups(*a, **kw),
                      [data[k] for k in HISTORY_KEYS], cand, "xla"))
    for n in range(0, 128, 7):
        want = candidate_group_history_reference(*[data[k] for k in HISTORY_KEYS],
                                                 cand[:, n], **kw)
        assert_same(CandidateGroup(*(v[:, n] for v in got)), want, context=f"candidate {n}: ")
