"""Per-user sequence records: the O(events) training format of the TFX pipeline.

A user's labelled examples share one behavior sequence, so instead of one record per
example (each carrying a copy of its history: O(n²) for a user with n events) the
pipeline stores one record per (user, split): the behaviors a split's examples can read,
in time order, plus the split's labelled positions. Histories are cut only when a batch
is made (`dmgin_tf.data.batches.densify`, the same code for TF and JAX training).

Record of user u for split s (what `record_windows` computes, `transform.examples`
serializes as a `tf.train.SequenceExample`):

  behaviors  the user's behaviors `[start, stop)` in (timestamp, file order), where
             `stop` = the largest `hist_end` of the split's examples and `start` =
             `max(0, smallest hist_end - window)`: exactly the behaviors the newest-`window`
             histories of these examples contain;
  positions  per example of the split (negatives included): `hist_end - start` (its
             history = the record's behaviors before that index, strictly-before rule of
             `dmgin_tf.data.examples`), candidate item, label, request time.

`example_set_from_records` turns a batch of decoded records into an `ExampleSet` (one
"user" row per record) without a Python loop over examples, so the numpy/JAX and the TF
trainers read the pipeline's records through one expansion (`densify`).
"""
from __future__ import annotations

from typing import Iterator, Mapping, Optional, Tuple

import numpy as np

from dmgin_tf.data.examples import ExampleSet, UserExamples
from dmgin_tf.errors import DataError


def record_windows(ue: UserExamples, window: int
                   ) -> Iterator[Tuple[int, int, int, np.ndarray]]:
    """Per split with examples: `(split code, start, stop, example indices)`.

    Args:
      ue: one user's examples (`build_user_examples`), histories relative to the user's
        sorted behaviors.
      window: the newest `window` behaviors before an example are all any consumer reads
        (`min(data.max_history, model.history_length)`); older ones are left out of the
        split's record. Must be >= 1.

    Storage per user: train ≤ n behaviors; val and eval ≤ window + their own events.
    """
    if window < 1:
        raise DataError(f"record window must be >= 1, got {window}")
    for code in range(3):
        ex = np.flatnonzero(ue.split == code)
        if not len(ex):
            continue
        he = ue.hist_end[ex]
        yield code, max(0, int(he.min()) - window), int(he.max()), ex


def example_set_from_records(user_ids: np.ndarray, behavior_counts: np.ndarray,
                             beh_item: np.ndarray, beh_group: np.ndarray,
                             beh_behavior: np.ndarray, beh_time: np.ndarray,
                             position_counts: np.ndarray, pos_hist_end: np.ndarray,
                             pos_item: np.ndarray, pos_group: np.ndarray, pos_label: np.ndarray,
                             pos_time: np.ndarray, split: int,
                             metadata: Optional[Mapping] = None) -> ExampleSet:
    """Decoded records (R of them) -> `ExampleSet` whose "users" are the records.

    Args:
      user_ids: [R] user id per record.
      behavior_counts: [R] behaviors per record; beh_*: [N] the records' behaviors
        concatenated in record order (ids already mapped: item / group ids, behavior ids
        1..T, Unix seconds).
      position_counts: [R] positions per record; pos_*: [E] the positions concatenated in
        record order; pos_hist_end is relative to the record's first behavior.
      split: split code (0 train, 1 val, 2 test) of every position.
      metadata: ExampleSet metadata (`max_history` decides the cut together with L).

    Raises:
      DataError: counts do not match the arrays, or a position points past its record.
    """
    behavior_counts = np.asarray(behavior_counts, np.int64)
    position_counts = np.asarray(position_counts, np.int64)
    if behavior_counts.sum() != len(beh_item) or position_counts.sum() != len(pos_hist_end):
        raise DataError(f"records: {behavior_counts.sum()} behaviors / {position_counts.sum()} "
                        f"positions counted, {len(beh_item)} / {len(pos_hist_end)} decoded")
    offsets = np.concatenate([[0], np.cumsum(behavior_counts)]).astype(np.int64)
    ex_user = np.repeat(np.arange(len(user_ids), dtype=np.int32), position_counts)
    es = ExampleSet(
        user_ids=np.asarray(user_ids, dtype=str), user_offsets=offsets,
        beh_item=np.asarray(beh_item, np.int32), beh_group=np.asarray(beh_group, np.int32),
        beh_behavior=np.asarray(beh_behavior, np.int32), beh_time=np.asarray(beh_time, np.int64),
        ex_user=ex_user, ex_hist_end=np.asarray(pos_hist_end, np.int32),
        ex_cand_item=np.asarray(pos_item, np.int32), ex_cand_group=np.asarray(pos_group, np.int32),
        ex_request_time=np.asarray(pos_time, np.int64),
        ex_label=np.asarray(pos_label, np.float32),
        ex_split=np.full(len(pos_hist_end), int(split), np.int8),
        metadata=dict(metadata or {}))
    es.validate()   # hist_end within the record, histories strictly before the request
    return es
