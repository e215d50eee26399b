"""Beam example builder: canonical behaviors → per-user labelled records by split.

The protocol (split by time, strictly-before history, seeded negatives) lives in ONE
place, `dmgin_tf.data.examples.build_user_examples`; this module only distributes it:

    behaviors.parquet ─ReadParquet(row ranges, global row number)─► (user, (ts, row, item, behavior))
      ─GroupByKey(user)─► sort by (timestamp, row) ─build_user_examples─► records
      ─Filter by split─► WriteOutputs(train/ val/ test/ TFRecord, count-checked, atomic)

Two record formats:
- `build_user_records` (the TFX pipeline): one `tf.train.SequenceExample` per user and
  split — the behaviors the split's examples can read, its labelled events, positions
  that point at them and its sampled negatives
  (`to_sequence_example`, `dmgin_tf.data.sequences`): O(behaviors); the Evaluator expands
  the test records into flat tf.Examples itself (`tfx_pipeline.eval_records`);
- `build_examples` (reference, bring-your-own): one flat tf.Example per example with its
  history copied in (features below): O(examples × history).

The row number reproduces the converter's file order as the timestamp tie-break, so the
Beam builder and the in-process numpy builder (`build_example_set`) produce the same
examples on any runner (tested, order-independent).

tf.Example features (keys from `dmgin_tf.features`; `feature_spec()` parses them):

  user_id        bytes [1]      item_id (candidate) bytes [1]   category (candidate) bytes [1]
  label          int64 [1]      timestamp (request time, s) int64 [1]
  hist_item_id   bytes [h]      hist_behavior (behavior strings) bytes [h]
  hist_timestamp int64 [h]      — the newest h = min(max_history, available) behaviors
                                  strictly before `timestamp`, oldest first.

Negatives' universe = the items table in file order (the same `ItemIndex.item_ids` the
numpy builder uses); the candidate's category comes from the items table ("" if absent).
The catalog (ids + categories) is held in each worker's memory — the negative sampler
needs the full id list anyway; behaviors, the big side, are never collected.

Under DaskRunner, multi-output ParDos (`with_outputs`, `Partition`) feed every output
with all elements, so splits are separated by three filters instead.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import apache_beam as beam

from dmgin_tf import features as F
from dmgin_tf.config import BeamConfig, DataConfig
from dmgin_tf.data.converted import check_converted
from dmgin_tf.data.datasets import DatasetSpec, data_behavior_types, get_spec
from dmgin_tf.data.examples import (SPLIT_NAMES, ItemUniverse, UserExamples,
                                    build_user_examples)
from dmgin_tf.data.sequences import (POS_EVENT, POS_HIST_END, POS_LABEL, POS_SAMPLED,  # noqa: F401
                                     SAMPLED_GROUP, SAMPLED_ITEM, SEQ_BEHAVIOR, SEQ_GROUP,
                                     SEQ_ITEM, SEQ_TIME, SEQUENCE_BYTES, SEQUENCE_INTS,
                                     record_windows)
from dmgin_tf.errors import DataError
from transform import beam_io
from transform.beam_runner import beam_pipeline, dask_npartitions, default_workers

BEHAVIORS_FILE = "behaviors.parquet"
ITEMS_FILE = "items.parquet"
_ROW = "_row"


def feature_spec(with_groups: bool = False) -> dict:
    """`tf.io.parse_example` spec of the examples this module writes (`with_groups`: the
    examples were built with `item_groups`, adding `group_id` / `hist_group_id`)."""
    import tensorflow as tf
    one_str, one_int = tf.io.FixedLenFeature([], tf.string), tf.io.FixedLenFeature([], tf.int64)
    spec = {F.USER_ID: one_str, F.ITEM_ID: one_str, F.CATEGORY: one_str, F.LABEL: one_int,
            F.TIMESTAMP: one_int, F.HIST_ITEM_ID: tf.io.VarLenFeature(tf.string),
            F.HIST_BEHAVIOR: tf.io.VarLenFeature(tf.string),
            F.HIST_TIMESTAMP: tf.io.VarLenFeature(tf.int64)}
    if with_groups:
        spec[F.GROUP_ID] = one_int
        spec[F.HIST_GROUP_ID] = tf.io.VarLenFeature(tf.int64)
    return spec


def example_rows(user_id: str, items: np.ndarray, behaviors: np.ndarray, timestamps: np.ndarray,
                 ue: UserExamples, categories: Mapping[str, str], max_history: int
                 ) -> Iterable[Tuple[str, dict]]:
    """(split name, feature dict) per example of `ue`; history = newest `max_history`
    behaviors before each example, oldest first (arrays of one user, sorted)."""
    start = ue.history_start(max_history)
    for e in range(len(ue)):
        s, t = int(start[e]), int(ue.hist_end[e])
        cand = str(ue.cand_item[e])
        yield SPLIT_NAMES[int(ue.split[e])], {
            F.USER_ID: str(user_id), F.ITEM_ID: cand, F.CATEGORY: categories.get(cand, ""),
            F.LABEL: int(ue.label[e]), F.TIMESTAMP: int(ue.timestamp[e]),
            F.HIST_ITEM_ID: [str(v) for v in items[s:t]],
            F.HIST_BEHAVIOR: [str(v) for v in behaviors[s:t]],
            F.HIST_TIMESTAMP: [int(v) for v in timestamps[s:t]]}


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """Length-delimited protobuf field (wire type 2) with field number `tag`."""
    return _varint((tag << 3) | 2) + _varint(len(payload)) + payload


def _feature(kind: str, values) -> bytes:
    """Serialized `tf.train.Feature`: BytesList of str (kind "bytes") or packed Int64List."""
    if kind == "bytes":
        return _field(1, b"".join(_field(1, v.encode("utf-8")) for v in values))
    inner = _field(1, b"".join(_varint(int(v)) for v in values)) if len(values) else b""
    return _field(3, inner)


def _map_entry(key: str, payload: bytes) -> bytes:
    return _field(1, _field(1, key.encode("utf-8")) + _field(2, payload))


def to_tf_example(row: dict) -> bytes:
    """Feature dict (as from `example_rows`) -> serialized `tf.train.Example`.

    Encoded by hand in protobuf wire format (Example{Features{map<string, Feature>}},
    BytesList / packed Int64List) so Beam workers need not import TensorFlow (≈ 5-15 s
    per worker process); tests parse the result with TensorFlow.
    """
    def feature(key: str, kind: str, values) -> bytes:
        return _map_entry(key, _feature(kind, values))

    parts = [
        feature(F.USER_ID, "bytes", [row[F.USER_ID]]), feature(F.ITEM_ID, "bytes", [row[F.ITEM_ID]]),
        feature(F.LABEL, "int", [row[F.LABEL]]), feature(F.TIMESTAMP, "int", [row[F.TIMESTAMP]]),
        feature(F.HIST_ITEM_ID, "bytes", row[F.HIST_ITEM_ID]),
        feature(F.HIST_BEHAVIOR, "bytes", row[F.HIST_BEHAVIOR]),
        feature(F.HIST_TIMESTAMP, "int", row[F.HIST_TIMESTAMP])]
    if F.CATEGORY in row:  # examples built from behaviors (user records carry no category)
        parts.append(feature(F.CATEGORY, "bytes", [row[F.CATEGORY]]))
    if F.GROUP_ID in row:  # built with item_groups (TFX pipeline)
        parts += [feature(F.GROUP_ID, "int", [row[F.GROUP_ID]]),
                  feature(F.HIST_GROUP_ID, "int", row[F.HIST_GROUP_ID])]
    feats = b"".join(parts)
    return _field(1, feats)                                          # Example.features


def from_tf_example(record: bytes) -> dict:
    """Serialized example -> feature dict (inverse of `to_tf_example`; for tests/tools)."""
    from tensorflow.core.example import example_pb2
    f = example_pb2.Example.FromString(record).features.feature
    s = lambda k: [v.decode("utf-8") for v in f[k].bytes_list.value]  # noqa: E731
    n = lambda k: list(f[k].int64_list.value)  # noqa: E731
    row = {F.USER_ID: s(F.USER_ID)[0], F.ITEM_ID: s(F.ITEM_ID)[0],
           F.LABEL: n(F.LABEL)[0], F.TIMESTAMP: n(F.TIMESTAMP)[0],
           F.HIST_ITEM_ID: s(F.HIST_ITEM_ID), F.HIST_BEHAVIOR: s(F.HIST_BEHAVIOR),
           F.HIST_TIMESTAMP: n(F.HIST_TIMESTAMP)}
    if F.CATEGORY in f:
        row[F.CATEGORY] = s(F.CATEGORY)[0]
    if F.GROUP_ID in f:
        row[F.GROUP_ID], row[F.HIST_GROUP_ID] = n(F.GROUP_ID)[0], n(F.HIST_GROUP_ID)
    return row


# Per-process cache: under DaskRunner DoFn.setup runs per partition, so the catalog
# structures are built once per worker process here instead.
_CATALOG_CACHE: Dict[str, Tuple[Optional[ItemUniverse], Dict[str, str]]] = {}


class _UserFn(beam.DoFn):
    """What both user DoFns share: the catalog (once per worker process) and one user's
    rows -> time-ordered arrays + `UserExamples` (the protocol's labelled events)."""

    def __init__(self, spec: DatasetSpec, cfg: DataConfig, item_ids: Sequence[str],
                 categories: Mapping[str, str]):
        self._spec, self._cfg = spec, cfg
        self._item_ids, self._categories = list(item_ids), dict(categories)
        self._token = uuid.uuid4().hex

    def setup(self):
        if self._token not in _CATALOG_CACHE:
            universe = ItemUniverse(self._item_ids) if self._spec.sample_negatives else None
            _CATALOG_CACHE[self._token] = (universe, self._categories)
        self._universe, self._cats = _CATALOG_CACHE[self._token]

    def _user(self, element):
        """``(user_id, rows)`` -> (user_id, items, behaviors, timestamps, UserExamples)."""
        user_id, rows = element
        rows = sorted(rows)  # (timestamp, file row): the protocol's order
        ts = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        items = np.array([r[2] for r in rows], dtype=object)
        behaviors = np.array([r[3] for r in rows], dtype=object)
        ue = build_user_examples(user_id, items, behaviors, ts, self._spec,
                                 item_universe=self._universe, seed=self._cfg.seed, cfg=self._cfg)
        return user_id, items, behaviors, ts, ue


class _UserExamplesFn(_UserFn):
    """``(user_id, [(ts, row, item, behavior)])`` -> ``(split, serialized tf.Example)``."""

    def __init__(self, spec: DatasetSpec, cfg: DataConfig, item_ids: Sequence[str],
                 categories: Mapping[str, str], item_groups: Optional[Mapping[str, int]] = None):
        super().__init__(spec, cfg, item_ids, categories)
        self._groups = dict(item_groups) if item_groups is not None else None

    def process(self, element):
        user_id, items, behaviors, ts, ue = self._user(element)
        for split, row in example_rows(user_id, items, behaviors, ts, ue, self._cats,
                                       self._cfg.max_history):
            if self._groups is not None:  # unknown item -> group OOV_ID
                row[F.GROUP_ID] = int(self._groups.get(row[F.ITEM_ID], F.OOV_ID))
                row[F.HIST_GROUP_ID] = [int(self._groups.get(v, F.OOV_ID))
                                        for v in row[F.HIST_ITEM_ID]]
            yield split, to_tf_example(row)


# ------------------------------------------------------------------ per-user sequence records
# Feature list keys of a user record: `dmgin_tf.data.sequences` (imported above).


def to_sequence_example(user_id: str, lists: Mapping[str, Sequence]) -> bytes:
    """One user record -> serialized `tf.train.SequenceExample` (hand-encoded, no TF).

    lists: every key of SEQUENCE_BYTES (str values) and SEQUENCE_INTS (ints); each value
    becomes one step of its feature list (a Feature with one value). A list without steps
    (no sampled candidates) is left out: readers take a missing list as empty, and data
    validation cannot type a feature that never has a value.
    """
    context = _map_entry(F.USER_ID, _feature("bytes", [user_id]))
    entries = []
    for key in SEQUENCE_BYTES + SEQUENCE_INTS:
        if not len(lists[key]):
            continue
        kind = "bytes" if key in SEQUENCE_BYTES else "int"
        steps = b"".join(_field(1, _feature(kind, [v])) for v in lists[key])
        entries.append(_map_entry(key, steps))                       # FeatureLists map entry
    return _field(1, context) + _field(2, b"".join(entries))


def sequence_feature_spec():
    """`tf.io.parse_sequence_example` specs `(context, sequence)` of a user record;
    sequence features parse as RaggedTensors `[B, (steps), (1)]` (one value per step)."""
    import tensorflow as tf
    context = {F.USER_ID: tf.io.FixedLenFeature([], tf.string)}
    seq = {k: tf.io.RaggedFeature(tf.string) for k in SEQUENCE_BYTES}
    seq.update({k: tf.io.RaggedFeature(tf.int64) for k in SEQUENCE_INTS})
    return context, seq


def from_sequence_example(record: bytes) -> Tuple[str, dict]:
    """Serialized user record -> (user id, {key: list}) (inverse of `to_sequence_example`)."""
    from tensorflow.core.example import example_pb2
    se = example_pb2.SequenceExample.FromString(record)
    user = b"".join(se.context.feature[F.USER_ID].bytes_list.value[:1]).decode("utf-8")
    lists = {}
    for key in SEQUENCE_BYTES + SEQUENCE_INTS:
        kind = "bytes_list" if key in SEQUENCE_BYTES else "int64_list"
        values = [getattr(f, kind).value for f in se.feature_lists.feature_list[key].feature]
        bad = [j for j, v in enumerate(values) if len(v) != 1]
        if bad:
            raise DataError(f"user record {user!r}: {key} step {bad[0]} has "
                            f"{len(values[bad[0]])} {kind} values (one per step)")
        lists[key] = ([v[0].decode("utf-8") for v in values] if key in SEQUENCE_BYTES
                      else [int(v[0]) for v in values])
    return user, lists


def user_records(user_id: str, items: np.ndarray, behaviors: np.ndarray, timestamps: np.ndarray,
                 groups: np.ndarray, ue: UserExamples, window: int, cand_groups: np.ndarray
                 ) -> Iterable[Tuple[str, bytes]]:
    """(split name, serialized user record) per split with examples (`record_windows`).

    A position whose candidate is its event's own item stores only the event's index;
    sampled candidates (negatives) are stored once each, with their group.
    """
    for code, start, stop, ex in record_windows(ue, window):
        sampled = np.asarray(ue.cand_item[ex] != items[ue.event[ex]], dtype=bool)
        yield SPLIT_NAMES[code], to_sequence_example(str(user_id), {
            SEQ_ITEM: [str(v) for v in items[start:stop]],
            SEQ_BEHAVIOR: [str(v) for v in behaviors[start:stop]],
            SEQ_TIME: timestamps[start:stop], SEQ_GROUP: groups[start:stop],
            POS_HIST_END: ue.hist_end[ex] - start, POS_EVENT: ue.event[ex] - start,
            POS_LABEL: ue.label[ex], POS_SAMPLED: sampled.astype(np.int64),
            SAMPLED_ITEM: [str(v) for v in ue.cand_item[ex][sampled]],
            SAMPLED_GROUP: cand_groups[ex][sampled]})


def flip_labels(label: np.ndarray, fraction: float, user_id: str, seed: int) -> np.ndarray:
    """Fault injection (tests / drills): `fraction` of labels replaced by seeded coin flips."""
    import zlib
    rng = np.random.default_rng([int(seed), zlib.crc32(str(user_id).encode("utf-8"))])
    hit = rng.random(len(label)) < fraction
    return np.where(hit, rng.integers(0, 2, len(label)), label).astype(label.dtype)


class _UserRecordsFn(_UserFn):
    """``(user_id, [(ts, row, item, behavior)])`` -> ``(split, serialized user record)``."""

    def __init__(self, spec: DatasetSpec, cfg: DataConfig, item_ids: Sequence[str],
                 categories: Mapping[str, str], item_groups: Mapping[str, int], window: int,
                 label_noise: float = 0.0):
        super().__init__(spec, cfg, item_ids, categories)
        self._window = int(window)
        self._groups, self._noise = dict(item_groups), float(label_noise)

    def process(self, element):
        user_id, items, behaviors, ts, ue = self._user(element)
        if self._noise > 0:
            ue.label = flip_labels(ue.label, self._noise, user_id, self._cfg.seed)
        group = lambda v: int(self._groups.get(str(v), F.OOV_ID))  # noqa: E731
        groups = np.array([group(v) for v in items], dtype=np.int64)
        cand_groups = np.array([group(v) for v in ue.cand_item], dtype=np.int64)
        yield from user_records(user_id, items, behaviors, ts, groups, ue, self._window,
                                cand_groups)


class ReadRowRanges(beam.DoFn):
    """Work item ``(file, row_group, start, stop, global_offset)`` -> keyed behaviors."""

    def process(self, work):
        import pyarrow.parquet as pq
        filename, rg, start, stop, offset = work
        t = pq.ParquetFile(filename).read_row_group(
            rg, columns=[F.USER_ID, F.ITEM_ID, F.BEHAVIOR, F.TIMESTAMP]).slice(start, stop - start)
        cols = [t.column(c).to_pylist() for c in (F.USER_ID, F.ITEM_ID, F.BEHAVIOR, F.TIMESTAMP)]
        for j, (u, i, b, ts) in enumerate(zip(*cols)):
            if ts is None or u is None or i is None or b is None:
                raise DataError(f"{filename}: row {offset + j} has a null field")
            yield str(u), (int(ts), offset + j, str(i), str(b))


def row_range_work(path: str, splits: int) -> List[tuple]:
    """Row-range work items plus each range's global row number (file order)."""
    import pyarrow.parquet as pq
    files = beam_io.parquet_files(path)
    base, offsets = 0, {}
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            offsets[(f, rg)] = base
            base += meta.row_group(rg).num_rows
    return [(f, rg, s, e, offsets[(f, rg)] + s)
            for f, rg, s, e in beam_io.parquet_work_items(path, splits)]


def _keep_split(element, name):
    split, record = element
    if split == name:
        yield record


def _prepare(data_dir: str, data_cfg: DataConfig, beam_cfg: BeamConfig, splits: int):
    """Checks the inputs; returns (dataset spec, read work items, catalog ids, categories)."""
    import pyarrow.parquet as pq
    beh_path = os.path.join(data_dir, BEHAVIORS_FILE)
    items_path = os.path.join(data_dir, ITEMS_FILE)
    check_converted(data_dir, data_cfg.dataset)
    items = pq.read_table(items_path, columns=[F.ITEM_ID, F.CATEGORY]
                          if F.CATEGORY in pq.ParquetFile(items_path).schema_arrow.names
                          else [F.ITEM_ID])
    item_ids = [str(v) for v in items.column(F.ITEM_ID).to_pylist()]
    cats = (items.column(F.CATEGORY).to_pylist() if F.CATEGORY in items.column_names
            else [""] * len(item_ids))
    categories = {i: (c or "") for i, c in zip(item_ids, cats)}
    # The behavior column is read only for generic data without a conversion report.
    observed = (data_behavior_types(data_dir)
                if data_cfg.dataset == "generic" and not data_cfg.behavior_types else None)
    spec = get_spec(data_cfg.dataset, data_cfg, observed_behaviors=observed)
    spec.require_both_labels()
    if not splits:
        splits = (dask_npartitions(beam_cfg) if beam_cfg.runner == "dask"
                  else max(2, 2 * (beam_cfg.direct_num_workers or default_workers())))
    return spec, row_range_work(beh_path, splits), item_ids, categories


def _run(work, user_fn: beam.DoFn, sinks: Mapping[str, beam_io.TFRecordSink],
         beam_cfg: BeamConfig, dask_address: Optional[str]) -> Dict[str, int]:
    """Read -> group per user -> `user_fn` -> one committed TFRecord output per sink name."""
    with beam_pipeline(beam_cfg, dask_address) as p:
        records = (p | "RowRanges" >> beam.Create(work)
                   | "ReadBehaviors" >> beam.ParDo(ReadRowRanges())
                   | "PerUser" >> beam.GroupByKey()
                   | "BuildExamples" >> beam.ParDo(user_fn))
        by_split = {name: records | f"Keep[{name}]" >> beam.FlatMap(_keep_split, name)
                    for name in sinks}
        by_split | "Write" >> beam_io.WriteOutputs(dict(sinks))
    return {name: beam_io.output_rows(sink.path) for name, sink in sinks.items()}


def build_examples(data_dir: str, output_dir: str, data_cfg: DataConfig, beam_cfg: BeamConfig,
                   *, dask_address: Optional[str] = None, splits: int = 0,
                   item_groups: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """Builds flat tf.Examples (one per example, history copied in) with Beam; writes
    ``<output_dir>/{train,val,test}/``. The reference format of the protocol (tests,
    bring-your-own-examples); the pipeline stores `build_user_records` instead.

    Args:
      data_dir: converter output with ``behaviors.parquet`` and ``items.parquet``.
      output_dir: receives one committed TFRecord directory per split.
      data_cfg: dataset, split fractions, max_history, negatives, seed.
      beam_cfg: runner.
      dask_address: use this Dask scheduler (overrides `beam_cfg`).
      splits: read work items (0 = 2 per worker).
      item_groups: optional item id -> group id (the TFX ItemGrouper's table); adds int64
        `group_id` [1] and `hist_group_id` [h] features (unknown items -> OOV_ID).

    Returns: ``{split: examples written}`` (each checked against the writers' counts).
    """
    spec, work, item_ids, categories = _prepare(data_dir, data_cfg, beam_cfg, splits)
    sinks = {name: beam_io.TFRecordSink(os.path.join(output_dir, name)) for name in SPLIT_NAMES}
    return _run(work, _UserExamplesFn(spec, data_cfg, item_ids, categories, item_groups),
                sinks, beam_cfg, dask_address)


def build_user_records(data_dir: str, output_dir: str, data_cfg: DataConfig,
                       beam_cfg: BeamConfig, *, item_groups: Mapping[str, int], window: int,
                       label_noise: float = 0.0, dask_address: Optional[str] = None,
                       splits: int = 0, compression: str = "gzip") -> Dict[str, int]:
    """Builds one `tf.train.SequenceExample` per (user, split) with Beam.

    Writes ``<output_dir>/{train,val,test}/`` (user records, `dmgin_tf.data.sequences`).
    Storage: O(behaviors) — nothing per example; the Evaluator expands the test records
    itself (`tfx_pipeline.eval_records`).

    Args:
      item_groups: item id -> group id (ItemGrouper); unknown items -> OOV_ID.
      window: behaviors before a split's first example kept in its record
        (`min(data.max_history, model.history_length)`: what the model reads).
      label_noise: fault injection, fraction of labels replaced by seeded coin flips.
      compression: "gzip" (files ``*.tfrecord.gz``) or "" (uncompressed).
    Other args as `build_examples`.

    Returns: ``{output name: records written}``.
    """
    spec, work, item_ids, categories = _prepare(data_dir, data_cfg, beam_cfg, splits)
    sinks = {name: beam_io.TFRecordSink(os.path.join(output_dir, name), compression)
             for name in SPLIT_NAMES}
    fn = _UserRecordsFn(spec, data_cfg, item_ids, categories, item_groups, window, label_noise)
    return _run(work, fn, sinks, beam_cfg, dask_address)


def read_examples(path: str) -> List[dict]:
    """All examples of a committed split directory as feature dicts."""
    return [from_tf_example(r) for r in beam_io.read_tfrecords(path)]
