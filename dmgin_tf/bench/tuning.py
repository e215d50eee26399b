"""Fair hyperparameter tuning of every row of the quality table, with KerasTuner.

Every model gets a declared search space (`search_space`) over the same kinds of knobs —
learning rate, embedding and hidden sizes, dropout, weight decay (decoupled L2) and its
number of blocks where it has blocks — and the *same number of trials*. Trial 0 is the
search's starting point (`search_space` defaults); the other trials are drawn by KerasTuner's
`RandomSearchOracle` (seeded, so the same trials come out every time). Each trial is a
row of the quality table (`Variant`, kind "trial") trained once with seed 0 under the
shared convergence budget; the best trial per model is chosen on **validation** GAUC
only (`select_best`) and its hyperparameters are saved (`hparams_<dataset>.json`), which
the 3-seed table then uses for every row of that model, ablations included.

    dmgin gpu bundle --quality --tune 6 ...          # the trials as a GPU job queue
    dmgin bench tune-select quality_<dataset>.json   # -> hparams_<dataset>.json

Trials run as ordinary jobs of the quality queue (random search needs no feedback
between trials, so they run in parallel); the TFX pipeline runs the same search spaces
through the standard TFX `Tuner` component (`tfx_pipeline.module.tuner_fn`).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from dmgin_tf.training.search_space import (FIELDS, sample_trials, search_space,  # noqa: F401
                                            to_overrides)

HPARAMS_PREFIX = "hparams_"


def trial_name(model: str, index: int) -> str:
    return f"{model} trial {index}"


def trial_variants(models: Sequence[str], num_trials: int, seed: int = 0) -> list:
    """The trials of every model as quality-table rows (`Variant`, kind "trial"), trial
    index first (trial 0 of every model, then trial 1, ...): a queue cut short by its time
    budget then leaves every model with the same number of trials, give or take one."""
    from dmgin_tf.bench.quality import Variant
    sampled = {model: sample_trials(model, num_trials, seed) for model in models}
    rows = []
    for i in range(num_trials):
        for model in models:
            if i >= len(sampled[model]):
                continue
            over = to_overrides(sampled[model][i])
            rows.append(Variant(
                trial_name(model, i), model, kind="trial",
                model_overrides=tuple((k.split(".", 1)[1], tuple(v) if isinstance(v, list) else v)
                                      for k, v in over.items() if k.startswith("model.")),
                train_overrides=tuple((k.split(".", 1)[1], v) for k, v in over.items()
                                      if k.startswith("train."))))
    return rows


def select_best(results: dict, metric: str = "gauc") -> dict:
    """Best trial per model by validation `metric` (never test): {model: record}.

    `results`: a quality results dict (`quality_<dataset>.json`) of trial rows. Only
    trial indices that *every* model completed are compared, so each model is chosen
    among the same number of trials. Each record: trial name, validation metric, the
    trial's overrides, every compared trial's validation value.
    """
    best: Dict[str, dict] = {}
    scores: Dict[str, list] = {}
    done: Dict[str, set] = {}
    for run in results.get("runs", []):
        name = run.get("variant", "")
        if " trial " in name and run.get("val"):
            model, index = name.split(" trial ")
            done.setdefault(model, set()).add(int(index))
    # A model none of whose trials finished keeps its defaults (reported by the caller).
    common = set.intersection(*done.values()) if done else set()
    for run in results.get("runs", []):
        name = run.get("variant", "")
        if " trial " not in name or not run.get("val"):
            continue
        model, index = name.split(" trial ")
        if int(index) not in common:
            continue
        value = run["val"].get(metric)
        if value is None:
            continue
        scores.setdefault(model, []).append((name, float(value)))
        if model not in best or value > best[model]["val"]:
            cfg = run.get("config") or {}
            best[model] = {"trial": name, "val": float(value),
                           "best_epoch": run.get("best_epoch"),
                           "overrides": _run_overrides(cfg, model)}
    for model, rec in best.items():
        rec["trials"] = sorted(scores[model], key=lambda t: -t[1])
        rec["metric"] = f"val {metric}"
    return best


def _run_overrides(cfg: dict, model: str) -> Dict[str, object]:
    """The tuned fields of a run's resolved config, as overrides."""
    import keras_tuner as kt
    hp = kt.HyperParameters()
    search_space(model, hp)
    out = {}
    for name in hp.values:
        section, field = FIELDS[name].split(".", 1)
        if field in (cfg.get(section) or {}):
            value = cfg[section][field]
            out[FIELDS[name]] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def write_hparams(dataset: str, best: dict, out_dir: str, *, source: str = "") -> str:
    """Saves {model: overrides} plus the selection record as hparams_<dataset>.json."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{HPARAMS_PREFIX}{dataset}.json")
    payload = {"dataset": dataset, "selected_on": "validation GAUC, seed 0",
               "source": source,
               "hparams": {m: rec["overrides"] for m, rec in best.items()},
               "selection": best}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    return path


def load_hparams(path: Optional[str]) -> Dict[str, dict]:
    """{model: {dotted key: value}} from a hparams_<dataset>.json ({} for None)."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)["hparams"]


