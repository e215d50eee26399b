"""Per-user sequence records: the O(events) training format of the TFX pipeline.

A user's labelled examples share one behavior sequence, so instead of one record per
example (each carrying a copy of its history: O(n²) for a user with n events) the
pipeline stores one record per (user, split): the behaviors a split's examples can read,
in time order, plus the split's labelled positions. Histories are cut only when a batch
is made (`dmgin_tf.data.batches.densify`, the same code for TF and JAX training).

Record of user u for split s (what `record_windows` computes, `transform.examples`
serializes as a `tf.train.SequenceExample`):

  behaviors  the user's behaviors `[start, stop)` in (timestamp, file order), where
             `start` = `max(0, smallest hist_end - window)` and `stop` = one past the
             split's last labelled event: the behaviors the newest-`window` histories of
             these examples contain, plus the labelled events themselves;
  positions  per example of the split (negatives included): `hist_end - start` (its
             history = the record's behaviors before that index, strictly-before rule of
             `dmgin_tf.data.examples`), `event - start` (its labelled event: the request
             time, and the candidate unless sampled), label, sampled flag;
  sampled    the sampled candidates (negatives), one per position with the flag set, in
             position order.

A position's candidate is stored only when it is not its event's own item, so a record
holds each behavior once and each sampled negative once (`resolve_positions` reads them
back).

`example_set_from_records` turns a batch of decoded records into an `ExampleSet` (one
"user" row per record) without a Python loop over examples, so the numpy/JAX and the TF
trainers read the pipeline's records through one expansion (`densify`).
"""
from __future__ import annotations

from typing import Iterator, Mapping, Optional, Tuple

import numpy as np

from dmgin_tf.data.examples import ExampleSet, UserExamples
from dmgin_tf import features as F
from dmgin_tf.errors import DataError

# Version of the record layout below: bump it with any change to the keys or their
# meaning. The ExampleBuilder passes it as an execution property and the pipeline imports
# `tfx_pipeline/schema/user_records_v<N>.pbtxt`, so cached outputs of another layout are
# never reused (TFX caches on properties, not on code or file contents).
RECORD_FORMAT = 2
# Feature list keys of a user record (context: `user_id`). Behaviors, one step each, time order:
SEQ_ITEM, SEQ_BEHAVIOR, SEQ_TIME, SEQ_GROUP = F.ITEM_ID, F.BEHAVIOR, F.TIMESTAMP, F.GROUP_ID
# Labelled positions (negatives included), one step each. A position's request time is its
# labelled event's timestamp and its candidate the event's item, unless sampled:
POS_HIST_END = "pos_hist_end"   # history = the record's behaviors [0, pos_hist_end)
POS_EVENT = "pos_event"         # index of the labelled event in the record (>= pos_hist_end)
POS_LABEL = "pos_label"
POS_SAMPLED = "pos_sampled"     # 1: the candidate is the next sampled item (a negative)
# Sampled candidates, one step per position with pos_sampled = 1, in position order:
SAMPLED_ITEM, SAMPLED_GROUP = "sampled_item_id", "sampled_group_id"
# Lists of one kind hold one step per behavior / position / sampled candidate.
LIST_KINDS = ((SEQ_ITEM, SEQ_BEHAVIOR, SEQ_TIME, SEQ_GROUP),
              (POS_HIST_END, POS_EVENT, POS_LABEL, POS_SAMPLED),
              (SAMPLED_ITEM, SAMPLED_GROUP))
SEQUENCE_BYTES = (SEQ_ITEM, SEQ_BEHAVIOR, SAMPLED_ITEM)
SEQUENCE_INTS = (SEQ_TIME, SEQ_GROUP, POS_HIST_END, POS_EVENT, POS_LABEL, POS_SAMPLED,
                 SAMPLED_GROUP)


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
        yield code, max(0, int(ue.hist_end[ex].min()) - window), int(ue.event[ex].max()) + 1, ex


def steps_per_record(user_ids, steps: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, ...]:
    """Steps per record of each list kind (`LIST_KINDS`): `(behaviors, positions,
    sampled)`, each [R], from `steps` (list key -> [R] steps per record).

    Raises:
      DataError: naming the user, when lists of one kind differ in length.
    """
    out = []
    for kind in LIST_KINDS:
        first = np.asarray(steps[kind[0]])
        for key in kind[1:]:
            differ = np.flatnonzero(np.asarray(steps[key]) != first)
            if len(differ):
                r = int(differ[0])
                raise DataError(f"user record {str(user_ids[r])!r}: {key} has "
                                f"{int(steps[key][r])} steps, {kind[0]} {int(first[r])}")
        out.append(first)
    return tuple(out)


