"""Beam file I/O that works the same on DirectRunner and DaskRunner, with a count check.

Why our own: under Beam 2.74's DaskRunner, ``beam.io.Read`` sources translate to a
no-op, outputs emitted from ``finish_bundle`` are dropped, and only the branch ending
at the last transform runs — so ``WriteToText`` / ``WriteToParquet`` /
``WriteToTFRecord`` write nothing there, silently. The transforms here use only
``Create``, ``ParDo``, ``GroupByKey`` and ``Flatten``, which every runner executes.

Reading::

    rows = p | ReadParquet("behaviors.parquet", columns=[...])   # PCollection[dict]

Writing (one terminal step for any number of outputs — DaskRunner needs that)::

    {"train": train_examples, "eval": eval_examples} | WriteOutputs({
        "train": TFRecordSink("out/train"), "eval": TFRecordSink("out/eval")})
    items | "Write" >> WriteOutputs({"groups": ParquetSink("out/groups", schema)})

Protocol of a write:

1. every bundle writes its elements to its own uniquely named shard in a temporary
   directory ``<dest>.tmp-<token>`` beside the destination (same filesystem) and emits
   ``(shard, 1)`` per element; a retried bundle writes a new shard, and the failed
   attempt's outputs (and so its shard) are discarded by the runner;
2. the per-shard counts are summed and gathered on one key together with one seed
   element per output, so the finalize step runs even when an output is empty;
3. finalize reads the row count of every listed shard back from disk and compares it
   with the emitted count (raises `SinkCountError` naming output, shard and both
   numbers on mismatch), renames the shards to ``part-00000-of-0000N.<ext>``, writes
   ``_SUCCESS.json`` (rows, shards) and renames the temp directory onto ``<dest>``
   (replacing an older ``<dest>``). Nothing appears at ``<dest>`` unless all outputs
   of the step passed the check; a failed run leaves only ``*.tmp-*`` directories.

Destinations are local or shared POSIX paths (an NFS/CSI volume on a cluster): the
rename is atomic there; object stores are not supported by this sink.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import shutil
import struct
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam

from dmgin_tf.errors import DataError, DmginError

SUCCESS_FILE = "_SUCCESS.json"


class SinkCountError(DmginError):
    """Rows found on disk differ from rows the writers counted (lost or partial shards)."""


# --------------------------------------------------------------------------- sinks


@dataclasses.dataclass(frozen=True)
class ParquetSink:
    """Parquet output directory of dict rows.

    Attributes:
      path: destination directory (created by the finalize step).
      schema: `pyarrow.Schema`; each element is a dict with these columns (numpy
        arrays are fine for list columns).
      batch_rows: rows buffered per Parquet row group.
    """
    path: str
    schema: Any
    batch_rows: int = 8192
    extension = ".parquet"

    def open(self, filename: str) -> "_ParquetShardWriter":
        return _ParquetShardWriter(filename, self.schema, self.batch_rows)

    @staticmethod
    def count(filename: str) -> int:
        import pyarrow.parquet as pq
        return pq.ParquetFile(filename).metadata.num_rows


@dataclasses.dataclass(frozen=True)
class TFRecordSink:
    """TFRecord output directory; each element is ``bytes`` (e.g. a serialized
    ``tf.train.Example``). `compression`: "" (``.tfrecord``) or "gzip" (``.tfrecord.gz``,
    what TensorFlow reads with ``compression_type="GZIP"`` and TFX/Beam detect by suffix)."""
    path: str
    compression: str = ""

    def __post_init__(self):
        if self.compression not in ("", "gzip"):
            raise DataError(f"TFRecordSink: compression must be '' or 'gzip', got "
                            f"{self.compression!r}")

    @property
    def extension(self) -> str:
        return ".tfrecord.gz" if self.compression == "gzip" else ".tfrecord"

    def open(self, filename: str) -> "_TFRecordShardWriter":
        return _TFRecordShardWriter(filename, self.compression)

    @staticmethod
    def count(filename: str) -> int:
        return count_tfrecords(filename)


class _ParquetShardWriter:
    def __init__(self, filename, schema, batch_rows):
        import pyarrow.parquet as pq
        self._schema = schema
        self._batch_rows = batch_rows
        self._rows: List[dict] = []
        self._writer = pq.ParquetWriter(filename, schema)

    def write(self, row: Mapping[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._batch_rows:
            self._flush()

    def _flush(self):
        import pyarrow as pa
        if self._rows:
            cols = {f.name: [r[f.name] for r in self._rows] for f in self._schema}
            self._writer.write_table(pa.Table.from_pydict(cols, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


class _TFRecordShardWriter:
    def __init__(self, filename, compression: str = ""):
        self._raw = open(filename, "wb")
        # mtime=0: the same records give the same bytes (cache keys, reproducible sizes).
        self._f = (gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
                   if compression == "gzip" else self._raw)

    def write(self, record: bytes) -> None:
        if not isinstance(record, (bytes, bytearray)):
            raise DataError(f"TFRecordSink: element must be bytes, got {type(record).__name__}")
        # Beam's TFRecord codec (length + masked crc32c framing, as TensorFlow reads it).
        from apache_beam.io.tfrecordio import _TFRecordUtil
        _TFRecordUtil.write_record(self._f, bytes(record))

    def close(self) -> None:
        if self._f is not self._raw:
            self._f.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()


def _open_tfrecords(filename: str):
    """Binary reader of a TFRecord file, gunzipped when the name ends in ``.gz``."""
    return gzip.open(filename, "rb") if filename.endswith(".gz") else open(filename, "rb")


def count_tfrecords(filename: str) -> int:
    """Number of records in a TFRecord file (``.gz``: gzip) — framing only, no CRC check.

    Raises:
      SinkCountError: the file ends inside a record (truncated write).
    """
    n, pos = 0, 0
    with _open_tfrecords(filename) as f:
        while True:
            header = f.read(8)
            if not header:
                return n
            if len(header) < 8:
                raise SinkCountError(f"{filename}: truncated TFRecord header at byte {pos}")
            (length,) = struct.unpack("<Q", header)
            body = f.read(4 + length + 4)   # length crc, data, data crc
            if len(body) < 4 + length + 4:
                raise SinkCountError(f"{filename}: truncated TFRecord at byte {pos}")
            pos += 8 + len(body)
            n += 1


def read_tfrecords(path: str) -> List[bytes]:
    """All records of a committed TFRecord output directory (or one file), in shard order."""
    from apache_beam.io.tfrecordio import _TFRecordUtil
    out = []
    for filename in output_files(path):
        with _open_tfrecords(filename) as f:
            while True:
                rec = _TFRecordUtil.read_record(f)
                if rec is None:
                    break
                out.append(rec)
    return out


def read_parquet_table(path: str, columns: Optional[Sequence[str]] = None):
    """A committed Parquet output directory (or one file) as one `pyarrow.Table`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    files = output_files(path)
    tables = [pq.read_table(f, columns=list(columns) if columns else None) for f in files]
    if not tables:
        raise DataError(f"{path}: no Parquet files")
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def output_files(path: str) -> List[str]:
    """Data files of a committed output directory (checked via its ``_SUCCESS.json``),
    or ``[path]`` for a plain file.

    Raises:
      DataError: `path` is a directory without ``_SUCCESS.json`` (incomplete output).
    """
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or output directory")
    marker = os.path.join(path, SUCCESS_FILE)
    if not os.path.exists(marker):
        raise DataError(f"{path}: no {SUCCESS_FILE}; the directory is not a complete output")
    with open(marker, encoding="utf-8") as f:
        info = json.load(f)
    return [os.path.join(path, s) for s in info["shards"]]


