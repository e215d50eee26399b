"""TFX module: `preprocessing_fn` (Transform) and `run_fn` (Trainer), referenced by
import path (`tfx_pipeline.module.preprocessing_fn` / `.run_fn`), so no user-code wheel
is built per component.

Inputs are the ExampleBuilder's user records (one `tf.train.SequenceExample` per user
and split, `transform.examples`); histories are never materialised in an artifact.

Transform (`preprocessing_fn`, analyze only: `materialize=False`) computes the one
vocabulary the model ids come from, over every behavior's item and every candidate
(negatives included) of the train split:

  item_group_vocab  "item|group" lines, most frequent item first (an item has one
                    group); model item id = line + 2, unknown -> 1 (OOV); the group is
                    parsed off the item's line, so at serving time only item ids are
                    needed (unknown -> 1)

Trainer (`run_fn`): reads the train / val records through tf.data into per-record
sequences + positions (`tfx_pipeline.records.read_user_records`, ids from the
vocabularies), trains `dmgin_tf.models.build_model` with the shared loop
(`dmgin_tf.training.trainer.train`), whose batches cut each example's newest L behaviors
strictly before it on the fly (`densify`, shuffled across users and examples every
epoch), warm starts from `fn_args.base_model` (the last blessed model, see `warm_start`),
and saves a SavedModel whose `serving_default` takes serialized flat tf.Examples
(`item_id`, `timestamp`, `hist_item_id`, `hist_behavior`, `hist_timestamp`) and maps
them with the same `Lookups` tables (`FlatTensorizer`).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from dmgin_tf import features as F
from tfx_pipeline.artifacts import WARM_START_DIR
from transform import examples as X

ITEM_VOCAB = "item_vocab"    # warm-start copy of the item order (one id per line)
ITEM_GROUP_VOCAB = "item_group_vocab"
_LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- Transform

def _values(x) -> tf.Tensor:
    """All values of a dense / sparse / ragged feature as one 1-D tensor."""
    if isinstance(x, tf.RaggedTensor):
        return tf.reshape(x.flat_values, [-1])
    if isinstance(x, tf.SparseTensor):
        return x.values
    return tf.reshape(x, [-1])


def _pairs(items: tf.Tensor, groups: tf.Tensor) -> tf.Tensor:
    """[n] items, [n] int groups -> [n] "item|group" strings (groups of another length:
    every group OOV, so the count stays per item; the Trainer then refuses the records)."""
    groups = tf.cond(tf.equal(tf.size(items), tf.size(groups)), lambda: groups,
                     lambda: tf.fill(tf.shape(items), tf.constant(F.OOV_ID, groups.dtype)))
    return tf.strings.join([items, tf.strings.as_string(groups)], separator="|")


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Optional[dict] = None):
    """User records -> the item vocabulary (module docstring). Outputs per record:
    `user_id`, `behaviors` (its number of behaviors). The outputs are never materialised;
    they are kept trivial because the vocabulary file is the Transform's product — a
    lookup in the graph (as `tft.apply_vocabulary` adds) would more than double the
    transform graph's bytes for nothing.

    custom_config: accepted for compatibility (the vocabulary needs none).
    """
    del custom_config
    # Keys of the schema's tensor_representation_group; feature lists are ragged
    # [B, (steps), (1)]. Lists of a record that disagree in length (imported records) count
    # nothing here; the Trainer refuses such records naming the user and the list.
    beh = inputs[X.SEQ_ITEM]
    items = _values(beh)
    beh_pairs = _pairs(items, _values(inputs[X.SEQ_GROUP]))
    sampled = _pairs(_values(inputs[X.SAMPLED_ITEM]), _values(inputs[X.SAMPLED_GROUP]))
    # Every candidate counts, as every behavior does: a position that is not sampled has
    # its event's item (index pos_event of its record).
    event = inputs[X.POS_EVENT]
    rows, index = event.value_rowids(), _values(event)
    flags = _values(inputs[X.POS_SAMPLED])
    flags = tf.cond(tf.equal(tf.size(flags), tf.size(index)), lambda: flags,
                    lambda: tf.ones_like(index))
    starts = beh.row_starts()
    inside = (index >= 0) & (index < tf.gather(beh.row_lengths(), rows))
    own = inside & tf.equal(flags, 0)
    events = tf.gather(beh_pairs, tf.boolean_mask(tf.gather(starts, rows) + index, own))
    # Behaviors count up to the record's last history end: the labelled events after it
    # (which close the record) count once, as candidates.
    hist_end = inputs[X.POS_HIST_END]
    limit = tf.math.unsorted_segment_max(_values(hist_end), hist_end.value_rowids(),
                                         num_segments=beh.nrows())
    owner = beh.value_rowids()
    step = tf.range(tf.size(items, out_type=tf.int64)) - tf.gather(starts, owner)
    history = tf.boolean_mask(beh_pairs, step < tf.gather(limit, owner))
    pairs = tf.concat([events, sampled, history], 0)
    tft.vocabulary(pairs, vocab_filename=ITEM_GROUP_VOCAB)   # written whatever uses it
    return {F.USER_ID: tf.reshape(inputs[F.USER_ID], [-1]), "behaviors": beh.row_lengths()}


# ---------------------------------------------------------------------------- Trainer

_INT32_KEYS = (F.HIST_ITEM, F.HIST_GROUP, F.HIST_BEHAVIOR_ID, F.CAND_ITEM, F.CAND_GROUP)


def _empty_split():
    from dmgin_tf.training.inputs import ArraySplit
    empty = {k: np.zeros((0,), np.int64) for k in F.MODEL_INPUT_KEYS}
    return ArraySplit(empty, np.zeros(0, np.float32), np.zeros(0, object))


def _files(patterns: List[str]) -> List[str]:
    """TFX's split file patterns (``.../Split-train/*``) -> sorted file names."""
    return sorted(f for p in patterns for f in glob.glob(p) if os.path.isfile(f))


