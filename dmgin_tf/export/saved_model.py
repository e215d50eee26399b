"""Keras 3 ranking model → TF Serving SavedModels: an XLA variant and a non-XLA twin.

Layout (TF Serving's `<base>/<name>/<version>/`)::

    <base>/<name>/<version>/          XLA-compiled model math (jit_compile=True)
    <base>/<name>_noxla/<version>/    same weights, same signatures, no XLA

Both variants carry the same signatures (`signatures.py`), lookup tables and warmup
records (`warmup.py`) and agree numerically (checked by `verify_export` and the tests).
Why two: XLA:CPU in TF Serving needs `--xla_cpu_compilation_enabled=true`, and the
official GPU images from 2.13.1 on cannot run `jit_compile` SavedModels
(tensorflow/serving#2214, #2217) — GPU deployments serve `<name>_noxla` under the name
`<name>` (serving_configs/models.gpu.config), so clients never change.

Each version directory is written under a temporary name and renamed into place, so a
polling server (TF Serving or `dmgin serve`) never sees half a SavedModel.

    paths = export_model(model, "runs/serving", "dmgin", history_length=512,
                         item_index=index, behavior_types=spec.behavior_types,
                         warmup_inputs=real_batch)
"""
from __future__ import annotations

import dataclasses

import json
import os
import shutil
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.config import NAME_RULE, ServingConfig, is_valid_name
from dmgin_tf.data.converters.common import remove_dead_staging
from dmgin_tf.errors import DmginError
from dmgin_tf.export.example_parsing import LookupTables, examples_from_dense
from dmgin_tf.export.signatures import ServingModule, score_state_keys
from dmgin_tf.export.warmup import build_warmup_logs, write_warmup_file
from dmgin_tf.models.cached_state import DEFAULT_LOOKUP_GROUPS, DEFAULT_LOOKUP_ITEMS
from dmgin_tf.serving.validation import Contract

NOXLA_SUFFIX = "_noxla"
EXPORT_INFO_FILE = "dmgin_export.json"   # in assets.extra/, next to the warmup file


def next_version(*model_bases: str) -> int:
    """1 + the largest integer version directory under any of `model_bases` (1 if
    none): the variants of one export share its version number."""
    versions = []
    for base in model_bases:
        try:
            versions += [int(n) for n in os.listdir(base) if n.isdigit()]
        except FileNotFoundError:
            pass
    return max(versions, default=0) + 1


