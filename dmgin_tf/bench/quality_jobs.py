"""The quality table as a job queue: (dataset, variant, seed) runs over P worker processes.

Built for air-gapped GPU hosts (docs/gpu.md, "The quality table as a job queue"): Python + JAX,
no TensorFlow, no pyarrow, often a time limit per job. `dmgin gpu bundle --quality` writes
everything this module needs into the bundle; `run.sh` then calls

    python -m dmgin_tf.bench.quality_jobs run --bundle DIR --out OUT [--budget-s 420]

The driver (numpy only, never imports Keras/JAX) plans the jobs seed-major (seed 0 of every
row of both datasets first, then seed 1, ...: a run cut short still has every row), starts
P workers (`... quality_jobs worker`), each with its own `CUDA_VISIBLE_DEVICES` and a
share of GPU memory, all sharing one JAX persistent compilation cache on GPU hosts (seed
1 and 2 of a row reuse seed 0's compiled step; CPU workers compile afresh, see
`compilation_cache_dir`). Every finished run is appended to
`OUT/quality_<dataset>.jsonl` at once (a killed run loses nothing); after `budget_s` no
job starts, after `hard_limit_s` running workers are killed; then each dataset's runs are
merged into `OUT/quality_<dataset>.json` in `quality.run_quality`'s schema (rows with
fewer seeds marked partial), which `dmgin bench quality --render` turns into the
markdown table, chart and docs block. Per dataset, the DMGIN seed-0 run's
`model.weights.h5`, `config.json` and `parity_batch.npz` are kept in
`OUT/keep/<dataset>_dmgin/` for the TF export parity check.

Bundle layout read here: `quality_plan.json` (datasets, variants, seeds, budget, config
overrides), `config_<dataset>.json`, `data/<dataset>/examples.{npz,json}` (item_id
groups) and `data/<dataset>/groupings.npz` (item idx -> group id per grouping key / K,
built here with `ItemIndex` because the host cannot read parquet).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from dmgin_tf.errors import DmginError

PLAN_FILE = "quality_plan.json"
GROUPINGS_FILE = "groupings.npz"
RESULT_PREFIX = "@@RESULT "
READY_LINE = "@@READY"
KEEP_MODEL = "dmgin"          # the row whose seed-0 weights come back for the parity check
KEEP_FILES = ("model.weights.h5", "config.json", "parity_batch.npz", "metrics.json")


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a row (`Variant.name`) of one dataset with one seed."""
    dataset: str
    variant: str
    seed: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def plan_jobs(datasets: Sequence[str], variants, seeds: Sequence[int],
              dataset_rows: Optional[Dict[str, Sequence[str]]] = None) -> List[Job]:
    """Seed-major job list, popularity excluded (the driver computes it directly).

    Order: for each seed, every trained row of every dataset. A run stopped by its
    wall-clock budget therefore has all rows with the first seeds rather than some rows
    with all seeds; within a seed, rows of one dataset alternate with the other's so both
    tables fill at the same pace. `dataset_rows`: per dataset, the row names it runs
    (a dataset not listed runs every row), e.g. the cluster row only where a group
    table was bundled.
    """
    from dmgin_tf.bench.quality import UNTRAINED_MODELS
    trained = [v for v in variants if v.model not in UNTRAINED_MODELS]
    jobs = []
    for seed in seeds:
        for v in trained:
            for ds in datasets:
                if dataset_rows is None or ds not in dataset_rows or v.name in dataset_rows[ds]:
                    jobs.append(Job(ds, v.name, int(seed)))
    return jobs


def dataset_variants(plan: dict, dataset: str) -> list:
    """The plan's rows (`Variant`s) that `dataset` runs, in plan order."""
    names = (plan.get("dataset_rows") or {}).get(dataset)
    return [v for v in plan["variants"] if names is None or v.name in names]


def grouping_name(key: str, num_groups: int = 0) -> str:
    """Name of one grouping in groupings.npz ("category", "random_K256")."""
    return f"{key}_K{num_groups}" if num_groups else key