def _read_vocab(path: str) -> List[str]:
    with open(path, "rb") as f:
        return [line.rstrip(b"\n").decode("utf-8", "replace") for line in f]


def read_item_vocab(pair_vocab_file: str) -> List[str]:
    """Item ids of `item_group_vocab` in line order (model item id = index + 2)."""
    return [line.rsplit("|", 1)[0] for line in _read_vocab(pair_vocab_file)]


def _max_group_id(pair_vocab_file: str) -> int:
    ids = [int(line.rsplit("|", 1)[1]) for line in _read_vocab(pair_vocab_file) if "|" in line]
    return max(ids, default=F.OOV_ID)


def warm_start(model, base_dir: str, item_vocab: List[str],
               grouping_key: Optional[str] = None) -> Dict[str, int]:
    """Copies the weights of the model saved under `base_dir` into `model` (built).

    Variables are matched by path. Equal shapes copy as is; item embedding tables
    (first dimension = the old / new item id count) are remapped row by row through the
    two item vocabularies, so an item keeps its learned vector though its id changed
    between spans; other tables whose first dimension grew (groups: ids are stable)
    copy the overlapping rows. When `grouping_key` differs from the one the old model
    was trained with, the group ids mean other groups (the ItemGrouper numbered them
    afresh): the tables keyed by group id (first dimension = the old group vocabulary)
    keep their fresh initialisation. Returns counts of copied / remapped / partial /
    skipped variables (and `groups_reset`).
    """
    from dmgin_tf.training.trainer import load_trained_model
    old_model, old_cfg = load_trained_model(base_dir)
    groups_changed = grouping_key is not None and old_cfg.grouping.key != grouping_key
    old_groups = old_cfg.model.group_vocab_size
    old_vocab = _read_vocab(os.path.join(base_dir, ITEM_VOCAB))
    old_n, new_n = len(old_vocab) + F.NUM_RESERVED_IDS, len(item_vocab) + F.NUM_RESERVED_IDS
    old_pos = {v: i + F.NUM_RESERVED_IDS for i, v in enumerate(old_vocab)}
    pairs = [(i + F.NUM_RESERVED_IDS, old_pos[v]) for i, v in enumerate(item_vocab) if v in old_pos]
    new_rows = np.array([p[0] for p in pairs], np.int64)
    old_rows = np.array([p[1] for p in pairs], np.int64)
    old_vars = {v.path: v for v in old_model.weights}
    stats = {"copied": 0, "remapped": 0, "partial": 0, "skipped": 0,
             "items_kept": int(len(pairs)), "groups_reset": 0}
    for var in model.weights:
        old = old_vars.get(var.path)
        if old is None:
            stats["skipped"] += 1
            continue
        src, dst = np.asarray(old.numpy()), np.asarray(var.numpy())
        if groups_changed and src.ndim == 2 and src.shape[0] == old_groups \
                and "group" in var.path:
            stats["groups_reset"] += 1
            continue
        if src.ndim == 2 and src.shape[0] == old_n and dst.shape[0] == new_n \
                and src.shape[1:] == dst.shape[1:]:
            dst = dst.copy()
            dst[:F.NUM_RESERVED_IDS] = src[:F.NUM_RESERVED_IDS]
            dst[new_rows] = src[old_rows]
            var.assign(dst)
            stats["remapped"] += 1
        elif src.shape == dst.shape:
            var.assign(src)
            stats["copied"] += 1
        elif src.ndim == dst.ndim and src.shape[1:] == dst.shape[1:]:
            n = min(src.shape[0], dst.shape[0])
            dst = dst.copy()
            dst[:n] = src[:n]
            var.assign(dst)
            stats["partial"] += 1
        else:
            stats["skipped"] += 1
    return stats