def output_rows(path: str) -> int:
    """Row count recorded in a committed output directory's ``_SUCCESS.json``."""
    with open(os.path.join(path, SUCCESS_FILE), encoding="utf-8") as f:
        return int(json.load(f)["rows"])


# --------------------------------------------------------------------------- writing


class _WriteShardsFn(beam.DoFn):
    """Writes a bundle's elements into one fresh shard; emits ``(name, shard, 1)`` each."""

    def __init__(self, name: str, sink, tmp_dir: str):
        self._name, self._sink, self._tmp_dir = name, sink, tmp_dir

    def start_bundle(self):
        self._writer = None
        self._shard = None

    def process(self, element):
        if self._writer is None:
            os.makedirs(self._tmp_dir, exist_ok=True)
            self._shard = f"shard-{uuid.uuid4().hex}{self._sink.extension}"
            self._writer = self._sink.open(os.path.join(self._tmp_dir, self._shard))
        self._writer.write(element)
        # Counted per element, not in finish_bundle: DaskRunner drops finish_bundle output.
        yield (self._name, self._shard), 1

    def finish_bundle(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _FinalizeFn(beam.DoFn):
    """Checks every output's shards against the counts and commits them atomically."""

    def __init__(self, sinks: Mapping[str, Any], tmp_dirs: Mapping[str, str],
                 expected_rows: Optional[Mapping[str, int]] = None):
        self._sinks, self._tmp_dirs = dict(sinks), dict(tmp_dirs)
        self._expected = dict(expected_rows or {})

    def process(self, element):
        _, records = element
        counts: Dict[str, Dict[str, int]] = {name: {} for name in self._sinks}
        for rec in records:
            if rec is None:  # seed element: makes finalize run for empty outputs
                continue
            (name, shard), n = rec
            counts[name][shard] = counts[name].get(shard, 0) + n
        summary = commit_outputs(self._sinks, self._tmp_dirs, counts, self._expected)
        for name, rows in sorted(summary.items()):
            yield name, rows


def commit_outputs(sinks: Mapping[str, Any], tmp_dirs: Mapping[str, str],
                   counts: Mapping[str, Mapping[str, int]],
                   expected_rows: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """Verifies on-disk shard rows == counted rows (== `expected_rows[name]` where
    given) for every output, then renames each temp directory onto its destination.
    Returns ``{output name: rows}``.

    Raises:
      SinkCountError: a counted shard is missing or holds a different number of rows,
        or an output's total differs from its expected rows; nothing is committed.
    """
    checked = {}
    for name, sink in sinks.items():
        tmp = tmp_dirs[name]
        shards = sorted(counts.get(name, {}).items())
        want = (expected_rows or {}).get(name)
        if want is not None and sum(n for _, n in shards) != want:
            raise SinkCountError(f"output {name!r}: writers counted {sum(n for _, n in shards)} "
                                 f"rows, the stage expected {want}; nothing committed")
        for shard, expected in shards:
            filename = os.path.join(tmp, shard)
            if not os.path.exists(filename):
                raise SinkCountError(f"output {name!r}: shard {filename} counted {expected} rows "
                                     "but is missing on disk (was the temp dir on a filesystem "
                                     "the finalizing worker cannot see?)")
            found = sink.count(filename)
            if found != expected:
                raise SinkCountError(f"output {name!r}: shard {filename} holds {found} rows, "
                                     f"writers counted {expected}")
        checked[name] = shards
    summary = {}
    for name, sink in sinks.items():
        tmp, shards = tmp_dirs[name], checked[name]
        os.makedirs(tmp, exist_ok=True)
        final_names = []
        for i, (shard, _) in enumerate(shards):
            final = f"part-{i:05d}-of-{len(shards):05d}{sink.extension}"
            os.rename(os.path.join(tmp, shard), os.path.join(tmp, final))
            final_names.append(final)
        if not final_names and isinstance(sink, ParquetSink):
            # An empty output still carries its schema: one zero-row part file.
            final = f"part-00000-of-00001{sink.extension}"
            sink.open(os.path.join(tmp, final)).close()
            final_names.append(final)
        # Shards of failed/retried bundles are not in the counts: drop them.
        for stray in set(os.listdir(tmp)) - set(final_names):
            os.remove(os.path.join(tmp, stray))
        rows = sum(n for _, n in shards)
        with open(os.path.join(tmp, SUCCESS_FILE), "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "shards": final_names}, f)
        _replace_dir(tmp, sink.path)
        summary[name] = rows
    return summary


def _replace_dir(src: str, dest: str) -> None:
    """Renames directory `src` onto `dest`, replacing an existing `dest`."""
    if os.path.exists(dest):
        old = f"{dest}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
        os.rename(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dest)


class WriteOutputs(beam.PTransform):
    """Writes several PCollections to their sinks in ONE terminal step, count-checked.

    Apply to a dict ``{name: PCollection}`` (or a single PCollection when `sinks` has one
    entry). Output: PCollection of ``(name, rows)`` after all outputs are committed.

    Args:
      sinks: ``{name: ParquetSink | TFRecordSink}``; destinations must differ.
      expected_rows: optional ``{name: rows}`` the stage knows it must write (e.g. one
        embedding per input item); checked before anything is committed, so a runner
        that drops elements fails the run instead of publishing a short output.
    """

    def __init__(self, sinks: Mapping[str, Any], label: Optional[str] = None,
                 expected_rows: Optional[Mapping[str, int]] = None):
        super().__init__(label)
        self._expected = dict(expected_rows or {})
        if not sinks:
            raise ValueError("WriteOutputs: sinks must not be empty")
        paths = [os.path.abspath(s.path) for s in sinks.values()]
        if len(set(paths)) != len(paths):
            raise ValueError(f"WriteOutputs: destinations must differ, got {paths}")
        self._sinks = {name: dataclasses.replace(s, path=os.path.abspath(s.path))
                       for name, s in sinks.items()}
        token = uuid.uuid4().hex[:12]
        self._tmp_dirs = {name: f"{s.path}.tmp-{token}" for name, s in self._sinks.items()}

    def expand(self, pcolls):
        if isinstance(pcolls, beam.PCollection):
            if len(self._sinks) != 1:
                raise ValueError("WriteOutputs: a single PCollection needs exactly one sink")
            pcolls = {next(iter(self._sinks)): pcolls}
        if set(pcolls) != set(self._sinks):
            raise ValueError(f"WriteOutputs: inputs {sorted(pcolls)} != sinks {sorted(self._sinks)}")
        pipeline = next(iter(pcolls.values())).pipeline
        counted = []
        for name, pc in sorted(pcolls.items()):
            counted.append(
                pc | f"WriteShards[{name}]" >> beam.ParDo(
                    _WriteShardsFn(name, self._sinks[name], self._tmp_dirs[name]))
                | f"CountShard[{name}]" >> beam.CombinePerKey(sum))
        seed = pipeline | "Seed" >> beam.Create([None])
        return ((seed, *counted) | "Gather" >> beam.Flatten()
                | "OneKey" >> beam.Map(lambda rec: (0, rec))
                | "Collect" >> beam.GroupByKey()
                | "Finalize" >> beam.ParDo(_FinalizeFn(self._sinks, self._tmp_dirs,
                                                       self._expected)))


# --------------------------------------------------------------------------- reading


def parquet_files(path: str) -> List[str]:
    """The Parquet files of `path`: a directory written by our sinks (its manifest), a
    directory of *.parquet, a file or a glob; DataError when there are none."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, SUCCESS_FILE)):
            return output_files(path)
        files = sorted(glob.glob(os.path.join(path, "*.parquet")))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise DataError(f"{path}: no Parquet files found")
    return files


def parquet_work_items(path: str, min_splits: int = 1) -> List[Tuple[str, int, int, int]]:
    """``(file, row_group, start, stop)`` read work items covering a Parquet input.

    Row groups are cut into row ranges until there are at least `min_splits` items, so
    a single-row-group file still spreads over workers (each range re-reads its row
    group's requested columns: cheap next to what the stages do per row).
    """
    import pyarrow.parquet as pq
    groups = []
    for f in parquet_files(path):
        meta = pq.ParquetFile(f).metadata
        groups += [(f, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    per_group = max(1, -(-max(1, min_splits) // max(1, len(groups))))
    items = []
    for f, i, n in groups:
        k = max(1, min(per_group, n))
        bounds = [round(j * n / k) for j in range(k + 1)]
        items += [(f, i, bounds[j], bounds[j + 1]) for j in range(k) if bounds[j + 1] > bounds[j]]
    return items


class _ReadRowGroupFn(beam.DoFn):
    def __init__(self, columns, batch_size):
        self._columns = list(columns) if columns else None
        self._batch_size = batch_size

    def process(self, work):
        import pyarrow.parquet as pq
        filename, row_group, start, stop = work
        table = pq.ParquetFile(filename).read_row_group(row_group, columns=self._columns)
        table = table.slice(start, stop - start)
        for batch in table.to_batches(max_chunksize=self._batch_size):
            yield from batch.to_pylist()


class ReadParquet(beam.PTransform):
    """Parquet rows as dicts from a Create of row ranges (DaskRunner-safe).

    Args:
      path: a file, a glob, or a directory of ``*.parquet`` / a committed output dir.
      columns: columns to read (default all).
      min_splits: at least this many read work items (parallelism: under DaskRunner the
        partitions of everything downstream, GroupByKey included, follow this Create).

    Output: PCollection of ``{column: value}`` dicts (list columns as Python lists).
    """

    def __init__(self, path: str, columns: Optional[Sequence[str]] = None,
                 min_splits: int = 8, batch_size: int = 4096, label: Optional[str] = None):
        super().__init__(label)
        self._work = parquet_work_items(path, min_splits)  # resolved now: fail fast
        self._columns, self._batch_size = columns, batch_size

    def expand(self, pbegin):
        return (pbegin | "RowRanges" >> beam.Create(self._work)
                | "ReadRows" >> beam.ParDo(_ReadRowGroupFn(self._columns, self._batch_size)))


def parquet_table_rows(path: str) -> int:
    """Rows of a Parquet file / glob / directory, from metadata only."""
    import pyarrow.parquet as pq
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))
