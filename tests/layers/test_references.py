"""Small math pieces against plain numpy references."""
import numpy as np
import pytest

from dmgin_tf.layers import candidate_item_match, log_time_bucket, masked_softmax
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


def _din_reference(att, query, keys, mask):
    """DIN's activation unit written out in numpy: MLP over [q, k, q-k, q*k] per key."""
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    q = query @ np.asarray(att.query_proj.kernel) + np.asarray(att.query_proj.bias)
    q = np.broadcast_to(q[:, None, :], keys.shape)
    h = np.concatenate([q, keys, q - keys, q * keys], axis=-1)
    for layer in att.mlp:
        h = relu(h @ np.asarray(layer.kernel) + np.asarray(layer.bias))
    scores = (h @ np.asarray(att.score.kernel) + np.asarray(att.score.bias))[..., 0]
    scores = np.where(mask, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=1, keepdims=True, initial=-1e30))
    e = np.where(mask, e, 0.0)
    w = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-30)
    return np.einsum("bs,bsd->bd", w, keys)


@pytest.mark.parametrize("units", [(16, 8), ()])
def test_target_attention_queries_sharing_keys_match_din_unit(units):
    """N queries over one key set ([B, N, Dq], the ranking path, with the first MLP layer
    split by input block) equal the concatenated DIN unit applied per query."""
    from dmgin_tf.layers import TargetAttention
    rng = np.random.default_rng(3)
    B, N, S, D, Dq = 3, 5, 7, 8, 6
    att = TargetAttention(units)
    query = rng.normal(size=(B, N, Dq)).astype("float32")
    keys = rng.normal(size=(B, S, D)).astype("float32")
    mask = rng.random((B, S)) > 0.3
    mask[1] = False                                           # no keys: zeros
    out = np.asarray(att(query, keys, mask))
    assert out.shape == (B, N, D)
    for n in range(N):
        np.testing.assert_allclose(out[:, n], _din_reference(att, query[:, n], keys, mask),
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(att(query[:, n], keys, mask)), out[:, n], atol=1e-6)
    assert not out[1].any()


def test_row_dense_matches_keras_dense_on_any_rank():
    """`Dense` (rows flattened into one 2-D matmul) = `keras.layers.Dense` with the same
    weights on rank 2-4 inputs; `matmul_rows` = einsum."""
    import keras
    from dmgin_tf.layers.dense import Dense, matmul_rows
    rng = np.random.default_rng(5)
    ours, ref = Dense(6, activation="gelu"), keras.layers.Dense(6, activation="gelu")
    ours.build((None, 4))
    ref.build((None, 4))
    ref.set_weights(ours.get_weights())
    for shape in [(3, 4), (2, 3, 4), (2, 3, 5, 4)]:
        x = rng.normal(size=shape).astype("float32")
        y = np.asarray(ours(x))
        assert y.shape == shape[:-1] + (6,)
        np.testing.assert_allclose(y, np.asarray(ref(x)), atol=1e-6)
    x, w = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(4, 6))
    np.testing.assert_allclose(np.asarray(matmul_rows(x.astype("float32"), w.astype("float32"))),
                               np.einsum("abck,kh->abch", x, w), atol=1e-5)
