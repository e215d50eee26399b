"""Small math pieces against plain numpy references."""
import numpy as np

from dmgin_tf import evaluation
from dmgin_tf.layers import candidate_item_match, log_time_bucket, masked_softmax
from dmgin_tf.metrics import GAUC
from dmgin_tf.models.baselines import select_last

RNG = np.random.default_rng(7)


def test_masked_softmax_matches_numpy():
    s = RNG.normal(size=(3, 5)).astype("float32")
    m = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    got = np.asarray(masked_softmax(s, m))
    for r in range(3):
        want = np.zeros(5)
        if m[r].any():
            e = np.exp(s[r][m[r]] - s[r][m[r]].max())
            want[m[r]] = e / e.sum()
        np.testing.assert_allclose(got[r], want, atol=1e-6)


def test_log_time_bucket_matches_numpy():
    secs = np.array([-5, 0, 59, 60, 3600, 86400, 1e9], "float32")
    want = np.clip(np.floor(np.log2(1 + np.maximum(secs, 0) / 60)), 0, 15)
    np.testing.assert_array_equal(np.asarray(log_time_bucket(secs, 16)), want)


def test_candidate_item_match_matches_loop():
    B, L, T = 6, 10, 3
    item = RNG.integers(0, 5, (B, L)).astype("int32")
    beh = RNG.integers(1, T + 1, (B, L)).astype("int32")
    time = RNG.integers(0, 10_000, (B, L)).astype("int64")
    now = np.full(B, 20_000, "int64")
    cand = RNG.integers(0, 5, B).astype("int32")
    got = np.asarray(candidate_item_match(item, beh, time, now, cand, T))
    for b in range(B):
        hit = (item[b] == cand[b]) & (item[b] != 0) & (cand[b] >= 2)
        counts = [np.sum(hit & (beh[b] == t + 1)) for t in range(T)]
        np.testing.assert_allclose(got[b, :T], np.log1p(counts), atol=1e-6)
        assert got[b, T] == float(hit.any())
        if hit.any():
            hours = (now[b] - time[b][hit].max()) / 3600
            np.testing.assert_allclose(got[b, T + 1], 1 / (1 + np.log1p(hours)), atol=1e-6)
        else:
            assert got[b, T + 1] == 0


def test_select_last_matches_numpy():
    keep = RNG.random((5, 9)) > 0.5
    idx, mask = (np.asarray(a) for a in select_last(keep, 4))
    for b in range(5):
        want = np.flatnonzero(keep[b])[::-1][:4]
        np.testing.assert_array_equal(idx[b][mask[b]], want)
        assert mask[b].sum() == len(want)


def test_streaming_gauc_equals_numpy_gauc():
    n = 300
    users = RNG.integers(0, 25, n)
    labels = RNG.integers(0, 2, n).astype("float32")
    scores = np.round(RNG.random(n), 1).astype("float32")    # many ties
    metric = GAUC(capacity=512)
    for i in range(0, n, 64):
        metric.update_state(labels[i:i + 64], scores[i:i + 64], user_ids=users[i:i + 64])
    np.testing.assert_allclose(float(metric.result()),
                               evaluation.gauc(labels, scores, users), atol=1e-6)
    packed = GAUC(capacity=512)
    packed.update_state(np.stack([labels, users], 1), scores)
    np.testing.assert_allclose(float(packed.result()), float(metric.result()), atol=1e-7)
    small = GAUC(capacity=100)                 # overflow: NaN, never a partial number
    small.update_state(labels, scores, user_ids=users)
    assert np.isnan(float(small.result()))