class FlatTensorizer(tf.Module):
    """Serialized flat tf.Examples [B] -> model inputs, with the training `Lookups`.

    Features read: item_id, timestamp [1]; hist_item_id, hist_behavior, hist_timestamp
    (the history, oldest first); the newest `history_length` are kept, left-aligned,
    0-padded — the layout `densify` gives the trainer.
    """

    def __init__(self, lookups, history_length: int):
        super().__init__(name="flat_tensorizer")
        self.lookups, self.history_length = lookups, int(history_length)
        self._spec = {F.ITEM_ID: tf.io.FixedLenFeature([], tf.string),
                      F.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
                      F.HIST_ITEM_ID: tf.io.RaggedFeature(tf.string),
                      F.HIST_BEHAVIOR: tf.io.RaggedFeature(tf.string),
                      F.HIST_TIMESTAMP: tf.io.RaggedFeature(tf.int64)}

    def __call__(self, serialized):
        from tfx_pipeline.records import newest
        lk, L = self.lookups, self.history_length
        raw = tf.io.parse_example(serialized, self._spec)
        hist = raw[F.HIST_ITEM_ID]
        out = {F.CAND_ITEM: lk.item_ids(raw[F.ITEM_ID]), F.CAND_GROUP: lk.group_ids(raw[F.ITEM_ID]),
               F.HIST_ITEM: newest(hist.with_flat_values(lk.item_ids(hist.flat_values)), L),
               F.HIST_GROUP: newest(hist.with_flat_values(lk.group_ids(hist.flat_values)), L),
               F.HIST_BEHAVIOR_ID: newest(raw[F.HIST_BEHAVIOR].with_flat_values(
                   lk.behavior_ids(raw[F.HIST_BEHAVIOR].flat_values)), L),
               F.HIST_TIME: newest(raw[F.HIST_TIMESTAMP], L), F.REQUEST_TIME: raw[F.TIMESTAMP]}
        return {k: tf.cast(out[k], tf.int32 if k in _INT32_KEYS else tf.int64)
                for k in F.MODEL_INPUT_KEYS}


