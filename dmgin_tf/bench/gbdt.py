"""The `gbdt` row: gradient boosted trees (TensorFlow Decision Forests) on the very same
examples as the neural rows, over the features those rows' MLP heads read.

Features per example (`example_features`), computed with the models' own functions so
the two cannot drift apart:
- context statistics (`ContextStatistics`): the candidate item's and group's training
  statistics — out-of-fold for training examples (the same folds and tables as the
  neural rows), table 0 for validation/test — the user's affinity to the candidate's
  group, and the user's history aggregates;
- history matching: the candidate item's counts per behavior type, seen flag and
  recency (`candidate_item_match`), and the candidate group's counts per behavior type
  and time statistics over the whole history (`candidate_groups`, DGIN's lookup).

Trees are tuned on validation only (a small grid over depth and shrinkage, early
stopping on the validation split), then trained once per seed with that setting
(row subsampling makes seeds differ). Needs the `bench` extra
(`pip install 'dmgin-tf[bench]'`: tensorflow-decision-forests, pinned to our TF).
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

GRID = {"max_depth": (4, 6), "shrinkage": (0.05, 0.1)}
NUM_TREES = 500           # upper bound; early stopping on validation picks the number


def feature_names(model_cfg) -> List[str]:
    from dmgin_tf.data.context_stats import FEATURE_NAMES
    from dmgin_tf.ops import STAT_NAMES
    t = range(1, model_cfg.num_behavior_types + 1)
    names = [f"item_{n}" for n in FEATURE_NAMES] + [f"group_{n}" for n in FEATURE_NAMES]
    names += [f"affinity_log_count_b{i}" for i in t] + [f"affinity_share_b{i}" for i in t]
    names += [f"user_log_count_b{i}" for i in t] + [f"user_share_b{i}" for i in t]
    names += ["user_log_total", "user_recency"]
    names += [f"item_hist_log_count_b{i}" for i in t] + ["item_hist_seen", "item_hist_recency"]
    names += [f"cand_group_log_count_b{i}" for i in t] + [f"cand_group_{s}" for s in STAT_NAMES]
    return names


def example_features(split, model_cfg, context, batch_size: int = 2048,
                     progress: Optional[callable] = None) -> np.ndarray:
    """float32 `[len(split), len(feature_names(model_cfg))]` for one split.

    Args:
        split: a trainer split (`batch(indices)` gives the dense model inputs; a training
            split with `folds` set gives `context_fold` too).
        model_cfg: the resolved `ModelConfig` (vocabularies, T, M).
        context: a `ContextStatistics` layer with its tables loaded.
    """
    from keras import ops
    from dmgin_tf import features as F
    from dmgin_tf.layers.candidate_match import candidate_item_match
    from dmgin_tf.layers.group_statistics import GroupStatistics
    from dmgin_tf.ops import candidate_groups
    out = []
    t = model_cfg.num_behavior_types
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        b = split.batch(idx)
        cand = context.candidate_features(b[F.CAND_ITEM], b[F.CAND_GROUP], b.get(F.CONTEXT_FOLD),
                                          b[F.HIST_GROUP], b[F.HIST_BEHAVIOR_ID], b[F.HIST_ITEM])
        user = context.user_features(b[F.HIST_ITEM], b[F.HIST_BEHAVIOR_ID], b[F.HIST_TIME],
                                     b[F.REQUEST_TIME])
        item = candidate_item_match(b[F.HIST_ITEM], b[F.HIST_BEHAVIOR_ID], b[F.HIST_TIME],
                                    b[F.REQUEST_TIME], b[F.CAND_ITEM], t)
        cg = candidate_groups(b[F.HIST_ITEM], b[F.HIST_GROUP], b[F.HIST_BEHAVIOR_ID],
                              b[F.HIST_TIME], b[F.REQUEST_TIME], b[F.CAND_GROUP][:, None],
                              max_per_group=model_cfg.max_per_group, num_behavior_types=t,
                              num_groups=model_cfg.group_vocab_size)
        known = (np.asarray(b[F.CAND_GROUP]) >= 2).astype("float32")[:, None]
        group = GroupStatistics.features(cg.counts[:, 0] * known, cg.stats[:, 0] * known)
        row = ops.concatenate([ops.cast(x, "float32") for x in (cand, user, item, group)],
                              axis=-1)
        out.append(np.asarray(ops.convert_to_numpy(row), dtype=np.float32))
        if progress:
            progress(min(start + batch_size, len(split)), len(split))
    return np.concatenate(out) if out else np.zeros((0, len(feature_names(model_cfg))),
                                                    np.float32)


def _frame(x: np.ndarray, names: Sequence[str], labels: Optional[np.ndarray] = None):
    import pandas as pd
    df = pd.DataFrame(x, columns=list(names))
    if labels is not None:
        df["label"] = labels.astype(np.int64)
    return df


def _fit(train_df, val_df, *, max_depth: int, shrinkage: float, seed: int):
    import tensorflow_decision_forests as tfdf
    model = tfdf.keras.GradientBoostedTreesModel(
        num_trees=NUM_TREES, max_depth=max_depth, shrinkage=shrinkage, subsample=0.8,
        random_seed=seed, early_stopping="LOSS_INCREASE",
        early_stopping_num_trees_look_ahead=30, validation_ratio=0.0, verbose=0)
    train_ds = tfdf.keras.pd_dataframe_to_tf_dataset(train_df, label="label")
    val_ds = tfdf.keras.pd_dataframe_to_tf_dataset(val_df, label="label")
    model.fit(train_ds, validation_data=val_ds, verbose=0)
    return model


def _predict(model, df) -> np.ndarray:
    import tensorflow_decision_forests as tfdf
    ds = tfdf.keras.pd_dataframe_to_tf_dataset(df.drop(columns=["label"]))
    return np.asarray(model.predict(ds, verbose=0)).reshape(-1)


def run_gbdt(data, model_cfg, seeds: Sequence[int], log=print) -> Dict[str, object]:
    """Features, tuning on validation, then one model per seed.

    Args:
        data: `TrainingData` (train/val/test splits of the table's example set).
        model_cfg: resolved `ModelConfig` (vocabularies, `context_folds`, `context_prior`).
        seeds: seeds of the final models.

    Returns:
        {"runs": [{seed, test, val, seconds, params}], "tuning": [...], "features": names,
         "importance": top features by the final model's split count}.
    """
    from dmgin_tf import evaluation
    from dmgin_tf.layers.context_statistics import ContextStatistics
    from dmgin_tf.training.trainer import context_tables_for

    t0 = time.perf_counter()
    context = ContextStatistics(model_cfg.item_vocab_size, model_cfg.group_vocab_size,
                                model_cfg.num_behavior_types, model_cfg.context_folds)

    tables = context_tables_for(data.train, model_cfg)
    context.set_tables(tables["item"], tables["group"])
    names = feature_names(model_cfg)
    frames = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        x = example_features(split, model_cfg, context)
        frames[name] = _frame(x, names, split.labels)
    log(f"[gbdt] features: {len(names)} per example, {len(frames['train'])} train / "
        f"{len(frames['val'])} val / {len(frames['test'])} test ({time.perf_counter() - t0:.0f}s)")

    def metrics(model, split_name, split):
        return evaluation.evaluate(split.labels, _predict(model, frames[split_name]),
                                   split.user_ids)

    tuning = []
    for depth, shrinkage in itertools.product(GRID["max_depth"], GRID["shrinkage"]):
        t = time.perf_counter()
        model = _fit(frames["train"], frames["val"], max_depth=depth, shrinkage=shrinkage,
                     seed=int(seeds[0]))
        val = metrics(model, "val", data.val)
        tuning.append({"max_depth": depth, "shrinkage": shrinkage, "val": val,
                       "num_trees": int(model.make_inspector().num_trees()),
                       "seconds": time.perf_counter() - t})
        log(f"[gbdt] depth {depth} shrinkage {shrinkage}: val gauc {val['gauc']:.4f} "
            f"auc {val['auc']:.4f} ({tuning[-1]['num_trees']} trees)")
    best = max(tuning, key=lambda r: r["val"]["gauc"])
    params = {"max_depth": best["max_depth"], "shrinkage": best["shrinkage"]}
    runs, importance = [], None
    for seed in seeds:
        t = time.perf_counter()
        model = _fit(frames["train"], frames["val"], seed=int(seed), **params)
        runs.append({"seed": int(seed), "params": params,
                     "val": metrics(model, "val", data.val),
                     "test": metrics(model, "test", data.test),
                     "num_trees": int(model.make_inspector().num_trees()),
                     "seconds": time.perf_counter() - t})
        log(f"[gbdt] seed {seed}: test auc {runs[-1]['test']['auc']:.4f} "
            f"gauc {runs[-1]['test']['gauc']:.4f}")
        if importance is None:
            imp = model.make_inspector().variable_importances().get("NUM_AS_ROOT") or []
            importance = [(str(v[0].name), float(v[1])) for v in imp[:10]]
    return {"runs": runs, "tuning": tuning, "features": names, "importance": importance,
            "params": params, "seconds": time.perf_counter() - t0}
