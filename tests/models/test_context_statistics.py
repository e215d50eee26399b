"""Context statistics: leak-free tables, the layer, and the models' use of them."""
import numpy as np
import pytest

from dmgin_tf.data.context_stats import assign_folds, context_tables, id_table
from tests.layers.synthetic import full_inputs

V = 12


def _examples(n=300, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, V, n)
    labels = (rng.random(n) < 0.3 + 0.04 * ids).astype(np.float32)
    return ids, labels, assign_folds(n, 5, seed=1)


def test_fold_tables_equal_brute_force_and_unseen_ids_get_the_prior():
    ids, labels, folds = _examples()
    table = id_table(ids, labels, folds, V, 5, prior=20.0)
    for k in range(6):
        keep = np.ones(len(ids), bool) if k == 0 else folds != k
        rate = labels[keep].mean()
        for i in range(V):
            m = keep & (ids == i)
            n, pos = m.sum(), labels[m].sum()
            np.testing.assert_allclose(table[k, i], [np.log1p(n), (pos + 20 * rate) / (n + 20),
                                                     np.log1p(pos), float(n > 0)], rtol=1e-5)
    assert table[0, 0, 3] == 0 and table[0, 0, 1] == pytest.approx(labels.mean(), rel=1e-5)


def test_a_training_example_never_sees_its_own_label():
    ids, labels, folds = _examples()
    before = id_table(ids, labels, folds, V, 5)
    for i in (0, 17, 123):
        flipped = labels.copy()
        flipped[i] = 1 - flipped[i]
        after = id_table(ids, flipped, folds, V, 5)
        # Example i reads row folds[i] of its own id: unchanged by its own label.
        np.testing.assert_array_equal(before[folds[i], ids[i]], after[folds[i], ids[i]])
        # ... while the label does reach what other examples and evaluation read.
        assert not np.array_equal(before[0, ids[i]], after[0, ids[i]])


def test_folds_are_balanced_seeded_and_label_free():
    f = assign_folds(103, 5, seed=4)
    assert sorted(np.bincount(f)[1:]) == [20, 20, 21, 21, 21] and f.min() == 1
    np.testing.assert_array_equal(f, assign_folds(103, 5, seed=4))
    with pytest.raises(ValueError, match="num_folds"):
        assign_folds(10, 1)
    with pytest.raises(ValueError, match="outside"):
        id_table(np.array([V]), np.array([1.0]), np.array([1]), V, 5)


def test_layer_reads_the_fold_table_and_the_oov_row():
    from dmgin_tf.layers.context_statistics import ContextStatistics
    layer = ContextStatistics(item_vocab_size=5, group_vocab_size=4, num_behavior_types=2,
                              num_folds=2)
    item = np.arange(3 * 5 * 4, dtype="float32").reshape(3, 5, 4)
    group = -np.arange(3 * 4 * 4, dtype="float32").reshape(3, 4, 4)
    layer.set_tables(item, group)
    out = np.asarray(layer.candidate_features(np.array([3, 9]), np.array([2, 2]),
                                              fold=np.array([2, 0])))
    np.testing.assert_array_equal(out[0, :4], item[2, 3])
    np.testing.assert_array_equal(out[1, :4], item[0, 1])      # id 9 -> OOV row 1
    np.testing.assert_array_equal(out[0, 4:8], group[2, 2])
    with pytest.raises(ValueError, match="item table has shape"):
        layer.set_tables(item[:2], group)


def test_user_and_affinity_features_count_the_history():
    from dmgin_tf.layers.context_statistics import ContextStatistics
    layer = ContextStatistics(item_vocab_size=10, group_vocab_size=5, num_behavior_types=2,
                              num_folds=2)
    hist_item = np.array([[3, 4, 5, 0]], "int32")
    hist_group = np.array([[2, 2, 3, 0]], "int32")
    hist_beh = np.array([[1, 2, 2, 0]], "int32")
    times = np.array([[10, 20, 30, 0]], "int64")
    user = np.asarray(layer.user_features(hist_item, hist_beh, times, np.array([3630], "int64")))
    np.testing.assert_allclose(user[0, :2], np.log1p([1, 2]), rtol=1e-6)
    np.testing.assert_allclose(user[0, 2:4], [1 / 3, 2 / 3], rtol=1e-6)
    cand = np.asarray(layer.candidate_features(np.array([7]), np.array([2]), None, hist_group,
                                               hist_beh, hist_item))
    aff = cand[0, 8:]
    np.testing.assert_allclose(aff[:2], np.log1p([1, 1]), rtol=1e-6)
    # share of type 1 in group 2: (1 + 2 * 1/3) / (2 + 2)
    np.testing.assert_allclose(aff[2], (1 + 2 / 3) / 4, rtol=1e-5)


@pytest.mark.parametrize("name", ["dmgin", "din", "dgin"])
def test_model_context_features_same_in_call_and_score(name):
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.models import build_model
    cfg = ModelConfig(model=name, item_vocab_size=30, group_vocab_size=6, num_behavior_types=3,
                      history_length=10, max_groups=3, max_per_group=3, embedding_dim=8)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    ids, labels, folds = rng.integers(2, 30, 200), rng.integers(0, 2, 200), assign_folds(200, 5)
    t = context_tables(ids, rng.integers(2, 6, 200), labels, folds, 30, 6, 5)
    model.set_context_tables(t["item"], t["group"])
    inputs = full_inputs(rng, 3, 10, 30, 6)
    ctr = np.asarray(model(inputs))
    # A training fold reads other statistics than evaluation (table 0).
    ctr_fold = np.asarray(model(dict(inputs, context_fold=np.array([1, 2, 3], "int32"))))
    assert not np.allclose(ctr, ctr_fold)
    if hasattr(model, "score"):
        state = model.encode_user(inputs)
        np.testing.assert_allclose(np.asarray(model.score(state, inputs)), ctr, atol=1e-6)
        lists = dict(inputs, cand_item=np.stack([inputs["cand_item"]] * 4, 1),
                     cand_group=np.stack([inputs["cand_group"]] * 4, 1))
        np.testing.assert_allclose(np.asarray(model.score(state, lists)),
                                   np.repeat(ctr[:, None], 4, 1), atol=1e-6)
    off = build_model(cfg.replace(use_context=False))
    assert off.context is None and np.asarray(off(inputs)).shape == (3,)
