"""GroupInterestEncoder: output shapes for every accepted candidate shape, and no
silently ignored arguments."""
import numpy as np
import pytest

from dmgin_tf.layers import GroupInterestEncoder


def _encoder():
    return GroupInterestEncoder(item_vocab_size=30, group_vocab_size=6, num_behavior_types=2,
                                max_groups=3, max_per_group=2, embedding_dim=8)


def _inputs(b=2, length=6):
    rng = np.random.default_rng(0)
    return {"hist_item": rng.integers(2, 30, (b, length)).astype("int32"),
            "hist_group": rng.integers(2, 6, (b, length)).astype("int32"),
            "hist_behavior_id": rng.integers(1, 3, (b, length)).astype("int32"),
            "hist_time": np.tile(np.arange(length) * 60 + 1_600_000_000, (b, 1)).astype("int64"),
            "request_time": np.full(b, 1_600_000_000 + length * 60, "int64"),
            "cand_item": rng.integers(2, 30, b).astype("int32"),
            "cand_group": rng.integers(2, 6, b).astype("int32")}


@pytest.mark.parametrize("cand_shape,expected", [((2,), (2, "D")), ((2, 1), (2, "D")),
                                                 ((2, 5), (2, 5, "D"))])
def test_compute_output_shape_matches_the_scores(cand_shape, expected):
    enc = _encoder()
    x = _inputs()
    enc(x)
    shapes = {k: v.shape for k, v in x.items()}
    shapes["cand_item"] = shapes["cand_group"] = cand_shape
    want = tuple(enc.output_dim if e == "D" else e for e in expected)
    assert enc.compute_output_shape(shapes) == want
    lists = dict(x, cand_item=np.full(cand_shape, 5, "int32"),
                 cand_group=np.full(cand_shape, 3, "int32"))
    state = enc.encode_user(x)
    if len(cand_shape) == 1:
        assert tuple(enc.score_candidates(state, lists).shape) == want
    elif cand_shape[1] != 1:
        assert tuple(enc.score_candidates(state, lists).shape) == want


def test_precomputed_features_with_1d_candidates_are_refused():
    enc = _encoder()
    x = _inputs()
    state = enc.encode_user(x)
    lists = dict(x, cand_item=x["cand_item"][:, None], cand_group=x["cand_group"][:, None])
    feats = enc.candidate_features(lists)
    with pytest.raises(ValueError, match=r"\[U, N\]"):
        enc.score_candidates(state, x, candidate_features=feats)


def test_group_shares_are_length_invariant_and_widen_the_matching_features():
    from dmgin_tf.layers.group_interest_encoder import group_type_shares
    counts = np.array([[3.0, 1.0], [0.0, 0.0]], "float32")
    shares = np.asarray(group_type_shares(counts))
    np.testing.assert_allclose(shares, [[0.75, 0.25], [0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(group_type_shares(counts * 7)), shares)
    x = _inputs()
    plain, with_shares = _encoder(), GroupInterestEncoder(
        item_vocab_size=30, group_vocab_size=6, num_behavior_types=2, max_groups=3,
        max_per_group=2, embedding_dim=8, group_shares=True)
    assert with_shares.match_feature_dim == plain.match_feature_dim + 2
    out = np.asarray(with_shares(x))
    assert out.shape == (2, with_shares.output_dim) == (2, plain.output_dim + 2)
    # The last T columns are the candidate group's type shares: they sum to 1 (or 0).
    np.testing.assert_allclose(out[:, -2:].sum(-1) * (out[:, -2:].sum(-1) > 0),
                               (out[:, -2:].sum(-1) > 0).astype("float32"), atol=1e-6)
    assert GroupInterestEncoder.from_config(with_shares.get_config()).group_shares


def test_feature_embedding_output_shape():
    """FeatureEmbedding's `compute_output_shape` answers (it raised NotImplementedError,
    the one public layer without it) and agrees with a call, eager and symbolic."""
    import keras

    from dmgin_tf.layers import FeatureEmbedding
    emb = FeatureEmbedding(100, 10, 6, 8)
    ids = np.array([[2, 3, 0]])
    assert emb.compute_output_shape((1, 3)) == (1, 3, 8) == tuple(emb(ids).shape)
    assert tuple(emb(keras.Input((5,), dtype="int32")).shape) == (None, 5, 8)
