"""Tiny synthetic histories (built in code) shared by tests/layers and tests/models."""
import numpy as np

from dmgin_tf import features as F


def synthetic_inputs(batch=4, length=12, item_vocab=40, group_vocab=8, num_types=2,
                     seed=0, empty_rows=(), time_dtype="int64"):
    """Random model inputs: oldest-first histories, right padding, some empty rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, batch)
    item = rng.integers(2, item_vocab, (batch, length)).astype("int32")
    group = rng.integers(2, group_vocab, (batch, length)).astype("int32")
    beh = rng.integers(1, num_types + 1, (batch, length)).astype("int32")
    time = np.sort(rng.integers(1_000_000, 2_000_000, (batch, length)), axis=1)
    for b in range(batch):
        n = 0 if b in empty_rows else lengths[b]
        item[b, n:] = 0
        group[b, n:] = 0
        beh[b, n:] = 0
        time[b, n:] = 0
    return {F.HIST_ITEM: item, F.HIST_GROUP: group, F.HIST_BEHAVIOR_ID: beh,
            F.HIST_TIME: time.astype(time_dtype),
            F.REQUEST_TIME: np.full((batch,), 2_000_100, time_dtype),
            F.CAND_ITEM: rng.integers(2, item_vocab, batch).astype("int32"),
            F.CAND_GROUP: rng.integers(2, group_vocab, batch).astype("int32")}



def full_inputs(rng, batch, length, item_vocab=40, group_vocab=8):
    """Model inputs whose histories fill every slot, one minute apart, drawn from `rng`
    (a `np.random.Generator` the caller keeps using)."""
    return {F.HIST_ITEM: rng.integers(2, item_vocab, (batch, length)).astype("int32"),
            F.HIST_GROUP: rng.integers(2, group_vocab, (batch, length)).astype("int32"),
            F.HIST_BEHAVIOR_ID: rng.integers(1, 4, (batch, length)).astype("int32"),
            F.HIST_TIME: np.tile(np.arange(length) * 60, (batch, 1)).astype("int64"),
            F.REQUEST_TIME: np.full(batch, length * 60, "int64"),
            F.CAND_ITEM: rng.integers(2, item_vocab, batch).astype("int32"),
            F.CAND_GROUP: rng.integers(2, group_vocab, batch).astype("int32")}
