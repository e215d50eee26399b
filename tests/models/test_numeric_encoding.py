"""Piecewise-linear encoding of the head's dense statistics: values, fitting, the models."""
import numpy as np
import pytest

from dmgin_tf.config import ModelConfig
from dmgin_tf.layers.numeric_encoding import PiecewiseLinearEncoding, quantile_edges
from tests.layers.synthetic import full_inputs


def test_quantile_edges_per_feature_and_bad_input():
    rng = np.random.default_rng(0)
    x = np.stack([rng.random(1001), np.zeros(1001), rng.exponential(3.0, 1001)], axis=1)
    x[5, 2] = np.nan
    edges = quantile_edges(x, 4)
    assert edges.shape == (3, 5) and edges.dtype == np.float32
    np.testing.assert_allclose(edges[0], np.quantile(x[:, 0], [0, .25, .5, .75, 1]), rtol=1e-6)
    np.testing.assert_array_equal(edges[1], 0.0)                  # a constant column: ties
    finite = x[:, 2][np.isfinite(x[:, 2])]
    np.testing.assert_allclose(edges[2], np.quantile(finite, [0, .25, .5, .75, 1]), rtol=1e-6)
    with pytest.raises(ValueError, match="num_bins"):
        quantile_edges(x, 0)
    with pytest.raises(ValueError, match="rows, features"):
        quantile_edges(x[:, 0], 4)


