"""Dense model batches from an `ExampleSet` (numpy only; feeds both Keras backends).

`densify` gathers each example's history with one vectorized fancy-index per array (no
Python loop over rows). Layout (docs/internals.md): the newest `min(history_length,
max_history)` behaviors strictly before the example, oldest first, left-aligned,
zero-padded on the right.

Throughput (batch 1024, train split, H100 host CPU, numpy 2.5): one thread ~75-105k
examples/s on Taobao and ~160-230k on MovieLens at L = 512; at L = 2048 ~55-70k (Taobao,
histories <= 539 so only the used width is gathered) and ~23-31k (MovieLens, histories up
to 2,698). `np.take` releases the GIL, so batches made in parallel threads scale: 8
threads gave ~120k (Taobao) / ~100k (MovieLens) examples/s at L = 2048 — use
`make_py_dataset(..., workers=8)` (threads) when feeding a GPU.

    es = ExampleSet.load("runs/examples/taobao")
    for batch in iterate_batches(es, "train", batch_size=1024, history_length=512,
                                 shuffle=True, seed=0):
        batch[HIST_ITEM]   # [1024, 512] int32
"""
from __future__ import annotations

import functools
from typing import Iterator, Union

import numpy as np

from dmgin_tf.data.examples import ExampleSet
from dmgin_tf.errors import DataError
from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, LABEL, MODEL_INPUT_KEYS, PAD_ID, REQUEST_TIME)

USER_IDX = "user_idx"   # extra batch key: index into ExampleSet.user_ids (for GAUC)
assert PAD_ID == 0        # padding is produced by zero-filling


def _padded_behaviors(es: ExampleSet) -> tuple:
    """Behavior arrays with one trailing PAD entry, cached on the example set.

    Padding positions of a batch point at that entry, so a single gather per array
    produces the padded tensor (no second masking pass).
    """
    cache = es.__dict__.get("_padded_cache")
    if cache is None or cache[0] is not es.beh_item:
        pad = lambda a: np.concatenate([a, np.zeros(1, a.dtype)])  # noqa: E731
        cache = (es.beh_item, pad(es.beh_item), pad(es.beh_group), pad(es.beh_behavior),
                 pad(es.beh_time))
        es.__dict__["_padded_cache"] = cache
    return cache[1:]


def densify(example_set: ExampleSet, example_indices, history_length: int,
            time_dtype=np.int64) -> dict:
    """Dense, padded model inputs for the given examples.

    Args:
      example_set: the examples.
      example_indices: [B] int indices into the example set.
      history_length: L, the width of the history tensors.
      time_dtype: dtype of hist_time / request_time (int64; the JAX path may pass int32).

    Returns: dict with
      hist_item, hist_group, hist_behavior_id: [B, L] int32 (PAD 0 on the right),
      hist_time: [B, L] time_dtype (0 on padding),
      request_time: [B] time_dtype, cand_item, cand_group: [B] int32,
      label: [B] float32, user_idx: [B] int32.
    """
    if history_length < 1:
        raise DataError(f"history_length must be >= 1, got {history_length}")
    es = example_set
    idx = np.asarray(example_indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(es)):
        raise DataError(f"example index out of range 0..{len(es) - 1}")
    L = int(history_length)
    window = min(L, es.max_history)
    user = es.ex_user[idx]
    first = es.user_offsets[user]
    end = first + es.ex_hist_end[idx]
    start = np.maximum(end - window, first)
    n = end - start                                              # [B] history sizes
    # Gather only up to the longest history in the batch: most real histories are far
    # shorter than L (Taobao p99 ~400), so this skips most of the work at L = 2048.
    width = int(n.max()) if len(n) else 0
    cols = np.arange(width, dtype=np.int64)
    src = start[:, None] + cols[None, :]                         # [B, width]
    src[cols[None, :] >= n[:, None]] = len(es.beh_item)          # -> the trailing PAD entry
    item, group, behavior, t = _padded_behaviors(es)

    def gather(arr, dtype):
        if width == L:
            return np.take(arr, src).astype(dtype, copy=False)
        dense = np.zeros((len(idx), L), dtype=dtype)
        dense[:, :width] = np.take(arr, src)
        return dense

    out = {
        HIST_ITEM: gather(item, np.int32),
        HIST_GROUP: gather(group, np.int32),
        HIST_BEHAVIOR_ID: gather(behavior, np.int32),
        HIST_TIME: gather(t, time_dtype),
        REQUEST_TIME: es.ex_request_time[idx].astype(time_dtype, copy=False),
        CAND_ITEM: es.ex_cand_item[idx].astype(np.int32, copy=False),
        CAND_GROUP: es.ex_cand_group[idx].astype(np.int32, copy=False),
        LABEL: es.ex_label[idx].astype(np.float32, copy=False),
        USER_IDX: user.astype(np.int32, copy=False),
    }
    return out


