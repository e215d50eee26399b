"""User records (SequenceExamples of the ExampleBuilder) -> training data, and the id
lookups shared by training and serving.

`Lookups` maps strings to model ids with the Transform's vocabulary file
`item_group_vocab` (one `"item|group"` line per item, most frequent first; TF tables):

  item   id = the item's line number + 2 (NUM_RESERVED_IDS); unknown -> 1 (OOV)
  group  parsed off the item's line; unknown item -> 1. So serving needs only item ids.
  behavior  `behavior_types[i] -> i + 1`, unknown -> 0 (DatasetSpec.behavior_id)

`read_user_records` streams a split's records through `tf.data` (batched
`parse_sequence_example`, lookups as vectorised table ops; no per-example Python) into an
`ExampleSet` with one row per record: O(behaviors + examples) memory, no history is
materialised. The trainer's batches cut histories on the fly with `densify`, the same
expansion the numpy/JAX path uses, so both backends see identical inputs.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.data.examples import ExampleSet, split_code
from dmgin_tf.data.sequences import (example_set_from_records, resolve_positions,
                                     steps_per_record)
from dmgin_tf.errors import DataError
from transform import examples as X

_UNKNOWN_GROUP_LINE = f"|{F.OOV_ID}"


class Lookups(tf.Module):
    """String -> id tables built from the Transform's vocabulary file (module docstring).

    Methods take string / int tensors of any shape (dense) and return int64 of the same
    shape. The file becomes a SavedModel asset when the module is saved.
    """

    def __init__(self, pair_vocab_file: str, behavior_types: Sequence[str]):
        super().__init__(name="dmgin_lookups")
        # Both tables key on the line's first "|" column (the item): the line number is
        # the item id, the whole line carries the group. One file serves both, so the
        # Transform writes (and the SavedModel ships) the item list once.
        self.items = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            pair_vocab_file, tf.string, 0, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            delimiter="|"), default_value=-1)
        self.pairs = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            pair_vocab_file, tf.string, 0, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            delimiter="|"), default_value=_UNKNOWN_GROUP_LINE)
        self.behavior_types = list(behavior_types)

    def item_ids(self, x: tf.Tensor) -> tf.Tensor:
        return self.items.lookup(x) + F.NUM_RESERVED_IDS

    def group_ids(self, x: tf.Tensor) -> tf.Tensor:
        line = self.pairs.lookup(x)
        ok = tf.strings.regex_full_match(line, r".*\|[0-9]+")
        digits = tf.where(ok, tf.strings.regex_replace(line, r"^.*\|", ""), str(F.OOV_ID))
        return tf.strings.to_number(digits, tf.int64)

    def behavior_ids(self, x: tf.Tensor) -> tf.Tensor:
        ids = tf.zeros_like(x, dtype=tf.int64)
        for i, name in enumerate(self.behavior_types):
            ids += tf.cast(tf.equal(x, name), tf.int64) * (i + 1)
        return ids


def newest(x: tf.RaggedTensor, length: int) -> tf.Tensor:
    """Ragged [B, (n)] -> dense [B, length]: newest `length` values, oldest first,
    left-aligned, zero-padded (the layout of `dmgin_tf.data.batches.densify`)."""
    return x[:, -length:].to_tensor(default_value=tf.cast(0, x.dtype), shape=[None, length])


def _decode_batch(serialized: tf.Tensor, lookups: Lookups) -> Dict[str, tf.Tensor]:
    """[b] serialized user records -> per-record step counts and mapped flat values."""
    context, seq = X.sequence_feature_spec()
    ctx, lists, _ = tf.io.parse_sequence_example(serialized, context_features=context,
                                                 sequence_features=seq)
    beh_item = lists[X.SEQ_ITEM].flat_values
    sampled_item = lists[X.SAMPLED_ITEM].flat_values
    out = {"user_id": ctx[F.USER_ID],
           "beh_item": lookups.item_ids(beh_item), "beh_group": lookups.group_ids(beh_item),
           "beh_behavior": lookups.behavior_ids(lists[X.SEQ_BEHAVIOR].flat_values),
           "sampled_item": lookups.item_ids(sampled_item),
           "sampled_group": lookups.group_ids(sampled_item)}
    for key in (X.SEQ_TIME, X.POS_HIST_END, X.POS_EVENT, X.POS_LABEL, X.POS_SAMPLED):
        out[key] = lists[key].flat_values
    for key in X.SEQUENCE_BYTES + X.SEQUENCE_INTS:
        out["steps:" + key] = lists[key].row_lengths()
        out["values:" + key] = tf.reduce_sum(lists[key].row_lengths(axis=2), axis=1)
    return out


def _steps_per_record(cols: Dict[str, np.ndarray], users: np.ndarray):
    """(behaviors, positions, sampled) steps per record, each [R]; DataError naming the
    user when a list does not hold one value per step or lists of one kind differ."""
    steps = {k[len("steps:"):]: cols.pop(k) for k in list(cols) if k.startswith("steps:")}
    for key, n in steps.items():
        wrong = np.flatnonzero(cols.pop("values:" + key) != n)
        if len(wrong):
            raise DataError(f"user record {users[int(wrong[0])]!r}: {key} does not hold one "
                            f"value per step")
    return steps_per_record(users, steps)


def read_user_records(files: List[str], lookups: Lookups, split: str, max_history: int,
                      batch_size: int = 512) -> ExampleSet:
    """A split's user records (TFRecord files, ``*.gz`` gzip) -> `ExampleSet`.

    Args:
      files: the split's files.
      lookups: vocabulary tables (`Lookups`).
      split: "train" / "val" / "test" (the code stored with every example).
      max_history: the data config's cap; batches keep the newest
        `min(max_history, history_length)` behaviors strictly before each example.
    """
    gz = [f for f in files if f.endswith(".gz")]
    if gz and len(gz) != len(files):
        raise ValueError(f"mixed gzip and plain TFRecord files in one split: {files}")
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP" if gz else "")
    ds = ds.batch(batch_size).map(lambda s: _decode_batch(s, lookups)).prefetch(2)
    parts: Dict[str, list] = {}
    for batch in ds:
        for k, v in batch.items():
            parts.setdefault(k, []).append(v.numpy())
    if not parts:   # no records: empty columns of the decoded dtypes
        parts = {k: [np.zeros(0, v.dtype.as_numpy_dtype)] for k, v in ds.element_spec.items()}
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    users = np.array([u.decode("utf-8") for u in cols.pop("user_id")], dtype=str)
    behavior_counts, position_counts, sampled_counts = _steps_per_record(cols, users)
    cand = resolve_positions(
        users, behavior_counts, position_counts, sampled_counts,
        {"item": cols["beh_item"], "group": cols["beh_group"], "time": cols[X.SEQ_TIME]},
        cols[X.POS_HIST_END], cols[X.POS_EVENT], cols[X.POS_SAMPLED],
        {"item": cols["sampled_item"], "group": cols["sampled_group"]})
    return example_set_from_records(
        users, behavior_counts=behavior_counts, beh_item=cols["beh_item"],
        beh_group=cols["beh_group"], beh_behavior=cols["beh_behavior"],
        beh_time=cols[X.SEQ_TIME], position_counts=position_counts,
        pos_hist_end=cols[X.POS_HIST_END], pos_item=cand["item"], pos_group=cand["group"],
        pos_label=cols[X.POS_LABEL], pos_time=cand["time"], split=split_code(split),
        metadata={"max_history": int(max_history)})
