"""`dmgin bench quality`: every model and ablation on one dataset, same split and budget.

    dmgin bench quality --dataset taobao --data data/taobao-userbehavior

Rows: the models (DMGIN, DGIN, DIN, SIM-hard, BST, full-sequence Transformer), DMGIN's
ablations (no statistics / no intra-group / no inter-group level; grouping key item_id,
category, random with a K sweep, cluster when a group table is given) and item
popularity. Every trained row uses the same examples (docs/design.md: Evaluation protocol), the same
history length, optimizer, batch size and step budget, and is run once per seed; the
table reports mean ± std over seeds of test AUC, GAUC and logloss, plus the best
validation AUC, so numbers are comparable to the bar-to-beat table.

The budget (`Budget`) is what keeps the whole table bounded on a 2-core CPU: every row
trains `epochs` epochs of at most `steps_per_epoch` batches (early stopping on validation
AUC may end it sooner), with `history_length` behaviors per example.

Outputs (`out_dir`): quality_<dataset>.json (every run), .md (the table), .png (chart),
and the dataset's block in docs/benchmarks.md ("Quality" section) is replaced.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dmgin_tf.config import BUILTIN_MODELS, Config
from dmgin_tf.errors import DmginError

MODEL_NAMES = BUILTIN_MODELS

# docs/design.md: Evaluation protocol: outside implementations under exactly this protocol (test, mean of 3 seeds).
BAR_TO_BEAT = {
    "movielens": {"item popularity": (0.669, 0.658),
                  "LightGBM on past-only history features": (0.773, 0.670),
                  "DIN (deepctr-torch, <= 400 steps)": (0.767, 0.655),
                  "DNN over mean-pooled history": (0.766, 0.657)},
    "taobao": {"item popularity": (0.374, 0.374),
               "LightGBM on past-only history features": (0.929, 0.926),
               "DIN (deepctr-torch, <= 400 steps)": (0.606, 0.606),
               "DNN over mean-pooled history": (0.581, 0.574)},
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training budget shared by every row (see module docstring).

    `epochs` is a cap, not a target: rows stop early on `monitor` with `patience`, and a
    run whose best epoch is the cap is flagged in the table (it may still improve).
    """
    epochs: int = 1
    steps_per_epoch: int = 40
    batch_size: int = 256
    history_length: int = 100
    early_stopping_patience: int = 1
    eval_batch_size: int = 2048       # inference only: big batches, fewer calls
    lr_schedule: str = "constant"
    lr_warmup_epochs: float = 0.5
    monitor: str = "val_auc"

    def overrides(self) -> dict:
        return {"train.epochs": self.epochs, "train.steps_per_epoch": self.steps_per_epoch,
                "train.batch_size": self.batch_size, "train.eval_batch_size": self.eval_batch_size,
                "train.early_stopping_patience": self.early_stopping_patience,
                "train.lr_schedule": self.lr_schedule,
                "train.lr_warmup_epochs": self.lr_warmup_epochs,
                "train.monitor": self.monitor,
                "model.history_length": self.history_length}


QUICK_BUDGET = Budget(epochs=1, steps_per_epoch=2, batch_size=128, history_length=16)
# The GPU quality run (`dmgin gpu bundle --quality`): one full epoch over the train split
# at the paper's batch size, L = 256. On one H100 (raw DMGIN step ~28 ms at B = 1024, ~34 s
# compile) an epoch is ~3 s on Taobao's 103k train examples; compiles dominate, and the
# shared compilation cache pays them once per row (docs/gpu.md has the estimate).
GPU_BUDGET = Budget(epochs=1, steps_per_epoch=0, batch_size=1024, history_length=256,
                    early_stopping_patience=1, eval_batch_size=2048)
