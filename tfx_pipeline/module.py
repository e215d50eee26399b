"""TFX module file: `preprocessing_fn` (Transform) and `run_fn` (Trainer).

Transform (`preprocessing_fn`), raw examples of `ExampleBuilder` -> model inputs
(`dmgin_tf.features.MODEL_INPUT_KEYS`, docs/internals.md id conventions):

  cand_item  [B] int64     item vocabulary (tft.vocabulary over candidate + history ids
                           of the analyzed split) -> id = rank + 2; unknown -> 1 (OOV)
  cand_group [B] int64     item -> group lookup in the graph: `tft.vocabulary` over
                           "item|group" strings, looked up with a TextFileInitializer
                           (key = column 0, value = WHOLE_LINE) and the group parsed off
                           the line; unknown item -> 1. At serving time only item ids are
                           needed: the group comes from the vocabulary asset.
  hist_item, hist_group, hist_behavior_id [B, L] int64; hist_time [B, L] int64 —
                           newest L behaviors, oldest first, left-aligned, 0-padded
                           (the layout of `dmgin_tf.data.batches.densify`)
  request_time [B] int64   the example's timestamp
  request_hour, request_weekday [B] int64  time features (UTC), for models that use them
  label [B] float32;  user_id [B] string (GAUC)

Behavior strings map to `behavior_types[i] -> i + 1` (0 = padding/unknown), as
`DatasetSpec.behavior_id` and the export's lookup tables do; the vocabulary comes from
`custom_config` so ids never depend on the data of one span.

Trainer (`run_fn`): loads the transformed splits, trains `dmgin_tf.models.build_model`
with the shared loop (`dmgin_tf.training.trainer.train`: Adam, early stopping on val
AUC, TensorBoard under the model run dir, placement from the devices present), warm
starts from `fn_args.base_model` (the last blessed model, see `warm_start`), and saves a
SavedModel whose `serving_default` takes serialized raw tf.Examples and runs the TFT
graph (`tft_out.transform_features_layer()`) as its tensorize step before the model.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from dmgin_tf import features as F

ITEM_VOCAB = "item_vocab"
ITEM_GROUP_VOCAB = "item_group_vocab"
WARM_START_DIR = "dmgin_warmstart"     # under <serving model>/assets.extra/
_LOG = logging.getLogger(__name__)
_UNKNOWN_GROUP_LINE = f"|{F.OOV_ID}"


# ---------------------------------------------------------------------------- Transform

def _flat(x):
    """[B] / [B, 1] dense or sparse -> [B] dense."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x)
    return tf.reshape(x, [-1])


def _newest(x: tf.SparseTensor, length: int) -> tf.Tensor:
    """VarLen [B, (n)] -> dense [B, length]: newest `length` values, left-aligned, 0-padded."""
    rt = tf.RaggedTensor.from_sparse(x)
    return rt[:, -length:].to_tensor(default_value=tf.cast(0, x.dtype), shape=[None, length])


def _group_lookup(x, vocab_file):
    """`tft.apply_vocabulary` lookup_fn: item id -> group id parsed off "item|group"."""
    if isinstance(x, tf.SparseTensor):
        g, size = _group_lookup(x.values, vocab_file)
        return tf.SparseTensor(x.indices, g, x.dense_shape), size
    # One key column + WHOLE_LINE: TFT's phase-0 placeholder vocabulary has one column.
    init = tf.lookup.TextFileInitializer(
        vocab_file, tf.string, 0, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, delimiter="|")
    table = tf.lookup.StaticHashTable(init, default_value=_UNKNOWN_GROUP_LINE)
    line = table.lookup(x)
    ok = tf.strings.regex_full_match(line, r".*\|[0-9]+")
    digits = tf.where(ok, tf.strings.regex_replace(line, r"^.*\|", ""), str(F.OOV_ID))
    return tf.strings.to_number(digits, tf.int64), table.size()


