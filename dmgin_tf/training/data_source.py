"""From `--data PATH` to the trainer's splits, through `dmgin_tf.data`.

`--data` may name (checked in this order):
1. an example-set directory (`examples.npz` + `examples.json`, from `dmgin examples build`,
   `build_from_canonical` or `dmgin gpu bundle`) — loaded as is (numpy only: this is the
   form the JAX-only GPU host reads);
2. a converted directory (`behaviors.parquet` + `items.parquet`, `dmgin data convert`) —
   examples are built into `<work_dir>/examples_<grouping key>`;
3. anything else — raw data of `data.dataset` (a file or directory the converter reads;
   "" = the embedded sample): converted into `<work_dir>/canonical`, then as 2.

The two `<work_dir>` folders are caches: each records what it was built from
(`build_inputs.json`: the source files' names, sizes and modification times, the data
config, the grouping) and is rebuilt when any of that changed, so a second run with
another `--set data.*`, grouping or input file never trains on the first run's examples.
An example-set directory named by `--data` is used as built; where its data config
differs from the run's, a note says which fields do not apply.

The grouping key (`grouping.key`) decides `hist_group` / `cand_group`. `cluster` needs
the item -> group table of the k-means stage (`group_table`); without one we fall back to
`category` and say so (the k-means table comes from `dmgin grouping`, a separate stage).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Dict, Optional

import numpy as np

from dmgin_tf.config import Config
from dmgin_tf.errors import DataError
from dmgin_tf.features import CATEGORY, MODEL_INPUT_KEYS
from dmgin_tf.provenance import file_fingerprint

EXAMPLES_FILE = "examples.npz"
EXAMPLE_META_FILE = "examples.json"
ITEM_INDEX_FILE = "item_index.parquet"
CANONICAL_FILES = ("behaviors.parquet", "items.parquet")
BUILD_RECORD = "build_inputs.json"
# Data config fields that only the converter reads (the examples see their output).
_CONVERSION_ONLY = ("input_path", "max_error_fraction")


class ExampleSetSplit:
    """One split of an `ExampleSet` as a trainer `Split`, densified batch by batch.

    Attributes:
      indices: `[N]` example indices of the split in the example set.
      labels: `[N]` float32.  user_ids: `[N]` int32 user index (GAUC groups by it).
    """

    def __init__(self, example_set, split: str, history_length: int):
        self.example_set = example_set
        self.split = split
        self.history_length = int(history_length)
        self.indices = example_set.split_indices(split)
        self.labels = example_set.ex_label[self.indices].astype(np.float32)
        self.user_ids = example_set.ex_user[self.indices]

    folds = None   # out-of-fold index per example, set by the trainer (training split)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, indices) -> Dict[str, np.ndarray]:
        from dmgin_tf.data.batches import densify
        from dmgin_tf.training.inputs import with_folds
        dense = densify(self.example_set, self.indices[np.asarray(indices)], self.history_length)
        return with_folds({k: dense[k] for k in MODEL_INPUT_KEYS}, self.folds, indices)

    def candidate_ids(self):
        es = self.example_set
        return es.ex_cand_item[self.indices], es.ex_cand_group[self.indices]


def regroup(example_set, item_index):
    """A copy of `example_set` whose group ids come from `item_index` (same catalog).

    Item idx do not depend on the grouping key (catalog order), so a grouping ablation
    re-maps `beh_group` and `ex_cand_group` without rebuilding the examples.
    """
    vocab = int(example_set.metadata.get("item_vocab_size", item_index.item_vocab_size))
    if vocab != item_index.item_vocab_size:
        raise DataError(f"regroup: item index has {item_index.item_vocab_size} item ids, the "
                        f"example set {vocab}; they come from different catalogs")
    meta = dict(example_set.metadata)
    meta.update(group_vocab_size=item_index.group_vocab_size,
                grouping_key=item_index.grouping_key)
    return dataclasses.replace(
        example_set,
        beh_group=item_index.groups_of(example_set.beh_item).astype(np.int32),
        ex_cand_group=item_index.groups_of(example_set.ex_cand_item).astype(np.int32),
        metadata=meta)


def effective_grouping_key(cfg: Config, group_table, canonical: Optional[str] = None) -> str:
    """`grouping.key`, with `cluster` falling back to `category` when no table is given —
    or to `item_id` when the converted data in `canonical` has no item categories (one
    group for the whole catalog would give the group features nothing to tell apart)."""
    key = cfg.grouping.key
    if key == "cluster" and not group_table and not cfg.grouping.external_embeddings:
        return "category" if canonical is None or _has_categories(canonical) else "item_id"
    return key


def _has_categories(canonical: str) -> bool:
    """Whether any item of the converted data in `canonical` has a category."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    path = os.path.join(canonical, CANONICAL_FILES[1])
    if CATEGORY not in pq.ParquetFile(path).schema_arrow.names:
        return False
    cats = pc.utf8_trim_whitespace(pq.read_table(path, columns=[CATEGORY]).column(0).cast("string"))
    return bool(pc.any(pc.greater(pc.utf8_length(pc.fill_null(cats, "")), 0)).as_py())