def save_serving_model(model, lookups, path: str, history_length: int, serving_cfg,
                       jit_compile: bool, signatures: str = "all", warmup_inputs=None,
                       item_vocab=None, model_config=None) -> None:
    """SavedModel with the export's signatures; `serving_default` = `FlatTensorizer` +
    model, `tensorize` = `FlatTensorizer` alone (string ids → the other signatures' ids).

    signatures: "all" (serving_default, tensorize, predict_raw, rank, user_state, score,
    score_cached — see dmgin_tf/export/signatures.py) or "default" (serving_default,
    tensorize + predict_raw only:
    each signature traces the whole model, which costs minutes on a loaded CPU; tests).
    warmup_inputs: real held-out model inputs (the run's parity batch) for the warmup
    records, so TF Serving compiles every bucket at load, not on the first requests;
    with `item_vocab` (the Transform's item vocabulary) `serving_default` is warmed with
    them as tf.Examples too. `assets.extra/dmgin_export.json` carries the buckets and
    `model_config`: the request contract `dmgin serve` checks.
    """
    from dmgin_tf.export.example_parsing import examples_from_dense
    from dmgin_tf.export.saved_model import save_version
    from dmgin_tf.export.signatures import ServingModule

    class _Module(ServingModule):
        def __init__(self):
            super().__init__(model, None, history_length, jit_compile,
                             batch_buckets=serving_cfg.batch_buckets,
                             candidate_buckets=serving_cfg.candidate_buckets)
            self.tensorizer = FlatTensorizer(lookups, history_length)

        def tensorize(self, examples):
            return self.tensorizer(examples)

        def signatures(self):
            if signatures == "default":
                from dmgin_tf.export.signatures import history_specs
                spec = dict(history_specs(history_length, None),
                            **{k: tf.TensorSpec([None], tf.int32, k)
                               for k in (F.CAND_ITEM, F.CAND_GROUP)})

                @tf.function(input_signature=[spec])
                def predict_raw(inputs):
                    return self._padded_ctr(inputs)
                sigs = {"predict_raw": predict_raw.get_concrete_function()}
            else:
                sigs = super().signatures()

            sigs.update(self.example_signatures())     # serving_default, tensorize
            return sigs

    module = _Module()
    examples = None
    if warmup_inputs is not None and item_vocab is not None:
        examples = examples_from_dense(warmup_inputs, item_vocab, lookups.behavior_types)
    save_version(module, path, name=serving_cfg.model_name, version=None,
                 serving_cfg=serving_cfg, warmup_inputs=warmup_inputs, examples=examples,
                 behavior_types=lookups.behavior_types, model_config=model_config)


# The Trainer's / Tuner's `custom_config` (docs/pipeline.md, "Our module file in your own
# Trainer / Tuner / Transform").
CUSTOM_CONFIG_KEYS = {
    "config": "required: the pipeline's config sections (`Config.to_dict()`); the model, "
              "training and history settings must be the ones the ExampleBuilder used",
    "behavior_types": "required: the behavior vocabulary in id order, a list of strings "
                      "(`tfx_pipeline.pipeline.pipeline_behavior_types`)",
    "export_jit_compile": "optional bool (default true): XLA-compile the exported signatures",
    "export_signatures": "optional (default \"all\"): which signatures to export",
    "min_group_vocab_size": "optional int: a floor on the model's group vocabulary",
    "tune_trials": "optional int (Tuner only, default 3): KerasTuner trials",
}


def check_trainer_inputs(fn_args) -> dict:
    """The Trainer's / Tuner's `custom_config` and splits, checked before any work.

    Returns the custom config (a copy). Raises ValueError naming the key or argument:
    unknown or missing keys, `behavior_types` that is not a list of strings, `eval_args`
    on the Evaluator's `eval` split (early stopping on it would choose the model on the
    data that later blesses it), and `TrainArgs/EvalArgs.num_steps` (not used: training
    runs `train.epochs` with early stopping).
    """
    custom = fn_args.custom_config
    if not isinstance(custom, dict):
        raise ValueError(f"custom_config must be a dict with {sorted(CUSTOM_CONFIG_KEYS)}, "
                         f"got {type(custom).__name__}")
    unknown = sorted(set(custom) - set(CUSTOM_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"custom_config: unknown key(s) {unknown}; known: "
                         f"{sorted(CUSTOM_CONFIG_KEYS)}")
    for key in ("config", "behavior_types"):
        if key not in custom:
            raise ValueError(f"custom_config[{key!r}] is missing ({CUSTOM_CONFIG_KEYS[key]})")
    types = custom["behavior_types"]
    if isinstance(types, (str, bytes)) or not isinstance(types, (list, tuple)) or not types \
            or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"custom_config['behavior_types'] = {types!r}: "
                         f"{CUSTOM_CONFIG_KEYS['behavior_types']}")
    if not isinstance(custom["config"], dict):
        raise ValueError(f"custom_config['config'] must be a dict of config sections, got "
                         f"{type(custom['config']).__name__}")
    for name in ("train_files", "eval_files"):
        wrong = [p for p in getattr(fn_args, name, None) or [] if "Split-eval" in p
                 or (name == "train_files" and "Split-val" in p)]
        if wrong:
            raise ValueError(f"{name} {wrong[0]}: the Trainer trains on the 'train' split and "
                             f"validates (early stopping, best epoch) on 'val'; 'eval' is the "
                             f"Evaluator's held-out split. Pass TrainArgs(splits=['train']), "
                             f"EvalArgs(splits=['val'])")
    for name, proto in (("train_steps", "TrainArgs"), ("eval_steps", "EvalArgs")):
        if getattr(fn_args, name, None):
            raise ValueError(f"{proto}.num_steps ({name}={getattr(fn_args, name)}) is not used: "
                             f"training runs train.epochs epochs with early stopping; set "
                             f"train.epochs / train.steps_per_epoch in custom_config['config']")
    return dict(custom)


