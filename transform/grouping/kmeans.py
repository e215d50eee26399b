"""Interest grouping by k-means over L2-normalised item embeddings, in Beam.

Input: item embeddings as Parquet with columns ``item_id`` (str) and ``embedding``
(list<float32>, all of one length D) — a file, a glob or a committed output directory
(`transform/embedding.py` writes one; users may bring their own MLLM vectors).

Algorithm (what `fit_kmeans` does):

1. Initialisation on a seeded uniform sample of ``kmeans_sample_size`` rows, streamed
   from the input by the driver (memory O(sample), not O(catalog)): greedy k-means++
   (2 + ln K local trials, as scikit-learn) refined by Lloyd on the sample, best of
   ``kmeans_init_trials`` seeds.
2. Lloyd iterations, one Beam pipeline each: work items = row ranges of the input
   (`beam_io.parquet_work_items`); a ParDo reads its range, normalises the vectors,
   finds the nearest centroid (centroids arrive as a side input) and emits one partial
   accumulator per range — per-centroid sums [K, D], counts [K], inertia — which
   `CombinePerKey` with a numpy `CombineFn` adds across workers. The driver divides
   sums by counts (an empty cluster keeps its previous centroid) and stops after
   ``kmeans_iterations`` or when the relative inertia improvement falls below `tol`.
   The catalog is never held in one process; each iteration re-reads it.
3. Stable ids: with a previous run's centroids, new centroids are renumbered by
   Hungarian matching on cosine similarity (`stable_ids`).
4. Final pass: each item goes to its nearest centroid; written through the
   count-checked sink as Parquet ``item_id``, ``group_id``.

``group_id`` is the cluster number 0..K-1 (stable id); the model's group id is
``group_id + 2`` (0 = padding, 1 = unknown), applied in exactly one place,
`dmgin_tf.data.item_index.ItemIndex.build(..., "table")`.

Why a driver loop and not an unrolled pipeline with chained side inputs: Beam has no
iteration primitive, and under DaskRunner a side input computed by the pipeline is
recomputed inside every task that reads it, so chained iterations cost exponentially
more; a side input from a `Create` (what we use) is free to recompute.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

import apache_beam as beam

from dmgin_tf.config import BeamConfig, GroupingConfig
from dmgin_tf.data.item_index import KMEANS_GROUPS_DIR
from dmgin_tf.errors import DataError, DmginError
from dmgin_tf.features import ITEM_ID
from transform import beam_io
from transform.beam_runner import beam_pipeline, dask_npartitions

EMBEDDING = "embedding"   # column of the item embedding table
GROUP_ID = "group_id"     # column of the item -> group table (same name as item_index.py)
CENTROIDS_FILE = "centroids.npy"
GROUPS_DIR = KMEANS_GROUPS_DIR
META_FILE = "kmeans.json"


# ----------------------------------------------------------------------------- numpy core


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: float32 [N, D] -> [N, D]; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||x_i - c_k||^2: x [N, D], centroids [K, D] -> float64 [N, K]. NaN centroid rows
    (ids unused after a stable-id remap) get +inf so they are never nearest."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    d = (x * x).sum(1, keepdims=True) - 2.0 * x @ np.nan_to_num(c).T + np.nansum(c * c, 1)[None]
    d = np.maximum(d, 0.0)
    d[:, np.isnan(c).any(1)] = np.inf
    return d


def assign(x: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centroid: x [N, D] (normalised), centroids [K, D] -> (int64 [N], sq dist [N]).
    Ties go to the lowest id (np.argmin), so every runner assigns identically."""
    d = squared_distances(x, centroids)
    idx = np.argmin(d, axis=1)
    return idx, d[np.arange(len(idx)), idx]


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii; 2 + ln k trials per step as sklearn).

    Args:
      x: [N, D] float, N >= k.
      k: number of centroids.
      seed: numpy seed.

    Returns: float32 [k, D] initial centroids (rows of x).
    """
    n = len(x)
    if n < k:
        raise DataError(f"grouping.num_groups={k} exceeds the {n} items available for k-means")
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    trials = 2 + int(np.log(k))
    centers = [int(rng.integers(n))]
    closest = squared_distances(x, x[centers]).ravel()
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: pick unused rows
            left = np.setdiff1d(np.arange(n), centers)
            centers.append(int(left[0]))
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        cand = np.minimum(cand, n - 1)
        d = np.minimum(closest[None, :], squared_distances(x[cand], x).astype(np.float64))
        best = int(np.argmin(d.sum(1)))
        centers.append(int(cand[best]))
        closest = d[best]
    return x[centers].astype(np.float32)


def lloyd_numpy(x: np.ndarray, centroids: np.ndarray, iterations: int, tol: float = 1e-4
                ) -> Tuple[np.ndarray, float]:
    """In-memory Lloyd on `x` [N, D] from `centroids` [K, D]: (centroids, inertia).
    Used on the init sample only; the full catalog goes through Beam (`lloyd_step`)."""
    c = np.asarray(centroids, np.float64).copy()
    prev = np.inf
    for _ in range(iterations):
        idx, dist = assign(x, c)
        inertia = float(dist.sum())
        counts = np.bincount(idx, minlength=len(c))
        sums = np.zeros_like(c)
        np.add.at(sums, idx, x)
        nz = counts > 0
        c[nz] = sums[nz] / counts[nz, None]
        if prev < np.inf and (prev - inertia) / max(prev, 1e-12) < tol:
            break
        prev = inertia
    return c.astype(np.float32), float(assign(x, c)[1].sum())


def initial_centroids(sample: np.ndarray, k: int, seed: int, trials: int) -> np.ndarray:
    """Best of `trials` seeded k-means++ runs, each refined by Lloyd on the sample:
    float32 [k, D]. Cheap (sample only) and removes most bad local minima before the
    expensive passes over the catalog."""
    best, best_inertia = None, np.inf
    for t in range(trials):
        c, inertia = lloyd_numpy(sample, kmeans_plus_plus(sample, k, seed + 7919 * t), 20)
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return best


# ----------------------------------------------------------------------------- input


def embedding_dim(path: str) -> Tuple[int, int]:
    """(rows, D) of an embedding table; DataError naming the file on a bad layout."""
    import pyarrow.parquet as pq
    files = beam_io.parquet_files(path)
    rows, dim = 0, None
    for f in files:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in (ITEM_ID, EMBEDDING) if c not in names]
        if missing:
            raise DataError(f"{f}: embedding table lacks column(s) {missing}; has {names}")
        check_embedding_type(f, pf.schema_arrow.field(EMBEDDING).type)
        rows += pf.metadata.num_rows
        if dim is None and pf.metadata.num_rows:
            first = pf.read_row_group(0, columns=[EMBEDDING]).column(0)[0].as_py()
            dim = len(first)
    if not rows or not dim:
        raise DataError(f"{path}: embedding table is empty")
    return rows, dim


def check_embedding_type(filename: str, column_type) -> None:
    """DataError unless the embedding column is a list of numbers (a list of strings
    such as "0.1" would otherwise be parsed as numbers, and words fail mid-fit)."""
    import pyarrow as pa
    value = getattr(column_type, "value_type", None)
    if value is None or not (pa.types.is_floating(value) or pa.types.is_integer(value)):
        raise DataError(f"{filename}: column {EMBEDDING!r} must hold lists of numbers, "
                        f"has {column_type}")


def read_range(work: Tuple[str, int, int, int]) -> Tuple[List[str], np.ndarray]:
    """One work item -> (item ids [n], normalised embeddings float32 [n, D])."""
    import pyarrow.parquet as pq
    filename, row_group, start, stop = work
    t = pq.ParquetFile(filename).read_row_group(row_group, columns=[ITEM_ID, EMBEDDING])
    t = t.slice(start, stop - start)
    ids = [str(v) for v in t.column(ITEM_ID).to_pylist()]
    col = t.column(EMBEDDING).combine_chunks()
    if col.null_count:
        raise DataError(f"{filename}: {col.null_count} null embedding(s) in rows {start}..{stop}")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    lens = np.diff(col.offsets.to_numpy())
    if len(ids) and (lens != lens[0]).any():
        bad = int(np.flatnonzero(lens != lens[0])[0])
        raise DataError(f"{filename}: item {ids[bad]!r} has an embedding of length {lens[bad]}, "
                        f"others {lens[0]}")
    x = flat.reshape(len(ids), -1) if len(ids) else np.zeros((0, 0), np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
        raise DataError(f"{filename}: item {ids[bad]!r} has a non-finite embedding value")
    zero = ~(x != 0).any(1) if x.size else np.zeros(len(ids), bool)
    if zero.any():
        # A zero vector has no direction: cosine k-means would put every such item into
        # whichever group comes first (often what a failed embedding job writes).
        bad = np.flatnonzero(zero)
        raise DataError(f"{filename}: item {ids[bad[0]]!r} has an all-zero embedding "
                        f"({len(bad)} such item(s) in rows {start}..{stop}); k-means groups "
                        f"by direction, so give these items an embedding or leave them out "
                        f"of the table (items without one get the unknown group)")
    return ids, l2_normalize(x)


def sample_rows(path: str, size: int, seed: int) -> np.ndarray:
    """Seeded uniform sample (without replacement) of normalised embeddings: [min(size, N), D].

    Streams row ranges; holds only the sample in memory.
    """
    total, _ = embedding_dim(path)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out, offset = [], 0
    for work in beam_io.parquet_work_items(path, 1):
        n = work[3] - work[2]
        sel = take[(take >= offset) & (take < offset + n)] - offset
        if len(sel):
            out.append(read_range(work)[1][sel])
        offset += n
    return np.concatenate(out)


# ----------------------------------------------------------------------------- Beam pieces


class _PartialStatsFn(beam.DoFn):
    """Row range -> ``(0, (sums [K, D] f64, counts [K] i64, inertia f64, rows))``."""

    def process(self, work, centroids):
        _, x = read_range(work)
        k = len(centroids)
        if not len(x):
            return
        idx, dist = assign(x, centroids)
        sums = np.zeros((k, centroids.shape[1]), np.float64)
        np.add.at(sums, idx, x)
        yield 0, (sums, np.bincount(idx, minlength=k).astype(np.int64),
                  float(dist.sum()), len(x))


class SumStatsFn(beam.CombineFn):
    """Adds partial (sums, counts, inertia, rows) accumulators; numpy throughout."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, stats):
        return self.merge_accumulators([acc, stats])

    def merge_accumulators(self, accs):
        accs = [a for a in accs if a is not None]
        if not accs:
            return None
        sums = np.sum([a[0] for a in accs], axis=0)
        counts = np.sum([a[1] for a in accs], axis=0)
        return sums, counts, float(sum(a[2] for a in accs)), int(sum(a[3] for a in accs))

    def extract_output(self, acc):
        return acc


