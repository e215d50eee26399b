"""Which users and items one model ranks worse than another: per-user GAUC diagnosis.

Reads the `test_predictions.npz` every training run writes (`dmgin train`, the quality
bench) for two or more runs on the same test examples, plus the training split they
were trained on, and breaks test GAUC down by
- user activity: the user's number of training examples (quartiles of users);
- candidate exposure: how many training examples the candidate item had (0 = cold);
and compares the models user by user (mean per-user AUC difference with its standard
error, users won / lost). Command: `dmgin bench diagnose`.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from dmgin_tf import evaluation
from dmgin_tf.errors import DmginError

EXPOSURE_EDGES = (0, 1, 10, 50)      # candidate's training examples: 0 | 1-9 | 10-49 | 50+


def load_predictions(run_dir: str) -> Dict[str, np.ndarray]:
    """A run's `test_predictions.npz` as a dict (score, label, user, cand_item)."""
    from dmgin_tf.training.trainer import PREDICTIONS_FILE
    path = os.path.join(run_dir, PREDICTIONS_FILE)
    if not os.path.exists(path):
        raise DmginError(f"{path} not found: train the run with this version of dmgin "
                         "(every run writes its test predictions)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _check_same_examples(preds: Dict[str, Dict[str, np.ndarray]]) -> None:
    names = list(preds)
    first = preds[names[0]]
    for name in names[1:]:
        p = preds[name]
        for key in ("label", "user", "cand_item"):
            if p[key].shape != first[key].shape or not np.array_equal(p[key], first[key]):
                raise DmginError(f"runs {names[0]!r} and {name!r} were evaluated on different "
                                 f"test examples ({key} differs); compare runs of one dataset, "
                                 "history length and grouping")


def _bucket_gauc(label, score, user, keep) -> float:
    if not keep.any():
        return float("nan")
    return evaluation.gauc(label[keep], score[keep], user[keep])


def diagnose(preds: Dict[str, Dict[str, np.ndarray]], train_users: np.ndarray,
             train_items: np.ndarray, baseline: Optional[str] = None) -> dict:
    """The breakdown (see the module docstring).

    Args:
        preds: {run name: `load_predictions(run_dir)`}, same test examples.
        train_users: `[E]` user ids of the training examples. train_items: `[E]` their
            candidate item ids (model ids, as in the predictions).
        baseline: the run the others are compared with user by user (default: the
            first).

    Returns:
        {"overall", "by_activity", "by_exposure", "paired"} (JSON-ready).
    """
    if len(preds) < 2:
        raise DmginError("diagnose: name at least two runs to compare")
    _check_same_examples(preds)
    names = list(preds)
    baseline = baseline or names[0]
    if baseline not in preds:
        raise DmginError(f"diagnose: baseline {baseline!r} is not one of the runs {names}")
    ref = preds[names[0]]
    label, user, cand = ref["label"].astype(np.float64), ref["user"], ref["cand_item"]

    overall = {n: evaluation.evaluate(label, p["score"], user) for n, p in preds.items()}

    # User activity: training examples per user, cut at the quartiles of the test users.
    train_users = np.asarray(train_users)
    values, counts = np.unique(train_users, return_counts=True)
    per_user = dict(zip(values.tolist(), counts.tolist()))
    test_users = np.unique(user)
    activity = np.array([per_user.get(u, 0) for u in test_users.tolist()])
    edges = np.unique(np.quantile(activity, [0.25, 0.5, 0.75])) if len(activity) else []
    user_bucket = dict(zip(test_users.tolist(), np.searchsorted(edges, activity, side="right")))
    example_bucket = np.array([user_bucket[u] for u in user.tolist()])
    bounds = [int(activity.min()) if len(activity) else 0] + [int(e) for e in edges] + \
        [int(activity.max()) if len(activity) else 0]
    by_activity = []
    for b in range(len(edges) + 1):
        keep = example_bucket == b
        by_activity.append({
            "bucket": f"{bounds[b]}-{bounds[b + 1]} train examples",
            "users": int(len(np.unique(user[keep]))), "examples": int(keep.sum()),
            "gauc": {n: _bucket_gauc(label, p["score"], user, keep) for n, p in preds.items()}})

    # Candidate exposure: training examples of the candidate item.
    exposure = np.bincount(np.asarray(train_items, np.int64),
                           minlength=int(cand.max()) + 1 if len(cand) else 1)
    exp = exposure[np.clip(cand, 0, len(exposure) - 1)] * (cand < len(exposure))
    ex_bucket = np.searchsorted(np.asarray(EXPOSURE_EDGES[1:]), exp, side="right")
    labels_e = [f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" for lo, hi in
                zip(EXPOSURE_EDGES, EXPOSURE_EDGES[1:])] + [f"{EXPOSURE_EDGES[-1]}+"]
    by_exposure = []
    for b, name in enumerate(labels_e):
        keep = ex_bucket == b
        by_exposure.append({
            "bucket": f"candidate seen in {name} train examples",
            "examples": int(keep.sum()),
            "positive_rate": float(label[keep].mean()) if keep.any() else float("nan"),
            "gauc": {n: _bucket_gauc(label, p["score"], user, keep) for n, p in preds.items()}})

    # User by user against the baseline.
    paired = {}
    _, base_auc, weight = evaluation.per_user_auc(label, preds[baseline]["score"], user)
    for n in names:
        if n == baseline:
            continue
        _, auc, _ = evaluation.per_user_auc(label, preds[n]["score"], user)
        ok = ~np.isnan(auc) & ~np.isnan(base_auc)
        diff = auc[ok] - base_auc[ok]
        paired[n] = {"vs": baseline, "users": int(ok.sum()),
                     "mean_user_auc_diff": float(diff.mean()) if ok.any() else float("nan"),
                     "stderr": float(diff.std(ddof=1) / np.sqrt(ok.sum())) if ok.sum() > 1
                     else float("nan"),
                     "users_better": int((diff > 0).sum()), "users_worse": int((diff < 0).sum())}
    return {"overall": overall, "by_activity": by_activity, "by_exposure": by_exposure,
            "paired": paired, "runs": names, "baseline": baseline}


def _num(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def markdown(result: dict) -> str:
    """Tables of `diagnose` output."""
    names = result["runs"]
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    out = ["Test GAUC (AUC) per run:\n", head]
    out.append("| all test examples | " + " | ".join(
        f"{_num(result['overall'][n]['gauc'])} ({_num(result['overall'][n]['auc'])})"
        for n in names) + " |\n")
    out.append("\nGAUC by user activity (users' training examples, quartiles):\n\n"
               "| users | examples | " + " | ".join(names) + " |\n|---|---|" +
               "---|" * len(names) + "\n")
    for row in result["by_activity"]:
        out.append(f"| {row['bucket']} ({row['users']} users) | {row['examples']} | " +
                   " | ".join(_num(row["gauc"][n]) for n in names) + " |\n")
    out.append("\nGAUC by candidate exposure (the candidate item's training examples):\n\n"
               "| candidates | examples | positive rate | " + " | ".join(names) + " |\n"
               "|---|---|---|" + "---|" * len(names) + "\n")
    for row in result["by_exposure"]:
        out.append(f"| {row['bucket']} | {row['examples']} | {_num(row['positive_rate'])} | " +
                   " | ".join(_num(row["gauc"][n]) for n in names) + " |\n")
    out.append(f"\nUser by user against `{result['baseline']}` (per-user AUC):\n\n"
               "| run | users | mean difference ± s.e. | users better | users worse |\n"
               "|---|---|---|---|---|\n")
    for n, p in result["paired"].items():
        out.append(f"| {n} | {p['users']} | {p['mean_user_auc_diff']:+.4f} ± {p['stderr']:.4f} "
                   f"| {p['users_better']} | {p['users_worse']} |\n")
    return "".join(out)


def plot(result: dict, path: str) -> Optional[str]:
    """Grouped bars of GAUC by activity and by exposure; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = result["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in ((axes[0], "by_activity", "by user activity"),
                           (axes[1], "by_exposure", "by candidate exposure")):
        rows = result[key]
        x = np.arange(len(rows))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar(x + i * width, [r["gauc"][n] for r in rows], width, label=n)
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels([r["bucket"].replace(" train examples", "").replace(
            "candidate seen in ", "") for r in rows], fontsize=8)
        ax.set_ylabel("test GAUC")
        ax.set_title(f"GAUC {title}")
        values = [r["gauc"][n] for r in rows for n in names if np.isfinite(r["gauc"][n])]
        if values:
            ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict, out_dir: str) -> List[str]:
    """diagnosis.json, diagnosis.md and diagnosis.png in `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "diagnosis.json"), os.path.join(out_dir, "diagnosis.md")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(markdown(result))
    png = plot(result, os.path.join(out_dir, "diagnosis.png"))
    return paths + ([png] if png else [])


def train_split_ids(run_dirs: Sequence[str], data_path: Optional[str], work_dir: str):
    """User ids and candidate item ids `[E]` of the training split the first run was
    trained on (its config.json: dataset, grouping, history length)."""
    from dmgin_tf.training.data_source import load_training_data
    from dmgin_tf.training.trainer import load_config_file
    cfg = load_config_file(run_dirs[0])
    data = load_training_data(cfg, data_path, work_dir, progress=False)
    return np.asarray(data.train.user_ids), np.asarray(data.train.candidate_ids()[0])