def groupings_needed(variants, default_key: str) -> List[tuple]:
    """(key, K) of every grouping the rows use, the default key included."""
    out = []
    for v in variants:
        if v.model in ("popularity", "gbdt"):
            continue
        pair = (v.grouping_key or default_key, int(v.num_groups or 0))
        if pair not in out:
            out.append(pair)
    return out


def write_groupings(items_df, directory: str, pairs: Sequence[tuple], seed: int = 0,
                    group_table=None) -> dict:
    """Builds each grouping's item idx -> group id table and saves `groupings.npz` + json.

    Arrays: `<name>` int32 `[item_vocab_size]` (entries 0/1 PAD/OOV). JSON: per name the
    grouping key, K and group_vocab_size. Returns that JSON dict.
    """
    from dmgin_tf.data.item_index import ItemIndex
    arrays, meta = {}, {}
    for key, k in pairs:
        index = ItemIndex.build(items_df, key, num_groups=k, seed=seed,
                                group_table=group_table if key == "table" else None)
        name = grouping_name(key, k)
        arrays[name] = index.group_of_idx.astype(np.int32)
        meta[name] = {"grouping_key": index.grouping_key, "num_groups": k,
                      "group_vocab_size": index.group_vocab_size,
                      "item_vocab_size": index.item_vocab_size}
    np.savez_compressed(os.path.join(directory, GROUPINGS_FILE), **arrays)
    with open(os.path.join(directory, GROUPINGS_FILE.replace(".npz", ".json")), "w",
              encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return meta


class TableIndex:
    """The part of `ItemIndex` that `data_source.regroup` uses, from a saved table
    (no pandas / parquet needed on the host)."""

    def __init__(self, group_of_idx: np.ndarray, grouping_key: str, group_vocab_size: int):
        self.group_of_idx = np.asarray(group_of_idx, dtype=np.int32)
        self.grouping_key = grouping_key
        self.group_vocab_size = int(group_vocab_size)

    @property
    def item_vocab_size(self) -> int:
        return len(self.group_of_idx)

    def groups_of(self, item_idx) -> np.ndarray:
        return self.group_of_idx[np.asarray(item_idx)]


def load_plan(bundle: str) -> dict:
    """The bundle's quality_plan.json with variants and budget as objects."""
    from dmgin_tf.bench.quality import Budget, Variant
    with open(os.path.join(bundle, PLAN_FILE), encoding="utf-8") as f:
        plan = json.load(f)
    plan["variants"] = [Variant(**{**v, "model_overrides": tuple(tuple(p) for p in
                                                                 v["model_overrides"]),
                                   "train_overrides": tuple(tuple(p) for p in
                                                            v.get("train_overrides", ()))})
                        for v in plan["variants"]]
    plan.setdefault("hparams", {})          # {dataset: {model: {dotted key: value}}}
    plan.setdefault("skip_runs", [])        # [[dataset, row, seed]]: measured elsewhere
    plan["budget"] = Budget(**plan["budget"])
    plan.setdefault("dataset_rows", None)   # bundles before per-dataset rows: all rows
    return plan


def plan_dict(datasets, variants, seeds, budget, default_key: str,
              config_overrides: Optional[dict] = None,
              dataset_rows: Optional[Dict[str, Sequence[str]]] = None,
              hparams: Optional[dict] = None, skip_runs: Sequence = ()) -> dict:
    """What `load_plan` reads back (written by the bundle builder).

    `dataset_rows`: per dataset, the names of the rows it runs (None: every row).
    `hparams`: tuned hyperparameters, {dataset: {model: {dotted key: value}}}.
    `skip_runs`: (dataset, row, seed) runs not to train (already measured: the seed-0
    run of a tuned row is its selected tuning trial)."""
    return {"datasets": list(datasets), "seeds": [int(s) for s in seeds],
            "variants": [dataclasses.asdict(v) for v in variants],
            "budget": dataclasses.asdict(budget), "default_grouping_key": default_key,
            "config_overrides": dict(config_overrides or {}),
            "dataset_rows": ({d: list(r) for d, r in dataset_rows.items()}
                             if dataset_rows is not None else None),
            "hparams": dict(hparams or {}),
            "skip_runs": [list(x) for x in skip_runs]}


# ---------------------------------------------------------------------------- worker

class _Worker:
    """State of one worker process: configs and regrouped example sets, cached."""

    def __init__(self, bundle: str, out: str):
        self.bundle = bundle
        self.out = out
        self.plan = load_plan(bundle)
        self.variants = {v.name: v for v in self.plan["variants"]}
        self._sets: Dict[tuple, object] = {}

    def example_set(self, dataset: str, key: str, k: int):
        from dmgin_tf.data.examples import ExampleSet
        from dmgin_tf.training.data_source import regroup
        if (dataset, key, k) not in self._sets:
            base = self._sets.get((dataset, None, 0))
            directory = os.path.join(self.bundle, "data", dataset)
            if base is None:
                base = self._sets[(dataset, None, 0)] = ExampleSet.load(directory)
            name = grouping_name(key, k)
            with open(os.path.join(directory, GROUPINGS_FILE.replace(".npz", ".json")),
                      encoding="utf-8") as f:
                meta = json.load(f)[name]
            table = np.load(os.path.join(directory, GROUPINGS_FILE))[name]
            self._sets[(dataset, key, k)] = regroup(
                base, TableIndex(table, meta["grouping_key"], meta["group_vocab_size"]))
        return self._sets[(dataset, key, k)]

    def item_content(self, dataset: str):
        """The dataset's `item_content.npy` (`[item_vocab_size, C]`), or None."""
        from dmgin_tf.data.item_content import ITEM_CONTENT_FILE
        path = os.path.join(self.bundle, "data", dataset, ITEM_CONTENT_FILE)
        return np.load(path) if os.path.exists(path) else None

    def run(self, job: Job) -> dict:
        from dmgin_tf.config import load_config
        from dmgin_tf.training.data_source import training_data_from_example_set
        from dmgin_tf.training.trainer import train
        variant = self.variants[job.variant]
        budget = self.plan["budget"]
        key = variant.grouping_key or self.plan["default_grouping_key"]
        es = self.example_set(job.dataset, key, int(variant.num_groups or 0))
        overrides = dict(self.plan["config_overrides"])
        overrides.update(budget.overrides())
        overrides.update({"model.model": variant.model, "train.seed": job.seed,
                          "model.item_vocab_size": 0, "model.group_vocab_size": 0})
        overrides.update(variant.overrides(self.plan["hparams"].get(job.dataset)))
        cfg = load_config(os.path.join(self.bundle, f"config_{job.dataset}.json"), overrides)
        data = training_data_from_example_set(es, budget.history_length,
                                              info={"variant": variant.name})
        if variant.item_content or cfg.model.item_content_dim:
            from dmgin_tf.bench.quality import with_item_content
            cfg = cfg.apply_overrides(with_item_content(
                variant, {}, data, self.item_content(job.dataset), cfg.model.item_content_dim))
        from dmgin_tf.bench.quality import slug
        run_dir = os.path.join(self.out, "runs", job.dataset, slug(variant.name),
                               f"seed{job.seed}")
        t = time.perf_counter()
        result = train(cfg, data, run_dir, verbose=0)
        record = {"dataset": job.dataset, "variant": variant.name, "seed": job.seed,
                  "settings": run_settings(self.plan, job.dataset),
                  "test": result.metrics["test"], "val": result.metrics["val"],
                  "best_epoch": result.metrics["best_epoch"],
                  "epochs_run": result.metrics["epochs_run"],
                  "train_examples_per_second": result.metrics["train_examples_per_second"],
                  "train_seconds": result.metrics["train_seconds"],
                  "seconds": time.perf_counter() - t,
                  "placement": result.metrics["placement"],
                  "max_epochs": result.metrics["max_epochs"],
                  "stopped_by_epoch_cap": result.metrics["stopped_by_epoch_cap"],
                  "config": {"model": result.config.model.to_dict(),
                             "train": result.config.train.to_dict()}}
        if variant.name == KEEP_MODEL and job.seed == min(self.plan["seeds"]):
            keep = os.path.join(self.out, "keep", f"{job.dataset}_{KEEP_MODEL}")
            os.makedirs(keep, exist_ok=True)
            for name in KEEP_FILES:
                if os.path.exists(os.path.join(run_dir, name)):
                    shutil.copyfile(os.path.join(run_dir, name), os.path.join(keep, name))
        shutil.rmtree(run_dir, ignore_errors=True)   # checkpoints etc.: not coming back
        return record


def worker_main(bundle: str, out: str, cache_dir: Optional[str]) -> int:
    """Reads Job JSON lines on stdin, trains each, prints one RESULT line per job."""
    if cache_dir:
        # Before Keras: seeds of one row (and rows sharing a graph) compile once per host.
        import jax
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        try:
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        except AttributeError:   # older jax: no size threshold
            pass
    from dmgin_tf.training.backend import select_backend
    select_backend("jax")
    worker = _Worker(bundle, out)
    import keras  # noqa: F401 - import cost paid before READY
    print(READY_LINE, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = Job(**json.loads(line))
        try:
            record = worker.run(job)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, worker goes on
            import traceback
            traceback.print_exc(file=sys.stderr)
            record = {"dataset": job.dataset, "variant": job.variant, "seed": job.seed,
                      "error": f"{type(exc).__name__}: {exc}"}
        print(RESULT_PREFIX + json.dumps(record, default=str), flush=True)
    return 0


# ---------------------------------------------------------------------------- driver

@dataclasses.dataclass(frozen=True)
class WorkerLayout:
    """How many workers, and the environment of each (GPU, memory share)."""
    processes: int
    gpus: int
    env: tuple   # one dict per worker

    def describe(self) -> str:
        where = f"{self.gpus} GPU(s)" if self.gpus else "CPU"
        return f"{self.processes} worker process(es) on {where}"


def count_gpus() -> int:
    """Visible NVIDIA GPUs (nvidia-smi -L), 0 when there is none or no nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def worker_layout(processes: int = 0, gpus: Optional[int] = None, cpus: Optional[int] = None,
                  per_gpu: int = 5, cores_per_process: int = 3) -> WorkerLayout:
    """P workers: `per_gpu` per GPU, at most one per `cores_per_process` cores (compiles
    and densify run on the host), at least 1; `processes` > 0 forces P.

    Each worker sees one GPU (`CUDA_VISIBLE_DEVICES`, round-robin), allocates on demand
    (`XLA_PYTHON_CLIENT_PREALLOCATE=false`) and may take 0.9 / (workers on its GPU) of it.
    Without GPUs the workers run JAX on the CPU, each with a share of the cores.
    """
    gpus = count_gpus() if gpus is None else int(gpus)
    cpus = int(cpus or os.cpu_count() or 1)
    if processes <= 0:
        by_cpu = max(1, cpus // cores_per_process)
        processes = max(1, min(per_gpu * gpus, by_cpu) if gpus else min(2, by_cpu))
    envs = []
    for i in range(processes):
        env = {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
               "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        if gpus:
            gpu = i % gpus
            sharing = len(range(gpu, processes, gpus))
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.3f}"
        else:
            env["JAX_PLATFORMS"] = "cpu"
        envs.append(env)
    return WorkerLayout(processes, gpus, tuple(envs))


def run_queue(jobs: Sequence[Job], layout: WorkerLayout, bundle: str, out: str, *,
              budget_s: float, hard_limit_s: float, on_result, cache_dir: Optional[str] = None,
              log=print, python: str = sys.executable) -> dict:
    """Runs `jobs` on the workers; calls `on_result(record)` in this thread per finished run.

    No job starts after `budget_s` seconds; at `hard_limit_s` running workers are killed.
    Returns counts: done, failed, not_started, killed.
    """
    t0 = time.monotonic()
    todo: "queue.Queue[Job]" = queue.Queue()
    for job in jobs:
        todo.put(job)
    results: "queue.Queue[tuple]" = queue.Queue()
    procs: List[subprocess.Popen] = []
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    src_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def feed(i: int, proc: subprocess.Popen):
        ready = False
        for line in proc.stdout:
            if line.startswith(READY_LINE):
                ready = True
                break
        if not ready:
            results.put(("dead", i, None))
            return
        while time.monotonic() - t0 < budget_s:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                break
            results.put(("start", i, job))
            try:
                proc.stdin.write(job.to_json() + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                results.put(("lost", i, job))
                return
            record = None
            for line in proc.stdout:
                if line.startswith(RESULT_PREFIX):
                    record = json.loads(line[len(RESULT_PREFIX):])
                    break
            if record is None:        # worker died or was killed mid-job
                results.put(("lost", i, job))
                return
            results.put(("result", i, record))
        try:
            proc.stdin.close()
        except OSError:
            pass
        results.put(("exit", i, None))

    threads = []
    for i, env in enumerate(layout.env):
        cmd = [python, "-m", "dmgin_tf.bench.quality_jobs", "worker", "--bundle", bundle,
               "--out", out] + (["--cache", cache_dir] if cache_dir else [])
        full_env = dict(os.environ, **env)
        full_env["PYTHONPATH"] = src_root + (os.pathsep + full_env["PYTHONPATH"]
                                             if full_env.get("PYTHONPATH") else "")
        logf = open(os.path.join(out, "logs", f"worker{i}.log"), "w", encoding="utf-8")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                text=True, bufsize=1, env=full_env)
        procs.append(proc)
        th = threading.Thread(target=feed, args=(i, proc), daemon=True)
        th.start()
        threads.append(th)
    counts = {"done": 0, "failed": 0, "not_started": 0, "killed": 0, "workers": len(procs)}
    running: Dict[int, Job] = {}
    finished_threads = 0
    killed = False
    while finished_threads < len(threads):
        remaining = hard_limit_s - (time.monotonic() - t0)
        if remaining <= 0 and not killed:
            log(f"[quality] hard limit {hard_limit_s:.0f}s reached: killing {len(running)} "
                f"running job(s)")
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            killed = True
        try:
            kind, i, payload = results.get(timeout=max(0.5, min(remaining, 5.0)) if not killed
                                           else 5.0)
        except queue.Empty:
            continue
        elapsed = time.monotonic() - t0
        if kind == "start":
            running[i] = payload
        elif kind == "result":
            running.pop(i, None)
            ok = "error" not in payload
            counts["done" if ok else "failed"] += 1
            on_result(payload)
            left = todo.qsize()
            if ok:
                m = payload["test"]
                log(f"[quality {elapsed:4.0f}s w{i}] {payload['dataset']} {payload['variant']} "
                    f"seed {payload['seed']}: test auc {m['auc']:.4f} gauc {_f(m.get('gauc'))} "
                    f"({payload['seconds']:.0f}s, {_f(payload.get('train_examples_per_second'), 0)}"
                    f" ex/s; {counts['done']} done, {left} queued)")
            else:
                log(f"[quality {elapsed:4.0f}s w{i}] {payload['dataset']} {payload['variant']} "
                    f"seed {payload['seed']}: FAILED {payload['error']}")
        elif kind in ("lost", "dead", "exit"):
            if kind == "lost":
                counts["killed"] += 1
                running.pop(i, None)
                log(f"[quality {elapsed:4.0f}s w{i}] lost {payload} (worker ended)")
            elif kind == "dead":
                log(f"[quality {elapsed:4.0f}s w{i}] worker died before it was ready; see "
                    f"logs/worker{i}.log")
            finished_threads += 1
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    counts["not_started"] = todo.qsize()
    return counts


def _f(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_settings(plan: dict, dataset: str) -> dict:
    """What a run's result depends on beyond its variant and seed: the budget, the
    bundle's config overrides and the dataset's tuned hyperparameters (JSON-normal)."""
    return json.loads(json.dumps({"budget": dataclasses.asdict(plan["budget"]),
                                  "config_overrides": plan["config_overrides"],
                                  "hparams": (plan.get("hparams") or {}).get(dataset)},
                                 sort_keys=True, default=str))


def finished_runs(out: str, dataset: str) -> List[dict]:
    """The finished runs recorded in OUT/quality_<dataset>.jsonl, the last record of
    each (variant, seed) (a queue run again into the same folder appends)."""
    path = os.path.join(out, f"quality_{dataset}.jsonl")
    runs = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:   # a line cut by a kill: skip it
                    continue
                if "error" not in record:
                    runs[(record.get("variant"), record.get("seed"))] = record
    return list(runs.values())


def resumable_runs(out: str, dataset: str, plan: dict) -> set:
    """(variant, seed) of the runs OUT already holds for `dataset` with this plan's
    settings: a queue run again into the same folder resumes instead of training them
    twice. Raises DmginError when OUT holds runs of other settings (another budget,
    `--set` or hyperparameters), which one results file must not mix."""
    want = run_settings(plan, dataset)
    done = set()
    for r in finished_runs(out, dataset):
        if r.get("settings") != want:
            raise DmginError(
                f"{os.path.join(out, f'quality_{dataset}.jsonl')} holds runs made with other "
                f"settings ({r.get('variant')}, seed {r.get('seed')}: "
                f"{r.get('settings') or 'settings not recorded'}; this run: {want}); one "
                f"results file must not mix them. Write to another folder (RUN_OUT=...) or "
                f"move that one away.")
        done.add((r["variant"], r["seed"]))
    return done


def merge_dataset(bundle: str, out: str, dataset: str, plan: dict, *,
                  seconds: float = 0.0, command: str = "") -> dict:
    """Per-dataset results (`quality.run_quality` schema) from its JSONL + popularity."""
    from dmgin_tf.data.examples import ExampleSet
    from dmgin_tf.bench.popularity import evaluate_popularity
    from dmgin_tf.bench.quality import summarize
    runs = finished_runs(out, dataset)
    es = ExampleSet.load(os.path.join(bundle, "data", dataset))
    variants = dataset_variants(plan, dataset)
    for v in variants:
        if v.model == "popularity":
            runs.append({"variant": v.name, "seed": None, "test": evaluate_popularity(es, "test"),
                         "val": None, "seconds": 0.0})
    with open(os.path.join(bundle, "MANIFEST.json"), encoding="utf-8") as f:
        source = json.load(f)["datasets"].get(dataset, {}).get("source", dataset)
    results = summarize(dataset, runs, variants, plan["seeds"], plan["budget"],
                        default_key=plan["default_grouping_key"], data=source, backend="jax",
                        counts=es.metadata.get("counts"), seconds=seconds)
    results["command"] = command
    skip = {(v, sd) for d, v, sd in plan.get("skip_runs") or [] if d == dataset}
    planned = {(j.variant, j.seed) for j in plan_jobs([dataset], variants, plan["seeds"])} - skip
    done = {(r["variant"], r["seed"]) for r in runs if r["seed"] is not None}
    results["missing_runs"] = sorted([list(p) for p in planned - done])
    return results


def compilation_cache_dir(requested: Optional[str], out: str,
                          layout: WorkerLayout) -> Optional[str]:
    """The workers' persistent JAX compilation cache: `requested`, else OUT/jax_cache on
    GPU workers, and none on CPU workers. On the CPU backend a step loaded back from the
    cache gave NaN scores from the first epoch for the second seed of a row (measured on
    MovieLens with jax 0.4.30's XLA:CPU; the same two runs in one process without the cache
    trained normally), so CPU workers compile each run afresh."""
    if requested:
        return requested
    return os.path.join(out, "jax_cache") if layout.gpus else None


def run_main(args) -> int:
    """The host-side entry: plan, run the queue, merge; writes into args.out."""
    plan = load_plan(args.bundle)
    datasets = args.datasets or plan["datasets"]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if args.set:
        sets = [kv for group in args.set for kv in group]
        bad = [kv for kv in sets if "=" not in kv]
        if bad:
            raise DmginError(f"--set {bad[0]!r}: KEY=VALUE expected")
        owned = set(plan["budget"].overrides())
        for kv in sets:
            if kv.split("=", 1)[0] in owned:
                raise DmginError(f"--set {kv}: the run budget sets {kv.split('=', 1)[0]} for "
                                 f"every row alike (flags: --epochs, --steps-per-epoch, "
                                 f"--batch-size, --history-length; the rest is the bundle's)")
        plan["config_overrides"].update(dict(kv.split("=", 1) for kv in sets))
    budget_fields = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                     "batch_size": args.batch_size, "history_length": args.history_length}
    changes = {k: v for k, v in budget_fields.items() if v is not None}
    if changes:
        plan["budget"] = dataclasses.replace(plan["budget"], **changes)
    if args.quick:   # smoke run: the quick budget, one seed
        from dmgin_tf.bench.quality import QUICK_BUDGET
        plan["budget"] = dataclasses.replace(QUICK_BUDGET, **changes)
        changes = dict(changes, quick=True)
        if args.seeds is None:
            args.seeds = 1
    if args.seeds is not None:
        plan["seeds"] = list(range(args.seeds))
    if args.variants:
        from dmgin_tf.bench.quality import select_variants
        plan["variants"] = select_variants(plan["variants"], args.variants, flag="--variants")
        changes = dict(changes, variants=True)
    # Workers read the plan from the bundle: write the effective one next to the results.
    bundle = os.path.abspath(args.bundle)
    if changes or args.set or args.seeds is not None:
        eff = os.path.join(out, "bundle_view")
        # Made afresh on every start: a view left by a killed run may link to a bundle
        # that has moved (dangling links) or to another bundle altogether.
        if os.path.isdir(eff) and not os.path.islink(eff):
            shutil.rmtree(eff)
        elif os.path.lexists(eff):
            os.remove(eff)
        os.makedirs(eff)
        for name in os.listdir(bundle):
            if name != PLAN_FILE:
                os.symlink(os.path.join(bundle, name), os.path.join(eff, name))
        with open(os.path.join(eff, PLAN_FILE), "w", encoding="utf-8") as f:
            json.dump(plan_dict(plan["datasets"], plan["variants"], plan["seeds"],
                                plan["budget"], plan["default_grouping_key"],
                                plan["config_overrides"], plan["dataset_rows"],
                                plan.get("hparams"), plan.get("skip_runs") or ()), f, indent=1)
        bundle = eff
    idle = [ds for ds in datasets if not dataset_variants(plan, ds)]
    if idle:   # e.g. --variants "dmgin key=cluster" and a dataset bundled without a table
        print(f"[quality] no row of {idle} selected: skipped", flush=True)
        datasets = [ds for ds in datasets if ds not in idle]
    skip = {tuple(x) for x in plan.get("skip_runs") or []}
    for ds in datasets:
        done = resumable_runs(out, ds, plan)
        if done:
            print(f"[quality] {len(done)} {ds} run(s) already in "
                  f"{os.path.join(out, f'quality_{ds}.jsonl')} with these settings: not "
                  f"rerun", flush=True)
        skip |= {(ds, v, sd) for v, sd in done}
    jobs = [j for j in plan_jobs(datasets, plan["variants"], plan["seeds"], plan["dataset_rows"])
            if (j.dataset, j.variant, j.seed) not in skip]
    layout = worker_layout(args.processes, cpus=args.cpus)
    print(f"[quality] {len(jobs)} runs ({', '.join(datasets)}; {len(plan['seeds'])} seeds; "
          f"budget {plan['budget']}) on {layout.describe()}; start budget {args.budget_s:.0f}s, "
          f"hard limit {args.hard_limit_s:.0f}s".replace("infs", "none"), flush=True)
    sinks = {ds: open(os.path.join(out, f"quality_{ds}.jsonl"), "a", encoding="utf-8")
             for ds in datasets}

    def on_result(record):
        f = sinks[record["dataset"]]
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())

    t0 = time.monotonic()
    cache = compilation_cache_dir(args.cache, out, layout)
    counts = run_queue(jobs, layout, bundle, out, budget_s=args.budget_s,
                       hard_limit_s=args.hard_limit_s, on_result=on_result, cache_dir=cache,
                       log=lambda m: print(m, flush=True))
    for f in sinks.values():
        f.close()
    seconds = time.monotonic() - t0
    print(f"[quality] {counts} in {seconds:.0f}s", flush=True)
    command = _command(bundle, args, layout)
    for ds in datasets:
        results = merge_dataset(bundle, out, ds, plan, seconds=seconds, command=command)
        results["queue"] = dict(counts, layout=layout.describe())
        path = os.path.join(out, f"quality_{ds}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
        partial = [r["variant"] for r in results["rows"] if r.get("partial")]
        print(f"[quality] wrote {path}: {len(results['rows'])} rows"
              + (f", partial: {partial}" if partial else ", all complete"), flush=True)
    return 0


def _command(bundle: str, args, layout: WorkerLayout) -> str:
    """How these results were made: the bundle's build command (MANIFEST.json) and the
    run.sh arguments (what followed --bundle/--out), for the docs' Command line."""
    import shlex
    try:
        with open(os.path.join(bundle, "MANIFEST.json"), encoding="utf-8") as f:
            built = json.load(f).get("command") or "dmgin gpu bundle --quality ..."
    except (OSError, ValueError):
        built = "dmgin gpu bundle --quality ..."
    extra = " ".join(shlex.quote(a) for a in (getattr(args, "run_args", None) or []))
    return (f"{built}`, then on the host ({layout.describe()}) "
            f"`bash run.sh{' ' + extra if extra else ''}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dmgin_tf.bench.quality_jobs",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="plan, run the workers, merge (the host entry point)")
    r.add_argument("--bundle", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--datasets", nargs="+")
    r.add_argument("--budget-s", type=float, default=float("inf"),
                   help="no job starts after this many seconds (default: no limit; set it "
                        "when the GPU machine is held for a fixed time)")
    r.add_argument("--hard-limit-s", type=float, default=float("inf"),
                   help="running jobs are killed at this many seconds (default: no limit)")
    r.add_argument("--processes", type=int, default=0, help="workers (0 = from GPUs and cores)")
    r.add_argument("--cpus", type=int, help="cores to plan for (default os.cpu_count())")
    r.add_argument("--cache", help="JAX compilation cache dir (default OUT/jax_cache on GPU "
                                    "workers; none on CPU workers)")
    r.add_argument("--epochs", type=int)
    r.add_argument("--steps-per-epoch", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--history-length", type=int)
    r.add_argument("--seeds", type=int, help="number of seeds (default: the plan's)")
    r.add_argument("--set", nargs="+", action="append", metavar="KEY=VALUE",
                   help="config overrides for every run (repeatable)")
    r.add_argument("--quick", action="store_true", help="smoke run: quick budget, 1 seed")
    r.add_argument("--variants", nargs="+", metavar="ROW", help="only these rows (exact names)")
    w = sub.add_parser("worker", help="(internal) one worker process")
    w.add_argument("--bundle", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--cache")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    # run.sh passes --bundle/--out first, then its own arguments: keep those for the docs.
    args.run_args = argv[5:] if argv[1:2] == ["--bundle"] and argv[3:4] == ["--out"] else None
    if args.cmd == "worker":
        return worker_main(args.bundle, args.out, args.cache)
    return run_main(args)


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