def _is_example_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, EXAMPLES_FILE))


def _is_canonical_dir(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.exists(os.path.join(path, f)) for f in CANONICAL_FILES)


def _table_fingerprint(table):
    """What identifies a group table argument: a path's files, or a DataFrame's rows."""
    if table is None:
        return None
    if isinstance(table, (str, os.PathLike)):
        return {"path": os.path.abspath(table), "files": file_fingerprint(table)}
    import pandas as pd
    return {"rows": int(pd.util.hash_pandas_object(table, index=False).sum() % (1 << 62))}


def _cache_is_current(path: str, ready: Callable[[str], bool], inputs: dict) -> bool:
    try:
        with open(os.path.join(path, BUILD_RECORD), encoding="utf-8") as f:
            return ready(path) and json.load(f) == inputs
    except (OSError, ValueError):
        return False


def _build_cache(path: str, inputs: dict, build: Callable[[str], Any]) -> Any:
    """Builds into a sibling folder, records its inputs, then replaces `path`: a failed
    build leaves no half-written cache that a later run would take for a finished one.
    Returns what `build` returned."""
    # One fixed name: a failed build's leftovers (a converter's `.failed` report beside
    # it) are replaced by the next attempt instead of piling up per process.
    tmp = f"{path}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    result = build(tmp)
    with open(os.path.join(tmp, BUILD_RECORD), "w", encoding="utf-8") as f:
        json.dump(inputs, f, indent=1)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return result


def _example_config(data_cfg) -> dict:
    """The data fields examples depend on, as JSON holds them (tuples as lists)."""
    return json.loads(json.dumps({k: v for k, v in data_cfg.to_dict().items()
                                  if k not in _CONVERSION_ONLY}))


def _note_config_differences(example_dir: str, data_cfg, log) -> None:
    """`--data EXAMPLE_DIR` is used as built: name the data fields it was not built with."""
    try:
        with open(os.path.join(example_dir, "examples.json"), encoding="utf-8") as f:
            built = json.load(f).get("data_config") or {}
    except (OSError, ValueError):
        return
    want = _example_config(data_cfg)
    if built.get("dataset", want["dataset"]) != want["dataset"]:
        # Refused, not noted: another data set's examples cannot be "used as built".
        raise _dataset_mismatch(example_dir, built["dataset"], want["dataset"])
    diff = [f"data.{k}={built[k]!r} (this run: {want[k]!r})" for k in sorted(want)
            if k in built and built[k] != want[k]]
    if diff:
        log(f"note: {example_dir} holds examples built with {', '.join(diff)}; they are used "
            f"as built (rebuild them with `dmgin examples build` to apply this run's config)")


def _dataset_mismatch(example_dir: str, built: str, wanted: str) -> DataError:
    return DataError(f"{example_dir} holds {built!r} examples but data.dataset={wanted!r}")


def _check_grouping_of_example_dir(example_dir: str, cfg: Config, group_table, log) -> None:
    """An example set is used as built, groups included: a group table is refused (it
    would be ignored), another `grouping.key` is named in a note."""
    try:
        with open(os.path.join(example_dir, "examples.json"), encoding="utf-8") as f:
            built = json.load(f).get("grouping_key")
    except (OSError, ValueError):
        built = None
    if group_table is not None:
        raise DataError(f"--data {example_dir} is an example set, used as built (grouped by "
                        f"{built!r}); --group-table applies to converted or raw --data, whose "
                        f"examples are built with it")
    key = cfg.grouping.key
    if built and key not in (built, "cluster"):
        log(f"note: {example_dir} holds examples grouped by {built!r}; they are used as built "
            f"(grouping.key={key} applies to converted or raw --data)")