def add_tuning_runs(results: dict, tuning_results: dict, selection: dict) -> dict:
    """`results` (the 3-seed table run with the tuned hyperparameters) plus, for each
    model row, the seed-0 run of its selected tuning trial under the row's name.

    The selected trial *is* that row's configuration trained with seed 0, so the table
    run skips it (`skip_runs` of the plan) instead of training it twice. `selection`:
    {model: record} of `select_best`. Rows are re-summarized; every copied run keeps
    `from_tuning` (the trial's name).
    """
    from dmgin_tf.bench.quality import Budget, Variant, summarize
    runs = list(results.get("runs", []))
    by_name = {(r["variant"], r["seed"]): r for r in tuning_results.get("runs", [])
               if r.get("test")}
    added = []
    for row in results["rows"]:
        rec = selection.get(row["model"])
        if row["kind"] != "model" or rec is None:
            continue
        if any(r["variant"] == row["variant"] and r["seed"] == 0 for r in runs):
            continue
        run = by_name.get((rec["trial"], 0))
        if run is not None:
            runs.append(dict(run, variant=row["variant"], from_tuning=rec["trial"]))
            added.append(row["variant"])
    variants = [Variant(r["variant"], r["model"], grouping_key=r.get("grouping_key"),
                        num_groups=r.get("num_groups") or 0, kind=r["kind"])
                for r in results["rows"]]
    out = summarize(results["dataset"], runs, variants, results["seeds"],
                    Budget(**results["budget"]), default_key=results["default_grouping_key"],
                    data=results["data"], backend=results["backend"],
                    counts=results.get("counts"), seconds=results.get("seconds", 0.0))
    for key in ("command", "environment", "date", "merged", "queue"):
        if key in results:
            out[key] = results[key]
    out["seconds"] = float(results.get("seconds") or 0.0) + sum(
        float(by_name[(selection[m]["trial"], 0)].get("seconds") or 0.0)
        for m in selection if (selection[m]["trial"], 0) in by_name)
    out["seed0_from_tuning"] = {"rows": added, "command": tuning_results.get("command")}
    planned = {(r["variant"], s) for r in out["rows"] if r["kind"] != "baseline"
               for s in out["seeds"]}
    done = {(r["variant"], r["seed"]) for r in runs if r.get("seed") is not None}
    out["missing_runs"] = sorted([list(p) for p in planned - done])
    return out


def trials_markdown(results: dict, best: dict) -> str:
    """Every trial of a tuning run: model, hyperparameters, best epoch, validation and test
    GAUC/AUC; the selected trial (by validation only) in bold. A trial without a result is
    listed with its error, or as not run (the queue's time budget ended first); only
    trial indices every model finished are compared (`select_best`)."""
    lines = ["| model | trial | hyperparameters | best epoch | val GAUC | val AUC | test GAUC | "
             "test AUC |", "|---|---|---|---|---|---|---|---|"]
    runs = {r["variant"]: r for r in results.get("runs", [])}
    for row in results.get("rows", []):
        name = row["variant"]
        if " trial " not in name:
            continue
        model = name.split(" trial ")[0]
        run = runs.get(name)
        chosen = best.get(model, {}).get("trial") == name
        label = f"**{name.split(' trial ')[1]} (selected)**" if chosen else name.split(" trial ")[1]
        if run is None or not run.get("test"):
            why = f"failed: {run['error']}" if run and run.get("error") else \
                "not run (queue time budget)"
            lines.append(f"| {model} | {label} | — | — | {why} | | | |")
            continue
        over = _run_overrides(run.get("config") or {}, model)
        hp = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in over.items())
        lines.append(f"| {model} | {label} | {hp} | {run.get('best_epoch')}/{run.get('epochs_run')} "
                     f"| {run['val']['gauc']:.4f} | {run['val']['auc']:.4f} | "
                     f"{run['test']['gauc']:.4f} | {run['test']['auc']:.4f} |")
    return "\n".join(lines)