class _SaveStatsFn(beam.DoFn):
    """Terminal step: writes the combined statistics to `path` (.npz, atomic rename)."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        _, (sums, counts, inertia, rows) = element
        tmp = f"{self._path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, sums=sums, counts=counts, inertia=inertia, rows=rows)
        os.replace(tmp, self._path)
        yield self._path


class _AssignFn(beam.DoFn):
    """Row range -> ``{item_id, group_id}`` rows for the nearest centroid."""

    def process(self, work, centroids):
        ids, x = read_range(work)
        idx, _ = assign(x, centroids)
        for item, g in zip(ids, idx.tolist()):
            yield {ITEM_ID: item, GROUP_ID: int(g)}


def _centroid_side_input(p, centroids: np.ndarray, label: str):
    # A side input from a Create: cheap for DaskRunner to recompute in each task.
    return beam.pvalue.AsSingleton(p | label >> beam.Create([np.asarray(centroids, np.float32)]))


def lloyd_step(path: str, centroids: np.ndarray, beam_cfg: BeamConfig, work_dir: str,
               step: int, dask_address: Optional[str] = None, splits: int = 0
               ) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """One Lloyd iteration in Beam: (sums [K, D], counts [K], inertia, rows) w.r.t. `centroids`."""
    out = os.path.join(work_dir, f"stats-{step:04d}.npz")
    work = beam_io.parquet_work_items(path, splits or _splits(beam_cfg))
    with beam_pipeline(beam_cfg, dask_address) as p:
        cents = _centroid_side_input(p, centroids, "Centroids")
        (p | "RowRanges" >> beam.Create(work)
         | "PartialStats" >> beam.ParDo(_PartialStatsFn(), cents)
         | "SumStats" >> beam.CombinePerKey(SumStatsFn())
         | "Save" >> beam.ParDo(_SaveStatsFn(out)))
    if not os.path.exists(out):
        raise DmginError(f"k-means step {step}: the Beam run wrote no statistics ({out})")
    with np.load(out) as z:
        return z["sums"], z["counts"], float(z["inertia"]), int(z["rows"])


def _splits(beam_cfg: BeamConfig) -> int:
    if beam_cfg.runner == "dask":
        return dask_npartitions(beam_cfg)
    from transform.beam_runner import default_workers
    return max(2, 2 * (beam_cfg.direct_num_workers or default_workers()))


def write_assignments(path: str, centroids: np.ndarray, out_dir: str, beam_cfg: BeamConfig,
                      dask_address: Optional[str] = None, splits: int = 0) -> int:
    """Beam pass: every item -> nearest centroid, Parquet ``item_id, group_id`` at `out_dir`
    (count-checked, atomic). Returns the rows written."""
    import pyarrow as pa
    schema = pa.schema([(ITEM_ID, pa.string()), (GROUP_ID, pa.int32())])
    work = beam_io.parquet_work_items(path, splits or _splits(beam_cfg))
    with beam_pipeline(beam_cfg, dask_address) as p:
        cents = _centroid_side_input(p, centroids, "Centroids")
        (p | "RowRanges" >> beam.Create(work)
         | "Assign" >> beam.ParDo(_AssignFn(), cents)
         | "Write" >> beam_io.WriteOutputs({"groups": beam_io.ParquetSink(out_dir, schema)}))
    return beam_io.output_rows(out_dir)


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass
class KMeansResult:
    """What `fit_kmeans` produced.

    Attributes:
      centroids: float32 [K', D] by stable group id (K' ≥ K when ids were kept from a
        larger previous run; unused rows NaN).
      inertia: sum of squared distances of items to their centroid in the last Lloyd
        step (w.r.t. the centroids that step started from).
      history: inertia per iteration.
      counts: items per group id [K'].
      iterations, rows, seconds, converged: run facts.
      matched_similarity: cosine similarity to the previous run's centroid per id (NaN
        without a previous run / for fresh ids).
    """
    centroids: np.ndarray
    inertia: float
    history: List[float]
    counts: np.ndarray
    iterations: int
    rows: int
    seconds: float
    converged: bool
    matched_similarity: Optional[np.ndarray] = None


def fit_kmeans(embeddings: str, cfg: GroupingConfig, beam_cfg: BeamConfig, output_dir: str, *,
               tol: Optional[float] = None, previous_centroids: Optional[np.ndarray] = None,
               dask_address: Optional[str] = None, splits: int = 0,
               log: Optional[Callable[[str], None]] = None) -> KMeansResult:
    """Fits k-means in Beam and writes the grouping artifacts to `output_dir`.

    Args:
      embeddings: Parquet embedding table (``item_id``, ``embedding``).
      cfg: grouping config (``num_groups`` K, ``kmeans_iterations``, ``kmeans_sample_size``,
        ``seed``).
      beam_cfg: Beam runner config; every pipeline of the fit runs on it.
      output_dir: receives ``centroids.npy`` [K', D] float32, ``item_groups/`` (Parquet
        ``item_id``, ``group_id`` 0..K'-1) and ``kmeans.json``.
      tol: stop when (previous - current inertia) / previous < tol (default
        ``cfg.kmeans_tol``).
      previous_centroids: [K_old, D] centroids of the last run: ids stay stable.
      dask_address: run on this scheduler instead of what `beam_cfg` says (tests share one
        cluster this way).
      splits: read work items per pass (0 = 2 per worker).
      log: called with one progress line per Lloyd iteration (e.g. `print`).
    """
    t0 = time.perf_counter()
    tol = cfg.kmeans_tol if tol is None else tol
    os.makedirs(output_dir, exist_ok=True)
    rows, dim = embedding_dim(embeddings)
    from transform.embedding import refuse_duplicate_ids
    refuse_duplicate_ids(beam_io.read_parquet_table(embeddings, [ITEM_ID]).column(0).to_pylist(),
                          embeddings)
    k = cfg.num_groups
    if rows < k:
        raise DataError(f"grouping.num_groups={k} exceeds the {rows} items in {embeddings}")
    sample = sample_rows(embeddings, cfg.kmeans_sample_size, cfg.seed)
    centroids = initial_centroids(sample, k, cfg.seed, cfg.kmeans_init_trials)
    work_dir = os.path.join(output_dir, ".kmeans-work")
    os.makedirs(work_dir, exist_ok=True)
    history: List[float] = []
    converged = False
    counts = np.zeros(k, np.int64)
    for step in range(cfg.kmeans_iterations):
        sums, counts, inertia, seen = lloyd_step(embeddings, centroids, beam_cfg, work_dir, step,
                                                 dask_address, splits)
        if seen != rows or counts.sum() != rows:
            raise DmginError(f"k-means step {step}: counted {seen} rows ({counts.sum()} assigned) "
                             f"but the input has {rows}")
        nonempty = counts > 0
        new = centroids.copy()
        new[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        centroids = new  # empty clusters keep their previous centroid
        history.append(inertia)
        if log is not None:
            log(f"k-means iteration {step + 1}/{cfg.kmeans_iterations}: inertia {inertia:.6g}, "
                f"{int(nonempty.sum())} of {k} groups non-empty "
                f"({time.perf_counter() - t0:.0f} s)")
        # Inertia 0 (every item on its centroid, e.g. identical vectors) cannot improve.
        if inertia == 0 or (step and history[-2] > 0 and (history[-2] - inertia) / history[-2] < tol):
            converged = True
            break
    similarity = None
    if previous_centroids is not None:
        from transform.grouping.stable_ids import relabel_centroids
        centroids, similarity = relabel_centroids(centroids, np.asarray(previous_centroids))
    written = write_assignments(embeddings, centroids, os.path.join(output_dir, GROUPS_DIR),
                                beam_cfg, dask_address, splits)
    if written != rows:
        raise DmginError(f"k-means: wrote {written} item -> group rows, input has {rows}")
    groups = beam_io.read_parquet_table(os.path.join(output_dir, GROUPS_DIR), [GROUP_ID])
    counts = np.bincount(groups.column(0).to_numpy(), minlength=len(centroids))
    np.save(os.path.join(output_dir, CENTROIDS_FILE), centroids)
    result = KMeansResult(centroids=centroids, inertia=history[-1], history=history, counts=counts,
                          iterations=len(history), rows=rows, seconds=time.perf_counter() - t0,
                          converged=converged, matched_similarity=similarity)
    meta = {"num_groups": int(k), "group_ids": int(len(centroids)), "dim": int(dim), "rows": rows,
            "iterations": result.iterations, "converged": converged, "tol": tol,
            "inertia_history": [round(h, 6) for h in history], "seed": cfg.seed,
            "sample_size": int(len(sample)), "runner": beam_cfg.runner,
            "empty_groups": int((counts == 0).sum()), "seconds": round(result.seconds, 3),
            "stable_ids_from_previous": previous_centroids is not None,
            "embeddings": os.path.abspath(embeddings)}
    if similarity is not None:
        valid = similarity[~np.isnan(similarity)]
        meta["matched_similarity_mean"] = float(valid.mean()) if len(valid) else None
    with open(os.path.join(output_dir, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    import shutil
    shutil.rmtree(work_dir, ignore_errors=True)
    return result


def assign_new_items(embeddings: str, centroids: np.ndarray, output_dir: str,
                     beam_cfg: BeamConfig, dask_address: Optional[str] = None) -> int:
    """Puts items on the nearest existing centroid without refitting (ids unchanged).

    Args:
      embeddings: Parquet table of (new) items' embeddings.
      centroids: [K, D] from a previous fit (``centroids.npy``; NaN rows skipped).
      output_dir: Parquet ``item_id``, ``group_id`` output directory.

    Returns: rows written (== input rows, checked).
    """
    rows, dim = embedding_dim(embeddings)
    centroids = np.asarray(centroids, np.float32)
    if centroids.ndim != 2 or centroids.shape[1] != dim:
        raise DataError(f"centroids have shape {centroids.shape} but embeddings in {embeddings} "
                        f"have dimension {dim}")
    written = write_assignments(embeddings, centroids, output_dir, beam_cfg, dask_address)
    if written != rows:
        raise DmginError(f"assign_new_items: wrote {written} rows, input has {rows}")
    return written


def load_centroids(grouping_dir: str) -> np.ndarray:
    """``centroids.npy`` of a grouping output directory: float32 [K, D]."""
    path = os.path.join(grouping_dir, CENTROIDS_FILE)
    if not os.path.exists(path):
        raise DataError(f"{path} not found: not a k-means grouping output directory")
    return np.load(path)