def prepare_example_dir(cfg: Config, data_path: Optional[str], work_dir: str, *,
                        group_table=None, progress: bool = True, log=print) -> str:
    """Makes sure an example-set directory exists for `data_path`; returns its path.

    Example-set directories are returned unchanged; converted or raw data are built
    under `work_dir` and reused while their inputs are unchanged (module docstring), so
    benchmarks build once.
    """
    from dmgin_tf.data.examples import build_from_canonical, group_table_note
    path = os.fspath(data_path) if data_path else ""
    if path and os.path.isdir(path) and not _is_example_dir(path) \
            and os.path.exists(os.path.join(path, EXAMPLE_META_FILE)):
        # examples.json without its arrays: a partial copy, not raw data to convert.
        raise DataError(f"--data {path}: holds {EXAMPLE_META_FILE} but no {EXAMPLES_FILE}: an "
                        f"example set copied in part; copy the whole folder again (or "
                        f"build it with `dmgin examples build`)")
    if path and _is_example_dir(path):
        _note_config_differences(path, cfg.data, log)
        _check_grouping_of_example_dir(path, cfg, group_table, log)
        return path
    if path and not os.path.exists(path):
        raise DataError(f"--data {path}: no such file or directory")
    if path and _is_canonical_dir(path):
        canonical = path
    else:
        canonical = os.path.join(work_dir, "canonical")
        if path:
            source = {"path": os.path.abspath(path), "files": file_fingerprint(path)}
        else:
            from dmgin_tf import __version__
            source = {"embedded_sample": cfg.data.dataset, "package": __version__}
        inputs = {"dataset": cfg.data.dataset, "source": source,
                  "max_error_fraction": cfg.data.max_error_fraction}
        if not _cache_is_current(canonical, _is_canonical_dir, inputs):
            from dmgin_tf.data.converters import convert
            log(f"converting {cfg.data.dataset} data from {path or 'the embedded sample'} "
                f"-> {canonical}")
            _build_cache(canonical, inputs, lambda out: convert(
                cfg.data.dataset, path, out, cfg.data, show_progress=progress))
    key = effective_grouping_key(cfg, group_table, canonical)
    if key != cfg.grouping.key:
        log(f"note: grouping.key={cfg.grouping.key} needs an item -> group table "
            f"(--group-table, from `dmgin grouping`); using {key!r} instead"
            + (" (the items have no category)" if key == "item_id" else ""))
    example_dir = os.path.join(work_dir, f"examples_{key}")
    num_groups = cfg.grouping.num_groups if key == "random" else 0
    inputs = {"canonical": {"path": os.path.abspath(canonical),
                            "files": [file_fingerprint(os.path.join(canonical, f))[0]
                                      for f in CANONICAL_FILES]},
              "data": _example_config(cfg.data),
              "grouping_key": key, "group_table": _table_fingerprint(group_table),
              "num_groups": num_groups, "grouping_seed": cfg.grouping.seed}
    if not _cache_is_current(example_dir, _is_example_dir, inputs):
        log(f"building examples ({cfg.data.dataset}, grouping {key}) -> {example_dir}")
        es = _build_cache(example_dir, inputs, lambda out: build_from_canonical(
            canonical, out, cfg.data, grouping_key=key, group_table=group_table,
            num_groups=num_groups, grouping_seed=cfg.grouping.seed, progress=progress))
        note = group_table_note(es.metadata)
        if note:
            log(note)
    return example_dir


def training_data_from_example_set(example_set, history_length: int,
                                   source_dir: Optional[str] = None, info: Optional[dict] = None):
    """`TrainingData` over an ExampleSet's train/val/test splits.

    `source_dir`: where the example set came from; its item_index.parquet (if any) is
    copied into each run's output directory.
    """
    from dmgin_tf.training.trainer import TrainingData
    meta = example_set.metadata
    overrides = {k: int(meta[k]) for k in ("item_vocab_size", "group_vocab_size",
                                           "num_behavior_types") if k in meta}
    index_file = os.path.join(source_dir, ITEM_INDEX_FILE) if source_dir else None

    def save_artifacts(output_dir: str):
        if index_file and os.path.exists(index_file):
            dest = os.path.join(output_dir, ITEM_INDEX_FILE)
            shutil.copyfile(index_file, dest)
            return [dest]
        return []

    facts = {"dataset": meta.get("spec", {}).get("name"), "source": meta.get("source"),
             "example_dir": source_dir, "grouping_key": meta.get("grouping_key"),
             "history_length": int(history_length), "counts": meta.get("counts"),
             "max_history": meta.get("max_history"),
             "behavior_types": meta.get("spec", {}).get("behavior_types")}
    facts.update(info or {})
    return TrainingData(
        train=ExampleSetSplit(example_set, "train", history_length),
        val=ExampleSetSplit(example_set, "val", history_length),
        test=ExampleSetSplit(example_set, "test", history_length),
        model_overrides=overrides, info=facts, save_artifacts=save_artifacts)


def load_training_data(cfg: Config, data_path: Optional[str] = None, work_dir: str = "runs/data",
                       *, group_table=None, progress: bool = True, log=print):
    """`TrainingData` for `cfg` from `data_path` (see module docstring)."""
    from dmgin_tf.data.examples import ExampleSet
    path = data_path if data_path is not None else cfg.data.input_path
    if data_path is None and path and not os.path.exists(path):
        raise DataError(f"data.input_path={path}: no such file or directory")
    example_dir = prepare_example_dir(cfg, path, work_dir, group_table=group_table,
                                      progress=progress, log=log)
    es = ExampleSet.load(example_dir)
    name = es.metadata.get("spec", {}).get("name")
    if name and name != cfg.data.dataset:
        raise _dataset_mismatch(example_dir, name, cfg.data.dataset)
    return training_data_from_example_set(es, cfg.model.history_length, example_dir)