def _item_ids(x, vocab):
    """Strings -> item ids (rank + 2; unknown -> OOV 1), dense or sparse."""
    idx = tft.apply_vocabulary(x, vocab, default_value=-1)
    if isinstance(idx, tf.SparseTensor):
        return tf.SparseTensor(idx.indices, idx.values + F.NUM_RESERVED_IDS, idx.dense_shape)
    return idx + F.NUM_RESERVED_IDS


def _behavior_ids(x: tf.Tensor, behavior_types: List[str]) -> tf.Tensor:
    """Behavior strings -> `i + 1` of behavior_types, 0 when unknown (pure ops, no table)."""
    ids = tf.zeros_like(x, dtype=tf.int64)
    for i, name in enumerate(behavior_types):
        ids += tf.cast(tf.equal(x, name), tf.int64) * (i + 1)
    return ids


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Optional[dict] = None):
    """Raw examples (transform.examples.feature_spec(with_groups=True)) -> model inputs.

    custom_config: {"history_length": L, "behavior_types": [...]} (pipeline.py sets it).
    """
    cfg = custom_config or {}
    L = int(cfg.get("history_length", 64))
    behavior_types = list(cfg.get("behavior_types", []))
    cand = _flat(inputs[F.ITEM_ID])
    hist = inputs[F.HIST_ITEM_ID]                         # SparseTensor [B, (n)] string
    cand_group = tf.strings.as_string(_flat(inputs[F.GROUP_ID]))
    hist_group = inputs[F.HIST_GROUP_ID]

    item_vocab = tft.vocabulary(tf.concat([cand, hist.values], 0), vocab_filename=ITEM_VOCAB)
    pairs = tf.concat([tf.strings.join([cand, cand_group], separator="|"),
                       tf.strings.join([hist.values, tf.strings.as_string(hist_group.values)],
                                       separator="|")], 0)
    pair_vocab = tft.vocabulary(pairs, vocab_filename=ITEM_GROUP_VOCAB)

    out = {}
    out[F.CAND_ITEM] = _item_ids(cand, item_vocab)
    out[F.CAND_GROUP] = tft.apply_vocabulary(cand, pair_vocab, lookup_fn=_group_lookup)
    out[F.HIST_ITEM] = _newest(_item_ids(hist, item_vocab), L)
    out[F.HIST_GROUP] = _newest(tft.apply_vocabulary(hist, pair_vocab, lookup_fn=_group_lookup), L)
    beh = inputs[F.HIST_BEHAVIOR]
    out[F.HIST_BEHAVIOR_ID] = _newest(
        tf.SparseTensor(beh.indices, _behavior_ids(beh.values, behavior_types), beh.dense_shape), L)
    out[F.HIST_TIME] = _newest(inputs[F.HIST_TIMESTAMP], L)
    ts = _flat(inputs[F.TIMESTAMP])
    out[F.REQUEST_TIME] = ts
    out["request_hour"] = (ts // 3600) % 24
    out["request_weekday"] = (ts // 86400 + 3) % 7  # 1970-01-01 was a Thursday (= 3, Mon = 0)
    out[F.LABEL] = tf.cast(_flat(inputs[F.LABEL]), tf.float32)
    out[F.USER_ID] = _flat(inputs[F.USER_ID])
    return out


# ---------------------------------------------------------------------------- Trainer

_INT32_KEYS = (F.HIST_ITEM, F.HIST_GROUP, F.HIST_BEHAVIOR_ID, F.CAND_ITEM, F.CAND_GROUP)


def _to_model_inputs(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Transformed columns -> the model's dtypes (ids int32, times int64)."""
    return {k: np.asarray(batch[k]).astype(np.int32 if k in _INT32_KEYS else np.int64)
            for k in F.MODEL_INPUT_KEYS}


def load_transformed(files: List[str], data_accessor, schema) -> Dict[str, np.ndarray]:
    """All transformed examples of `files` as numpy columns (the tiny/medium-data path)."""
    from tfx_bsl.public import tfxio
    ds = data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=4096, num_epochs=1, shuffle=False),
        schema)
    cols: Dict[str, list] = {}
    for batch in ds:
        for k, v in batch.items():
            if isinstance(v, tf.SparseTensor):
                v = tf.sparse.to_dense(v)
            cols.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def _split(cols: Dict[str, np.ndarray]):
    from dmgin_tf.training.inputs import ArraySplit
    if not cols:
        empty = {k: np.zeros((0,), np.int64) for k in F.MODEL_INPUT_KEYS}
        return ArraySplit(empty, np.zeros(0, np.float32), np.zeros(0, object))
    return ArraySplit(_to_model_inputs(cols), np.asarray(cols[F.LABEL]).reshape(-1),
                      np.asarray(cols[F.USER_ID]).reshape(-1))


def _read_vocab(path: str) -> List[str]:
    with open(path, "rb") as f:
        return [line.rstrip(b"\n").decode("utf-8", "replace") for line in f]


def _max_group_id(pair_vocab_file: str) -> int:
    ids = [int(line.rsplit("|", 1)[1]) for line in _read_vocab(pair_vocab_file) if "|" in line]
    return max(ids, default=F.OOV_ID)


def warm_start(model, base_dir: str, item_vocab: List[str]) -> Dict[str, int]:
    """Copies the weights of the model saved under `base_dir` into `model` (built).

    Variables are matched by path. Equal shapes copy as is; item embedding tables
    (first dimension = the old / new item id count) are remapped row by row through the
    two item vocabularies, so an item keeps its learned vector though its id changed
    between spans; other tables whose first dimension grew (groups: ids are stable)
    copy the overlapping rows. Returns counts of copied / remapped / skipped variables.
    """
    from dmgin_tf.training.trainer import load_trained_model
    old_model, _ = load_trained_model(base_dir)
    old_vocab = _read_vocab(os.path.join(base_dir, ITEM_VOCAB))
    old_n, new_n = len(old_vocab) + F.NUM_RESERVED_IDS, len(item_vocab) + F.NUM_RESERVED_IDS
    old_pos = {v: i + F.NUM_RESERVED_IDS for i, v in enumerate(old_vocab)}
    pairs = [(i + F.NUM_RESERVED_IDS, old_pos[v]) for i, v in enumerate(item_vocab) if v in old_pos]
    new_rows = np.array([p[0] for p in pairs], np.int64)
    old_rows = np.array([p[1] for p in pairs], np.int64)
    old_vars = {v.path: v for v in old_model.weights}
    stats = {"copied": 0, "remapped": 0, "partial": 0, "skipped": 0,
             "items_kept": int(len(pairs))}
    for var in model.weights:
        old = old_vars.get(var.path)
        if old is None:
            stats["skipped"] += 1
            continue
        src, dst = np.asarray(old.numpy()), np.asarray(var.numpy())
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


class TFTTensorizer(tf.Module):
    """Serialized raw tf.Examples [B] -> model inputs, through the TFT graph."""

    def __init__(self, tft_output):
        super().__init__(name="tft_tensorizer")
        self.tft_layer = tft_output.transform_features_layer()
        spec = dict(tft_output.raw_feature_spec())
        # Serving requests carry no label / user / group features: the graph only needs
        # the item ids (groups come from the vocabulary asset).
        for key in (F.LABEL, F.USER_ID, F.CATEGORY, F.GROUP_ID, F.HIST_GROUP_ID):
            spec.pop(key, None)
        self._spec = spec

    def __call__(self, serialized):
        raw = tf.io.parse_example(serialized, self._spec)
        t = self.tft_layer(raw)
        return {k: tf.cast(t[k], tf.int32 if k in _INT32_KEYS else tf.int64)
                for k in F.MODEL_INPUT_KEYS}


def save_serving_model(model, tft_output, path: str, history_length: int, serving_cfg,
                       jit_compile: bool, signatures: str = "all") -> None:
    """SavedModel with the export's signatures; serving_default = TFT graph + model.

    signatures: "all" (serving_default, predict_raw, rank, user_state, score — see
    dmgin_tf/export/signatures.py) or "default" (serving_default + predict_raw only:
    each signature traces the whole model, which costs minutes on a loaded CPU; tests).
    """
    from dmgin_tf.export.signatures import EXAMPLES, ServingModule

    class _Module(ServingModule):
        def __init__(self):
            super().__init__(model, None, history_length, jit_compile,
                             batch_buckets=serving_cfg.batch_buckets,
                             candidate_buckets=serving_cfg.candidate_buckets)
            self.tensorizer = TFTTensorizer(tft_output)

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

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, EXAMPLES)])
            def serving_default(examples):
                return self._padded_ctr(self.tensorizer(examples))
            sigs["serving_default"] = serving_default.get_concrete_function()
            return sigs

    module = _Module()
    tf.saved_model.save(module, path, signatures=module.signatures())


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (custom_config: the pipeline's config sections + extras)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras  # noqa: F401  (Keras 3, TF backend)
    from dmgin_tf.config import Config
    from dmgin_tf.models import build_model
    from dmgin_tf.training.trainer import TrainingData, train

    custom = dict(fn_args.custom_config or {})
    behavior_types = list(custom.pop("behavior_types"))
    cfg = Config.from_dict(custom.get("config", {}))
    tft_out = tft.TFTransformOutput(fn_args.transform_output)
    schema = tft_out.transformed_metadata.schema
    train_cols = load_transformed(fn_args.train_files, fn_args.data_accessor, schema)
    val_cols = load_transformed(fn_args.eval_files, fn_args.data_accessor, schema)
    item_vocab_file = tft_out.vocabulary_file_by_name(ITEM_VOCAB)
    item_vocab = _read_vocab(item_vocab_file)
    overrides = {"item_vocab_size": len(item_vocab) + F.NUM_RESERVED_IDS,
                 "group_vocab_size": max(
                     _max_group_id(tft_out.vocabulary_file_by_name(ITEM_GROUP_VOCAB)) + 1,
                     int(custom.get("min_group_vocab_size", 0))),
                 "num_behavior_types": len(behavior_types)}
    train_split, val_split = _split(train_cols), _split(val_cols)
    data = TrainingData(train=train_split, val=val_split, test=_split({}),
                        model_overrides=overrides,
                        info={"source": "tfx", "train_files": list(fn_args.train_files)})
    warm = {}
    base = None
    if fn_args.base_model:
        candidate = os.path.join(fn_args.base_model, "assets.extra", WARM_START_DIR)
        base = candidate if os.path.isdir(candidate) else None

    def model_fn(model_cfg):
        model = build_model(model_cfg)
        model(train_split.batch(np.arange(min(2, len(train_split)))))  # create variables
        if base is not None:
            warm.update(warm_start(model, base, item_vocab))
        return model

    run_dir = fn_args.model_run_dir
    result = train(cfg, data, run_dir, model_fn=model_fn, verbose=1)
    info = {"warm_start_from": base, "warm_start": warm, "val": result.metrics.get("val"),
            "item_vocab_size": overrides["item_vocab_size"],
            "group_vocab_size": overrides["group_vocab_size"]}
    _LOG.info("run_fn: %s", info)
    save_serving_model(result.model, tft_out, fn_args.serving_model_dir,
                       result.config.model.history_length, result.config.serving,
                       jit_compile=bool(custom.get("export_jit_compile", True)),
                       signatures=custom.get("export_signatures", "all"))
    # What the next run warm-starts from travels with the model (and is pushed with it).
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra", WARM_START_DIR)
    os.makedirs(extra, exist_ok=True)
    from dmgin_tf.training.trainer import CONFIG_FILE, WEIGHTS_FILE
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy(os.path.join(run_dir, name), os.path.join(extra, name))
    shutil.copy(item_vocab_file, os.path.join(extra, ITEM_VOCAB))
    with open(os.path.join(fn_args.serving_model_dir, "assets.extra", "dmgin_train.json"), "w",
              encoding="utf-8") as f:
        json.dump(info, f, indent=1, default=str)
