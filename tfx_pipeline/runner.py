"""Run the pipeline locally: span data preparation, LocalDagRunner with progress, and a
summary of what the run produced, read back from ML Metadata (SQLite under the root).

    from tfx_pipeline.runner import prepare_span, run_pipeline
    prepare_span(cfg, "runs/data", span=1)              # embedded sample -> span-1/
    summary = run_pipeline(cfg, data_root="runs/data", span=1,
                           pipeline_root="runs/pipeline", serving_base="runs/serving")
    summary.pushed_dir, summary.metrics["auc"], summary.metrics["gauc"]
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from dmgin_tf import features as F
from dmgin_tf.config import Config
from dmgin_tf.display import display_path
from dmgin_tf.errors import DataError, DmginError
from tfx_pipeline.components.common import span_dir

_CANONICAL = ("behaviors.parquet", "items.parquet")


# ---------------------------------------------------------------------------- data

def is_converted(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, f)) for f in _CANONICAL)


SPAN_SOURCE = "span_source.json"


def _span_source(data: Optional[str]) -> dict:
    """What a span was made from: the `--data` path and its files (None: the sample)."""
    from dmgin_tf.provenance import file_fingerprint
    if not data:
        return {"data": None}
    return {"data": os.path.abspath(data), "files": file_fingerprint(data)}


def prepare_span(cfg: Config, data_root: str, span: int, data: Optional[str] = None) -> str:
    """Puts the canonical tables of `span` at ``<data_root>/span-<span>/``.

    `data`: a converted directory (copied), a raw dataset path of `cfg.data.dataset`
    (converted with `dmgin_tf.data.converters.convert`), or None for the embedded sample.
    Spans are immutable once written: the span folder records what it was made from
    (`span_source.json`), a rerun with the same `data` (e.g. after a failed run) uses
    it as is, and a rerun with other data is refused — the pipeline's cached components
    would otherwise keep training on the span's first data without a word.

    Raises:
      DmginError: the span exists and `data` differs from what it was made from.
    """
    dest = span_dir(data_root, span)
    source = _span_source(data)
    if is_converted(dest):
        try:
            with open(os.path.join(dest, SPAN_SOURCE), encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, ValueError):
            stored = None   # a span written by hand or by an older version: used as is
        if data and stored is not None and stored != source:
            was = stored.get("data") or "the embedded sample"
            why = "other data" if stored.get("data") != source["data"] else \
                "the same path, whose files changed since"
            raise DmginError(
                f"span {span} already exists ({dest}), made from {was}; --data {data} is "
                f"{why}. Spans are immutable: train the new data as a new span (--span "
                f"{max(span, latest_span(data_root)) + 1} or later), or delete {dest} and "
                f"rerun this span with --no-cache to replace it")
        return dest
    os.makedirs(data_root, exist_ok=True)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if data and is_converted(data):
        from dmgin_tf.data.converted import check_converted
        check_converted(data, cfg.data.dataset)      # before any component runs
        shutil.copytree(data, tmp)
    else:
        from dmgin_tf.data.converters import convert
        convert(cfg.data.dataset, data or "", tmp, cfg.data)
    try:
        check_cumulative(tmp, data_root, span)
    except DmginError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(os.path.join(tmp, SPAN_SOURCE), "w", encoding="utf-8") as f:
        json.dump(source, f, indent=1)
    os.rename(tmp, dest)
    return dest


def _time_range(converted: str) -> Optional[tuple]:
    """(min, max) timestamp of a converted directory's behaviors, from the Parquet
    footer's statistics (no row read); None when a row group has none."""
    import pyarrow.parquet as pq
    from dmgin_tf.data.converted import column_statistics
    from dmgin_tf.data.converters.tables import BEHAVIORS_FILE
    from dmgin_tf.features import TIMESTAMP
    meta = pq.ParquetFile(os.path.join(converted, BEHAVIORS_FILE)).metadata
    stats = [st for _, name, st in column_statistics(meta) if name == TIMESTAMP]
    if len(stats) != meta.num_row_groups or not all(st.has_min_max for st in stats):
        return None
    return min(st.min for st in stats), max(st.max for st in stats)