def batch_order(example_set: ExampleSet, split: Union[int, str, None], batch_size: int,
                shuffle: bool = False, seed: int = 0, epoch: int = 0,
                drop_remainder: bool = False) -> list:
    """Example indices per batch for one epoch: list of [<=batch_size] int64 arrays.

    Shuffling uses numpy's PCG64 seeded by (seed, epoch): reproducible per epoch.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    idx = example_set.split_indices(split)
    if shuffle:
        idx = np.random.default_rng([int(seed), int(epoch)]).permutation(idx)
    n_full = len(idx) // batch_size
    stop = n_full * batch_size if drop_remainder else len(idx)
    return [idx[i:i + batch_size] for i in range(0, stop, batch_size)]


def iterate_batches(example_set: ExampleSet, split: Union[int, str, None], batch_size: int,
                    history_length: int, shuffle: bool = False, seed: int = 0,
                    drop_remainder: bool = False, epoch: int = 0,
                    time_dtype=np.int64) -> Iterator[dict]:
    """Yields `densify` dicts (model inputs + label + user_idx) over one split."""
    for b in batch_order(example_set, split, batch_size, shuffle, seed, epoch, drop_remainder):
        yield densify(example_set, b, history_length, time_dtype)


def split_features(batch: dict) -> tuple:
    """A densify dict -> (features {MODEL_INPUT_KEYS}, label [B])."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS}, batch[LABEL]


@functools.lru_cache(maxsize=None)
def py_dataset_class():
    """The `keras.utils.PyDataset` subclass (Keras 3 imported on first use)."""
    import keras

    class ExamplePyDataset(keras.utils.PyDataset):
        """Keras 3 dataset of (features, label) batches over one split of an ExampleSet.

        Works with `model.fit` on the TensorFlow and JAX backends. Reshuffles each epoch
        (seeded by (seed, epoch)) when `shuffle`.
        """

        def __init__(self, example_set: ExampleSet, split, batch_size: int, history_length: int,
                     shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
                     time_dtype=np.int64, **kwargs):
            super().__init__(**kwargs)
            self.example_set = example_set
            self.split = split
            self.batch_size = int(batch_size)
            self.history_length = int(history_length)
            self.shuffle = bool(shuffle)
            self.seed = int(seed)
            self.drop_remainder = bool(drop_remainder)
            self.time_dtype = time_dtype
            self.epoch = 0
            self._batches = self._order()

        def _order(self):
            return batch_order(self.example_set, self.split, self.batch_size, self.shuffle,
                               self.seed, self.epoch, self.drop_remainder)

        def __len__(self):
            return len(self._batches)

        def __getitem__(self, i):
            batch = densify(self.example_set, self._batches[i], self.history_length,
                            self.time_dtype)
            return split_features(batch)

        def on_epoch_end(self):
            self.epoch += 1
            if self.shuffle:
                self._batches = self._order()

    return ExamplePyDataset


def make_py_dataset(example_set: ExampleSet, split, batch_size: int, history_length: int,
                    shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
                    time_dtype=np.int64, **pydataset_kwargs):
    """An `ExamplePyDataset` (see `py_dataset_class`); kwargs go to keras' PyDataset
    (workers, use_multiprocessing, max_queue_size)."""
    return py_dataset_class()(example_set, split, batch_size, history_length, shuffle=shuffle,
                              seed=seed, drop_remainder=drop_remainder, time_dtype=time_dtype,
                              **pydataset_kwargs)
