"""Serialized tf.Example (string ids, docs/design.md: Data formats) → dense model inputs, inside the graph.

The serving example carries what a caller knows at request time (no label needed):

  item_id        bytes   [1]   candidate item id                      (required)
  timestamp      int64   [1]   request time, Unix seconds             (required)
  hist_item_id   bytes   [n]   history item ids, oldest first          (optional, n >= 0)
  hist_behavior  bytes   [n]   behavior type strings (dataset vocab)   (same n)
  hist_timestamp int64   [n]   behavior times, Unix seconds            (same n)

Other features (user_id, label, category, …) are ignored. Lookups (built into the
SavedModel as `tf.lookup.StaticHashTable`s): item id → item idx (unknown → OOV 1),
item idx → group id (OOV item → group 1), behavior string → id `i + 1` of the
dataset's behavior_types. An event whose behavior the model does not know is dropped
before anything else (training data never holds one: conversion refuses unknown
behaviors), so it neither reaches the model as a real item nor pushes known events out
of the window. Of the rest, the newest `history_length` behaviors are kept,
left-aligned, zero-padded on the right — the same layout
`dmgin_tf.data.batches.densify` produces for training.

Errors name the feature: a missing required feature, a wrong dtype, a wrong number of
values, or history lists of different lengths fail with InvalidArgumentError.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np
import tensorflow as tf

from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR, HIST_BEHAVIOR_ID,
                               HIST_GROUP, HIST_ITEM, HIST_ITEM_ID, HIST_TIME, HIST_TIMESTAMP,
                               ITEM_ID, NUM_RESERVED_IDS, OOV_ID, PAD_ID, REQUEST_TIME, TIMESTAMP)

SERVING_FEATURE_SPEC = {
    ITEM_ID: tf.io.FixedLenFeature([], tf.string),
    TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
    HIST_ITEM_ID: tf.io.VarLenFeature(tf.string),
    HIST_BEHAVIOR: tf.io.VarLenFeature(tf.string),
    HIST_TIMESTAMP: tf.io.VarLenFeature(tf.int64),
}


class LookupTables(tf.Module):
    """String-id vocabularies as static hash tables (saved inside the SavedModel).

    Args:
      item_ids: [N] str, catalog order (item idx = position + 2), `ItemIndex.item_ids`.
      group_of_idx: [N + 2] int, group id per item idx, `ItemIndex.group_of_idx`.
      behavior_types: the dataset's behavior vocabulary (id = position + 1).
    """

    def __init__(self, item_ids: Sequence[str], group_of_idx, behavior_types: Sequence[str]):
        super().__init__(name="lookup_tables")
        item_ids = np.asarray([str(i) for i in item_ids], dtype=object)
        self.items = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(item_ids.astype(bytes), tf.string),
                tf.range(NUM_RESERVED_IDS, len(item_ids) + NUM_RESERVED_IDS, dtype=tf.int64)),
            default_value=OOV_ID)
        self.group_of_idx = tf.Variable(np.asarray(group_of_idx, np.int32), trainable=False,
                                        name="group_of_idx")
        self.behaviors = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([b.encode() for b in behavior_types], tf.string),
                tf.range(1, len(behavior_types) + 1, dtype=tf.int64)),
            default_value=PAD_ID)

    def item_idx(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.items.lookup(ids), tf.int32)

    def group_of(self, item_idx: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.group_of_idx, item_idx)

    def behavior_id(self, names: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.behaviors.lookup(names), tf.int32)


def _newest(rt: tf.RaggedTensor, length: int, dtype) -> tf.Tensor:
    """Ragged [B, (n)] → dense [B, length]: newest `length` values, left-aligned, 0-padded."""
    return rt[:, -length:].to_tensor(default_value=tf.cast(0, dtype), shape=[None, length])


def _in_time_order(times: tf.RaggedTensor) -> tf.Operation:
    """Assert: within each example, `hist_timestamp` is non-decreasing."""
    t, rows = times.flat_values, times.value_rowids()
    back = tf.logical_and(tf.equal(rows[1:], rows[:-1]), t[1:] < t[:-1])
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(back)), [
        f"{HIST_TIMESTAMP} must be oldest first (non-decreasing) in every example; examples "
        f"out of order:", tf.unique(tf.boolean_mask(rows[1:], back))[0][:4]])


def parse_serving_examples(serialized: tf.Tensor, tables: LookupTables,
                           history_length: int) -> Dict[str, tf.Tensor]:
    """Serialized tf.Examples [B] → model inputs.

    Returns:
      dict with hist_item, hist_group, hist_behavior_id: [B, L] int32; hist_time:
      [B, L] int64; request_time: [B] int64; cand_item, cand_group: [B] int32.
    """
    parsed = tf.io.parse_example(serialized, SERVING_FEATURE_SPEC)
    items = tf.RaggedTensor.from_sparse(parsed[HIST_ITEM_ID])
    behaviors = tf.RaggedTensor.from_sparse(parsed[HIST_BEHAVIOR])
    times = tf.RaggedTensor.from_sparse(parsed[HIST_TIMESTAMP])
    n_items = items.row_lengths()
    checks = [
        tf.debugging.assert_equal(
            n_items, behaviors.row_lengths(),
            message=f"{HIST_ITEM_ID} and {HIST_BEHAVIOR} must have the same number of values"),
        tf.debugging.assert_equal(
            n_items, times.row_lengths(),
            message=f"{HIST_ITEM_ID} and {HIST_TIMESTAMP} must have the same number of values"),
        # Oldest first over the whole list, before the newest-L cut reads positions (the
        # dev server checks the same).
        _in_time_order(times),
    ]
    with tf.control_dependencies(checks):
        item_idx = items.with_flat_values(tables.item_idx(items.flat_values))
    behavior = behaviors.with_flat_values(tables.behavior_id(behaviors.flat_values))
    known = tf.not_equal(behavior, PAD_ID)                       # unknown behaviors: dropped
    item_idx, behavior, times = (tf.ragged.boolean_mask(v, known)
                                 for v in (item_idx, behavior, times))
    group = item_idx.with_flat_values(tables.group_of(item_idx.flat_values))
    cand_item = tables.item_idx(parsed[ITEM_ID])
    L = int(history_length)
    return {
        HIST_ITEM: _newest(item_idx, L, tf.int32),
        HIST_GROUP: _newest(group, L, tf.int32),
        HIST_BEHAVIOR_ID: _newest(behavior, L, tf.int32),
        HIST_TIME: _newest(times, L, tf.int64),
        REQUEST_TIME: parsed[TIMESTAMP],
        CAND_ITEM: cand_item,
        CAND_GROUP: tables.group_of(cand_item),
    }


def make_serving_example(item_id: str, timestamp: int, hist_item_id: Sequence[str] = (),
                         hist_behavior: Sequence[str] = (), hist_timestamp: Sequence[int] = (),
                         **extra: Mapping) -> bytes:
    """Builds one serialized serving tf.Example (the layout above)."""
    def b(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode() for v in values]))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    feats = {ITEM_ID: b([item_id]), TIMESTAMP: i([timestamp]), HIST_ITEM_ID: b(hist_item_id),
             HIST_BEHAVIOR: b(hist_behavior), HIST_TIMESTAMP: i(hist_timestamp)}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def examples_from_dense(inputs: Mapping[str, np.ndarray], item_ids: Sequence[str],
                        behavior_types: Sequence[str]) -> list:
    """Dense model inputs (ids) → serialized serving tf.Examples with string ids.

    The inverse of `parse_serving_examples` for in-vocabulary ids: turns real dense
    batches (e.g. a training run's parity batch) into the string form callers send.
    Padding (item 0) is dropped; OOV item ids (1) become the string "<oov>".
    """
    item_ids = np.asarray(item_ids, dtype=object)

    def item_str(idx):
        return "<oov>" if idx < NUM_RESERVED_IDS else str(item_ids[idx - NUM_RESERVED_IDS])

    out = []
    for r in range(len(inputs[CAND_ITEM])):
        keep = np.asarray(inputs[HIST_ITEM][r]) != PAD_ID
        out.append(make_serving_example(
            item_str(int(inputs[CAND_ITEM][r])), int(inputs[REQUEST_TIME][r]),
            [item_str(int(v)) for v in np.asarray(inputs[HIST_ITEM][r])[keep]],
            [behavior_types[int(v) - 1] if v >= 1 else "<pad>"
             for v in np.asarray(inputs[HIST_BEHAVIOR_ID][r])[keep]],
            np.asarray(inputs[HIST_TIME][r])[keep].tolist()))
    return out