def check_known_behaviors(behavior_ids: np.ndarray, behavior_types: List[str]) -> None:
    """Refuses `behavior_types` that miss most of the records' behaviors: unknown ones map
    to 0, the padding id, so a wrong vocabulary trained on empty-looking histories."""
    unknown = float(np.mean(np.asarray(behavior_ids) == 0)) if len(behavior_ids) else 0.0
    if unknown > 0.5:
        raise ValueError(f"custom_config['behavior_types'] = {list(behavior_types)}: "
                         f"{unknown:.0%} of the train records' behaviors are not among them "
                         f"(each would get id 0, the padding id); pass the vocabulary the "
                         f"ExampleBuilder wrote")


def _training_data(fn_args):
    """What the Trainer and the Tuner share: (config, custom config, vocabulary lookups,
    item vocabulary (ids in line order), `TrainingData` over the user records, train
    split)."""
    from dmgin_tf.config import Config
    from dmgin_tf.training.data_source import ExampleSetSplit
    from dmgin_tf.training.trainer import TrainingData
    from tfx_pipeline.records import Lookups, read_user_records

    custom = check_trainer_inputs(fn_args)
    behavior_types = list(custom.pop("behavior_types"))
    cfg = Config.from_dict(custom["config"])
    # The Trainer's FnArgs fill both names; the Tuner's only transform_graph_path.
    tft_out = tft.TFTransformOutput(fn_args.transform_graph_path or fn_args.transform_output)
    pair_vocab_file = tft_out.vocabulary_file_by_name(ITEM_GROUP_VOCAB)
    lookups = Lookups(pair_vocab_file, behavior_types)
    # Records -> sequences + positions (O(behaviors)); histories are cut per batch.
    L = cfg.model.history_length
    train_es = read_user_records(_files(fn_args.train_files), lookups, "train",
                                 cfg.data.max_history)
    val_es = read_user_records(_files(fn_args.eval_files), lookups, "val", cfg.data.max_history)
    check_known_behaviors(train_es.beh_behavior, behavior_types)
    item_vocab = read_item_vocab(pair_vocab_file)
    overrides = {"item_vocab_size": len(item_vocab) + F.NUM_RESERVED_IDS,
                 "group_vocab_size": max(_max_group_id(pair_vocab_file) + 1,
                     int(custom.get("min_group_vocab_size", 0))),
                 "num_behavior_types": len(behavior_types)}
    train_split = ExampleSetSplit(train_es, "train", L)
    val_split = ExampleSetSplit(val_es, "val", L)
    data = TrainingData(train=train_split, val=val_split, test=_empty_split(),
                        model_overrides=overrides,
                        info={"source": "tfx", "train_files": list(fn_args.train_files),
                              "train_records": train_es.num_users,
                              "train_behaviors": int(len(train_es.beh_item)),
                              "behavior_types": behavior_types})
    return cfg, custom, lookups, item_vocab, data, train_split


