"""Catalog embedding in Beam, and the one embedding-table format every consumer reads.

**Embedding table** (what `EmbedCatalog` writes and the k-means stage reads): a
committed `beam_io` Parquet output directory (`part-*.parquet` + `_SUCCESS.json`)
with exactly two columns::

    item_id    string          (non-empty, unique)
    embedding  list<float32>   (same length D in every row; the encoder's are unit-norm)

`embed_catalog(items, encoder_dir, output_dir, beam_cfg)` writes::

    <output_dir>/embeddings/   the table above
    <output_dir>/bad_rows/     Parquet, item_id string + reason string, one row per
                               handled bad row (no_item_id, no_text, truncated_text,
                               bad_image; see transform.encoder.catalog)
    <output_dir>/report.json   rows, D, encoder version, counts per reason

**External embeddings** (a user's own MLLM vectors, docs/design.md: Data formats): Parquet (columns
`item_id`, `embedding`) or TFRecord of `tf.train.Example` (`item_id` bytes_list,
`embedding` float_list), read by `read_external_embeddings` with dimension, finiteness
and duplicate-id checks (errors name the file, row and item), and converted to the
table above by `import_external_embeddings`.

Beam notes: `EncoderModelHandler` holds the one way to run the encoder on a batch
of rows (`load_model` + `run_inference`, the `RunInference` handler interface; the
stock TensorFlow handler does not import on this stack, docs/design.md: Environment). `EmbedCatalog`
does NOT use `RunInference`: its `BatchElements` emits the last batch from
`finish_bundle`, whose output DaskRunner drops (docs/scale-out.md), so rows were lost.
Instead rows get a stable batch key (crc32 of the item id), are grouped with
`GroupByKey` and each group is embedded inside `process` in chunks of
`max_batch_size` — no state is held until `finish_bundle`. The model is loaded once
per worker process and cached in module state keyed by the encoder version
directory, because under DaskRunner `DoFn.setup` runs per bundle (beam_runner doc).
Reads/writes go through `transform.beam_io` (DaskRunner-safe, count-checked; the
embeddings sink is told the expected row count, so a short output is never committed).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from dmgin_tf import features as F
from dmgin_tf.errors import DataError, DmginError

_LOG = logging.getLogger(__name__)

EMBEDDING = "embedding"     # column / feature name of the vector
REASON = "reason"
EMBEDDINGS_SUBDIR = "embeddings"
BAD_ROWS_SUBDIR = "bad_rows"
REPORT_FILE = "report.json"
METRICS_NAMESPACE = "dmgin_embedding"


def embedding_schema():
    """pyarrow schema of the embedding table: item_id string, embedding list<float32>."""
    import pyarrow as pa
    return pa.schema([(F.ITEM_ID, pa.string()), (EMBEDDING, pa.list_(pa.float32()))])


def bad_rows_schema():
    import pyarrow as pa
    return pa.schema([(F.ITEM_ID, pa.string()), (REASON, pa.string())])


# --------------------------------------------------------------------------- Beam model handler

_MODEL_CACHE: Dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def cached_encoder(version_dir: str):
    """`load_encoder(version_dir)`, loaded once per process (thread-safe)."""
    with _MODEL_LOCK:
        enc = _MODEL_CACHE.get(version_dir)
        if enc is None:
            from transform.encoder.io import load_encoder
            enc = load_encoder(version_dir)
            _MODEL_CACHE[version_dir] = enc
        return enc


def _handler_base():
    from apache_beam.ml.inference.base import ModelHandler
    return ModelHandler


class EncoderModelHandler(_handler_base()):
    """`RunInference` handler: catalog row dicts in, one result dict per row out.

    Args:
      encoder_dir: an encoder base or version directory (`save_encoder`); the version
        is resolved once, at construction, so every worker embeds with the same one.
      batch_size: rows per forward pass inside a batch.
      min_batch_size, max_batch_size: Beam's `BatchElements` bounds.

    Each output is `{"item_id": str, "embedding": float32 [D] | None, "reasons": [str]}`;
    `embedding` is None only for rows without an item id.
    """

    def __init__(self, encoder_dir: str, batch_size: int = 256, min_batch_size: int = 1,
                 max_batch_size: int = 256):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        from transform.encoder.io import resolve_version_dir
        self._version_dir = str(resolve_version_dir(encoder_dir).resolve())
        self._batch_size = int(batch_size)
        self._min_batch, self._max_batch = int(min_batch_size), int(max_batch_size)

    @property
    def version_dir(self) -> str:
        return self._version_dir

    def load_model(self):
        return cached_encoder(self._version_dir)

    def run_inference(self, batch: Sequence[dict], model, inference_args=None) -> Iterable[dict]:
        from apache_beam.metrics import Metrics
        from transform.encoder.catalog import prepare_catalog
        from transform.encoder.item_encoder import embed_prepared
        from transform.encoder.model import FULL_VIEW
        prepared = prepare_catalog(list(batch), model.preprocessor, model.config.image_size,
                                   views=(FULL_VIEW,), with_images=True)
        vectors = embed_prepared(model, prepared.inputs, self._batch_size)
        Metrics.counter(METRICS_NAMESPACE, "rows").inc(len(batch))
        for reason, n in prepared.report.counts.items():
            if n:
                Metrics.counter(METRICS_NAMESPACE, reason).inc(n)
        by_row = {int(r): j for j, r in enumerate(prepared.kept)}
        out = []
        for i, row in enumerate(batch):
            j = by_row.get(i)
            out.append({F.ITEM_ID: str(prepared.item_ids[j]) if j is not None else
                        str(row.get(F.ITEM_ID) or ""),
                        EMBEDDING: vectors[j] if j is not None else None,
                        "reasons": prepared.row_reasons[i]})
        return out

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    def batch_elements_kwargs(self):
        return {"min_batch_size": self._min_batch, "max_batch_size": self._max_batch}

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def share_model_across_processes(self) -> bool:
        return False


def _to_table_row(result: dict) -> dict:
    return {F.ITEM_ID: result[F.ITEM_ID],
            EMBEDDING: np.asarray(result[EMBEDDING], dtype=np.float32).tolist()}


def _bad_rows(result: dict):
    for reason in result["reasons"]:
        yield {F.ITEM_ID: result[F.ITEM_ID], REASON: reason}


def _beam():
    import apache_beam as beam
    return beam


def _batch_key(row: dict, num_keys: int) -> int:
    """Stable batch key in [0, num_keys): crc32 of the item id (same on every worker;
    Python's `hash` of a str is salted per process)."""
    import zlib
    iid = row.get(F.ITEM_ID)
    return zlib.crc32(("" if iid is None else str(iid)).encode("utf-8")) % num_keys


class _Progress:
    """Rows embedded by this process, reported through `log` each time the count passes
    another tenth of `total` (on a multi-process runner each worker reports its own share).
    Per-process module state: DoFn instances come and go per bundle."""

    _lock = threading.Lock()
    _done: Dict[str, int] = {}
    _start: Dict[str, float] = {}

    @classmethod
    def begin(cls, key: str) -> None:
        """Starts the clock of run `key` (once per process): before its first chunk, so
        the rate includes that chunk's time."""
        import time
        with cls._lock:
            cls._start.setdefault(key, time.monotonic())

    @classmethod
    def add(cls, key: str, rows: int, total: int, log: Optional[Callable[[str], None]]):
        import time
        if log is None or total <= 0:
            return
        with cls._lock:
            before = cls._done.get(key, 0)
            start = cls._start.setdefault(key, time.monotonic())
            done = cls._done[key] = before + rows
        if done * 10 // total > before * 10 // total:
            seconds = time.monotonic() - start
            log(f"embedded {done:,}/{total:,} rows in {seconds:.0f} s"
                + (f" ({done / seconds:.0f} rows/s)" if seconds > 0 else ""))


class _EmbedGroupFn(_beam().DoFn):
    """`(key, rows)` → one handler result per row; the model runs inside `process`.

    Rows of a group are sorted by item id (GroupByKey order is not deterministic) and
    embedded in chunks of `handler.max_batch_size` rows via `handler.run_inference`.
    `log` (picklable, e.g. `print`) gets a progress line per tenth of `total` rows.
    """

    def __init__(self, handler: EncoderModelHandler, total: int = 0,
                 log: Optional[Callable[[str], None]] = None):
        import uuid
        self._handler = handler
        self._model = None
        self._total, self._log = int(total), log
        self._run = uuid.uuid4().hex       # one progress count per pipeline run

    def setup(self):
        self._model = self._handler.load_model()  # cached per process (cached_encoder)

    def process(self, element):
        _, rows = element
        rows = sorted(rows, key=lambda r: str(r.get(F.ITEM_ID) or ""))
        step = max(1, self._handler.max_batch_size)
        _Progress.begin(self._run)
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            yield from self._handler.run_inference(chunk, self._model)
            _Progress.add(self._run, len(chunk), self._total, self._log)


class EmbedCatalog(_beam().PTransform):
    """Catalog rows → `{"embeddings": PCollection[table row], "bad_rows": PCollection}`.

    Input: PCollection of item dicts (canonical item columns; `ReadParquet` output).
    Output dict: ``embeddings`` rows `{item_id: str, embedding: list[float]}` (one per
    row with an item id) and ``bad_rows`` rows `{item_id, reason}`.

    Args:
      handler: the encoder handler (model loading + per-batch inference).
      num_keys: number of batch keys (groups); `embed_catalog` uses
        ceil(rows / max_batch_size) so a group is about one model batch and groups
        spread over workers.
      total, log: rows expected and a picklable progress callback (e.g. `print`): one
        line per tenth of `total` embedded, per worker process.

    Batching is keyed `GroupByKey`, not `RunInference`/`BatchElements`, because the
    latter emits its last batch from `finish_bundle`, which DaskRunner drops.
    """

    def __init__(self, handler: EncoderModelHandler, label: Optional[str] = None,
                 num_keys: int = 1, total: int = 0,
                 log: Optional[Callable[[str], None]] = None):
        super().__init__(label)
        if int(num_keys) < 1:
            raise ValueError(f"EmbedCatalog: num_keys must be >= 1, got {num_keys!r}")
        self._handler = handler
        self._num_keys = int(num_keys)
        self._total, self._log = int(total), log

    def expand(self, rows):
        beam = _beam()
        num_keys = self._num_keys
        results = (rows | "BatchKey" >> beam.Map(lambda r: (_batch_key(r, num_keys), r))
                   | "Batch" >> beam.GroupByKey()
                   | "Encode" >> beam.ParDo(_EmbedGroupFn(self._handler, self._total,
                                                         self._log)))
        embeddings = (results | "HasEmbedding" >> beam.Filter(lambda r: r[EMBEDDING] is not None)
                      | "ToTableRow" >> beam.Map(_to_table_row))
        bad = results | "BadRows" >> beam.FlatMap(_bad_rows)
        return {EMBEDDINGS_SUBDIR: embeddings, BAD_ROWS_SUBDIR: bad}


def refuse_duplicate_ids(ids, where: str) -> None:
    """A catalog or embedding table lists each item once: a repeated id would give one
    item two embeddings (and later two groups)."""
    seen: dict = {}
    for row, value in enumerate(ids):
        key = "" if value is None else str(value).strip()
        if not key:
            continue
        if key in seen:
            raise DataError(f"{where}: duplicate {F.ITEM_ID} {key!r} (rows {seen[key]} and "
                            f"{row}); list each item once")
        seen[key] = row


def embed_catalog(items_path: str, encoder_dir: str, output_dir: str, beam_cfg=None,
                  batch_size: int = 256, max_batch_size: int = 256,
                  log: Optional[Callable[[str], None]] = None) -> dict:
    """Runs the catalog embedding pipeline; returns (and writes) the report.

    Args:
      items_path: items Parquet (file, glob or directory) with the canonical columns.
      encoder_dir: encoder base/version dir from `dmgin encoder train`.
      output_dir: receives `embeddings/`, `bad_rows/` and `report.json` (module doc).
      beam_cfg: `BeamConfig` (runner selection, `transform.beam_runner`); default
        DirectRunner.
      batch_size, max_batch_size: forward-pass rows and rows per model call (also
        sets the number of batch keys, ceil(rows / max_batch_size)).
      log: picklable progress callback (e.g. `print`): a line per tenth of the catalog
        embedded (per worker process on a multi-process runner).

    Raises:
      beam_io.SinkCountError (from the pipeline): the embeddings output would not hold
        one row per input row with an id; nothing is committed.
      DmginError: the committed table's row count differs (defensive re-check).
    """
    import pyarrow.parquet as pq
    from dmgin_tf.config import BeamConfig
    from transform import beam_io
    from transform.beam_runner import beam_pipeline

    for name, value in (("batch_size", batch_size), ("max_batch_size", max_batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise DataError(f"embed_catalog: {name}={value!r} must be an integer >= 1")
    beam_cfg = beam_cfg or BeamConfig()
    files = beam_io.parquet_files(items_path)
    schema_names = pq.ParquetFile(files[0]).schema_arrow.names
    if F.ITEM_ID not in schema_names:
        raise DataError(f"{files[0]}: items table lacks column {F.ITEM_ID!r}; has {schema_names}")
    columns = [c for c in F.ITEM_COLUMNS if c in schema_names]
    ids = [v for f in files for v in pq.read_table(f, columns=[F.ITEM_ID]).column(0).to_pylist()]
    refuse_duplicate_ids(ids, items_path)
    expected = sum(1 for v in ids if v is not None and str(v).strip())
    handler = EncoderModelHandler(encoder_dir, batch_size=batch_size,
                                  max_batch_size=max_batch_size)
    os.makedirs(output_dir, exist_ok=True)
    emb_path = os.path.join(output_dir, EMBEDDINGS_SUBDIR)
    bad_path = os.path.join(output_dir, BAD_ROWS_SUBDIR)
    num_keys = max(1, -(-len(ids) // max(1, int(max_batch_size))))
    with beam_pipeline(beam_cfg) as p:
        outputs = (p | "ReadItems" >> beam_io.ReadParquet(items_path, columns=columns)
                   | "Embed" >> EmbedCatalog(handler, num_keys=num_keys, total=len(ids),
                                           log=log))
        # expected_rows: a runner that drops rows fails here, before anything is committed.
        _ = outputs | "Write" >> beam_io.WriteOutputs({
            EMBEDDINGS_SUBDIR: beam_io.ParquetSink(emb_path, embedding_schema()),
            BAD_ROWS_SUBDIR: beam_io.ParquetSink(bad_path, bad_rows_schema())},
            expected_rows={EMBEDDINGS_SUBDIR: expected})
    written = beam_io.output_rows(emb_path)
    if written != expected:
        raise DmginError(f"{emb_path}: wrote {written} embeddings for {expected} items with an id")
    bad = beam_io.read_parquet_table(bad_path).to_pandas()
    counts = {r: 0 for r in ("no_item_id", "no_text", "truncated_text", "bad_image")}
    counts.update(bad[REASON].value_counts().to_dict())
    samples = {r: bad.loc[bad[REASON] == r, F.ITEM_ID].head(5).tolist() for r in counts}
    enc = cached_encoder(handler.version_dir)
    report = {"items_path": items_path, "rows": len(ids), "embedded": written,
              "embedding_dim": enc.embedding_dim, "encoder": handler.version_dir,
              "encoder_version": enc.metadata.get("version"), "runner": beam_cfg.runner,
              "counts": counts, "samples": samples, "table": emb_path}
    with open(os.path.join(output_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def embeddings_table_path(path: str) -> str:
    """`<dir>/embeddings` for an `embed_catalog` output dir, else `path` unchanged."""
    sub = os.path.join(path, EMBEDDINGS_SUBDIR)
    return sub if os.path.isdir(sub) else path


# --------------------------------------------------------------------------- table I/O


def write_embeddings(path: str, item_ids: Sequence[str], vectors: np.ndarray) -> str:
    """Writes an in-process embedding table as a committed one-shard output directory.

    Args:
      path: destination directory (replaced atomically when it exists).
      item_ids: `[N]` str.
      vectors: `[N, D]` float.
    """
    import uuid
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transform import beam_io
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
        raise ValueError(f"vectors shape {vectors.shape} does not match {len(item_ids)} ids")
    path = os.path.abspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    os.makedirs(tmp)
    shard = "shard-0.parquet"
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(len(vectors) + 1, dtype=np.int32) * vectors.shape[1])
    table = pa.Table.from_arrays([pa.array([str(i) for i in item_ids], pa.string()),
                                  pa.ListArray.from_arrays(offsets, flat)],
                                 schema=embedding_schema())
    pq.write_table(table, os.path.join(tmp, shard))
    beam_io.commit_outputs({"embeddings": beam_io.ParquetSink(path, embedding_schema())},
                           {"embeddings": tmp}, {"embeddings": {shard: len(item_ids)}})
    return path


def read_embeddings(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads an embedding table (ours or a user's Parquet) → `(ids [N] object, [N, D] float32)`.

    Same validation as `read_external_embeddings`.
    """
    return read_external_embeddings(embeddings_table_path(path))


def _files(path: str, exts: Tuple[str, ...]) -> List[str]:
    if os.path.isdir(path):
        from transform import beam_io
        if os.path.exists(os.path.join(path, beam_io.SUCCESS_FILE)):
            return beam_io.output_files(path)
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(exts))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise DataError(f"{path}: no embedding files found (expected {', '.join(exts)})")
    return files


def _is_tfrecord(files: Sequence[str]) -> bool:
    """Whether `files` are TFRecord (else Parquet); one table is one format."""
    def parquet(f):
        if f.endswith((".parquet", ".pq")):
            return True
        if f.endswith((".tfrecord", ".tfrecords", ".tfr")) or ".tfrecord" in f:
            return False
        with open(f, "rb") as fh:  # Parquet files start with b"PAR1"
            return fh.read(4) == b"PAR1"
    kinds = {f: parquet(f) for f in files}
    if len(set(kinds.values())) > 1:
        pq_file = next(f for f, k in kinds.items() if k)
        tfr_file = next(f for f, k in kinds.items() if not k)
        raise DataError(f"embeddings mix Parquet ({pq_file}) and TFRecord ({tfr_file}) files; "
                        f"give one table in one format (a file, a glob or a directory)")
    return not next(iter(kinds.values()))


def read_external_embeddings(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads precomputed item embeddings (Parquet or TFRecord) with validation.

    Args:
      path: a file, a glob, or a directory of `*.parquet` / `*.tfrecord*` files (or a
        committed output dir). Parquet: columns `item_id` (string/int) and `embedding`
        (list of numbers). TFRecord: `tf.train.Example`s with `item_id` (bytes_list, one
        value) and `embedding` (float_list).

    Returns:
      `(item_ids [N] object str, vectors [N, D] float32)` in file order (not normalised).

    Raises:
      DataError naming the file, row and item: missing column/feature, empty item id,
      missing embedding, a row whose length differs from the first row's, a non-finite
      value, a duplicate item id; or no rows at all.
    """
    files = _files(path, (".parquet", ".pq", ".tfrecord", ".tfrecords", ".tfr", ".gz"))
    rows = _read_tfrecord_rows(files) if _is_tfrecord(files) else _read_parquet_rows(files)
    ids: List[str] = []
    vecs: List[np.ndarray] = []
    seen: Dict[str, str] = {}
    dim = first = None
    for where, iid, vec in rows:
        iid = "" if iid is None else (iid.decode("utf-8", "replace") if isinstance(iid, bytes)
                                      else str(iid)).strip()
        if not iid:
            raise DataError(f"{where}: empty {F.ITEM_ID}")
        if vec is None:
            raise DataError(f"{where} (item {iid!r}): missing {EMBEDDING}")
        # numpy would parse "0.1" as a number: text is refused, not guessed. A column
        # holds one type, so its first value tells.
        first = vec[0] if isinstance(vec, (list, tuple)) and vec else None
        shown = vec if isinstance(vec, (str, bytes)) else first
        if isinstance(shown, (str, bytes)):
            raise DataError(f"{where} (item {iid!r}): {EMBEDDING} must be a list of numbers, "
                            f"got {type(vec).__name__} holding text {str(shown)[:40]!r}")
        try:
            with np.errstate(over="ignore"):      # overflow is reported below, by name
                arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where} (item {iid!r}): {EMBEDDING} must be a list of numbers, "
                            f"got {type(vec).__name__} {str(vec)[:40]!r} ({e})") from None
        if dim is None:
            dim, first = len(arr), f"{where} (item {iid!r})"
            if dim == 0:
                raise DataError(f"{first}: empty {EMBEDDING}")
        elif len(arr) != dim:
            raise DataError(f"{where} (item {iid!r}): {EMBEDDING} has {len(arr)} values, "
                            f"expected {dim} like {first}")
        if not np.isfinite(arr).all():
            raise DataError(f"{where} (item {iid!r}): non-finite value in {EMBEDDING}")
        if iid in seen:
            raise DataError(f"{where}: duplicate {F.ITEM_ID} {iid!r} (first at {seen[iid]})")
        seen[iid] = where
        ids.append(iid)
        vecs.append(arr)
    if not ids:
        raise DataError(f"{path}: no embeddings")
    return np.array(ids, dtype=object), np.stack(vecs)


def _read_parquet_rows(files):
    import pyarrow.parquet as pq
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        missing = [c for c in (F.ITEM_ID, EMBEDDING) if c not in names]
        if missing:
            raise DataError(f"{f}: embedding table lacks column(s) {missing}; has {names}")
        t = pq.read_table(f, columns=[F.ITEM_ID, EMBEDDING])
        for i, (iid, vec) in enumerate(zip(t.column(0).to_pylist(), t.column(1).to_pylist())):
            yield f"{f} row {i}", iid, vec


def _read_tfrecord_rows(files):
    import tensorflow as tf
    for f in files:
        compression = "GZIP" if f.endswith(".gz") else ""
        ds = tf.data.TFRecordDataset(f, compression_type=compression)
        try:
            for i, rec in enumerate(ds.as_numpy_iterator()):
                ex = tf.train.Example.FromString(rec)
                feat = ex.features.feature
                where = f"{f} record {i}"
                if F.ITEM_ID not in feat or EMBEDDING not in feat:
                    raise DataError(f"{where}: tf.Example lacks feature(s) "
                                    f"{[k for k in (F.ITEM_ID, EMBEDDING) if k not in feat]}")
                idf = feat[F.ITEM_ID]
                values = (list(idf.bytes_list.value) or [str(v) for v in idf.int64_list.value])
                if len(values) != 1:
                    raise DataError(f"{where}: {F.ITEM_ID} must hold one value, has {len(values)}")
                yield where, values[0], list(feat[EMBEDDING].float_list.value)
        except tf.errors.DataLossError as e:
            raise DataError(f"{f}: corrupt TFRecord file ({e.message.splitlines()[0]})") from None


def import_external_embeddings(path: str, output_dir: str, normalize: bool = False) -> dict:
    """Validates external embeddings and writes them as our embedding table.

    Returns `{"rows", "embedding_dim", "table"}`; the table is `<output_dir>/embeddings`.
    """
    ids, vecs = read_external_embeddings(path)
    if normalize:
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):   # a zero vector has no direction: it would stay 0 among unit vectors
            raise DataError(f"{path}: --normalize: {len(zero)} all-zero embedding(s), e.g. item "
                            f"{ids[zero[0]]!r}; drop them or import without --normalize")
        vecs = vecs / norms
    table = write_embeddings(os.path.join(output_dir, EMBEDDINGS_SUBDIR), ids, vecs)
    # An earlier `embed` into the same folder left its bad rows: they describe another table.
    import shutil
    shutil.rmtree(os.path.join(output_dir, BAD_ROWS_SUBDIR), ignore_errors=True)
    report = {"source": path, "rows": int(len(ids)), "embedding_dim": int(vecs.shape[1]),
              "table": table}
    with open(os.path.join(output_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def write_tfrecord_embeddings(path: str, item_ids: Sequence[str], vectors: np.ndarray) -> None:
    """Writes `tf.train.Example`s (`item_id` bytes, `embedding` floats): the TFRecord
    layout `read_external_embeddings` accepts (for users' exporters and tests)."""
    import tensorflow as tf
    with tf.io.TFRecordWriter(path) as w:
        for iid, vec in zip(item_ids, np.asarray(vectors, dtype=np.float32)):
            ex = tf.train.Example(features=tf.train.Features(feature={
                F.ITEM_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(iid).encode()])),
                EMBEDDING: tf.train.Feature(float_list=tf.train.FloatList(value=vec.tolist()))}))
            w.write(ex.SerializeToString())
