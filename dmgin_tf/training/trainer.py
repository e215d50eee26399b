"""`dmgin train`: one Keras 3 training loop for the TensorFlow and JAX backends.

    from dmgin_tf.training import backend
    backend.select_backend("jax")            # before anything imports keras
    from dmgin_tf.training.data_source import load_training_data
    from dmgin_tf.training.trainer import train
    result = train(cfg, load_training_data(cfg), "runs/dmgin")

The loop (identical on both backends): Adam or AdamW (lr `train.learning_rate`, constant
or warm-up + cosine decay), binary cross-entropy on the `ctr` output, fixed batch size
(`train.batch_size`), exact validation AUC/GAUC/logloss after every epoch, early stopping
on `train.monitor` (validation AUC or GAUC) with the best weights restored; with
`model.use_context`, the context statistics tables are computed from the training split
first (out-of-fold for the training examples, `fill_context_statistics`); checkpoints, per-epoch logs (TensorBoard on the TF backend;
history.json/csv always), a training-curve PNG, then AUC/GAUC/logloss of the best model
on val and test.

Output directory:
  model.weights.h5   best weights — the one format that moves between backends
  config.json        the resolved config (vocabulary sizes filled from the data)
  metrics.json       val/test metrics, best epoch, speed, placement, versions
  history.json/.csv  per-epoch logs;  training_curve.png
  checkpoints/       best.weights.h5, last.weights.h5
  parity_batch.npz   a few test inputs + this backend's predictions (see parity.py)
  item_index.parquet (when the data has one) and tensorboard/ (TF backend)

Import only after the backend is selected (imports keras).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from typing import Callable, Dict, List, Optional

import keras
import numpy as np

from dmgin_tf.config import Config, ConfigError, ModelConfig
from dmgin_tf.errors import DataError, DmginError
from dmgin_tf.evaluation import undefined_reason
from dmgin_tf.features import CAND_ITEM, PREDICTION
from dmgin_tf.training import callbacks as cb
from dmgin_tf.training.data_source import ITEM_INDEX_FILE
from dmgin_tf.training.distribution import make_placement, precision_policy
from dmgin_tf.training.inputs import Split, cast_for_backend, check_batch
from dmgin_tf.training.parity import PARITY_FILE
from dmgin_tf.training.plots import plot_history

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_CLASS_KEY = "model_class"
PARITY_EXAMPLES = 256
# Training batches built ahead of the device, and the threads building them (numpy's
# gathers release the GIL). A few batches suffice to hide densify behind a step.
FEED_PREFETCH = 4
FEED_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclasses.dataclass
class TrainingData:
    """The three splits plus what the model config needs from the data.

    Attributes:
      train, val, test: `inputs.Split`s.
      model_overrides: ModelConfig fields fixed by the data (item_vocab_size,
        group_vocab_size, num_behavior_types).
      info: facts about the data for metrics.json (dataset, path, counts, grouping key).
      save_artifacts: optional callable(output_dir) writing data artifacts the model
        needs at serving time (the item index); returns the written paths.
      item_content: optional float `[item_vocab_size, C]` frozen item content vectors
        (`dmgin_tf.data.item_content`), loaded into models with
        `model.item_content_dim = C`.
    """
    train: Split
    val: Split
    test: Split
    model_overrides: Dict[str, int] = dataclasses.field(default_factory=dict)
    info: Dict[str, object] = dataclasses.field(default_factory=dict)
    save_artifacts: Optional[Callable[[str], List[str]]] = None
    item_content: Optional[np.ndarray] = None


@dataclasses.dataclass
class TrainResult:
    """What `train` produced: the trained (best) model, its config, metrics and files."""
    model: object
    config: Config
    metrics: dict
    history: List[dict]
    output_dir: str

    @property
    def weights_path(self) -> str:
        return os.path.join(self.output_dir, WEIGHTS_FILE)


def resolve_config(cfg: Config, data: TrainingData) -> Config:
    """Fills model fields the data decides: vocabulary sizes (when 0 in the config) and the
    number of behavior types (always the dataset's); for generic data without
    `data.behavior_types`, the vocabulary the examples were built with, so the run's
    config.json says what behavior id i means (export and serving need it); the grouping
    the examples were built with (e.g. `category` when `cluster` had no item → group
    table), so config.json does not name a grouping the run did not use."""
    data_cfg = cfg.data
    types = data.info.get("behavior_types")
    if cfg.data.dataset == "generic" and not cfg.data.behavior_types and types:
        data_cfg = cfg.data.replace(behavior_types=tuple(str(t) for t in types))
    grouping = cfg.grouping
    built_with = data.info.get("grouping_key")
    if built_with in ("cluster", "item_id", "category", "random") and built_with != grouping.key:
        grouping = grouping.replace(key=built_with)
    changes = {}
    for field in ("item_vocab_size", "group_vocab_size"):
        if field in data.model_overrides and not getattr(cfg.model, field):
            changes[field] = int(data.model_overrides[field])
    if "num_behavior_types" in data.model_overrides:
        types_in_data = int(data.model_overrides["num_behavior_types"])
        default = ModelConfig.__dataclass_fields__["num_behavior_types"].default
        if cfg.model.num_behavior_types not in (default, types_in_data):
            raise ConfigError(f"model.num_behavior_types={cfg.model.num_behavior_types}: the "
                              f"data has {types_in_data} behavior types and the model always "
                              f"takes the data's number; drop the setting")
        changes["num_behavior_types"] = types_in_data
    model_cfg = cfg.model.replace(**changes) if changes else cfg.model
    return dataclasses.replace(cfg, model=model_cfg, data=data_cfg, grouping=grouping)


def default_model_fn(model_cfg):
    """`dmgin_tf.models.build_model` (imported lazily, so importing the trainer stays light)."""
    from dmgin_tf.models import build_model
    return build_model(model_cfg)


def seed_everything(seed: int) -> None:
    """Python, numpy and Keras seeds; on JAX without touching TensorFlow.

    `keras.utils.set_random_seed` also seeds TensorFlow whenever it is importable, which
    would load TensorFlow into the JAX path; there we set Keras' global seed directly.
    """
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(int(seed))
        return
    random.seed(seed)
    np.random.seed(seed)
    from keras.src.backend.common import global_state
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, int(seed))


def _model_input_shapes(model) -> Dict[str, tuple]:
    """Shapes a functional model declares for its named inputs ({} for subclassed models)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return {}
    if not inputs:
        return {}
    shapes = {}
    for t in inputs:
        name = getattr(t, "name", "").split(":")[0]
        shapes[name] = tuple(t.shape)
    return shapes


def _loss_for(model):
    """Binary cross-entropy on the `ctr` output (the model may return a dict)."""
    loss = keras.losses.BinaryCrossentropy()
    names = list(getattr(model, "output_names", None) or [])
    if len(names) > 1 and PREDICTION in names:
        return {PREDICTION: loss}
    return loss


def _versions() -> dict:
    """Library versions of this backend and the machine (`dmgin_tf.provenance`)."""
    from dmgin_tf.provenance import library_versions, machine_info
    m = machine_info()
    return {**library_versions(keras.backend.backend()),
            **{k: m[k] for k in ("machine", "node", "cpu_count")}}


def train(cfg: Config, data: TrainingData, output_dir: str, *,
          model_fn: Optional[Callable] = None, verbose: int = 1) -> TrainResult:
    """Trains, selects the best epoch by `train.monitor`, evaluates, writes `output_dir`.

    Args:
      cfg: full config; `train.backend` must equal the active Keras backend.
      data: the splits (`TrainingData`).
      output_dir: where everything is written (created).
      model_fn: `ModelConfig -> keras.Model` (inputs: dict of MODEL_INPUT_KEYS, output
        `ctr` [B]); default `dmgin_tf.models.build_model`.
      verbose: 0 silent; 1 one line per epoch and, in long epochs, a progress line
        every `PROGRESS_EVERY_S` seconds; 2 also Keras' own epoch lines.

    Raises:
      DmginError: backend mismatch, empty train split; DataError on data/config mismatch.
    """
    t_start = time.perf_counter()
    backend = keras.backend.backend()
    if cfg.train.backend != backend:
        raise DmginError(f"train.backend={cfg.train.backend!r} but Keras runs the {backend!r} "
                         f"backend; select it before importing keras (dmgin train --backend ...)")
    if len(data.train) == 0:
        raise DmginError("the train split is empty; nothing to train on")
    cfg = resolve_config(cfg, data)
    tc = cfg.train
    model_fn = model_fn or default_model_fn
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DmginError(f"{output_dir} exists and is not a directory; train into a folder")
    os.makedirs(output_dir, exist_ok=True)
    previous = set_previous_run_aside(output_dir)
    if previous and verbose:
        print(f"note: {output_dir} held an earlier run; it is kept in {previous} until this "
              f"run finishes")
    ckpt_dir = os.path.join(output_dir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)

    # Check the data against the config before spending time on building the model.
    first = np.arange(min(len(data.train), tc.batch_size))
    check_batch(data.train.batch(first), cfg.model, where="train batch 0")
    for name, split in (("val", data.val), ("test", data.test)):
        if len(split):
            check_batch(split.batch(np.arange(min(len(split), tc.batch_size))), cfg.model,
                        where=f"{name} batch 0")

    seed_everything(tc.seed)
    placement = make_placement(tc.distribute, tc.batch_size)
    policy = precision_policy(tc.mixed_precision, placement, tc.jit_compile)
    previous_policy = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        with placement.scope():
            model = model_fn(cfg.model)
            _build_with_dummy(model, cfg)   # a model_fn may return an unbuilt model
            check_batch(data.train.batch(first), cfg.model, where="train batch 0",
                        model_input_shapes=_model_input_shapes(model))
            context = fill_context_statistics(model, cfg.model, data.train)
            load_item_content(model, cfg.model, data)
            item_rows = fit_item_rows(model, cfg.model, data.train)
            numeric = fit_numeric_edges(model, data.train, seed=tc.seed)
            steps_per_epoch = _steps_per_epoch(len(data.train), tc)
            model.compile(optimizer=make_optimizer(tc, steps_per_epoch),
                          loss=_loss_for(model), jit_compile=tc.jit_compile)
            history, callbacks_used = _fit(model, cfg, data, output_dir, ckpt_dir, placement,
                                           verbose)
    finally:
        keras.config.set_dtype_policy(previous_policy)

    model.save_weights(os.path.join(output_dir, WEIGHTS_FILE))
    with open(os.path.join(output_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(cfg.to_dict(), f, indent=1, sort_keys=True)
    eval_bs = tc.eval_batch_size or tc.batch_size
    results, mixed_val = {}, None
    timer, stopper, validator = callbacks_used
    best = stopper.best_epoch if stopper is not None else len(history) - 1
    best_val = validator.results.get(best) if validator is not None else None
    with placement.scope():
        if policy == "float32":
            evaluated = model
            if best_val is not None:
                # The restored weights are exactly the best epoch's: reuse its val metrics.
                results["val"] = best_val
        else:
            # Export and serving rebuild the model in float32 from the saved weights
            # (predictions differ from the bfloat16/float16 model's by up to ~0.05), so
            # the metrics, predictions and parity batch are that model's.
            mixed_val = best_val
            keras.config.set_dtype_policy("float32")
            try:
                evaluated, _ = load_trained_model(output_dir, model_fn)
            finally:
                keras.config.set_dtype_policy(previous_policy)
        for name, split in (("val", data.val), ("test", data.test)):
            if len(split) and name not in results:
                scores = cb.predict_split(evaluated, split, eval_bs, backend)
                results[name] = cb.split_metrics(split.labels, scores, split.user_ids)
                if name == "test":
                    write_predictions(os.path.join(output_dir, PREDICTIONS_FILE), split, scores)
        _write_parity_batch(evaluated, data.test if len(data.test) else data.train,
                            os.path.join(output_dir, PARITY_FILE), backend, pad_to=eval_bs)
    artifacts = data.save_artifacts(output_dir) if data.save_artifacts else []
    curve = plot_history(history, os.path.join(output_dir, "training_curve.png"),
                         title=f"{cfg.model.model} ({backend})")

    speeds = [timer.examples_per_epoch / s for s in timer.seconds if s > 0]
    metrics = {
        "model": cfg.model.model,
        # What export must rebuild: differs from the built-in class under a custom model_fn.
        MODEL_CLASS_KEY: class_path(model),
        "backend": backend,
        "placement": placement.describe(),
        "precision_policy": policy,
        # Mixed precision: val/test below are of the float32 rebuild that export serves;
        # this is the trained (mixed-precision) model's validation at its best epoch.
        "mixed_precision_val": mixed_val,
        "jit_compile": tc.jit_compile,
        "epochs_run": len(history),
        "best_epoch": (stopper.best_epoch + 1) if stopper is not None else len(history),
        "max_epochs": tc.epochs,
        # True when the best epoch is the last one allowed: the model may still improve.
        "stopped_by_epoch_cap": bool(((stopper.best_epoch + 1) if stopper is not None
                                      else len(history)) >= tc.epochs),
        "learning_rate": {"initial": tc.learning_rate, "schedule": tc.lr_schedule,
                          "warmup_epochs": tc.lr_warmup_epochs,
                          "min_ratio": tc.lr_min_ratio, "weight_decay": tc.weight_decay},
        "context_statistics": context,
        "numeric_encoding": numeric,
        "item_rows": item_rows,
        "monitor": stopper.monitor if stopper is not None else None,
        "val": results.get("val"),
        "test": results.get("test"),
        "examples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        # The first epoch includes compilation; later epochs give the steady-state rate.
        "train_examples_per_second": float(np.median(speeds[1:] if len(speeds) > 1 else speeds))
        if speeds else None,
        "train_seconds": float(sum(timer.seconds)),
        "total_seconds": time.perf_counter() - t_start,
        "data": data.info,
        "files": sorted((set(os.listdir(output_dir)) | {METRICS_FILE}) - {PREVIOUS_RUN_DIR}),
        "artifacts": [os.path.basename(p) for p in artifacts],
        "training_curve": os.path.basename(curve) if curve else None,
        "versions": _versions(),
    }
    with open(os.path.join(output_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1, sort_keys=True, default=str)
    if previous:   # this run is complete: the earlier one is no longer needed
        shutil.rmtree(previous, ignore_errors=True)
    if verbose:
        if not len(data.test) and data.info.get("source") != "tfx":   # TFX: the Evaluator tests
            print(f"note: no test examples, so no test metrics: a user's last labelled events "
                  f"become test examples only when the user has at least "
                  f"data.min_events_for_test = {cfg.data.min_events_for_test} labelled events "
                  f"(docs/data.md)", flush=True)
        for name in ("val", "test"):
            m = metrics.get(name)
            if m:
                print(f"{name}: auc {m['auc']:.4f}  gauc {_fmt(m.get('gauc'))}  "
                      f"logloss {m['logloss']:.4f}  (n={m.get('num_examples', '?')})", flush=True)
                split = data.val if name == "val" else data.test
                for metric in ("auc", "gauc"):
                    reason = undefined_reason(metric, split.labels, split.user_ids)
                    if reason is not None:
                        print(f"note: {name} {metric.upper()} is undefined: {reason}", flush=True)
                        break
        from dmgin_tf.display import display_path
        print(f"wrote {display_path(output_dir)}", flush=True)
    return TrainResult(model, cfg, metrics, history, output_dir)


PREDICTIONS_FILE = "test_predictions.npz"
TENSORBOARD_DIR = "tensorboard"


PREVIOUS_RUN_DIR = "previous_run"
# Everything a run writes into its output directory (the data cache `data/` and any
# other file there are left alone); `ITEM_INDEX_FILE` is the example set's artifact.
RUN_OUTPUTS = (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, PARITY_FILE, PREDICTIONS_FILE,
               "training_curve.png", "history.json", "history.csv", "checkpoints",
               TENSORBOARD_DIR, ITEM_INDEX_FILE)


def set_previous_run_aside(output_dir: str) -> Optional[str]:
    """A run into a used output directory moves the earlier run's outputs into
    `<output_dir>/previous_run/` (replacing an older one) and starts from an empty
    folder; `train` deletes them once its own metrics are written. So the folder never
    mixes two runs: an interrupted run leaves its own checkpoints and history beside the
    complete earlier run, not its history next to the earlier run's weights and metrics
    (TensorBoard would also append both runs' curves to one log). Returns the
    `previous_run` path, or None when there was no earlier run."""
    found = [n for n in RUN_OUTPUTS if os.path.lexists(os.path.join(output_dir, n))]
    if not found:
        return None
    # Every run, finished or not, has its checkpoints folder (made right after this) or
    # its metrics: files of ours without either are another command's output — a group
    # table or an example set also holds item_index.parquet — and are not deleted.
    if not {"checkpoints", METRICS_FILE, CONFIG_FILE, WEIGHTS_FILE} & set(found):
        raise DmginError(f"{output_dir} holds {', '.join(found)} but no training run (no "
                         f"checkpoints/ or {METRICS_FILE}): it is another command's output "
                         f"(a group table or an example set?); train into another folder")
    previous = os.path.join(output_dir, PREVIOUS_RUN_DIR)
    if os.path.isfile(os.path.join(output_dir, METRICS_FILE)):
        # A complete run replaces an older set-aside one; an unfinished one (no metrics)
        # is deleted instead, so a complete earlier run is never lost to it.
        shutil.rmtree(previous, ignore_errors=True)
        os.makedirs(previous)
        for n in found:
            os.replace(os.path.join(output_dir, n), os.path.join(previous, n))
        return previous
    for n in found:
        path = os.path.join(output_dir, n)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return previous if os.path.isdir(previous) else None


def write_predictions(path: str, split, scores: np.ndarray) -> None:
    """The test split's predictions, for analysis beside metrics.json
    (`dmgin bench diagnose`): `score` float32, `label` int8, `user` (the split's user
    ids) and `cand_item` int32, all `[N]` in split order."""
    if hasattr(split, "candidate_ids"):
        cand = np.asarray(split.candidate_ids()[0])
    else:
        cand = np.concatenate([np.asarray(split.batch(idx)[CAND_ITEM]).reshape(-1) for idx in
                               np.array_split(np.arange(len(split)),
                                              max(1, len(split) // 8192))])
    np.savez_compressed(path, score=np.asarray(scores, np.float32),
                        label=np.asarray(split.labels).astype(np.int8),
                        user=np.asarray(split.user_ids), cand_item=cand.astype(np.int32))


def _steps_per_epoch(num_train: int, tc) -> int:
    """Optimizer steps per epoch (what the learning-rate schedule counts)."""
    full = max(1, -(-num_train // tc.batch_size))
    return min(tc.steps_per_epoch, full) if tc.steps_per_epoch else full


def make_optimizer(tc, steps_per_epoch: int):
    """Adam (AdamW when `train.weight_decay` > 0) with the configured learning rate.

    `warmup_cosine`: linear warm-up from 0 to `learning_rate` over `lr_warmup_epochs`,
    then cosine decay to `lr_min_ratio * learning_rate` at `epochs` (the epoch cap, so
    early stopping usually ends training while the rate is still high enough to move).
    """
    lr = tc.learning_rate
    if tc.lr_schedule == "warmup_cosine":
        warmup = int(round(tc.lr_warmup_epochs * steps_per_epoch))
        total = max(warmup + 1, tc.epochs * steps_per_epoch)
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - warmup, alpha=tc.lr_min_ratio,
            warmup_target=tc.learning_rate, warmup_steps=warmup)
    if tc.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=tc.weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def context_tables_for(train_split, model_cfg) -> dict:
    """The context statistics tables of a training split (`context_stats.context_tables`);
    gives the split its out-of-fold indices, so each training example reads statistics
    without its own label."""
    from dmgin_tf.data.context_stats import assign_folds, context_tables
    if not hasattr(train_split, "candidate_ids"):
        raise DmginError(f"model.use_context=true needs a training split that can list its "
                         f"candidate ids ({type(train_split).__name__} cannot); set "
                         f"model.use_context=false")
    item, group = train_split.candidate_ids()
    folds = assign_folds(len(train_split), model_cfg.context_folds, seed=0)
    train_split.folds = folds
    return context_tables(item, group, train_split.labels, folds,
                          model_cfg.item_vocab_size, model_cfg.group_vocab_size,
                          model_cfg.context_folds, model_cfg.context_prior)


def fill_context_statistics(model, model_cfg, train_split) -> Optional[dict]:
    """Loads `context_tables_for(train_split)` into the model
    (`RankingModel.set_context_tables`).

    Returns a summary for metrics.json, or None when the model has no context features.
    """
    if not getattr(model_cfg, "use_context", False) or not hasattr(model, "set_context_tables"):
        return None
    tables = context_tables_for(train_split, model_cfg)
    model.set_context_tables(tables["item"], tables["group"])
    return {"train_examples": int(len(train_split)), "folds": int(model_cfg.context_folds),
            "prior": float(model_cfg.context_prior),
            "items_seen": int(tables["item"][0, :, 3].sum()),
            "groups_seen": int(tables["group"][0, :, 3].sum())}


def fit_item_rows(model, model_cfg, train_split) -> Optional[dict]:
    """With `model.item_min_count` = k > 0: items that are the candidate of fewer than k
    training examples share the unknown-item embedding row (`RankingModel.set_item_rows`).
    Returns a summary for metrics.json, or None when off."""
    k = int(getattr(model_cfg, "item_min_count", 0) or 0)
    if not k:
        return None
    if not hasattr(train_split, "candidate_ids"):
        raise DmginError(f"model.item_min_count={k} needs a training split that can list its "
                         f"candidate ids ({type(train_split).__name__} cannot); set "
                         "model.item_min_count=0")
    items = np.asarray(train_split.candidate_ids()[0], dtype=np.int64)
    counts = np.bincount(items[(items >= 0) & (items < model_cfg.item_vocab_size)],
                         minlength=model_cfg.item_vocab_size)
    kept = model.set_item_rows(counts)
    return {"min_count": k, "items_with_own_row": kept,
            "items_seen": int((counts[2:] > 0).sum())}


def load_item_content(model, model_cfg, data: TrainingData) -> None:
    """Loads `data.item_content` into a model with `model.item_content_dim > 0`; such a
    model without a table (or with one of another width) is a configuration error."""
    dim = int(getattr(model_cfg, "item_content_dim", 0) or 0)
    if not dim:
        return
    table = data.item_content
    if table is None:
        raise DmginError(f"model.item_content_dim={dim} needs item content vectors (the "
                         "catalog embedding: `dmgin encoder embed`), and the training data "
                         "has none; pass them or set model.item_content_dim=0")
    if table.shape != (model_cfg.item_vocab_size, dim):
        raise DmginError(f"item content vectors of shape {tuple(table.shape)} do not fit "
                         f"model.item_vocab_size={model_cfg.item_vocab_size}, "
                         f"model.item_content_dim={dim}")
    model.set_item_content(table)


NUMERIC_FIT_EXAMPLES = 16384     # training rows the head's quantile edges are fitted on


def fit_numeric_edges(model, train_split, max_examples: int = NUMERIC_FIT_EXAMPLES,
                      batch_size: int = 1024, seed: int = 0) -> Optional[dict]:
    """Fits the MLP head's piecewise-linear encoding (`MLPHead.set_numeric_edges`) on
    the head inputs of up to `max_examples` random training examples — with their
    out-of-fold context statistics, as training sees them — after the context tables
    are loaded. Returns a summary for metrics.json, or None when the model's head has
    no numeric encoding (`model.numeric_bins = 0`, or nothing dense to encode)."""
    head = getattr(model, "head", None)
    if getattr(head, "numeric", None) is None or not hasattr(model, "head_inputs"):
        return None
    n = len(train_split)
    if n == 0:
        raise DmginError("fit_numeric_edges: the training split is empty; the head's "
                         "quantile edges need training examples")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, int(max_examples)), replace=False))
    rows = []
    for start in range(0, len(idx), batch_size):
        batch = cast_for_backend(train_split.batch(idx[start:start + batch_size]),
                                 keras.backend.backend())
        rows.append(np.asarray(keras.ops.convert_to_numpy(model.head_inputs(batch)),
                               dtype=np.float32))
    edges = head.set_numeric_edges(np.concatenate(rows))
    return {"rows": int(len(idx)), "columns": int(edges.shape[0]),
            "bins": int(edges.shape[1] - 1)}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _defined_monitor(monitor: str, val: Split, verbose: int):
    """(monitor, mode) for early stopping: `monitor` ("val_auc" / "val_gauc") unless the
    validation labels leave it undefined (NaN every epoch would never improve, and the
    run would stop after `patience` epochs on its first weights). Then val AUC if that
    is defined, else the train loss, with a note naming the reason."""
    reason = undefined_reason(monitor[len("val_"):], val.labels, val.user_ids)
    if reason is None:
        return monitor, "max"
    fallback = "val_auc" if monitor == "val_gauc" and undefined_reason(
        "auc", val.labels) is None else "loss"
    if verbose:
        print(f"note: {monitor} is undefined on the validation split ({reason}); early "
              f"stopping monitors {'val AUC' if fallback == 'val_auc' else 'train loss'}",
              flush=True)
    return fallback, "max" if fallback == "val_auc" else "min"


def examples_per_epoch(steps: int, batch_size: int, drop_remainder: bool, num_examples: int) -> int:
    """Training examples one epoch of `steps` batches holds (what examples/s counts).

    Without `drop_remainder` (a split smaller than one batch keeps its only, partial
    batch; so does a split's last batch) the steps hold at most the split.
    """
    total = steps * batch_size
    return total if drop_remainder else min(total, num_examples)


PROGRESS_EVERY_S = 30.0     # seconds between progress lines within an epoch


def _fit(model, cfg: Config, data: TrainingData, output_dir: str, ckpt_dir: str, placement,
         verbose: int):
    """model.fit with our callbacks; returns (history rows, (timer, early stopper,
    validation callback or None))."""
    tc = cfg.train
    backend = placement.backend
    # Batches are densified in background threads ahead of the step that consumes them,
    # and every callback is async-safe, so the host never waits for a step before
    # building the next batch (see SplitSequence, EpochCheckpoint; bench_fit_loop.py).
    seq = cb.SplitSequence(data.train, tc.batch_size, shuffle=True, seed=tc.seed, backend=backend,
                           prefetch=FEED_PREFETCH, threads=FEED_THREADS)
    steps = min(tc.steps_per_epoch, len(seq)) if tc.steps_per_epoch else None
    timer = cb.EpochTimer(examples_per_epoch(steps or len(seq), tc.batch_size,
                                             seq.drop_remainder, len(data.train)))
    history_writer = cb.HistoryWriter(output_dir)
    callbacks = [timer]
    if verbose:
        callbacks.append(cb.StepProgress(steps or len(seq), tc.batch_size,
                                         every_s=PROGRESS_EVERY_S))
    eval_bs = tc.eval_batch_size or tc.batch_size
    validator = None
    if len(data.val):
        validator = cb.ValidationMetrics(data.val, eval_bs, verbose=1 if verbose else 0)
        callbacks.append(validator)
        monitor, mode = _defined_monitor(tc.monitor, data.val, verbose)
    else:
        # Without a validation split (tiny data) the best epoch is the lowest train loss.
        monitor, mode = "loss", "min"
        if verbose:
            print("note: empty validation split; early stopping monitors train loss", flush=True)
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                            patience=tc.early_stopping_patience,
                                            restore_best_weights=True, verbose=0)
    callbacks += [
        stopper,
        cb.EpochCheckpoint(os.path.join(ckpt_dir, "best.weights.h5"), monitor=monitor,
                           mode=mode, save_best_only=True, save_weights_only=True),
        cb.EpochCheckpoint(os.path.join(ckpt_dir, "last.weights.h5"), save_weights_only=True),
        history_writer,
    ]
    if backend == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, TENSORBOARD_DIR),
                                                     write_graph=False, profile_batch=0))
    try:
        # shuffle=False: `seq` shuffles itself, seeded, per epoch. Keras' own shuffle of a
        # PyDataset asks for the batches in a random order, which defeated the
        # read-ahead: a step built up to 4 batches and memory grew with the epoch.
        model.fit(seq, epochs=tc.epochs, steps_per_epoch=steps, callbacks=callbacks,
                  shuffle=False, verbose=2 if verbose >= 2 else 0)
    finally:
        seq.close()
    return history_writer.rows, (timer, stopper, validator)


def _write_parity_batch(model, split: Split, path: str, backend: str,
                        pad_to: int = 0) -> None:
    """Saves up to PARITY_EXAMPLES inputs and this model's predictions on them."""
    n = min(len(split), PARITY_EXAMPLES)
    if not n:
        return
    inputs = cast_for_backend(split.batch(np.arange(n)), backend)
    # Padded to the evaluation batch (repeating row 0) so the compiled predict step of
    # validation is reused: a 256-row batch would compile a second one (~10-30 s under XLA).
    pad = max(n, int(pad_to or n))
    padded = {k: np.concatenate([v, np.repeat(v[:1], pad - n, axis=0)]) for k, v in inputs.items()}
    with _full_float32_matmuls(backend):
        preds = cb.prediction_vector(model.predict_on_batch(padded))[:n]
    np.savez(path, predictions=preds, backend=np.asarray(backend),
             **{f"input/{k}": v for k, v in inputs.items()})


def _full_float32_matmuls(backend: str):
    """JAX on Ampere/Hopper GPUs runs float32 matmuls in TF32 by default (10-bit mantissa):
    on the H100 that moved predictions by up to 3e-4 against the same weights on the
    CPU. The reference predictions of the parity batch are what the exported TF model must
    reproduce within 1e-5, so they are computed at full float32 precision; a no-op on CPU
    and on the TensorFlow backend."""
    import contextlib
    if backend != "jax":
        return contextlib.nullcontext()
    import jax
    return jax.default_matmul_precision("float32")


def load_config_file(run_dir: str) -> Config:
    """The resolved Config a run wrote (config.json)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as e:
        kept = os.path.join(run_dir, PREVIOUS_RUN_DIR, CONFIG_FILE)
        hint = (f"the run into {run_dir} did not finish; its complete earlier run is in "
                f"{os.path.join(run_dir, PREVIOUS_RUN_DIR)}" if os.path.isfile(kept) else
                f"is {run_dir} a `dmgin train` output directory?")
        raise DataError(f"{path}: cannot read the run's config ({type(e).__name__}: "
                        f"{getattr(e, 'strerror', None) or e}); {hint}") from None
    return Config.from_dict(values)


def class_path(model) -> str:
    """`module.QualName` of a model's class (recorded in metrics.json as `model_class`)."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def load_trained_model(run_dir: str, model_fn: Optional[Callable] = None):
    """Rebuilds a run's model on the active backend and loads its `model.weights.h5`.

    Works across backends: weights written by a JAX run load into the TF-backend model
    (the path the SavedModel export takes). Returns `(model, config)`.
    """
    cfg = load_config_file(run_dir)
    model = (model_fn or default_model_fn)(cfg.model)
    _build_with_dummy(model, cfg)
    weights = os.path.join(run_dir, WEIGHTS_FILE)
    try:
        model.load_weights(weights)
    except (OSError, ValueError, KeyError) as e:
        # h5py's OSError (missing or truncated file) or Keras' "N objects could not be
        # loaded" (weights of another config): name both files, keep the first line.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{weights} does not load into the model {run_dir}/{CONFIG_FILE} "
                        f"describes (missing or truncated file, or the weights of another "
                        f"config): {type(e).__name__}: {first[:300]}") from None
    return model, cfg


def _build_with_dummy(model, cfg: Config) -> None:
    """Creates the model's variables (subclassed models build on first call)."""
    if getattr(model, "built", False) and model.weights:
        return
    from dmgin_tf.training.inputs import input_spec
    batch = {}
    for key, (shape, _) in input_spec(cfg.model).items():
        batch[key] = np.zeros((2,) + tuple(shape[1:]), dtype=np.int32)
    model(cast_for_backend(batch, keras.backend.backend()))
