"""check_batch: data vs model config mismatches give errors naming key, expected, actual."""
import numpy as np
import pytest

from dmgin_tf.config import ModelConfig
from dmgin_tf.errors import DataError
from dmgin_tf.features import CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM, HIST_TIME
from dmgin_tf.training.inputs import (ArraySplit, batch_indices, cast_for_backend, check_batch)
from tests.training.tiny import HISTORY, NUM_ITEMS, tiny_arrays

CFG = ModelConfig(history_length=HISTORY, item_vocab_size=NUM_ITEMS + 2, group_vocab_size=7,
                  num_behavior_types=4)


def _batch(n=4):
    return tiny_arrays(n)[0]


def test_good_batch_passes():
    check_batch(_batch(), CFG)


def test_history_length_mismatch_names_key_and_shapes():
    cfg = CFG.replace(history_length=16)
    with pytest.raises(DataError, match=r"'hist_item' has shape \[4, 8\], expected \[B, 16\]"):
        check_batch(_batch(), cfg, where="train batch 0")


def test_missing_and_unknown_keys():
    b = _batch()
    del b[HIST_GROUP]
    with pytest.raises(DataError, match="missing model input.*hist_group"):
        check_batch(b, CFG)
    b = _batch()
    b["hist_rating"] = b[HIST_ITEM]
    with pytest.raises(DataError, match="unexpected input key.*hist_rating"):
        check_batch(b, CFG)


def test_float_dtype_is_rejected():
    b = _batch()
    b[HIST_TIME] = b[HIST_TIME].astype(np.float32)
    with pytest.raises(DataError, match="'hist_time' has dtype float32, expected an integer"):
        check_batch(b, CFG)


def test_ids_outside_vocabulary():
    b = _batch()
    b[CAND_ITEM][0] = NUM_ITEMS + 2
    with pytest.raises(DataError, match=r"'cand_item' has id 42.*item_vocab_size = 42"):
        check_batch(b, CFG)
    b = _batch()
    b[HIST_BEHAVIOR_ID][0, 0] = 9
    with pytest.raises(DataError, match="hist_behavior_id"):
        check_batch(b, CFG)


def test_batch_size_disagreement_and_declared_shapes():
    b = _batch()
    b[CAND_ITEM] = b[CAND_ITEM][:3]
    with pytest.raises(DataError, match="'cand_item' has batch size 3"):
        check_batch(b, CFG)
    with pytest.raises(DataError, match="model declares"):
        check_batch(_batch(), CFG, model_input_shapes={HIST_ITEM: (None, 5)})


def test_cast_for_backend_time_dtypes():
    b = _batch()
    assert cast_for_backend(b, "tensorflow")[HIST_TIME].dtype == np.int64
    out = cast_for_backend(b, "jax")
    assert out[HIST_TIME].dtype == np.int32 and out[CAND_ITEM].dtype == np.int32
    np.testing.assert_array_equal(out[HIST_TIME], b[HIST_TIME])


def test_batch_indices_cover_split_once():
    batches = batch_indices(10, 4, shuffle=True, seed=1, drop_remainder=False)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert len(batch_indices(10, 4, shuffle=False, seed=0, drop_remainder=True)) == 2


def test_array_split_rejects_ragged_rows():
    inputs, labels, users = tiny_arrays(5)
    with pytest.raises(DataError, match="labels has 4"):
        ArraySplit(inputs, labels[:4], users[:4])
