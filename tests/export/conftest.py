"""A tiny exported model shared by export / serving-config tests (built once per session)."""
import numpy as np
import pandas as pd
import pytest

from dmgin_tf import features as F
from dmgin_tf.config import ServingConfig

NUM_ITEMS = 40
L = 8
BEHAVIORS = ("pv", "cart", "fav", "buy")
SERVING = ServingConfig(batch_buckets=(1, 4), candidate_buckets=(2, 8), max_candidates=16)


def tiny_inputs(n, seed=0, length=L):
    """Dense inputs whose groups follow the item index below (group = idx % 5 + 2)."""
    rng = np.random.default_rng(seed)
    item = rng.integers(2, NUM_ITEMS + 2, size=(n, length)).astype(np.int32)
    lengths = rng.integers(0, length + 1, size=n)
    pad = np.arange(length)[None, :] >= lengths[:, None]
    item[pad] = 0
    t = np.sort(rng.integers(1_500_000_000, 1_500_100_000, size=(n, length)), axis=1)
    cand = rng.integers(2, NUM_ITEMS + 2, size=n).astype(np.int32)
    return {
        F.HIST_ITEM: item,
        F.HIST_GROUP: np.where(pad, 0, item % 5 + 2).astype(np.int32),
        F.HIST_BEHAVIOR_ID: np.where(pad, 0, rng.integers(1, 5, size=(n, length))).astype(np.int32),
        F.HIST_TIME: np.where(pad, 0, t).astype(np.int64),
        F.REQUEST_TIME: (t.max(axis=1) + 10).astype(np.int64),
        F.CAND_ITEM: cand,
        F.CAND_GROUP: (cand % 5 + 2).astype(np.int32),
    }


def tiny_item_index():
    from dmgin_tf.data.item_index import ItemIndex
    ids = [f"item{k}" for k in range(NUM_ITEMS)]
    table = pd.DataFrame({"item_id": ids, "group_id": [(k + 2) % 5 for k in range(NUM_ITEMS)]})
    return ItemIndex.build(pd.DataFrame({"item_id": ids}), "table", group_table=table, num_groups=5)


@pytest.fixture(scope="session")
def standin_export(tmp_path_factory):
    """(base_path, paths, model, item_index, inputs) for the Keras stand-in model."""
    from dmgin_tf.export.saved_model import export_model
    from export.keras_standin import StandInRanker
    model = StandInRanker(item_vocab=NUM_ITEMS + 2, group_vocab=7)
    inputs = tiny_inputs(6)
    model(inputs)
    index = tiny_item_index()
    base = str(tmp_path_factory.mktemp("serving"))
    paths = export_model(model, base, "ranker", history_length=L, item_index=index,
                         behavior_types=BEHAVIORS, warmup_inputs=inputs, serving_cfg=SERVING)
    return base, paths, model, index, inputs