# Trained to convergence: the epoch cap far above any row's best epoch, patience 2,
# warm-up + cosine decay, best epoch by validation GAUC (the table's headline metric).
CONVERGENCE_BUDGET = Budget(epochs=40, steps_per_epoch=0, batch_size=1024, history_length=256,
                            early_stopping_patience=2, eval_batch_size=1024,
                            lr_schedule="warmup_cosine", lr_warmup_epochs=0.5,
                            monitor="val_gauc")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the table.

    Attributes:
      name: row label.
      model: model.model, or "popularity" for the untrained baseline.
      model_overrides: ModelConfig fields changed for this row (ablation switches).
      grouping_key: item_id | category | random | table; None = the dataset's default key.
      num_groups: K for random grouping.
      kind: "model", "ablation", "k-sweep", "trial" (a tuning trial) or "baseline".
      train_overrides: TrainConfig fields changed for this row (tuning trials).
      item_content: the row adds the frozen catalog embedding to every item embedding
        (`model.item_content_dim`, set from the dataset's item content table); it runs
        only on datasets that have one.
    """
    name: str
    model: str
    model_overrides: tuple = ()
    grouping_key: Optional[str] = None
    num_groups: int = 0
    kind: str = "model"
    train_overrides: tuple = ()
    item_content: bool = False

    def overrides(self, hparams: Optional[dict] = None) -> dict:
        """Config overrides of this row: the row's model's tuned hyperparameters
        (`hparams`: {model name: {dotted key: value}}), then the row's own switches."""
        out = dict((hparams or {}).get(self.model) or {})
        out.update({f"model.{k}": v for k, v in self.model_overrides})
        out.update({f"train.{k}": v for k, v in self.train_overrides})
        return out


def default_variants(models: Sequence[str] = MODEL_NAMES, ablations: bool = True,
                     group_table: Optional[str] = None,
                     k_values: Sequence[int] = (16, 256, 2048),
                     item_embeddings: Optional[str] = None) -> List[Variant]:
    """The rows: models, DMGIN ablations, random-K sweep, popularity. `group_table` adds
    the `dmgin key=cluster` row, `item_embeddings` the `dmgin +item embedding` row."""
    rows = [Variant(m, m) for m in models]
    if ablations:
        rows += [
            Variant("dmgin -stats", "dmgin", (("use_stats", False),), kind="ablation"),
            Variant("dmgin -intra", "dmgin", (("use_intra", False),), kind="ablation"),
            Variant("dmgin -inter", "dmgin", (("use_inter", False),), kind="ablation"),
            Variant("dmgin -context", "dmgin", (("use_context", False),), kind="ablation"),
            # The candidate's own group read from the raw history: its attention,
            # statistics and matching counts (DGIN's candidate-group path).
            Variant("dmgin -own group", "dmgin", (("use_candidate_group", False),),
                    kind="ablation"),
            # + the candidate group's behavior-type shares (history-length invariant).
            Variant("dmgin +group shares", "dmgin", (("group_shares", True),),
                    kind="ablation"),
            Variant("dmgin key=item_id", "dmgin", (), "item_id", kind="ablation"),
            Variant("dmgin key=category", "dmgin", (), "category", kind="ablation"),
        ]
        if group_table:
            rows.append(Variant("dmgin key=cluster", "dmgin", (), "table", kind="ablation"))
        if item_embeddings:
            rows.append(Variant(ITEM_CONTENT_ROW, "dmgin", kind="ablation", item_content=True))
        rows += [Variant(f"dmgin key=random K={k}", "dmgin", (), "random", k, kind="k-sweep")
                 for k in k_values]
    rows.append(Variant("gbdt", "gbdt", kind="baseline"))
    rows.append(Variant("item popularity", "popularity", kind="baseline"))
    return rows


ITEM_CONTENT_ROW = "dmgin +item embedding"


def with_item_content(variant: Variant, overrides: dict, data, table,
                      configured_dim: int = 0) -> dict:
    """Feeds the catalog embedding `table` (`[item_vocab_size, C]`) to the rows that read it:
    the `item_content` row (returns `overrides` with `model.item_content_dim = C`) and any
    row whose config already sets `model.item_content_dim` (`configured_dim`, from `--set`
    or tuned hyperparameters; must equal C). Other rows: `overrides` unchanged."""
    if not variant.item_content and not configured_dim:
        return overrides
    from dmgin_tf.errors import DmginError
    if table is None:
        raise DmginError(f"row {variant.name!r} needs the catalog embedding of the dataset "
                         "(--item-embeddings)")
    if configured_dim and not variant.item_content and int(table.shape[1]) != configured_dim:
        raise DmginError(f"row {variant.name!r}: model.item_content_dim={configured_dim} but "
                         f"the catalog embedding has {table.shape[1]} columns")
    data.item_content = table
    if variant.item_content:
        return dict(overrides, **{"model.item_content_dim": int(table.shape[1])})
    return overrides


# Rows the Keras training loop does not train: computed directly (popularity) or by the
# `gbdt` row's own trainer (TensorFlow Decision Forests: TF backend only, not on the
# JAX-only GPU queue — run it with `dmgin bench quality --variants gbdt` and merge).
UNTRAINED_MODELS = ("popularity", "gbdt")


def select_variants(variants: Sequence[Variant], names: Sequence[str],
                    flag: str = "--variants") -> List[Variant]:
    """The rows named in `names` (exact `Variant.name`s), in `variants`' order.

    Raises DmginError naming `flag` and the unknown names, listing the known rows.
    """
    from dmgin_tf.errors import DmginError
    known = [v.name for v in variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DmginError(f"{flag}: unknown row(s) {unknown}; rows are {known}")
    return [v for v in variants if v.name in set(names)]


def _summary(values: List[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(arr):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "n": int(len(arr))}


class _GroupedSets:
    """The base example set and its regrouped copies (one per grouping key / K), cached."""

    def __init__(self, example_set, items_df, default_key: str, group_table, seed: int):
        self.base = example_set
        self.items = items_df
        self.default_key = default_key
        self.group_table = group_table
        self.seed = seed
        self._cache: Dict[tuple, object] = {}

    def get(self, key: Optional[str], num_groups: int = 0):
        from dmgin_tf.data.item_index import ItemIndex
        from dmgin_tf.training.data_source import regroup
        key = key or self.default_key
        cache_key = (key, num_groups)
        if cache_key not in self._cache:
            if self.items is None:
                from dmgin_tf.errors import DataError
                raise DataError(f"grouping key {key!r}: needs the items table (pass converted "
                                f"or raw data, not an example-set directory)")
            index = ItemIndex.build(self.items, key, num_groups=num_groups, seed=self.seed,
                                    group_table=self.group_table if key == "table" else None)
            self._cache[cache_key] = regroup(self.base, index)
        return self._cache[cache_key]


def run_quality(cfg: Config, data_path: Optional[str], out_dir: str, *, seeds: Sequence[int] = (0, 1, 2),
                variants: Optional[Sequence[Variant]] = None, budget: Budget = Budget(),
                group_table: Optional[str] = None, work_dir: Optional[str] = None,
                model_fn: Optional[Callable] = None, progress: bool = False,
                hparams: Optional[dict] = None, item_embeddings: Optional[str] = None,
                log: Callable = print) -> dict:
    """Trains and evaluates every variant for every seed; returns the results dict.

    Args:
      cfg: base config (data.dataset, train.backend, ...); the budget overrides it.
      data_path: converted dir, raw data or "" / None for the embedded sample.
      out_dir: where runs, JSON, markdown and PNG go.
      seeds: train.seed values (initialization and shuffling; the split is fixed).
      variants: rows (default `default_variants`).
      budget: the shared training budget.
      group_table: item -> group table for the `cluster` key.
      model_fn: `ModelConfig -> keras.Model` (default `dmgin_tf.models.build_model`).
      hparams: tuned hyperparameters per model, {model: {dotted key: value}}
        (`dmgin_tf.bench.tuning`); every row of that model (ablations too) uses them.
      item_embeddings: the catalog embedding (`dmgin encoder embed` output) for the
        `dmgin +item embedding` row.
    """
    import pandas as pd
    from dmgin_tf.data.examples import ExampleSet
    from dmgin_tf.training.data_source import (effective_grouping_key, prepare_example_dir,
                                               training_data_from_example_set)
    from dmgin_tf.bench.popularity import evaluate_popularity
    from dmgin_tf.training.trainer import train

    t0 = time.perf_counter()
    cfg = cfg.apply_overrides(budget.overrides())
    dataset = cfg.data.dataset
    work_dir = work_dir or os.path.join(out_dir, "data")
    os.makedirs(out_dir, exist_ok=True)
    # Examples are built once with item_id groups; each grouping key regroups them.
    base_cfg = cfg.apply_overrides({"grouping.key": "item_id"})
    example_dir = prepare_example_dir(base_cfg, data_path, work_dir, progress=progress, log=log)
    es = ExampleSet.load(example_dir)
    canonical = data_path if data_path and os.path.exists(os.path.join(data_path, "items.parquet")) \
        else os.path.join(work_dir, "canonical")
    items_path = os.path.join(canonical, "items.parquet")
    items = pd.read_parquet(items_path) if os.path.exists(items_path) else None
    default_key = effective_grouping_key(cfg, group_table)
    default_key = "table" if default_key == "cluster" else default_key
    sets = _GroupedSets(es, items, default_key, group_table, cfg.grouping.seed)
    variants = list(variants or default_variants(group_table=group_table,
                                                 item_embeddings=item_embeddings))
    content = None
    if any(v.item_content for v in variants) and not item_embeddings:
        raise DmginError("the `dmgin +item embedding` row needs --item-embeddings")
    if item_embeddings:
        # Rows that set model.item_content_dim themselves (--set, --hparams) read it too.
        from dmgin_tf.data.item_content import load_item_content
        content = load_item_content(items_path, item_embeddings)

    runs = []
    gbdt_info = None
    total_runs = sum(len(seeds) for v in variants if v.model not in UNTRAINED_MODELS)
    for variant in variants:
        if variant.model == "gbdt":
            from dmgin_tf.bench.gbdt import run_gbdt
            from dmgin_tf.training.trainer import resolve_config
            grouped = sets.get(variant.grouping_key, variant.num_groups)
            data = training_data_from_example_set(grouped, budget.history_length,
                                                  info={"variant": variant.name})
            gcfg = resolve_config(cfg.apply_overrides(
                {"model.item_vocab_size": 0, "model.group_vocab_size": 0}), data)
            out = run_gbdt(data, gcfg.model, seeds, log=log)
            for r in out["runs"]:
                runs.append({"variant": variant.name, "seed": r["seed"], "test": r["test"],
                             "val": r["val"], "seconds": r["seconds"], "params": r["params"],
                             "num_trees": r["num_trees"]})
            gbdt_info = {k: out[k] for k in ("params", "tuning", "features", "importance")}
            continue
        if variant.model == "popularity":
            m = evaluate_popularity(es, "test")
            runs.append({"variant": variant.name, "seed": None, "test": m, "val": None,
                         "seconds": 0.0})
            log(f"[quality {dataset}] {variant.name}: test auc {m['auc']:.4f} gauc {m['gauc']:.4f}")
            continue
        grouped = sets.get(variant.grouping_key, variant.num_groups)
        for seed in seeds:
            overrides = {"model.model": variant.model, "train.seed": seed}
            overrides.update(variant.overrides(hparams))
            # Vocabulary sizes come from each regrouped example set.
            overrides.update({"model.item_vocab_size": 0, "model.group_vocab_size": 0})
            run_cfg = cfg.apply_overrides(overrides)
            data = training_data_from_example_set(
                grouped, budget.history_length, info={"variant": variant.name})
            run_cfg = run_cfg.apply_overrides(with_item_content(
                variant, {}, data, content, run_cfg.model.item_content_dim))
            run_dir = os.path.join(out_dir, "runs", slug(variant.name), f"seed{seed}")
            t = time.perf_counter()
            result = train(run_cfg, data, run_dir, model_fn=model_fn, verbose=0)
            runs.append({"variant": variant.name, "seed": seed, "test": result.metrics["test"],
                         "val": result.metrics["val"], "best_epoch": result.metrics["best_epoch"],
                         "epochs_run": result.metrics["epochs_run"],
                         "max_epochs": result.metrics["max_epochs"],
                         "stopped_by_epoch_cap": result.metrics["stopped_by_epoch_cap"],
                         "train_examples_per_second": result.metrics["train_examples_per_second"],
                         "config": {"model": result.config.model.to_dict(),
                                    "train": result.config.train.to_dict()},
                         "seconds": time.perf_counter() - t})
            m = result.metrics["test"]
            done = sum(1 for r in runs if r["seed"] is not None)
            left = (time.perf_counter() - t0) / done * (total_runs - done) / 60
            log(f"[quality {dataset}] {variant.name} seed {seed}: test auc {m['auc']:.4f} "
                f"gauc {m['gauc']:.4f} logloss {m['logloss']:.4f} "
                f"({time.perf_counter() - t:.0f}s; {done}/{total_runs} runs, ~{left:.0f} min left)")
    results = summarize(dataset, runs, variants, seeds, budget, default_key=default_key,
                        data=data_path or "embedded sample", backend=cfg.train.backend,
                        counts=es.metadata.get("counts"))
    results["seconds"] = time.perf_counter() - t0
    if hparams:
        results["hparams"] = hparams
    if gbdt_info:
        results["gbdt"] = gbdt_info
    return results


def summarize(dataset: str, runs: List[dict], variants: Sequence[Variant], seeds: Sequence[int],
              budget: Budget, *, default_key: str, data: str, backend: str,
              counts: Optional[dict] = None, seconds: float = 0.0) -> dict:
    """The results dict (`run_quality`'s schema) from per-run records.

    `runs`: one record per finished run: variant, seed (None for popularity), test/val
    metric dicts, seconds (and optional best_epoch, epochs_run, examples/s). A trained row
    with fewer runs than seeds is marked `partial` (the parallel GPU run stops starting
    jobs at its wall-clock budget); a row with none has n/a cells.
    """
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant.name and r.get("test")]
        row = {"variant": variant.name, "model": variant.model, "kind": variant.kind,
               "grouping_key": variant.grouping_key or (None if variant.model == "popularity"
                                                        else default_key),
               "num_groups": variant.num_groups or None, "runs": len(mine),
               "partial": variant.model != "popularity" and len(mine) < len(seeds)}
        for metric in ("auc", "gauc", "logloss"):
            row[metric] = _summary([r["test"].get(metric) for r in mine])
        row["val_auc"] = _summary([(r.get("val") or {}).get("auc") for r in mine])
        row["val_gauc"] = _summary([(r.get("val") or {}).get("gauc") for r in mine])
        row["seconds"] = float(sum(r.get("seconds") or 0.0 for r in mine))
        # Convergence: the best epoch of each run, and runs whose best epoch was the cap.
        ordered = sorted(mine, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        row["best_epochs"] = [r.get("best_epoch") for r in ordered if r.get("best_epoch")]
        row["capped_runs"] = sum(1 for r in mine if r.get("stopped_by_epoch_cap"))
        rows.append(row)
    return {
        "dataset": dataset, "data": data, "seeds": list(seeds),
        "budget": dataclasses.asdict(budget), "backend": backend,
        "default_grouping_key": default_key, "counts": counts,
        "rows": rows, "runs": list(runs), "bar_to_beat": BAR_TO_BEAT.get(dataset, {}),
        "seconds": seconds, "environment": _environment(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


MERGE_MUST_MATCH = ("budget", "seeds", "default_grouping_key")


def merge_results(base: dict, extra: dict, *, base_name: str = "first",
                  extra_name: str = "second") -> dict:
    """`base` plus the runs of `extra`, a second run on the same dataset.

    Typical uses: the published table plus a row run later (the `dmgin key=cluster` row
    of a one-row GPU bundle), or the seeds a time-limited queue did not reach, trained by
    a second queue. Runs merge per (row, seed): a run of `extra` replaces `base`'s run of
    the same row and seed, other seeds of the row are kept, and every touched row is
    re-summarized from its runs (a row `extra` lists without runs changes nothing). A new
    row goes after `base`'s last row of the same kind (else before the baselines). `base`
    keeps its metadata (data, counts, environment, command, date); `merged` records which
    rows got runs from where; `seconds` adds up (merging the same file twice counts once).

    Raises DmginError when the datasets differ or a field of `MERGE_MUST_MATCH` differs
    (rows trained under another budget or seeds are not comparable), naming both values.
    """
    from dmgin_tf.errors import DmginError
    if base.get("dataset") != extra.get("dataset"):
        raise DmginError(f"merge: {extra_name} is dataset {extra.get('dataset')!r}, "
                         f"{base_name} is {base.get('dataset')!r}")
    for field in MERGE_MUST_MATCH:
        if base.get(field) != extra.get(field):
            raise DmginError(f"merge {extra_name} into {base_name} ({base['dataset']}): {field} "
                             f"differs: {extra.get(field)!r} vs {base.get(field)!r}; rows are "
                             f"only comparable under the same {field}")
    extra_runs = [r for r in extra.get("runs", []) if r.get("test")]
    new_names = [r["variant"] for r in extra["rows"]
                 if any(x["variant"] == r["variant"] for x in extra_runs)]
    rows = [dict(r) for r in base["rows"]]
    for row in extra["rows"]:
        if row["variant"] not in new_names or row["variant"] in [r["variant"] for r in rows]:
            continue
        same_kind = [i for i, r in enumerate(rows) if r["kind"] == row["kind"]]
        baselines = [i for i, r in enumerate(rows) if r["kind"] == "baseline"]
        at = same_kind[-1] + 1 if same_kind else (baselines[0] if baselines else len(rows))
        rows.insert(at, dict(row))
    replaced = {(r["variant"], r.get("seed")) for r in extra_runs}
    runs = [r for r in base.get("runs", [])
            if (r["variant"], r.get("seed")) not in replaced] + extra_runs
    variants = [Variant(r["variant"], r["model"], grouping_key=r.get("grouping_key"),
                        num_groups=r.get("num_groups") or 0, kind=r["kind"]) for r in rows]
    summary = summarize(base["dataset"], runs, variants, base["seeds"],
                        Budget(**base["budget"]), default_key=base["default_grouping_key"],
                        data=base.get("data"), backend=base.get("backend"))
    out = dict(base)
    out["rows"] = [fresh if r["variant"] in new_names else r
                   for r, fresh in zip(rows, summary["rows"])]
    out["runs"] = runs
    done = {(r["variant"], r.get("seed")) for r in runs if r.get("test")}
    missing = [m for m in list(base.get("missing_runs") or []) + list(extra.get("missing_runs") or [])
               if (m[0], m[1] if len(m) > 1 else None) not in done]
    out["missing_runs"] = [list(m) for m in sorted({tuple(m) for m in missing})]
    # The same file merged again (re-rendering) replaces its earlier record and seconds.
    earlier, seconds = [], float(base.get("seconds") or 0.0)
    for m in base.get("merged") or []:
        if (m.get("command"), m.get("date")) == (extra.get("command"), extra.get("date")):
            seconds -= float(m.get("seconds") or 0.0)
        else:
            earlier.append(m)
    out["seconds"] = seconds + float(extra.get("seconds") or 0.0)
    out["merged"] = earlier + [{
        "rows": new_names, "from": extra_name, "command": extra.get("command"),
        "date": extra.get("date"), "seconds": extra.get("seconds"),
        "backend": extra.get("backend"), "environment": extra.get("environment"),
        "queue": extra.get("queue")}]
    return out


COMPARE_MUST_MATCH = ("dataset", "budget", "seeds", "default_grouping_key", "counts")


def compare_runs(first: dict, second: dict, variant: str = "dmgin", *,
                 names: Tuple[str, str] = ("first", "second")) -> dict:
    """One row trained twice under the same protocol (e.g. JAX on a GPU vs TF on this
    CPU): per-seed test/val metrics of both, means, seed std and the difference.

    Raises DmginError when a field of `COMPARE_MUST_MATCH` differs (other data, split,
    budget or seeds: not the same experiment) or `variant` has no runs in a file.
    Returns {"dataset", "variant", "sides": [{name, backend, command, seeds: {...}}],
    "diff": {metric: second mean - first mean}, "pooled_std": {metric: ...}}.
    """
    from dmgin_tf.errors import DmginError
    for field in COMPARE_MUST_MATCH:
        if first.get(field) != second.get(field):
            raise DmginError(f"compare {names[1]} with {names[0]}: {field} differs: "
                             f"{second.get(field)!r} vs {first.get(field)!r}")
    metrics = (("test", "auc"), ("test", "gauc"), ("val", "auc"))
    sides = []
    for name, res in zip(names, (first, second)):
        runs = sorted((r for r in res.get("runs", []) if r.get("variant") == variant
                       and r.get("test")), key=lambda r: r["seed"])
        if not runs:
            raise DmginError(f"compare: {name} has no finished runs of {variant!r}")
        values = {f"{split} {m}": [float(r[split][m]) for r in runs] for split, m in metrics}
        sides.append({"name": name, "backend": res.get("backend"), "command": res.get("command"),
                      "seeds": [r["seed"] for r in runs], "values": values,
                      "summary": {k: _summary(v) for k, v in values.items()}})
    diff, pooled = {}, {}
    for key in sides[0]["values"]:
        a, b = sides[0]["summary"][key], sides[1]["summary"][key]
        diff[key] = b["mean"] - a["mean"]
        pooled[key] = float(np.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2))
    return {"dataset": first["dataset"], "variant": variant, "budget": first.get("budget"),
            "sides": sides, "diff": diff, "pooled_std": pooled}


def comparison_markdown(cmp: dict) -> str:
    """Table of `compare_runs`: mean ± std per side, the difference and the seed std."""
    a, b = cmp["sides"]
    lines = [f"| {cmp['dataset']}, {cmp['variant']} | {a['name']} | {b['name']} | "
             f"{b['name']} − {a['name']} | seed std (pooled) |", "|---|---|---|---|---|"]
    for key in a["values"]:
        cells = [f"{s['summary'][key]['mean']:.3f} ± {s['summary'][key]['std']:.3f} "
                 f"({', '.join(f'{v:.3f}' for v in s['values'][key])})" for s in (a, b)]
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {cmp['diff'][key]:+.4f} | "
                     f"{cmp['pooled_std'][key]:.4f} |")
    return "\n".join(lines)


def plot_comparisons(cmps: Sequence[dict], path: str) -> Optional[str]:
    """Per-seed test AUC / GAUC of both sides, one panel per comparison → PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(cmps), figsize=(4.2 * len(cmps), 3.2), squeeze=False)
    for ax, cmp in zip(axes[0], cmps):
        for i, key in enumerate(("test auc", "test gauc")):
            for j, side in enumerate(cmp["sides"]):
                vals = side["values"][key]
                x = i + (j - 0.5) * 0.3
                ax.scatter([x] * len(vals), vals, color=f"C{j}", label=side["name"] if i == 0 else None)
                ax.hlines(np.mean(vals), x - 0.1, x + 0.1, color=f"C{j}")
        ax.set_xticks([0, 1], ["test AUC", "test GAUC"])
        ax.set_title(f"{cmp['dataset']}: {cmp['variant']}, per seed", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def slug(name: str) -> str:
    """A row name as a directory name ("dmgin -stats" -> "dmgin__stats")."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _environment() -> dict:
    """Machine and library versions of this run (`dmgin_tf.provenance`), flat for the table."""
    import sys
    from dmgin_tf.provenance import library_versions, machine_info
    info = machine_info()
    backend = next((b for b in ("tensorflow", "jax") if b in sys.modules), None)
    env = {"machine": f"{info['machine']}, {info['cpu_count']} cores"}
    env.update({k: v for k, v in library_versions(backend).items()
                if v is not None and k != "backend"})
    return env


def _cell(summary: dict, digits: int = 3) -> str:
    if summary.get("mean") is None:
        return "n/a"
    if summary.get("n", 0) > 1:
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
    return f"{summary['mean']:.{digits}f}"


GOAL_SIGMAS = 2.0   # DMGIN must lead every row by more than this many pooled seed stds


def margins(results: dict, row: str = "dmgin", metric: str = "gauc",
            bar_model: str = "LightGBM on past-only history features") -> List[dict]:
    """`row`'s lead over every other trained row and the bar's `bar_model` on test `metric`.

    Each entry: other, diff (row mean - other mean), pooled (sqrt of the mean of the two
    seed variances; the bar has no seeds, so `row`'s own std), sigmas (diff / pooled,
    inf when pooled is 0 and diff > 0; None when `row` or the rival has fewer than 2
    seeds, which give no spread) and met (sigmas > GOAL_SIGMAS). Ablations of `row`
    itself and the popularity row are not rivals and are left out.
    """
    rows = {r["variant"]: r for r in results["rows"]}
    mine = rows.get(row)
    if mine is None or mine[metric].get("mean") is None:
        return []
    out = []

    def entry(name, mean, std, seeds):
        pooled = float(np.sqrt((mine[metric]["std"] ** 2 + std ** 2) / 2)) if std is not None \
            else float(mine[metric]["std"])
        diff = mine[metric]["mean"] - mean
        if min(seeds, mine[metric].get("n", 2)) < 2:
            sigmas = None
        else:
            sigmas = diff / pooled if pooled > 0 else (float("inf") if diff > 0 else float("-inf"))
        out.append({"other": name, "diff": diff, "pooled": pooled, "sigmas": sigmas,
                    "met": sigmas is not None and bool(sigmas > GOAL_SIGMAS)})

    for name, r in rows.items():
        if name == row or r["kind"] not in ("model", "baseline") or r["model"] == "popularity":
            continue
        if r[metric].get("mean") is not None:
            entry(name, r[metric]["mean"], r[metric]["std"] or 0.0, r[metric].get("n", 2))
    bar = (results.get("bar_to_beat") or {}).get(bar_model)
    if bar is not None:
        entry(f"bar: {bar_model}", bar[1] if metric == "gauc" else bar[0], None, 2)
    return out


def margins_line(results: dict, row: str = "dmgin", metric: str = "gauc") -> str:
    """One markdown line: `row`'s lead per rival in pooled seed stds, and the goal's verdict."""
    ms = margins(results, row, metric)
    if not ms:
        return ""
    parts = ", ".join(f"{m['other']} {m['diff']:+.4f} "
                      + ("(σ n/a: 1 seed)" if m["sigmas"] is None else f"({m['sigmas']:+.1f}σ)")
                      for m in sorted(ms, key=lambda m: (m["sigmas"] is not None,
                                                         m["sigmas"] or m["diff"])))
    missed = [m["other"] for m in ms if not m["met"]]
    unknown = [m["other"] for m in ms if m["sigmas"] is None]
    verdict = ("**met**" if not missed else
               f"**not met** (against {', '.join(m for m in missed if m not in unknown)})"
               if len(unknown) < len(missed) else
               "not determined (a seed spread needs at least 2 seeds per row)")
    return (f"{row} test {metric.upper()} minus each row (σ = pooled seed standard deviation): "
            f"{parts}. Goal, more than {GOAL_SIGMAS:.0f}σ above every row and the bar's LightGBM: "
            f"{verdict}.")


def markdown_table(results: dict) -> str:
    """The results as a markdown block: table, bar to beat, budget, command, environment."""
    lines = ["| row | grouping | test AUC | test GAUC | test logloss | val GAUC | best epoch "
             "(per seed) | s (all seeds) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        # "table" is ItemIndex's name for the cluster key's item -> group table.
        key = {"table": "cluster"}.get(r["grouping_key"], r["grouping_key"]) or "—"
        if r.get("num_groups"):
            key += f" (K={r['num_groups']})"
        name = r["variant"] + (f" (partial: {r['runs']}/{len(results['seeds'])} seeds)"
                                if r.get("partial") else "")
        epochs = ", ".join(str(e) for e in r.get("best_epochs") or []) or "—"
        if r.get("capped_runs"):
            epochs += f" — **{r['capped_runs']} run(s) stopped by the epoch cap**"
        lines.append(f"| {name} | {key} | {_cell(r['auc'])} | {_cell(r['gauc'])} | "
                     f"{_cell(r['logloss'])} | {_cell(r.get('val_gauc') or r['val_auc'])} | "
                     f"{epochs} | {r['seconds']:.0f} |")
    goal = margins_line(results)
    if goal:
        lines += ["", goal]
    bar = results.get("bar_to_beat") or {}
    if bar:
        lines += ["", "Bar to beat (docs/design.md: Evaluation protocol, outside implementations, same protocol, "
                      "test AUC / GAUC, mean of 3 seeds):", "",
                  "| outside model | test AUC | test GAUC |", "|---|---|---|"]
        lines += [f"| {name} | {a:.3f} | {g:.3f} |" for name, (a, g) in bar.items()]
    b = results["budget"]
    env = results["environment"]
    schedule = ("warm-up + cosine decay" if b.get("lr_schedule") == "warmup_cosine"
                else "constant learning rate")
    lines += ["",
              f"Budget per row and seed: at most {b['epochs']} epoch(s) × "
              + (f"at most {b['steps_per_epoch']} steps" if b['steps_per_epoch'] else
                 "the full train split")
              + f" × batch {b['batch_size']}, history length L = {b['history_length']}, "
              f"Adam, {schedule}, early stopping on {b.get('monitor', 'val_auc')} (patience "
              f"{b['early_stopping_patience']}, best epoch restored); hyperparameters "
              + ("tuned per model on validation (`hparams` in the JSON)"
                 if results.get("hparams") else "the defaults")
              + f"; seeds {results['seeds']}; backend {results['backend']}. Popularity is "
              f"deterministic (one run; its logloss uses count/(count+1), uncalibrated).",
              f"Data: {results['data']}; default grouping key {results['default_grouping_key']}; "
              f"examples per split {_counts(results.get('counts'))}.",
              f"Command: `{results.get('command', 'dmgin bench quality')}`",
              f"Machine: {env.get('machine')}; Python {env.get('python')}; "
              + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("machine", "python"))
              + f"; {results['date']}; total {results['seconds'] / 60:.1f} min"
              + (" (with the later run(s) below)." if results.get("merged") else ".")]
    for m in results.get("merged") or []:   # rows added later by `--render A.json B.json`
        menv = m.get("environment") or {}
        lines.append(f"Row(s) {', '.join(m['rows'])} from a later run ({m.get('date')}, backend "
                     f"{m.get('backend')}, {menv.get('machine', '?')}, "
                     f"{(m.get('seconds') or 0) / 60:.1f} min): `{m.get('command')}`")
    return "\n".join(lines)


def _counts(counts) -> str:
    if not counts:
        return "n/a"
    return ", ".join(f"{k} {v['examples']}" for k, v in counts.items())


def plot_results(results: dict, path: str) -> Optional[str]:
    """Horizontal bar chart of test AUC and GAUC (mean ± std) per row, bar-to-beat lines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = results["rows"]
    names = [r["variant"] for r in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5), sharey=True)
    colors = {"model": "tab:blue", "ablation": "tab:orange", "k-sweep": "tab:green",
              "baseline": "tab:gray"}
    for ax, metric, idx in ((axes[0], "auc", 0), (axes[1], "gauc", 1)):
        means = [r[metric]["mean"] if r[metric]["mean"] is not None else np.nan for r in rows]
        stds = [r[metric]["std"] or 0.0 for r in rows]
        ax.barh(y, means, xerr=stds, color=[colors.get(r["kind"], "tab:blue") for r in rows])
        for name, vals in (results.get("bar_to_beat") or {}).items():
            if name.startswith("LightGBM"):
                ax.axvline(vals[idx], color="black", linestyle="--", linewidth=1,
                           label="LightGBM bar")
        ax.axvline(0.5, color="red", linewidth=0.8, label="random")
        ax.set_xlabel(f"test {metric.upper()}")
        ax.set_xlim(0.3, 1.0)
        ax.legend(loc="lower right", fontsize=7)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"Quality on {results['dataset']} (mean ± std over seeds {results['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(results: dict, out_dir: str, docs_path: Optional[str] = None) -> dict:
    """Writes quality_<dataset>.json/.md/.png into `out_dir` and updates `docs_path`."""
    os.makedirs(out_dir, exist_ok=True)
    name = f"quality_{results['dataset']}"
    paths = {"json": os.path.join(out_dir, name + ".json"), "md": os.path.join(out_dir, name + ".md"),
             "png": os.path.join(out_dir, name + ".png")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=str)
    table = markdown_table(results)
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(table + "\n")
    if not plot_results(results, paths["png"]):
        paths.pop("png")
    if docs_path:
        chart = os.path.relpath(paths["png"], os.path.dirname(os.path.abspath(docs_path))) \
            if "png" in paths else None
        kept = update_benchmarks_doc(docs_path, results["dataset"], table, chart)
        if kept:
            print(f"note: {kept} To add this run's rows to it: dmgin bench quality --render "
                  f"<the published quality_{results['dataset']}.json> {paths['json']} "
                  f"--output <its folder>", file=sys.stderr)
        else:
            paths["docs"] = docs_path
    return paths


def table_rows(table: str) -> List[str]:
    """Row names of the first table of a `markdown_table` block (partial-seed notes cut)."""
    rows, inside = [], False
    for line in table.splitlines():
        if line.startswith("| row |"):
            inside = True
        elif inside and line.startswith("|---"):
            continue
        elif inside and line.startswith("| "):
            rows.append(line[2:].split(" | ", 1)[0].split(" (partial:", 1)[0])
        elif inside:
            break
    return rows


SECTION_TITLE = "## Quality"


def update_benchmarks_doc(path: str, dataset: str, table: str,
                          chart: Optional[str] = None) -> Optional[str]:
    """Replaces (or appends) the dataset's block of the "Quality" section in `path`.

    Only the text between `<!-- quality:<dataset>:start -->` and `...:end -->` is ours
    (`dmgin_tf.docs_blocks.replace_block`); a page without the block gets it at the end
    of its Quality section (the section is created when missing).

    A block whose table has rows that `table` lacks is kept as it is: a run of some rows
    (one variant, one seed) would otherwise replace a published table assembled from
    several runs (`dmgin bench quality --render`). Delete the block to start it over.

    Returns:
      None when the page was written; else why it was kept (one sentence).
    """
    from dmgin_tf.docs_blocks import replace_block
    start, end = f"<!-- quality:{dataset}:start -->", f"<!-- quality:{dataset}:end -->"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if start in text and end in text.split(start, 1)[1]:
        missing = [r for r in table_rows(text.split(start, 1)[1].split(end, 1)[0])
                   if r not in table_rows(table)]
        if missing:
            return (f"{path} not updated: its {dataset} table has row(s) this run lacks "
                    f"({', '.join(missing)}).")
    block = [start, f"### {dataset}", "", table]
    if chart:
        block += ["", f"![quality on {dataset}]({chart})"]
    block.append(end)

    def append(text: str, block_text: str) -> str:
        if SECTION_TITLE not in text:
            text = text.rstrip("\n") + "\n\n" + SECTION_TITLE + "\n\n" + QUALITY_INTRO + "\n"
        head, tail = text.split(SECTION_TITLE, 1)
        # At the end of the Quality section (before the next "## " heading).
        nxt = tail.find("\n## ")
        section, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
        return head + SECTION_TITLE + section.rstrip("\n") + "\n\n" + block_text + "\n" + rest

    replace_block(path, "\n".join(block), start, end, append=append)
    return None


QUALITY_INTRO = (
    "Test AUC / GAUC / logloss of DMGIN, its baselines and ablations under the fixed "
    "protocol of docs/design.md: Evaluation protocol (per-user time split, history strictly before each event), "
    "mean ± std over seeds, every row with the same examples and training budget. "
    "Produced by `dmgin bench quality --dataset NAME --data PATH`; each dataset's block "
    "below is rewritten by its run, unless the run lacks some of the block's rows "
    "(add them with `--render`).")