def resolve_positions(user_ids: np.ndarray, behavior_counts: np.ndarray,
                      position_counts: np.ndarray, sampled_counts: np.ndarray,
                      beh_values: Mapping[str, np.ndarray], pos_hist_end: np.ndarray,
                      pos_event: np.ndarray, pos_sampled: np.ndarray,
                      sampled_values: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Each position's candidate and request time from its record (R records, E positions).

    Args:
      user_ids: [R] (for errors). behavior_counts / position_counts / sampled_counts: [R]
        steps per record of the behavior, position and sampled lists.
      beh_values: name -> [N] per-behavior values, records concatenated ("time", Unix
        seconds, required; e.g. "item", "group").
      sampled_values: the same names -> [S] values of the sampled candidates ("time"
        excepted: a sampled position takes its event's time).
      pos_hist_end, pos_event, pos_sampled: [E] record-relative indices and 0/1 flags.

    Returns: name -> [E]: the event's value, or for a sampled position the next sampled
    candidate's (every name of `beh_values`).

    Raises:
      DataError: naming the user and field, when an event index is outside its record or
        before its history's end, behaviors are not in time order, a history holds a
        behavior not strictly before its event, a flag is not 0/1, or a record's sampled
        candidates do not match its flags.
    """
    behavior_counts = np.asarray(behavior_counts, np.int64)
    position_counts = np.asarray(position_counts, np.int64)
    sampled_counts = np.asarray(sampled_counts, np.int64)
    pos_event = np.asarray(pos_event, np.int64)
    pos_sampled = np.asarray(pos_sampled, np.int64)
    if not (len(pos_event) == len(pos_sampled) == len(pos_hist_end) == position_counts.sum()):
        raise DataError(f"records: {position_counts.sum()} positions counted, "
                        f"pos_hist_end / pos_event / pos_sampled have {len(pos_hist_end)} / "
                        f"{len(pos_event)} / {len(pos_sampled)} steps")
    record = np.repeat(np.arange(len(behavior_counts)), position_counts)

    def fail(mask, what):
        j = int(np.flatnonzero(mask)[0])
        r = record[j]
        first = j - int(position_counts[:r].sum())
        raise DataError(f"user record {str(user_ids[r])!r}: position {first}: {what(j)}")

    pos_hist_end = np.asarray(pos_hist_end, np.int64)
    bad = pos_hist_end < 0
    if bad.any():
        fail(bad, lambda j: f"pos_hist_end = {pos_hist_end[j]} is negative")
    bad = (pos_event < pos_hist_end) | (pos_event >= behavior_counts[record])
    if bad.any():
        fail(bad, lambda j: f"{POS_EVENT} = {pos_event[j]} is not in [pos_hist_end = "
                            f"{pos_hist_end[j]}, {behavior_counts[record[j]]} behaviors)")
    bad = (pos_sampled != 0) & (pos_sampled != 1)
    if bad.any():
        fail(bad, lambda j: f"{POS_SAMPLED} = {pos_sampled[j]} (must be 0 or 1)")
    flagged = np.bincount(record, weights=pos_sampled, minlength=len(sampled_counts))
    if (flagged != sampled_counts).any():
        r = int(np.flatnonzero(flagged != sampled_counts)[0])
        raise DataError(f"user record {str(user_ids[r])!r}: {int(flagged[r])} positions have "
                        f"{POS_SAMPLED} = 1 but the record has {int(sampled_counts[r])} sampled "
                        f"candidates")
    for name, values in sampled_values.items():
        if len(values) != sampled_counts.sum():
            raise DataError(f"records: {sampled_counts.sum()} sampled candidates counted, "
                            f"{len(values)} sampled {name} values")
    offsets = np.concatenate([[0], np.cumsum(behavior_counts)])[:-1]
    event = offsets[record] + pos_event
    time = np.asarray(beh_values["time"]).astype(np.int64)
    owner = np.repeat(np.arange(len(behavior_counts)), behavior_counts)
    back = np.flatnonzero((np.diff(time) < 0) & (owner[1:] == owner[:-1])) + 1
    if len(back):
        i, r = int(back[0]), int(owner[back[0]])
        raise DataError(f"user record {str(user_ids[r])!r}: timestamp of behavior "
                        f"{i - int(offsets[r])} ({time[i]}) is before the one preceding it "
                        f"({time[i - 1]}): behaviors must be in time order")
    # The strict-before rule: the history's newest behavior precedes the event's second
    # (behaviors are in time order, so every other one does too).
    last = offsets[record] + pos_hist_end - 1
    bad = (pos_hist_end > 0) & (time[np.maximum(last, 0)] >= time[event])
    if bad.any():
        fail(bad, lambda j: f"pos_hist_end = {pos_hist_end[j]} puts a behavior at timestamp "
                            f"{time[last[j]]} into the history of an event at {time[event[j]]} "
                            f"(histories hold only behaviors strictly before their event)")
    sampled = pos_sampled.astype(bool)
    out = {}
    for name, values in beh_values.items():
        v = np.asarray(values)[event]
        if name in sampled_values:
            extra = np.asarray(sampled_values[name])
            if v.dtype.kind in "USO" or extra.dtype.kind in "USO":
                v = v.astype(object)   # fixed-width strings would cut longer sampled ids
            v[sampled] = extra
        out[name] = v
    return out


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