def test_encoding_is_piecewise_linear_between_the_edges():
    layer = PiecewiseLinearEncoding(num_bins=3, units=1)
    layer.build((None, 2))
    layer.set_edges(np.array([[0.0, 1.0, 2.0, 4.0], [0.0, 0.0, 0.0, 1.0]], np.float32))
    # An identity-like read-out: feature f's unit sums its K bin values.
    layer.kernel.assign(np.ones((2, 3, 1), np.float32))
    x = np.array([[-1.0, 0.0], [0.5, 0.5], [1.5, 0.0], [3.0, 2.0], [9.0, -3.0]], np.float32)
    out = np.asarray(layer(x))
    # Feature 0: 0 below e_0; bins below x count 1, its own bin its fraction.
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.5, 2.5, 3.0], atol=1e-6)
    # Feature 1 with tied edges: the tied bins are steps just above 0, then linear to 1.
    np.testing.assert_allclose(out[:, 1], [0.0, 2.5, 0.0, 3.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(2, 4\)"):
        layer.set_edges(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="non-decreasing"):
        layer.set_edges(np.array([[1.0, 0.0, 2.0, 3.0]] * 2, np.float32))


def _cfg(name, **kw):
    return ModelConfig(model=name, item_vocab_size=40, group_vocab_size=8, history_length=12,
                       embedding_dim=8, num_heads=2, max_groups=4, max_per_group=4,
                       mlp_units=(16,), attention_units=(8,), **kw)


@pytest.mark.parametrize("name", ["dmgin", "din"])
def test_head_encodes_exactly_the_dense_columns(name):
    from dmgin_tf.models import build_model
    from dmgin_tf.layers.group_interest_encoder import match_feature_dim
    model = build_model(_cfg(name))
    ctx = model.context.output_dim
    dense = ctx + (match_feature_dim(4) if name == "dmgin" else 0)
    assert model.head.numeric_dim == dense == model.dense_interest_dim() + ctx
    if name == "dmgin":
        assert model.encoder.match_feature_dim == model.dense_interest_dim()
    off = build_model(_cfg(name, numeric_bins=0))
    assert off.head.numeric is None


def test_fitted_edges_are_the_training_quantiles_and_travel_with_the_weights(tmp_path):
    from dmgin_tf.models import build_model
    from dmgin_tf.training.trainer import fill_context_statistics, fit_numeric_edges
    cfg = _cfg("dmgin", numeric_bins=4)
    rng = np.random.default_rng(3)

    class Split:                                   # a training split of 64 examples
        inputs = full_inputs(rng, 64, 12)
        labels = rng.integers(0, 2, 64).astype("float32")
        folds = None

        def __len__(self):
            return 64

        def candidate_ids(self):
            return self.inputs["cand_item"], self.inputs["cand_group"]

        def batch(self, idx):
            out = {k: v[idx] for k, v in self.inputs.items()}
            if self.folds is not None:
                out["context_fold"] = self.folds[idx]
            return out

    split = Split()
    model = build_model(cfg)
    fill_context_statistics(model, cfg, split)
    summary = fit_numeric_edges(model, split, max_examples=1000, batch_size=16)
    assert summary == {"rows": 64, "columns": model.head.numeric_dim, "bins": 4}
    rows = np.asarray(model.head_inputs(split.batch(np.arange(64))))
    np.testing.assert_allclose(np.asarray(model.head.numeric.edges),
                               quantile_edges(rows[:, -model.head.numeric_dim:], 4), atol=1e-5)
    # Not the defaults: some edge outside [0, 1] (log counts) was fitted.
    assert np.asarray(model.head.numeric.edges).max() > 1.0
    x = split.batch(np.arange(8))
    x.pop("context_fold")
    before = np.asarray(model(x))
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    fresh = build_model(cfg)
    fresh(x)
    fresh.load_weights(path)
    np.testing.assert_allclose(np.asarray(fresh.head.numeric.edges),
                               np.asarray(model.head.numeric.edges))
    np.testing.assert_allclose(np.asarray(fresh(x)), before, rtol=1e-5, atol=1e-6)


def test_item_content_vectors_reach_every_model_and_are_checked():
    from dmgin_tf.data.item_content import item_content_table
    from dmgin_tf.errors import DataError
    from dmgin_tf.models import build_model
    from dmgin_tf.models.ranking_model import dummy_inputs
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = item_content_table(["a", "b", "c"], ["c", "a", "x", "b"], vectors)
    np.testing.assert_array_equal(table, [[0, 0, 0], [0, 0, 0], [3, 4, 5], [9, 10, 11],
                                          [0, 1, 2]])
    with pytest.raises(DataError, match="appear more than once"):
        item_content_table(["a"], ["a", "a"], vectors[:2])
    with pytest.raises(DataError, match="only 0 of 2 catalog items"):
        item_content_table(["p", "q"], ["a", "b"], vectors[:2])
    rng = np.random.default_rng(0)
    content = rng.normal(size=(40, 5)).astype("float32")
    for name in ("dmgin", "dgin", "din", "sim", "bst"):
        model = build_model(_cfg(name, item_content_dim=5))
        x = dummy_inputs(model.model_cfg, batch_size=4)
        x["cand_item"][:] = [2, 3, 4, 5]
        before = np.asarray(model(x))
        model.set_item_content(content)
        # The candidate's content now reaches the score (the projection starts random).
        assert not np.allclose(np.asarray(model(x)), before), name
        with pytest.raises(ValueError, match=r"expected \(40, 5\)"):
            model.set_item_content(content[:, :4])
    with pytest.raises(ValueError, match="item_content_dim is 0"):
        build_model(_cfg("din")).set_item_content(content)


def test_rare_items_share_the_unknown_row_and_the_map_is_saved(tmp_path):
    from dmgin_tf.models import build_model
    from dmgin_tf.models.ranking_model import dummy_inputs
    from dmgin_tf.training.trainer import fit_item_rows
    cfg = _cfg("din", item_min_count=3)
    model = build_model(cfg)
    x = dummy_inputs(cfg, batch_size=3)
    model(x)
    emb = model.item_embedding_layer()
    before = np.asarray(emb.item(np.array([5, 6, 1])))

    class Split:
        def candidate_ids(self):          # item 5: 3 training examples, item 6: 1
            return np.array([5, 5, 5, 6, 7, 7]), np.zeros(6, np.int64)

    summary = fit_item_rows(model, model.model_cfg, Split())
    assert summary == {"min_count": 3, "items_with_own_row": 1, "items_seen": 3}
    after = np.asarray(emb.item(np.array([5, 6, 1])))
    np.testing.assert_allclose(after[0], before[0])       # frequent: its own row
    np.testing.assert_allclose(after[1], before[2])       # rare: the unknown row
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    fresh = build_model(cfg)
    fresh(x)
    fresh.load_weights(path)
    np.testing.assert_array_equal(np.asarray(fresh.item_embedding_layer().item_rows),
                                  np.asarray(emb.item_rows))
    assert fit_item_rows(build_model(_cfg("din")), _cfg("din"), Split()) is None
