"""Dense batches: densify against a plain-Python reference, iteration, Keras PyDataset."""
import numpy as np
import pandas as pd
import pytest

from dmgin_tf.config import DataConfig
from dmgin_tf.data.batches import (USER_IDX, batch_order, densify, iterate_batches,
                                   make_py_dataset, split_features)
from dmgin_tf.data.datasets import get_spec
from dmgin_tf.data.examples import build_example_set
from dmgin_tf.data.item_index import ItemIndex
from dmgin_tf.errors import DataError
from dmgin_tf.features import (BEHAVIOR, CAND_GROUP, CAND_ITEM, CATEGORY, HIST_BEHAVIOR_ID,
                               HIST_GROUP, HIST_ITEM, HIST_TIME, ITEM_ID, LABEL, MODEL_INPUT_KEYS,
                               REQUEST_TIME, TIMESTAMP, USER_ID)


def example_set(max_history=10000, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(9):
        n = int(rng.integers(1, 40))
        for t in np.sort(rng.integers(0, 30, n)):     # many equal timestamps
            rows.append((f"u{u}", f"i{rng.integers(0, 25)}", rng.choice(["pv", "cart", "fav", "buy"]), int(t)))
    beh = pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP])
    items = pd.DataFrame({ITEM_ID: [f"i{k}" for k in range(20)],      # i20..i24 are OOV
                          CATEGORY: [f"c{k % 3}" for k in range(20)]})
    cfg = DataConfig(max_history=max_history)
    return build_example_set(beh, items, get_spec("taobao"), ItemIndex.build(items, "category"),
                             cfg, progress=False), beh


def reference_row(es, beh, i, L):
    """Plain Python: history = the user's rows (file order) strictly before the request,
    newest min(L, max_history) kept, oldest first, zero-padded right."""
    uid = es.user_ids[es.ex_user[i]]
    t = es.ex_request_time[i]
    s = int(es.user_offsets[es.ex_user[i]])
    rows = [k for k in range(s, int(es.user_offsets[es.ex_user[i] + 1]))]
    before = [k for k in rows if es.beh_time[k] < t]
    keep = before[max(0, len(before) - min(L, es.max_history)):]
    pad = lambda xs: xs + [0] * (L - len(xs))  # noqa: E731
    user_rows = beh[beh[USER_ID] == uid]
    assert len(user_rows) == len(rows)
    return {HIST_ITEM: pad([int(es.beh_item[k]) for k in keep]),
            HIST_GROUP: pad([int(es.beh_group[k]) for k in keep]),
            HIST_BEHAVIOR_ID: pad([int(es.beh_behavior[k]) for k in keep]),
            HIST_TIME: pad([int(es.beh_time[k]) for k in keep])}


@pytest.mark.parametrize("L, max_history", [(1, 10000), (7, 10000), (64, 10000), (16, 5)])
def test_densify_matches_reference(L, max_history):
    es, beh = example_set(max_history)
    idx = np.random.default_rng(1).permutation(len(es))[:50]
    out = densify(es, idx, L)
    assert out[HIST_ITEM].shape == (50, L) and out[HIST_ITEM].dtype == np.int32
    assert out[HIST_TIME].dtype == np.int64 and out[REQUEST_TIME].shape == (50,)
    assert out[CAND_ITEM].dtype == np.int32 and out[LABEL].dtype == np.float32
    for r, i in enumerate(idx):
        ref = reference_row(es, beh, i, L)
        for k in ref:
            assert out[k][r].tolist() == ref[k], (k, i)
        assert out[REQUEST_TIME][r] == es.ex_request_time[i]
        assert out[CAND_ITEM][r] == es.ex_cand_item[i] and out[CAND_GROUP][r] == es.ex_cand_group[i]
        assert out[USER_IDX][r] == es.ex_user[i]
        # no leakage: every real history entry is strictly older than the request
        real = out[HIST_ITEM][r] != 0
        assert (out[HIST_TIME][r][real] < out[REQUEST_TIME][r]).all()
    # truncation: nothing longer than min(L, max_history)
    assert ((out[HIST_ITEM] != 0).sum(1) <= min(L, max_history)).all()


def test_densify_time_dtype_and_errors():
    es, _ = example_set()
    out = densify(es, [0, 1], 8, time_dtype=np.int32)
    assert out[HIST_TIME].dtype == np.int32 and out[REQUEST_TIME].dtype == np.int32
    with pytest.raises(DataError, match="out of range"):
        densify(es, [len(es)], 8)
    with pytest.raises(DataError, match="history_length"):
        densify(es, [0], 0)


def test_iterate_batches_covers_split_once_and_shuffles_deterministically():
    es, _ = example_set()
    test_idx = es.split_indices("test")
    seen = np.concatenate([b[USER_IDX] * 0 + np.arange(len(b[LABEL])) for b in
                           iterate_batches(es, "test", 7, 16)])
    assert len(seen) == len(test_idx)
    order = np.concatenate(batch_order(es, "train", 10, shuffle=True, seed=3))
    assert sorted(order.tolist()) == es.split_indices("train").tolist()
    np.testing.assert_array_equal(order, np.concatenate(batch_order(es, "train", 10, shuffle=True, seed=3)))
    other = np.concatenate(batch_order(es, "train", 10, shuffle=True, seed=3, epoch=1))
    assert (other != order).any()
    dropped = batch_order(es, "train", 10, drop_remainder=True)
    assert all(len(b) == 10 for b in dropped) and len(dropped) == len(es.split_indices("train")) // 10
    feats, label = split_features(next(iterate_batches(es, None, 4, 8)))
    assert set(feats) == set(MODEL_INPUT_KEYS) and label.shape == (4,)


def test_keras_py_dataset():
    keras = pytest.importorskip("keras")
    es, _ = example_set()
    ds = make_py_dataset(es, "train", 16, 32, shuffle=True, seed=0)
    assert isinstance(ds, keras.utils.PyDataset)
    assert len(ds) == -(-len(es.split_indices("train")) // 16)
    feats, label = ds[0]
    assert feats[HIST_ITEM].shape == (16, 32) and label.shape == (16,)
    first = feats[CAND_ITEM].copy()
    ds.on_epoch_end()
    assert not np.array_equal(ds[0][0][CAND_ITEM], first) or len(ds) == 1