def check_cumulative(converted: str, data_root: str, span: int) -> None:
    """A new span must overlap the previous one in time: spans are cumulative snapshots
    ("everything up to day N"). A span that starts after the previous one ends is a
    per-day export, which would restart every user's history at the span and sample
    negatives among items the user touched before it.

    Raises:
      DmginError: the span's earliest behavior is later than the previous span's last.
    """
    previous = [s for s in range(span - 1, 0, -1) if is_converted(span_dir(data_root, s))]
    if not previous:
        return
    new, old = _time_range(converted), _time_range(span_dir(data_root, previous[0]))
    if new is None or old is None or new[0] <= old[1]:
        return
    raise DmginError(
        f"span {span} starts after span {previous[0]} ends (timestamps {new[0]}..{new[1]} "
        f"vs {old[0]}..{old[1]}): spans are cumulative snapshots of the whole log, not "
        f"per-period exports — an incremental span would start every user's history at "
        f"the span. Convert the log up to the new day as one span "
        f"(docs/pipeline.md, 'Spans')")


def split_into_spans(converted: str, data_root: str, fractions: Sequence[float],
                     max_users: Optional[int] = None, first_span: int = 1) -> List[str]:
    """Cuts one converted dataset by time into cumulative spans (tests, demos, backfills).

    Span k holds every behavior up to the `fractions[k]` time quantile (the last
    fraction should be 1.0): "all data up to day N", so histories stay lifelong and each
    retrain sees the new events. `max_users`: keep the first N users (sorted ids).
    """
    import numpy as np
    import pandas as pd
    beh = pd.read_parquet(os.path.join(converted, "behaviors.parquet"))
    items = pd.read_parquet(os.path.join(converted, "items.parquet"))
    if max_users:
        users = sorted(beh[F.USER_ID].unique())[:max_users]
        beh = beh[beh[F.USER_ID].isin(users)]
    cuts = np.quantile(beh[F.TIMESTAMP].to_numpy(), list(fractions))
    out = []
    for k, cut in enumerate(cuts):
        dest = span_dir(data_root, first_span + k)
        os.makedirs(dest, exist_ok=True)
        part = beh[beh[F.TIMESTAMP] <= cut]
        part.to_parquet(os.path.join(dest, "behaviors.parquet"), index=False)
        items[items[F.ITEM_ID].isin(set(part[F.ITEM_ID]))].to_parquet(
            os.path.join(dest, "items.parquet"), index=False)
        out.append(dest)
    return out


# ---------------------------------------------------------------------------- progress

def _tree_rss() -> int:
    """Resident bytes of this process and all its descendants (Beam workers)."""
    import psutil
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:   # exited meanwhile
            pass
    return total


