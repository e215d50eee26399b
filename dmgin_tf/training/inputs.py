"""What the trainer consumes: a split of labelled examples that densifies batches on demand.

The trainer never sees file formats. It reads each split (train / val / test) through the
small `Split` protocol below, so the same loop trains on an `ExampleSet` from
`dmgin_tf.data` (densified batch by batch, which keeps a 10 000-long history out of
memory until it is needed), on dense arrays built in a test, or on shards carried to the
GPU host. `check_batch` turns a mismatch between the data and the model config into an
error naming the input key, the expected and the actual shape/dtype.

Numpy only: importing this module loads no Keras, TensorFlow or JAX.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Protocol, Sequence

import numpy as np

from dmgin_tf.errors import DataError
from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, CONTEXT_FOLD, HIST_BEHAVIOR_ID,
                               HIST_GROUP, HIST_ITEM, HIST_TIME, MODEL_INPUT_KEYS,
                               NUM_RESERVED_IDS, OPTIONAL_INPUT_KEYS, REQUEST_TIME)


class Split(Protocol):
    """One split of labelled examples.

    Attributes:
      labels: `[N]` float32 in {0, 1}.
      user_ids: `[N]` user ids (any hashable dtype), for GAUC.
    """
    labels: np.ndarray
    user_ids: np.ndarray

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
        """Dense model inputs for the examples at `indices` (`[b]` int): each key of
        `features.MODEL_INPUT_KEYS`; history keys `[b, L]`, the others `[b]`. A training
        split whose `folds` are set also gives `context_fold` `[b]`."""

    def candidate_ids(self) -> "tuple[np.ndarray, np.ndarray]":
        """(cand_item `[N]`, cand_group `[N]`) of every example: what the context
        statistics tables count (`dmgin_tf.data.context_stats`)."""


def with_folds(batch: Dict[str, np.ndarray], folds: Optional[np.ndarray],
               indices: np.ndarray) -> Dict[str, np.ndarray]:
    """`batch` plus `context_fold` `[b]` when the split has out-of-fold indices."""
    if folds is not None:
        batch[CONTEXT_FOLD] = np.asarray(folds)[np.asarray(indices)]
    return batch


@dataclasses.dataclass
class ArraySplit:
    """A split held as dense arrays (tests, small data, shards loaded into memory).

    Args:
      inputs: every key of `MODEL_INPUT_KEYS`; history keys `[N, L]`, others `[N]`.
      labels: `[N]` {0, 1}.
      user_ids: `[N]`.
    """
    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray
    user_ids: np.ndarray
    folds: Optional[np.ndarray] = None   # out-of-fold index per example (training split)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(-1)
        self.user_ids = np.asarray(self.user_ids).reshape(-1)
        n = len(self.labels)
        if len(self.user_ids) != n:
            raise DataError(f"user_ids has {len(self.user_ids)} rows, labels has {n}")
        for key, value in self.inputs.items():
            if len(value) != n:
                raise DataError(f"input {key!r} has {len(value)} rows, labels has {n}")

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
        return with_folds({key: np.asarray(value)[indices] for key, value in self.inputs.items()},
                          self.folds, indices)

    def candidate_ids(self):
        return (np.asarray(self.inputs[CAND_ITEM]).reshape(-1),
                np.asarray(self.inputs[CAND_GROUP]).reshape(-1))

    def subset(self, indices: np.ndarray) -> "ArraySplit":
        """The examples at `indices` as a new split."""
        return ArraySplit({k: np.asarray(v)[indices] for k, v in self.inputs.items()},
                          self.labels[indices], self.user_ids[indices])


def input_spec(model_cfg) -> Dict[str, tuple]:
    """Expected `(shape, kind)` per model input for a `ModelConfig`.

    `shape` uses None for the batch dimension; `kind` is a numpy dtype kind ("i"
    integer). History length L = `model_cfg.history_length`.
    """
    length = int(model_cfg.history_length)
    spec = {}
    for key in (HIST_ITEM, HIST_GROUP, HIST_BEHAVIOR_ID, HIST_TIME):
        spec[key] = ((None, length), "i")
    for key in (REQUEST_TIME, CAND_ITEM, CAND_GROUP):
        spec[key] = ((None,), "i")
    assert set(spec) == set(MODEL_INPUT_KEYS)
    return spec


def _id_bounds(model_cfg) -> Dict[str, int]:
    """Exclusive upper bound of the ids each input may carry (0 = no check).

    Item/group ids index embedding tables of `*_vocab_size` rows; an id past the table is
    silently mapped to zeros on GPU and is an error on CPU, so we catch it here.
    Behavior ids: padding 0, real types 1..T (DatasetSpec); we allow one extra slot so
    an OOV behavior id (NUM_RESERVED_IDS convention) also passes.
    """
    item = int(getattr(model_cfg, "item_vocab_size", 0) or 0)
    group = int(getattr(model_cfg, "group_vocab_size", 0) or 0)
    behavior = int(model_cfg.num_behavior_types) + NUM_RESERVED_IDS
    return {HIST_ITEM: item, CAND_ITEM: item, HIST_GROUP: group, CAND_GROUP: group,
            HIST_BEHAVIOR_ID: behavior}


def check_batch(batch: Mapping[str, np.ndarray], model_cfg, *, where: str = "batch",
                model_input_shapes: Optional[Mapping[str, Sequence]] = None) -> None:
    """Raises DataError when a batch does not fit the model config.

    Checks: every key of `MODEL_INPUT_KEYS` present and no unknown keys; shapes
    (`[B, L]` history with L = `model.history_length`, `[B]` otherwise, one B for all);
    integer dtypes; ids within the config's vocabularies and not negative.

    Args:
      batch: dense inputs of one batch.
      model_cfg: the `ModelConfig` the model was built from.
      where: what the batch is ("train batch 0"), for the message.
      model_input_shapes: optional shapes declared by the built model (`{key: shape}`,
        None for unknown dims), checked as well.
    """
    missing = [k for k in MODEL_INPUT_KEYS if k not in batch]
    if missing:
        raise DataError(f"{where}: missing model input(s) {missing}; got keys {sorted(batch)}")
    extra = sorted(set(batch) - set(MODEL_INPUT_KEYS) - set(OPTIONAL_INPUT_KEYS))
    if extra:
        raise DataError(f"{where}: unexpected input key(s) {extra}; model inputs are "
                        f"{list(MODEL_INPUT_KEYS)} (+ optional {list(OPTIONAL_INPUT_KEYS)})")
    if CONTEXT_FOLD in batch:
        folds = np.asarray(batch[CONTEXT_FOLD])
        k = int(getattr(model_cfg, "context_folds", 0) or 0)
        if folds.ndim != 1 or folds.dtype.kind not in ("i", "u") or (
                folds.size and (folds.min() < 0 or folds.max() > k)):
            raise DataError(f"{where}: input {CONTEXT_FOLD!r} must be integers in [0, "
                            f"model.context_folds = {k}] of shape [B], got dtype {folds.dtype}, "
                            f"shape {list(folds.shape)}"
                            + (f", range [{folds.min()}, {folds.max()}]" if folds.size else ""))
    spec = input_spec(model_cfg)
    batch_size = None
    for key in MODEL_INPUT_KEYS:
        value = np.asarray(batch[key])
        shape, kind = spec[key]
        if value.dtype.kind not in ("i", "u"):
            raise DataError(f"{where}: input {key!r} has dtype {value.dtype}, expected an "
                            f"integer dtype (ids / Unix seconds)")
        ok = value.ndim == len(shape) and all(e is None or e == a for e, a in zip(shape, value.shape))
        if not ok:
            expected = "[B" + "".join(f", {e}" for e in shape[1:]) + "]"
            hint = (" (history length differs from model.history_length; rebuild the data or "
                    "--set model.history_length=...)" if len(shape) == 2 and value.ndim == 2 else "")
            raise DataError(f"{where}: input {key!r} has shape {list(value.shape)}, expected "
                            f"{expected} with L = model.history_length = {model_cfg.history_length}"
                            f"{hint}")
        if batch_size is None:
            batch_size = value.shape[0]
        elif value.shape[0] != batch_size:
            raise DataError(f"{where}: input {key!r} has batch size {value.shape[0]}, "
                            f"other inputs {batch_size}")
        if model_input_shapes and key in model_input_shapes:
            declared = tuple(model_input_shapes[key])
            if len(declared) != value.ndim or any(
                    d is not None and d != a for d, a in zip(declared[1:], value.shape[1:])):
                raise DataError(f"{where}: input {key!r} has shape {list(value.shape)}, the model "
                                f"declares {list(declared)}")
        if value.size and value.min() < 0:
            raise DataError(f"{where}: input {key!r} has negative value {value.min()}")
    for key, bound in _id_bounds(model_cfg).items():
        value = np.asarray(batch[key])
        if bound and value.size and value.max() >= bound:
            field = {HIST_ITEM: "item_vocab_size", CAND_ITEM: "item_vocab_size",
                     HIST_GROUP: "group_vocab_size", CAND_GROUP: "group_vocab_size",
                     HIST_BEHAVIOR_ID: "num_behavior_types"}[key]
            raise DataError(f"{where}: input {key!r} has id {int(value.max())}, outside the model's "
                            f"vocabulary (model.{field} = {getattr(model_cfg, field)}, ids must be "
                            f"< {bound})")


def cast_for_backend(batch: Mapping[str, np.ndarray], backend: str) -> Dict[str, np.ndarray]:
    """Casts ids to int32 and times to int64 (TF) / int32 (JAX, no x64; fits to 2038).

    Returns a new dict; the arrays are C-contiguous.
    """
    time_dtype = np.int64 if backend == "tensorflow" else np.int32
    out = {}
    for key, value in batch.items():
        dtype = time_dtype if key in (HIST_TIME, REQUEST_TIME) else np.int32
        out[key] = np.ascontiguousarray(value, dtype=dtype)
    return out


def batch_indices(num_examples: int, batch_size: int, *, shuffle: bool, seed: int,
                  drop_remainder: bool) -> list:
    """Index arrays of each batch (`[batch_size]` int64), shuffled with `seed` if asked."""
    order = np.random.default_rng(seed).permutation(num_examples) if shuffle else np.arange(num_examples)
    stop = (num_examples // batch_size) * batch_size if drop_remainder else num_examples
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
