"""From `--data PATH` to the trainer's splits, through `dmgin_tf.data`.

`--data` may name (checked in this order):
1. an example-set directory (`examples.npz` + `examples.json`, from `dmgin examples build`,
   `build_from_canonical` or `dmgin gpu bundle`) — loaded as is (numpy only: this is the
   form the JAX-only GPU host reads);
2. a converted directory (`behaviors.parquet` + `items.parquet`, `dmgin data convert`) —
   examples are built into `<work_dir>/examples`;
3. anything else — raw data of `data.dataset` (a file or directory the converter reads;
   "" = the embedded sample): converted into `<work_dir>/canonical`, then as 2.

The grouping key (`grouping.key`) decides `hist_group` / `cand_group`. `cluster` needs
the item -> group table of the k-means stage (`group_table`); without one we fall back to
`category` and say so (the k-means table comes from `dmgin grouping`, a separate stage).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Dict, Optional

import numpy as np

from dmgin_tf.config import Config
from dmgin_tf.errors import DataError
from dmgin_tf.features import MODEL_INPUT_KEYS

EXAMPLES_FILE = "examples.npz"
ITEM_INDEX_FILE = "item_index.parquet"
CANONICAL_FILES = ("behaviors.parquet", "items.parquet")


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


def effective_grouping_key(cfg: Config, group_table) -> str:
    """`grouping.key`, with `cluster` falling back to `category` when no table is given."""
    key = cfg.grouping.key
    if key == "cluster" and not group_table and not cfg.grouping.external_embeddings:
        return "category"
    return key


def _is_example_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, EXAMPLES_FILE))


def _is_canonical_dir(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.exists(os.path.join(path, f)) for f in CANONICAL_FILES)


def prepare_example_dir(cfg: Config, data_path: Optional[str], work_dir: str, *,
                        group_table=None, progress: bool = True, log=print) -> str:
    """Makes sure an example-set directory exists for `data_path`; returns its path.

    Example-set directories are returned unchanged; converted or raw data are built
    under `work_dir` (reused when already there, so benchmarks build once).
    """
    from dmgin_tf.data.examples import build_from_canonical
    path = os.fspath(data_path) if data_path else ""
    if path and _is_example_dir(path):
        return path
    if path and not os.path.exists(path):
        raise DataError(f"--data {path}: no such file or directory")
    if path and _is_canonical_dir(path):
        canonical = path
    else:
        canonical = os.path.join(work_dir, "canonical")
        if not _is_canonical_dir(canonical):
            from dmgin_tf.data.converters import convert
            log(f"converting {cfg.data.dataset} data from {path or 'the embedded sample'} "
                f"-> {canonical}")
            convert(cfg.data.dataset, path, canonical, cfg.data, show_progress=progress)
    key = effective_grouping_key(cfg, group_table)
    if key != cfg.grouping.key:
        log(f"note: grouping.key={cfg.grouping.key} needs an item -> group table "
            f"(--group-table, from `dmgin grouping`); using {key!r} instead")
    example_dir = os.path.join(work_dir, f"examples_{key}")
    if not _is_example_dir(example_dir):
        log(f"building examples ({cfg.data.dataset}, grouping {key}) -> {example_dir}")
        build_from_canonical(canonical, example_dir, cfg.data, grouping_key=key,
                             group_table=group_table,
                             num_groups=cfg.grouping.num_groups if key == "random" else 0,
                             grouping_seed=cfg.grouping.seed, progress=progress)
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
             "max_history": meta.get("max_history")}
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
    example_dir = prepare_example_dir(cfg, path, work_dir, group_table=group_table,
                                      progress=progress, log=log)
    es = ExampleSet.load(example_dir)
    name = es.metadata.get("spec", {}).get("name")
    if name and name != cfg.data.dataset:
        raise DataError(f"{example_dir} holds {name!r} examples but data.dataset="
                        f"{cfg.data.dataset!r}")
    return training_data_from_example_set(es, cfg.model.history_length, example_dir)