def _save_atomically(module: ServingModule, final_dir: str, logs, info: dict, sigs,
                     check: Optional[Callable[[str], None]] = None,
                     defer: Optional[list] = None) -> None:
    """Saves into a hidden sibling folder (TF Serving loads numeric folders only), runs
    `check` on it, then renames it into place: a version that fails its check is never
    seen by a server polling `final_dir`'s parent. With `defer` (a list), the checked
    folder is not renamed: `(staged, final_dir)` is appended for the caller to publish
    with its other variants (`_publish`)."""
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(final_dir):
        raise DmginError(f"export: {final_dir} already exists; pick another --version")
    # Staging folders `.tmp-<version>-<pid>` of exports killed before their cleanup.
    remove_dead_staging(parent, f".tmp-{os.path.basename(final_dir)}-")
    tmp = os.path.join(parent, f".tmp-{os.path.basename(final_dir)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # Serving never differentiates: the custom gradients of the table lookups
        # (`lookup_rows`) stay out of the SavedModel (smaller graph, faster load).
        tf.saved_model.save(module, tmp, signatures=sigs, options=tf.saved_model.SaveOptions(
            experimental_custom_gradients=False))
        if logs:
            write_warmup_file(tmp, logs)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, "assets.extra", EXPORT_INFO_FILE), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        if check is not None:
            check(tmp)
        if defer is not None:
            defer.append((tmp, final_dir))
            tmp = None
        else:
            os.rename(tmp, final_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(staged: Sequence[tuple]) -> None:
    """Renames checked staging folders into place, one right after the other (every
    variant of a version appears together, or, on an error, none is left)."""
    done = []
    try:
        for tmp, final in staged:
            if os.path.exists(final):
                raise DmginError(f"export: {final} already exists; pick another --version")
            os.rename(tmp, final)
            done.append(final)
    except BaseException:
        for final in done:
            shutil.rmtree(final, ignore_errors=True)
        raise


def check_model_name(name) -> None:
    """The served model's name (the export's last path component): TF Serving puts it in
    folder names and URLs (`/v1/models/<name>`), so it follows `serving.model_name`'s rule."""
    if not is_valid_name(name):
        raise DmginError(f"export: model name {name!r} (the last component of the output "
                         f"path) {NAME_RULE}")


def export_model(model, base_path: str, name: str, *, history_length: int,
                 version: Optional[int] = None, item_index=None,
                 behavior_types: Optional[Sequence[str]] = None,
                 warmup_inputs: Optional[Mapping[str, np.ndarray]] = None,
                 serving_cfg: ServingConfig = ServingConfig(),
                 variants: Sequence[str] = ("xla", "noxla"),
                 model_config: Optional[dict] = None,
                 state_groups: int = DEFAULT_LOOKUP_GROUPS,
                 state_items: int = DEFAULT_LOOKUP_ITEMS,
                 log: Optional[Callable[[str], None]] = None,
                 check: Optional[Callable[[str], None]] = None) -> Dict[str, str]:
    """Exports `model` as TF Serving SavedModels; returns {variant: version dir}.

    Args:
      model: built Keras 3 ranking model (TF backend), inputs `MODEL_INPUT_KEYS`.
      base_path, name: write `<base_path>/<name>[_noxla]/<version>/`.
      history_length: L of the model's history inputs.
      version: integer version; default = 1 + the largest version of either variant.
      item_index: `dmgin_tf.data.item_index.ItemIndex`; with `behavior_types` it
        enables the tf.Example `serving_default` signature (else serving_default =
        predict_raw).
      behavior_types: the dataset's behavior vocabulary (DatasetSpec.behavior_types).
      warmup_inputs: real dense examples (MODEL_INPUT_KEYS) for the warmup records.
      serving_cfg: batch and candidate buckets.
      variants: subset of ("xla", "noxla").
      model_config: stored in assets.extra/dmgin_export.json for the record.
      state_groups, state_items: K and I of the cached user state's lookup tables
        (DMGIN/DGIN `user_state`; capped at `history_length`).
      log: called with a progress line per variant (tracing every signature takes
        minutes on a small CPU), e.g. `print`.
      check: called with each variant's saved folder before it is renamed to its
        version number (e.g. `verify_export`); an exception leaves no version behind.
    """
    check_model_name(name)
    variants = list(dict.fromkeys(variants))        # --variants xla,xla traced twice
    unknown = sorted(set(variants) - {"xla", "noxla"})
    if unknown or not variants:
        raise DmginError(f"export: variants must be a non-empty subset of ['xla', 'noxla'], "
                         f"got {list(variants)}")
    tables = None
    if item_index is not None and behavior_types:
        tables = LookupTables(item_index.item_ids, item_index.group_of_idx, behavior_types)
    bases = {v: os.path.join(base_path, name + ("" if v == "xla" else NOXLA_SUFFIX))
             for v in ("xla", "noxla")}
    version = int(version) if version is not None else next_version(*bases.values())
    if version < 1:
        raise DmginError(f"export: version must be >= 1, got {version}")
    examples = None
    if warmup_inputs is not None and tables is not None:
        examples = examples_from_dense(warmup_inputs, item_index.item_ids, behavior_types)
    # The signatures check ids against the vocabularies the model was built with.
    own_cfg = getattr(model, "model_cfg", None)
    contract = dataclasses.replace(Contract.from_model_config(
        model_config or (own_cfg.to_dict() if hasattr(own_cfg, "to_dict") else None)),
        max_candidates=int(serving_cfg.max_candidates))
    finals = {v: os.path.join(bases[v], str(version)) for v in variants}
    taken = [f for f in finals.values() if os.path.exists(f)]
    if taken:   # before tracing anything: no variant is written when one cannot be
        raise DmginError(f"export: {taken[0]} already exists; pick another --version")
    staged = []      # (staging folder, final folder) of each checked variant
    try:
        for variant in variants:
            module = ServingModule(model, tables, history_length, jit_compile=variant == "xla",
                                   batch_buckets=serving_cfg.batch_buckets,
                                   candidate_buckets=serving_cfg.candidate_buckets,
                                   state_groups=state_groups, state_items=state_items,
                                   contract=contract)
            t0 = time.perf_counter()
            if log is not None:
                log(f"export {variant}: tracing the signatures into {finals[variant]} ...")
            save_version(module, finals[variant], name=name, version=version,
                         serving_cfg=serving_cfg, warmup_inputs=warmup_inputs,
                         examples=examples, behavior_types=behavior_types,
                         model_config=model_config, check=check, defer=staged)
            if log is not None:
                log(f"export {variant}: saved ({time.perf_counter() - t0:.0f} s)")
        # Every variant of the version appears together: a server polling one variant's
        # folder never gets a version the other lacks (an interrupt while the second
        # traced used to leave the first published alone).
        _publish(staged)
    finally:
        for tmp, _ in staged:          # what an error or an interrupt left unpublished
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(finals)


def save_version(module: ServingModule, final_dir: str, *, name: str, version: Optional[int],
                 serving_cfg: ServingConfig,
                 warmup_inputs: Optional[Mapping[str, np.ndarray]] = None,
                 examples: Optional[Sequence[bytes]] = None,
                 behavior_types: Optional[Sequence[str]] = None,
                 model_config: Optional[dict] = None,
                 check: Optional[Callable[[str], None]] = None,
                 defer: Optional[list] = None) -> None:
    """Writes one servable version of `module` to `final_dir` (atomically): the
    SavedModel, its warmup records (from `warmup_inputs`, real dense examples, and their
    serialized form `examples` for the tf.Example signatures) and
    `assets.extra/dmgin_export.json` (buckets, signatures, model config: the request
    contract `dmgin serve` enforces). `dmgin export` and the TFX Trainer both save
    through here, so a pushed pipeline model is warmed and checked like an exported one.
    `check(staged_dir)` runs before the rename to `final_dir` (`_save_atomically`);
    with `defer` the checked folder is left for the caller to publish.
    """
    sigs = module.signatures()
    # Every padded candidate count a request under the cap reaches, the one beyond the
    # largest bucket included (e.g. 1000 candidates pad to 1024): TF Serving compiles
    # only what the records hold.
    cand_sizes = Contract(max_candidates=int(serving_cfg.max_candidates),
                          candidate_buckets=tuple(serving_cfg.candidate_buckets)
                          ).warm_candidate_sizes()
    logs = (build_warmup_logs(name, sigs, warmup_inputs, examples,
                              serving_cfg.batch_buckets, cand_sizes)
            if warmup_inputs is not None else [])
    info = {"model_name": name, "variant": "xla" if module.jit_compile else "noxla",
            "version": None if version is None else int(version),  # None: the pusher's
            "jit_compile": module.jit_compile,
            "history_length": module.history_length,
            "batch_buckets": list(serving_cfg.batch_buckets),
            "candidate_buckets": list(serving_cfg.candidate_buckets),
            "max_candidates": int(serving_cfg.max_candidates),
            "signatures": sorted(sigs), "warmup_records": len(logs),
            "serving_example_features": sorted([F.ITEM_ID, F.TIMESTAMP, F.HIST_ITEM_ID,
                                                F.HIST_BEHAVIOR, F.HIST_TIMESTAMP])
            if "tensorize" in sigs else [],
            "behavior_types": list(behavior_types or []),
            "model_config": model_config or {}}
    if module.has_cached and "user_state" in sigs:
        info.update(user_state_info(sigs["user_state"], module.state_version))
    _save_atomically(module, final_dir, logs, info, sigs, check, defer)


def read_parity_inputs(run_dir: str) -> Optional[Dict[str, np.ndarray]]:
    """The real held-out model inputs a training run saved (`parity_batch.npz`), with
    the serving dtypes; None when the run has none."""
    from dmgin_tf.training.trainer import PARITY_FILE
    parity = os.path.join(run_dir, PARITY_FILE)
    if not os.path.exists(parity):
        return None
    with np.load(parity, allow_pickle=False) as z:
        inputs = {k: z[f"input/{k}"] for k in F.MODEL_INPUT_KEYS}
    return {k: v.astype(np.int64 if k in (F.HIST_TIME, F.REQUEST_TIME) else np.int32)
            for k, v in inputs.items()}


def export_from_run_dir(run_dir: str, base_path: str, name: str, *,
                        version: Optional[int] = None,
                        variants: Sequence[str] = ("xla", "noxla"),
                        serving_cfg: Optional[ServingConfig] = None,
                        verify: bool = True, state_groups: int = DEFAULT_LOOKUP_GROUPS,
                        state_items: int = DEFAULT_LOOKUP_ITEMS,
                        log: Optional[Callable[[str], None]] = None,
                        model_fn: Optional[Callable] = None) -> Dict[str, str]:
    """Exports a `dmgin train` output directory (what `dmgin export` calls).

    Reads `config.json` + `model.weights.h5` (any backend), `item_index.parquet` for
    the tf.Example signature, and `parity_batch.npz` (real held-out examples) for the
    warmup records; with `verify`, every exported signature is compared with the Keras
    model on 4 of those examples (tolerance 1e-5) before the version folder gets its
    number, so a server watching `base_path` never loads a version that failed. `state_groups`,
    `state_items`: K and I of the cached user state (`export_model`). `model_fn`: the
    `ModelConfig -> keras.Model` the run was trained with, if not the built-in one
    (`train(..., model_fn=...)`); the rebuilt model must reproduce the run's stored
    predictions (`dmgin_tf.training.parity.check_rebuilt_model`) or nothing is exported.
    """
    check_model_name(name)
    # Export needs the TensorFlow backend of Keras 3 (the SavedModel is TF).
    import keras
    if keras.backend.backend() != "tensorflow":
        raise DmginError(f"export needs KERAS_BACKEND=tensorflow, this process runs "
                         f"{keras.backend.backend()!r}")
    from dmgin_tf.data.datasets import get_spec
    from dmgin_tf.data.item_index import FILE_NAME as ITEM_INDEX_FILE, ItemIndex
    from dmgin_tf.training.parity import check_rebuilt_model
    from dmgin_tf.training.trainer import load_trained_model

    if not os.path.isdir(run_dir):
        raise DmginError(f"export: model dir {run_dir} " + (
            "is a file, not a `dmgin train` output directory" if os.path.exists(run_dir)
            else "does not exist"))
    model, cfg = load_trained_model(run_dir, model_fn)
    # Never publish another model than the one trained (e.g. a run of a custom model_fn
    # rebuilt as the built-in class of its model.model): checked before anything is written.
    check_rebuilt_model(run_dir, model, custom_model_fn=model_fn is not None,
                        predictions=verify)
    index_path = os.path.join(run_dir, ITEM_INDEX_FILE)
    item_index = ItemIndex.load(index_path) if os.path.exists(index_path) else None
    behavior_types = get_spec(cfg.data.dataset, cfg.data).behavior_types
    warmup = read_parity_inputs(run_dir)
    check = None
    if verify and warmup is not None:
        rows = {k: v[:4] for k, v in warmup.items()}
        examples = (examples_from_dense(rows, item_index.item_ids, behavior_types)
                    if item_index is not None else None)

        def check(path):
            if log is not None:
                log("verifying the export against the Keras model ...")
            verify_export(path, model, rows, examples, state_groups=state_groups,
                          state_items=state_items)
    return export_model(model, base_path, name, history_length=cfg.model.history_length,
                        version=version, item_index=item_index, behavior_types=behavior_types,
                        warmup_inputs=warmup, serving_cfg=serving_cfg or cfg.serving,
                        variants=variants, model_config=cfg.model.to_dict(),
                        state_groups=state_groups, state_items=state_items, log=log,
                        check=check)


def user_state_info(user_state_fn, state_version: int) -> dict:
    """The cached user state's layout for dmgin_export.json: version, per-key shape
    and dtype (per user), and its size in bytes per user."""
    keys = {}
    size = 0
    for k, spec in sorted(user_state_fn.structured_outputs.items()):
        dims = spec.shape.as_list()[1:]
        keys[k] = {"shape": dims, "dtype": spec.dtype.name}
        size += int(np.prod(dims, dtype=np.int64)) * spec.dtype.size
    return {"state_version": int(state_version), "user_state_keys": keys,
            "user_state_bytes": size}


def read_export_info(version_dir: str) -> dict:
    with open(os.path.join(version_dir, "assets.extra", EXPORT_INFO_FILE)) as f:
        return json.load(f)


def verify_export(version_dir: str, model, inputs: Mapping[str, np.ndarray],
                  examples: Optional[Sequence[bytes]] = None, atol: float = 1e-5,
                  state_groups: int = DEFAULT_LOOKUP_GROUPS,
                  state_items: int = DEFAULT_LOOKUP_ITEMS) -> dict:
    """Loads a version dir and checks every signature against the in-process model.

    `score_cached` is compared with the model's own `score_cached` on a state with the
    export's caps (`state_groups`, `state_items`): with small caps it may rightly differ
    from `rank` (docs/serving.md, "Accuracy of the caps"), never from the Keras model.

    Returns {signature: max abs difference}; raises DmginError past `atol`.
    """
    loaded = tf.saved_model.load(version_dir)
    ref = np.asarray(model(inputs, training=False)).reshape(-1)
    diffs = {}
    raw = loaded.signatures["predict_raw"](**{k: tf.constant(inputs[k]) for k in F.MODEL_INPUT_KEYS})
    diffs["predict_raw"] = float(np.abs(raw[F.PREDICTION].numpy() - ref).max())
    if examples is not None and "examples" in loaded.signatures["serving_default"].structured_input_signature[1]:
        out = loaded.signatures["serving_default"](examples=tf.constant(list(examples)))
        diffs["serving_default"] = float(np.abs(out[F.PREDICTION].numpy() - ref).max())
    # rank/score: each row as one user with its own candidate.
    worst_rank = worst_score = worst_cached = 0.0
    for r in range(len(ref)):
        one = {k: tf.constant(np.asarray(inputs[k])[r:r + 1]) for k in F.MODEL_INPUT_KEYS}
        one[F.CAND_ITEM] = tf.reshape(one[F.CAND_ITEM], [1, 1])
        one[F.CAND_GROUP] = tf.reshape(one[F.CAND_GROUP], [1, 1])
        got = loaded.signatures["rank"](**one)[F.PREDICTION].numpy()
        worst_rank = max(worst_rank, float(abs(got.reshape(-1)[0] - ref[r])))
        if "score" in loaded.signatures:
            hist = {k: one[k] for k in F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)}
            state = loaded.signatures["user_state"](**hist)
            got = loaded.signatures["score"](**one, **{k: state[k]
                                                        for k in score_state_keys(state)})
            worst_score = max(worst_score, float(abs(got[F.PREDICTION].numpy().reshape(-1)[0]
                                                     - ref[r])))
            if "score_cached" in loaded.signatures:
                cands = {k: one[k] for k in (F.REQUEST_TIME, F.CAND_ITEM, F.CAND_GROUP)}
                got = loaded.signatures["score_cached"](**state, **cands)
                want = model.score_cached(
                    model.user_state({k: v.numpy() for k, v in hist.items()},
                                     max_lookup_groups=state_groups,
                                     max_lookup_items=state_items),
                    {k: v.numpy() for k, v in cands.items()})
                worst_cached = max(worst_cached, float(abs(
                    got[F.PREDICTION].numpy().reshape(-1)[0]
                    - np.asarray(want).reshape(-1)[0])))
    diffs["rank"] = worst_rank
    if "score" in loaded.signatures:
        diffs["score"] = worst_score
    if "score_cached" in loaded.signatures:
        diffs["score_cached"] = worst_cached
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        raise DmginError(f"export {version_dir}: signatures differ from the Keras model by "
                         f"{bad} (tolerance {atol})")
    return diffs