def _reset_peak_rss() -> bool:
    """Resets this process's VmHWM (Linux `clear_refs` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """This process's VmHWM (peak resident bytes since start or the last reset); 0 if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def dir_bytes(path: str) -> int:
    """Bytes of the files under `path` (a file: its size; missing: 0)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


class _Progress:
    """One progress line per component, from ML Metadata polled in a thread, and each
    component's wall time and peak memory.

    (LocalDagRunner's own "Component X is running" log lines vanish once a component
    lowers absl's verbosity, so the executions in MLMD are the reliable source.)
    Peak RSS of a component = the larger of this process's high-water mark (reset when
    the component starts; components run one at a time) and the RSS of the whole process
    tree (multi-process Beam workers included) sampled every `interval` seconds.
    """

    def __init__(self, pipeline_root: str, pipeline_name: str, since_execution: int,
                 echo: Callable[[str], None], interval: float = 1.0):
        import threading
        self.prefix = pipeline_name + "."   # node contexts are named "<pipeline>.<node id>"
        self.root, self.since, self.echo, self.interval = pipeline_root, since_execution, echo, interval
        self.t0 = time.time()
        self.seen: Dict[int, str] = {}
        self.started: Dict[int, float] = {}
        self.cached: List[str] = []
        self.nodes: Dict[int, str] = {}
        self.seconds: Dict[int, float] = {}
        self.peak: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.poll()  # final states

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the store may be busy; try again
                pass

    def _sample(self):
        running = [e for e, st in self.seen.items() if st == "running"]
        if running:
            rss = max(_tree_rss(), _peak_rss())
            for e in running:
                self.peak[e] = max(self.peak.get(e, 0), rss)

    def components(self) -> Dict[str, dict]:
        """{component: {state, seconds, peak_rss_bytes}} of the executions seen."""
        return {self.nodes[e]: {"state": self.seen[e], "seconds": round(self.seconds.get(e, 0.0), 1),
                                "peak_rss_bytes": int(self.peak.get(e, 0))}
                for e in sorted(self.seen)}

    def poll(self):
        from ml_metadata.proto import metadata_store_pb2 as pb
        path = os.path.join(self.root, "metadata.sqlite")
        if not os.path.exists(path):
            return
        store = metadata_store(self.root)
        names = {pb.Execution.NEW: "running", pb.Execution.RUNNING: "running",
                 pb.Execution.COMPLETE: "done", pb.Execution.CACHED: "cached",
                 pb.Execution.FAILED: "FAILED", pb.Execution.CANCELED: "canceled"}
        self._sample()
        for e in sorted(store.get_executions(), key=lambda e: e.id):
            if e.id <= self.since:
                continue
            state = names.get(e.last_known_state, "running")
            if self.seen.get(e.id) == state:
                continue
            if state == "running":
                _reset_peak_rss()
            elif self.seen.get(e.id) in (None, "running") and state in ("done", "FAILED"):
                # Sampled as it ends too: a component shorter than the poll interval is
                # never seen running (its figure then also covers the one before it,
                # since the high-water mark was last reset when that one started).
                self.peak[e.id] = max(self.peak.get(e.id, 0), _tree_rss(), _peak_rss())
                self._sample()
            node = next((c.name[len(self.prefix):] for c in store.get_contexts_by_execution(e.id)
                         if c.name.startswith(self.prefix)), str(e.id))
            now = time.time()
            # The store's own timestamps (ms): right also for a component that started
            # and finished between two polls.
            self.started.setdefault(e.id, (e.create_time_since_epoch / 1000.0) or now)
            if state != "running" and e.last_update_time_since_epoch:
                now = max(e.last_update_time_since_epoch / 1000.0, self.started[e.id])
            took = "" if state == "running" else f" ({now - self.started[e.id]:.0f}s)"
            if state == "cached":
                self.cached.append(node)
            self.nodes[e.id] = node
            self.seconds[e.id] = now - self.started[e.id]
            self.seen[e.id] = state
            self.echo(f"[{now - self.t0:7.1f}s] {node}: {state}{took}")


# ---------------------------------------------------------------------------- summary

@dataclasses.dataclass
class RunSummary:
    """What one run produced (read from MLMD after the run).

    artifacts: {"<component>.<output key>": uri} of this run (cached outputs included).
    types: {"<component>.<output key>": MLMD artifact type name}.
    blessed / pushed: the Evaluator's verdict and whether the Pusher pushed.
    pushed_dir: the version directory pushed by this run (None if not pushed).
    metrics: overall-slice metrics of the newest evaluation (AUC, gauc, logloss, ...).
    blessing_failures: why the model was not blessed, one line per failed threshold.
    cached: components whose outputs were reused.
    components: {component: {state, seconds, peak_rss_bytes, artifact_bytes}} — wall
      time, peak resident memory (process tree) and bytes of its output artifacts.
    """
    artifacts: Dict[str, str]
    blessed: Optional[bool]
    pushed: Optional[bool]
    pushed_dir: Optional[str]
    metrics: Dict[str, float]
    cached: List[str]
    seconds: float
    types: Dict[str, str] = dataclasses.field(default_factory=dict)
    components: Dict[str, dict] = dataclasses.field(default_factory=dict)
    blessing_failures: List[str] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """The per-component rows as a fixed-width text table."""
        rows = [f"{'component':<32}{'state':>8}{'wall s':>9}{'peak RSS MB':>13}{'artifacts MB':>14}"]
        for name, c in self.components.items():
            rows.append(f"{name:<32}{c.get('state', ''):>8}{c.get('seconds', 0):>9.1f}"
                        f"{c.get('peak_rss_bytes', 0) / 1e6:>13.0f}"
                        f"{c.get('artifact_bytes', 0) / 1e6:>14.2f}")
        return "\n".join(rows)


def metadata_store(pipeline_root: str):
    from ml_metadata.metadata_store import metadata_store as mds
    from tfx import v1 as tfx
    from tfx_pipeline.pipeline import METADATA_FILE
    cfg = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(os.path.abspath(pipeline_root), METADATA_FILE))
    return mds.MetadataStore(cfg)


def run_outputs(store, pipeline_root: str, since_execution: int = 0) -> Dict[str, tuple]:
    """Outputs of the executions with id > `since_execution` (one run, cached ones included):
    ``{"<component>.<output key>": (type name, artifact)}``; the component and key are
    read off the artifact uri ``<pipeline root>/<component>/<key>/<execution id>``."""
    from ml_metadata.proto import metadata_store_pb2
    execs = [e.id for e in store.get_executions() if e.id > since_execution]
    if not execs:
        return {}
    out_types = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ids = sorted({ev.artifact_id for ev in store.get_events_by_execution_ids(execs)
                  if ev.type in out_types})
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    root = os.path.abspath(pipeline_root)
    out = {}
    for a in store.get_artifacts_by_id(ids):
        parts = os.path.relpath(a.uri, root).split(os.sep)
        key = f"{parts[0]}.{parts[1]}" if len(parts) >= 2 else a.uri
        out[key] = (type_names.get(a.type_id, "?"), a)
    return out


def _max_execution_id(store) -> int:
    try:
        return max((e.id for e in store.get_executions()), default=0)
    except Exception:  # noqa: BLE001 - fresh store
        return 0


def _prop(artifact, name):
    if name in artifact.custom_properties:
        v = artifact.custom_properties[name]
        return v.int_value if v.HasField("int_value") else v.string_value
    return None


def served_versions(model_dir: str) -> List[str]:
    """Version folders TF Serving would load under `model_dir` (numeric names holding a
    SavedModel), oldest first."""
    if not os.path.isdir(model_dir):
        return []
    found = [n for n in os.listdir(model_dir) if n.isdigit()
             and os.path.exists(os.path.join(model_dir, n, "saved_model.pb"))]
    return [os.path.join(model_dir, n) for n in sorted(found, key=int)]


def _pushes(pipeline_root: str) -> List[tuple]:
    """(pushed version folder, name of the pipeline that pushed it) from the root's
    metadata (a pipeline's artifacts belong to its `pipeline` context)."""
    if not os.path.exists(os.path.join(pipeline_root, "metadata.sqlite")):
        return []
    store = metadata_store(pipeline_root)
    owner = {}
    for ctx in store.get_contexts_by_type("pipeline"):
        for a in store.get_artifacts_by_context(ctx.id):
            owner[a.id] = ctx.name
    out = []
    for a in store.get_artifacts_by_type("PushedModel"):
        dest = _prop(a, "pushed_destination") if _prop(a, "pushed") else None
        if dest:
            out.append((os.path.abspath(dest), owner.get(a.id)))
    return out


def check_served_baseline(pipeline_root: str, model_dir: str, pipeline_name: str) -> None:
    """Refuses a run whose Pusher would replace a served version this pipeline did not
    push: the Evaluator compares the new model with the last model blessed by the same
    pipeline (`pipeline.name`) in this root's metadata only, so against a version pushed
    from another root, by a pipeline of another name, or before the metadata was
    deleted, a worse model would be blessed and pushed over it."""
    served = served_versions(model_dir)
    if not served:
        return
    latest = os.path.abspath(served[-1])
    pushes = dict(_pushes(pipeline_root))
    if latest in pushes and pushes[latest] == pipeline_name:
        return
    version = os.path.basename(latest)
    if latest in pushes:
        raise DmginError(
            f"{display_path(model_dir)} serves version {version}, which pipeline "
            f"{pushes[latest]!r} pushed, not this run's pipeline {pipeline_name!r} "
            f"(pipeline.name): its Evaluator compares with the models {pipeline_name!r} "
            f"blessed, so a worse model could replace the served one. Keep "
            f"pipeline.name={pushes[latest]!r}, push to another folder (--serving-dir), "
            f"or move the served versions away first.")
    raise DmginError(
        f"{display_path(model_dir)} serves version {version}, which this "
        f"pipeline root ({display_path(pipeline_root)}) did not push: its Evaluator could "
        f"not compare the new model with the served one, so a worse model could replace "
        f"it. Run with the pipeline root that pushed it (--pipeline-root), push to another "
        f"folder (--serving-dir), or move the served versions away first.")


def run_pipeline(cfg: Config, *, data_root: str, span: int, pipeline_root: str,
                 serving_base: str, echo: Callable[[str], None] = print, **pipeline_kwargs
                 ) -> RunSummary:
    """Builds and runs the pipeline with LocalDagRunner; returns the run's summary.

    Raises the component's error when a component fails (e.g. the ValidationGate's
    `DataValidationError` with the anomalies report), and `DmginError` before anything
    runs when the serving folder's latest version was not pushed from this pipeline root
    (`check_served_baseline`).
    """
    from tfx import v1 as tfx
    from tfx_pipeline.pipeline import create_pipeline
    model_name = pipeline_kwargs.get("model_name") or cfg.serving.model_name
    check_served_baseline(pipeline_root, os.path.join(serving_base, model_name),
                          cfg.pipeline.name)
    os.makedirs(pipeline_root, exist_ok=True)
    before = _max_execution_id(metadata_store(pipeline_root)) \
        if os.path.exists(os.path.join(pipeline_root, "metadata.sqlite")) else 0
    p = create_pipeline(cfg, data_root=data_root, span=span, pipeline_root=pipeline_root,
                        serving_base=serving_base, **pipeline_kwargs)
    t0 = time.time()
    with _Progress(pipeline_root, cfg.pipeline.name, before, echo) as progress:
        tfx.orchestration.LocalDagRunner().run(p)
    seconds = time.time() - t0
    store = metadata_store(pipeline_root)
    outputs = run_outputs(store, pipeline_root, before)
    new = {key: art for key, (_, art) in outputs.items()}
    blessing, pushed = new.get("Evaluator.blessing"), new.get("Pusher.pushed_model")
    metrics, failures = {}, []
    if "Evaluator.evaluation" in new:
        from tfx_pipeline.evaluation import blessing_failures, read_metrics
        try:
            metrics = read_metrics(new["Evaluator.evaluation"].uri)
            if blessing is not None and not _prop(blessing, "blessed"):
                failures = blessing_failures(new["Evaluator.evaluation"].uri)
        except Exception as e:  # noqa: BLE001 - a summary must not fail the run
            echo(f"could not read the evaluation: {e}")
    pushed_flag = bool(_prop(pushed, "pushed")) if pushed is not None else None
    pushed_dir = _prop(pushed, "pushed_destination") if pushed_flag else None
    summary = RunSummary(
        artifacts={k: a.uri for k, a in new.items()},
        blessed=bool(_prop(blessing, "blessed")) if blessing is not None else None,
        pushed=pushed_flag, pushed_dir=pushed_dir or None, metrics=metrics,
        cached=sorted(progress.cached), seconds=seconds,
        types={k: t for k, (t, _) in outputs.items()}, components=progress.components(),
        blessing_failures=failures)
    for key, art in new.items():
        row = summary.components.setdefault(key.split(".")[0], {})
        row["artifact_bytes"] = row.get("artifact_bytes", 0) + dir_bytes(art.uri)
    echo(summary.table())
    echo(f"run finished in {seconds:.0f}s: blessed={summary.blessed} pushed={summary.pushed}"
         + (f" -> {display_path(summary.pushed_dir)}" if summary.pushed_dir else "")
         + "".join(f"  {k}={metrics[k]:.4f}" for k in ("auc", "gauc", "logloss", "calibration")
                   if k in metrics))
    for line in baseline_lines(metrics, cfg.pipeline, pushed=bool(summary.pushed)):
        echo(line)
    if "ItemGrouper.item_groups" in new:
        line = regrouping_note(new["ItemGrouper.item_groups"].uri)
        if line:
            echo(line)
    return summary


def regrouping_note(item_groups_uri: str) -> Optional[str]:
    """A note when this run's ItemGrouper numbered the groups afresh because
    `grouping.key` changed since the previous span (the group ids, and the Trainer's
    group tables, start over)."""
    from tfx_pipeline.artifacts import grouping_info
    info = grouping_info(item_groups_uri)
    if "previous_key" not in info:
        return None
    return (f"  note: grouping.key changed from {info['previous_key']!r} to {info['key']!r}: "
            f"the groups were numbered afresh and the model's group tables were not "
            f"warm-started")


def baseline_lines(metrics: Dict[str, float], pipeline_cfg, pushed: bool) -> List[str]:
    """The candidate against the last blessed model (TFMA's `*_diff` metrics, on the same
    eval split), and a note when a pushed model is below it: each retrain may drop up to
    `pipeline.max_<metric>_drop`, so such drops can add up over successive pushes."""
    diffs = {k: metrics[f"{k}_diff"] for k in ("auc", "gauc") if f"{k}_diff" in metrics}
    if not diffs:
        return []
    lines = ["  against the last blessed model (same eval split): " + ", ".join(
        f"{k} {metrics[k] - d:.4f} -> {metrics[k]:.4f} ({d:+.4f})" for k, d in diffs.items()
        if k in metrics)]
    worse = [k for k, d in diffs.items() if d < 0]
    if pushed and worse:
        allowed = ", ".join(f"pipeline.max_{k}_drop={getattr(pipeline_cfg, f'max_{k}_drop')}"
                            for k in worse)
        lines.append(f"  note: pushed a model with lower {' and '.join(worse)} than the last "
                     f"blessed one, within {allowed}; successive pushes can add such drops "
                     f"up — set them to 0 to push only models at least as good")
    return lines


def latest_span(data_root: str) -> int:
    """Largest N with a converted ``<data_root>/span-N/`` (what a scheduled run trains on)."""
    spans = []
    for name in os.listdir(data_root) if os.path.isdir(data_root) else []:
        m = re.fullmatch(r"span-(\d+)", name)
        if m and is_converted(os.path.join(data_root, name)):
            spans.append(int(m.group(1)))
    if not spans:
        raise DataError(f"no span-<N>/ directories with converted data under {data_root}")
    return max(spans)