def tuner_fn(fn_args):
    """TFX `Tuner` entry point (`dmgin pipeline run --tune N`): KerasTuner random search
    over the model's declared search space (`dmgin_tf.training.search_space`), each trial
    a full training run on the user records, scored by validation GAUC. The Trainer takes
    the best trial's hyperparameters (`fn_args.hyperparameters` in `run_fn`)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_tuner as kt
    from tfx.components.tuner.component import TunerFnResult
    from dmgin_tf.training.search_space import search_space, to_overrides
    from dmgin_tf.training.trainer import train

    cfg, custom, _, _, data, _ = _training_data(fn_args)
    hp = kt.HyperParameters()
    search_space(cfg.model.model, hp)

    class DmginTuner(kt.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            trial_cfg = cfg.apply_overrides(to_overrides(trial.hyperparameters.values))
            out = os.path.join(fn_args.working_dir, "trials", trial.trial_id)
            result = train(trial_cfg, data, out, verbose=0)
            val = result.metrics["val"] or {}
            score = val.get("gauc")
            if score is None or not np.isfinite(score):    # tiny data: no GAUC users
                score = val.get("auc", 0.5)
            _LOG.info("tuner trial %s: %s -> val gauc %s", trial.trial_id,
                      trial.hyperparameters.values, score)
            return {"val_gauc": float(score)}

    oracle = kt.oracles.RandomSearchOracle(
        objective=kt.Objective("val_gauc", "max"), max_trials=int(custom.get("tune_trials", 3)),
        hyperparameters=hp, allow_new_entries=False, tune_new_entries=False, seed=1)
    tuner = DmginTuner(oracle=oracle, directory=fn_args.working_dir, project_name="dmgin",
                       overwrite=True)
    return TunerFnResult(tuner=tuner, fit_kwargs={})


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (custom_config: the pipeline's config sections + extras;
    `fn_args.hyperparameters`: the Tuner's best trial, when the pipeline tunes)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras  # noqa: F401  (Keras 3, TF backend)
    from dmgin_tf.models import build_model
    from dmgin_tf.training.search_space import overrides_from_hyperparameters
    from dmgin_tf.training.trainer import train

    cfg, custom, lookups, item_vocab, data, train_split = _training_data(fn_args)
    tuned = overrides_from_hyperparameters(getattr(fn_args, "hyperparameters", None))
    if tuned:
        cfg = cfg.apply_overrides(tuned)
        _LOG.info("run_fn: tuned hyperparameters %s", tuned)
    overrides = data.model_overrides
    warm = {}
    base = None
    if fn_args.base_model:
        candidate = os.path.join(fn_args.base_model, "assets.extra", WARM_START_DIR)
        base = candidate if os.path.isdir(candidate) else None

    def model_fn(model_cfg):
        model = build_model(model_cfg)
        model(train_split.batch(np.arange(min(2, len(train_split)))))  # create variables
        if base is not None:
            warm.update(warm_start(model, base, item_vocab, cfg.grouping.key))
        return model

    run_dir = fn_args.model_run_dir
    result = train(cfg, data, run_dir, model_fn=model_fn, verbose=1)
    info = {"warm_start_from": base, "warm_start": warm, "val": result.metrics.get("val"),
            "item_vocab_size": overrides["item_vocab_size"],
            "group_vocab_size": overrides["group_vocab_size"], "tuned": tuned}
    _LOG.info("run_fn: %s", info)
    from dmgin_tf.export.saved_model import read_parity_inputs
    save_serving_model(result.model, lookups, fn_args.serving_model_dir,
                       result.config.model.history_length, result.config.serving,
                       jit_compile=bool(custom.get("export_jit_compile", True)),
                       signatures=custom.get("export_signatures", "all"),
                       warmup_inputs=read_parity_inputs(run_dir), item_vocab=item_vocab,
                       model_config=result.config.model.to_dict())
    # What the next run warm-starts from travels with the model (and is pushed with it).
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra", WARM_START_DIR)
    os.makedirs(extra, exist_ok=True)
    from dmgin_tf.training.trainer import CONFIG_FILE, WEIGHTS_FILE
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy(os.path.join(run_dir, name), os.path.join(extra, name))
    with open(os.path.join(extra, ITEM_VOCAB), "w", encoding="utf-8") as f:
        f.write("".join(v + "\n" for v in item_vocab))     # warm_start's item order
    with open(os.path.join(fn_args.serving_model_dir, "assets.extra", "dmgin_train.json"), "w",
              encoding="utf-8") as f:
        json.dump(info, f, indent=1, default=str)
