"""Typed, validated configuration: one frozen dataclass per concern.

All configs load from one YAML/JSON file with a section per concern::

    data:     {dataset: taobao, max_history: 10000, ...}
    grouping: {key: cluster, num_groups: 256, ...}
    model:    {embedding_dim: 16, max_groups: 64, ...}
    train:    {epochs: 5, batch_size: 1024, ...}
    pipeline: {...}
    serving:  {...}

An unknown key or a bad value raises `ConfigError` naming the section, field and value.
Flags override file values through `apply_overrides({"model.max_groups": 32})`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any, Mapping, Tuple


class ConfigError(ValueError):
    """A config file or override names an unknown field or carries a bad value."""


MAX_HISTORY = 10_000_000  # behaviors per user: far above any lifelong log we know of
# The models `model.model` names (dmgin_tf.models.MODELS builds them). Python code adds its
# own with `dmgin_tf.models.register_model`, which extends `model_names()`.
BUILTIN_MODELS = ("dmgin", "dgin", "din", "sim", "bst", "transformer")
_REGISTERED_MODELS: list = []


def model_names() -> Tuple[str, ...]:
    """Names `model.model` accepts: the built-in models, then registered ones."""
    return BUILTIN_MODELS + tuple(_REGISTERED_MODELS)


def add_model_name(name: str) -> None:
    """Lets `model.model` take `name` (`dmgin_tf.models.register_model` calls this)."""
    if name not in model_names():
        _REGISTERED_MODELS.append(name)


def _check_type(section: str, field: dataclasses.Field, value: Any) -> Any:
    """Coerces `value` to the field's declared type or raises ConfigError."""
    name = f"{section}.{field.name}"
    tp = field.type if not isinstance(field.type, str) else _resolve(field.type)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if not -(2 ** 63) <= number < 2 ** 63:
            raise ConfigError(f"{name}: {value!r} is outside the 64-bit integer range")
        return number
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else str
        fake = dataclasses.field()
        fake.name, fake.type = field.name, inner
        return tuple(_check_type(section, fake, v) for v in value)
    return value


def _resolve(type_str: str):
    return eval(type_str, {"typing": typing, "Optional": typing.Optional,  # noqa: S307
                           "Tuple": typing.Tuple, "tuple": tuple, "list": list,
                           "int": int, "float": float, "str": str, "bool": bool})


def _mapping(where: str, values) -> dict:
    """A config section as a dict of string keys, or a ConfigError naming it."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields (key: value), got "
                          f"{type(values).__name__} {values!r}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{where}: keys must be field names (strings), got {bad!r}")
    return dict(values)


class ConfigBase:
    """Mixin for frozen dataclass configs: dict round trip + validation."""

    SECTION = "config"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None):
        values = _mapping(cls.SECTION, values)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.SECTION}: unknown key(s) {unknown}; "
                              f"known: {sorted(fields)}")
        kwargs = {k: _check_type(cls.SECTION, fields[k], v) for k, v in values.items()}
        obj = cls(**kwargs)
        obj.validate()
        return obj

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes):
        merged = self.to_dict()
        merged.update(changes)
        return type(self).from_dict(merged)

    def validate(self) -> None:
        """Subclasses raise ConfigError naming the field on a bad value."""

    def _require(self, cond: bool, field: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{self.SECTION}.{field}={getattr(self, field)!r}: {msg}")


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Which dataset, where, and how examples are built (docs/design.md: Data formats, Evaluation protocol)."""
    SECTION = "data"
    dataset: str = "taobao"            # taobao | movielens | generic
    input_path: str = ""               # raw data file/dir; "" = embedded sample
    max_history: int = 10000           # newest behaviors kept per example
    min_events_for_test: int = 5       # users with fewer labelled events: train only
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    negatives_per_positive: int = 1    # Taobao: sampled negatives per behavior
    seed: int = 0
    max_error_fraction: float = 0.01   # converters fail past this fraction of bad rows
    # dataset=generic only (taobao/movielens have fixed specs, see data/datasets.py):
    behavior_types: Tuple[str, ...] = ()      # behavior vocabulary; () = the converted data's (report.json)
    labelled_behaviors: Tuple[str, ...] = ()  # behaviors that become examples; () = all
    positive_behaviors: Tuple[str, ...] = ()  # labelled behaviors with label 1; () = all labelled
    sample_negatives: bool = False            # sample negatives_per_positive items per event

    def validate(self):
        self._require(self.dataset in ("taobao", "movielens", "generic"), "dataset",
                      "must be taobao, movielens or generic")
        self._require(1 <= self.max_history <= MAX_HISTORY, "max_history",
                      f"must be in [1, {MAX_HISTORY}]")
        self._require(self.min_events_for_test >= 0, "min_events_for_test", "must be >= 0")
        self._require(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        self._require(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        self._require(self.test_fraction + self.val_fraction < 1, "val_fraction",
                      f"test_fraction + val_fraction = {self.test_fraction + self.val_fraction:g} "
                      f"must be < 1 (the shares of each user's events held out for test and "
                      f"validation)")
        self._require(self.negatives_per_positive <= 1000, "negatives_per_positive",
                      "must be <= 1000")
        self._require(self.seed >= 0, "seed", "must be >= 0")
        self._require(self.negatives_per_positive >= 0, "negatives_per_positive", "must be >= 0")
        self._require(0 <= self.max_error_fraction <= 1, "max_error_fraction", "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class GroupingConfig(ConfigBase):
    """How items map to interest groups (transform/grouping; docs/design.md: Architecture and data flow)."""
    SECTION = "grouping"
    key: str = "cluster"              # cluster | item_id | category | random
    num_groups: int = 256             # K for k-means / random
    kmeans_iterations: int = 20
    kmeans_sample_size: int = 10000   # k-means++ init sample
    kmeans_init_trials: int = 3       # k-means++ + Lloyd on the sample, best kept as Beam init
    kmeans_tol: float = 1e-4          # stop when relative inertia improvement < tol
    embedding_source: str = "encoder"  # encoder | external (precomputed item_id -> vector)
    external_embeddings: str = ""     # Parquet/TFRecord path when embedding_source=external
    seed: int = 0

    def validate(self):
        self._require(self.key in ("cluster", "item_id", "category", "random"), "key",
                      "must be cluster, item_id, category or random")
        self._require(1 <= self.num_groups <= 10_000_000, "num_groups", "must be in [1, 10000000]")
        self._require(self.seed >= 0, "seed", "must be >= 0")
        self._require(self.kmeans_iterations >= 1, "kmeans_iterations", "must be >= 1")
        self._require(self.kmeans_sample_size >= 1, "kmeans_sample_size", "must be >= 1")
        self._require(self.kmeans_init_trials >= 1, "kmeans_init_trials", "must be >= 1")
        self._require(self.kmeans_tol >= 0, "kmeans_tol", "must be >= 0")
        self._require(self.embedding_source in ("encoder", "external"), "embedding_source",
                      "must be encoder or external")


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """DMGIN / baseline hyperparameters (docs/design.md: Model and tensor contracts)."""
    SECTION = "model"
    model: str = "dmgin"              # one of model_names(): dmgin | dgin | din | sim | bst | ...
    item_vocab_size: int = 0          # filled from the data (ids incl. reserved)
    group_vocab_size: int = 0
    num_behavior_types: int = 4       # T: behavior ids 1..T, 0 = unknown type / padding
    history_length: int = 512         # L of the dense model input
    max_groups: int = 64              # G
    max_per_group: int = 16           # M
    recent_window: int = 50           # newest behaviors DIN/SIM/BST (and use_recent) attend over
    embedding_dim: int = 16
    num_heads: int = 2
    intra_layers: int = 1
    inter_layers: int = 2
    inter_block: str = "hstu"         # hstu | transformer
    mlp_units: Tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    use_stats: bool = True
    use_intra: bool = True
    use_inter: bool = True
    use_candidate_group: bool = True
    group_shares: bool = False        # DMGIN/DGIN: + the candidate group's behavior-type shares (length-invariant)
    use_recent: bool = False          # DMGIN/DGIN: + target attention over the newest recent_window behaviors
    attention_units: Tuple[int, ...] = (64, 32)  # target attention scoring MLP
    num_time_buckets: int = 32        # log2-minute recency buckets (embeddings, HSTU bias)
    # Context statistics for the MLP head (every model): candidate item/group training
    # statistics (out-of-fold for training examples) + user history aggregates.
    use_context: bool = True
    context_folds: int = 5            # K out-of-fold tables for training examples
    context_prior: float = 20.0       # smoothing pseudo-examples of the positive rates
    # The head's dense statistics (context features, raw matching counts): piecewise-
    # linear encoded over numeric_bins training quantiles, numeric_units wide per
    # column; numeric_bins = 0 batch-normalises them with the learned vectors instead.
    numeric_bins: int = 16
    numeric_units: int = 8
    # Frozen per-item content vectors (the multimodal encoder's catalog embedding)
    # added to every item embedding through a learned projection; 0 = ids only. The
    # trainer loads them from `TrainingData.item_content` (width must match).
    item_content_dim: int = 0
    # Items in fewer training examples (as candidates) share the unknown-item embedding
    # row: a once-seen id can only memorise its one label. 0 = every id its own row.
    item_min_count: int = 0

    def validate(self):
        self._require(self.model in model_names(), "model",
                      f"must be one of {', '.join(model_names())} (own models: "
                      f"dmgin_tf.models.register_model)")
        for f in ("history_length", "max_groups", "max_per_group", "embedding_dim",
                  "num_heads", "recent_window", "num_behavior_types"):
            self._require(getattr(self, f) >= 1, f, "must be >= 1")
        self._require(self.num_time_buckets >= 2, "num_time_buckets", "must be >= 2")
        self._require(self.history_length <= MAX_HISTORY, "history_length",
                      f"must be <= {MAX_HISTORY}")
        for f in ("item_vocab_size", "group_vocab_size"):
            self._require(0 <= getattr(self, f) < 2 ** 31, f,
                          "must be in [0, 2^31) (ids are int32; 0 = filled from the data)")
        for f in ("max_groups", "max_per_group", "embedding_dim", "num_heads", "recent_window",
                  "num_behavior_types", "num_time_buckets", "intra_layers", "inter_layers"):
            self._require(getattr(self, f) <= 1_000_000, f, "must be <= 1000000")
        for f in ("intra_layers", "inter_layers"):
            self._require(getattr(self, f) >= 0, f, "must be >= 0")
        # Activations are [B, G * M, D] per block: a size that cannot fit any machine is
        # refused here, not by the allocator mid-training.
        self._require(self.max_groups * self.max_per_group <= 2 ** 20, "max_per_group",
                      f"max_groups x max_per_group = {self.max_groups * self.max_per_group:,} "
                      f"group slots per user; must be <= 1,048,576")
        self._require(self.embedding_dim % self.num_heads == 0, "embedding_dim",
                      f"must be a multiple of num_heads={self.num_heads}")
        self._require(all(u >= 1 for u in self.mlp_units), "mlp_units",
                      "must be positive sizes")
        self._require(all(u >= 1 for u in self.attention_units), "attention_units",
                      "must be positive sizes")
        self._require(self.inter_block in ("hstu", "transformer"), "inter_block",
                      "must be hstu or transformer")
        self._require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        self._require(0 <= self.numeric_bins <= 1024, "numeric_bins",
                      "must be in [0, 1024] (0 = no piecewise-linear encoding)")
        self._require(1 <= self.numeric_units <= 1024, "numeric_units", "must be in [1, 1024]")
        self._require(self.item_min_count >= 0, "item_min_count", "must be >= 0 (0 = off)")
        self._require(0 <= self.item_content_dim <= 65536, "item_content_dim",
                      "must be in [0, 65536] (0 = no item content vectors)")
        self._require(2 <= self.context_folds <= 100, "context_folds",
                      "must be in [2, 100] (out-of-fold statistics; K + 1 tables of "
                      "(items + groups) x 4 floats each)")
        self._require(self.context_prior > 0 and self.context_prior < float("inf"),
                      "context_prior", "must be a finite number > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Training loop settings (Adam, lr 1e-3, batch 1024 as in the paper)."""
    SECTION = "train"
    backend: str = "tensorflow"       # tensorflow | jax
    epochs: int = 5
    batch_size: int = 1024
    learning_rate: float = 1e-3
    early_stopping_patience: int = 2
    mixed_precision: bool = False
    jit_compile: bool = True
    seed: int = 0
    output_dir: str = "runs/train"
    distribute: str = "auto"          # auto: several GPUs/devices -> data parallel | off | force
    steps_per_epoch: int = 0          # 0 = whole train split per epoch (budgeted benchmarks cap it)
    eval_batch_size: int = 0          # 0 = batch_size
    # Learning rate: "constant", or "warmup_cosine" (linear warm-up from 0 over
    # lr_warmup_epochs, then cosine decay to lr_min_ratio * learning_rate at `epochs`).
    lr_schedule: str = "constant"
    lr_warmup_epochs: float = 0.5
    lr_min_ratio: float = 0.05
    weight_decay: float = 0.0         # decoupled (AdamW) when > 0
    monitor: str = "val_auc"          # early stopping / best epoch: val_auc | val_gauc

    def validate(self):
        self._require(self.backend in ("tensorflow", "jax"), "backend", "must be tensorflow or jax")
        self._require(1 <= self.epochs <= 1_000_000, "epochs", "must be in [1, 1000000]")
        self._require(1 <= self.batch_size <= 2 ** 24, "batch_size", "must be in [1, 16777216]")
        self._require(0 < self.learning_rate <= 10, "learning_rate",
                      "must be a finite number in (0, 10]")
        self._require(self.seed >= 0, "seed", "must be >= 0")
        self._require(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
        self._require(self.distribute in ("auto", "off", "force"), "distribute",
                      "must be auto, off or force")
        self._require(self.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0")
        self._require(self.eval_batch_size >= 0, "eval_batch_size", "must be >= 0")
        self._require(self.lr_schedule in ("constant", "warmup_cosine"), "lr_schedule",
                      "must be constant or warmup_cosine")
        self._require(0 <= self.lr_warmup_epochs < float("inf"), "lr_warmup_epochs",
                      "must be a finite number >= 0")
        self._require(0 <= self.lr_min_ratio <= 1, "lr_min_ratio", "must be in [0, 1]")
        self._require(0 <= self.weight_decay < 1, "weight_decay", "must be in [0, 1)")
        self._require(self.monitor in ("val_auc", "val_gauc"), "monitor",
                      "must be val_auc or val_gauc")


@dataclasses.dataclass(frozen=True)
class BeamConfig(ConfigBase):
    """Which Beam runner executes our Beam stages (docs/design.md: Architecture and data flow)."""
    SECTION = "beam"
    runner: str = "direct"            # direct | dask | flink | spark | dataflow
    direct_num_workers: int = 0       # 0 = one per core (multi_processing)
    dask_address: str = ""            # tcp://host:port of an existing scheduler
    dask_local_workers: int = 0       # >0: start a LocalCluster for the run
    extra_args: Tuple[str, ...] = ()            # pass-through pipeline args
    direct_running_mode: str = "multi_processing"  # multi_processing | multi_threading | in_memory
    dask_npartitions: int = 0         # Dask bag partitions per Create; 0 = 2 x local workers (or 8)
    job_endpoint: str = ""            # flink/spark: running Beam job server host:port (PortableRunner)
    flink_master: str = ""            # flink: host:port of the Flink REST endpoint
    spark_master: str = ""            # spark: spark://host:port
    environment_type: str = ""        # portable runners: DOCKER | PROCESS | EXTERNAL | LOOPBACK

    def validate(self):
        self._require(self.runner in ("direct", "dask", "flink", "spark", "dataflow"), "runner",
                      "must be direct, dask, flink, spark or dataflow")
        self._require(self.dask_local_workers >= 0, "dask_local_workers", "must be >= 0")
        self._require(self.direct_num_workers >= 0, "direct_num_workers", "must be >= 0")
        self._require(self.dask_npartitions >= 0, "dask_npartitions", "must be >= 0")
        self._require(self.direct_running_mode in ("multi_processing", "multi_threading",
                                                   "in_memory"), "direct_running_mode",
                      "must be multi_processing, multi_threading or in_memory")
        self._require(self.environment_type in ("", "DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK"),
                      "environment_type", "must be DOCKER, PROCESS, EXTERNAL or LOOPBACK")
        # Without a target Beam's Flink/Spark runners start an embedded cluster and
        # download its job-server jar at submission: say which cluster, before any step
        # runs (docs/scale-out.md). `[local]` asks for the embedded one explicitly.
        master = {"flink": self.flink_master, "spark": self.spark_master}.get(self.runner)
        self._require(self.runner not in ("flink", "spark") or bool(self.job_endpoint or master),
                      "runner", f"needs beam.job_endpoint=HOST:PORT (a running Beam job "
                      f"server) or beam.{self.runner}_master="
                      + ("HOST:PORT" if self.runner == "flink" else "spark://HOST:PORT")
                      + (" ('[local]' for an embedded Flink, which downloads its job-server "
                         "jar)" if self.runner == "flink" else ""))
        self._require(self.runner != "dask" or bool(self.dask_address)
                      or self.dask_local_workers > 0, "runner",
                      "dask needs beam.dask_address=tcp://HOST:PORT (a running scheduler) or "
                      "beam.dask_local_workers=N (a local cluster for the run)")
        if self.runner == "dataflow":      # what Beam's Dataflow options refuse to run without
            # an empty value (--project=) is no value
            given = {a.split("=", 1)[0] for a in self.extra_args
                     if "=" not in a or a.split("=", 1)[1].strip()}
            missing = [f for f in ("--project",) if f not in given]
            if not given & {"--temp_location", "--staging_location"}:
                missing.append("--temp_location")
            self._require(not missing, "runner", f"needs {' and '.join(missing)} in "
                          f"beam.extra_args (--beam-arg=--project=PROJECT "
                          f"--beam-arg=--temp_location=gs://BUCKET/tmp; docs/scale-out.md)")


NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
NAME_RULE = ("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
             "digit (it names a folder and appears in URLs)")


def is_valid_name(name) -> bool:
    """Pipeline and served-model names: they become folder names (the pipeline root, the
    Pusher's `<serving_base>/<model_name>/`) and part of TF Serving's REST paths
    (`/v1/models/<name>`), so a '/', a space or '..' would split or escape a path."""
    import re
    return isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) is not None \
        and ".." not in name


@dataclasses.dataclass(frozen=True)
class PipelineConfig(ConfigBase):
    """TFX pipeline settings."""
    SECTION = "pipeline"
    name: str = "dmgin"
    root: str = "runs/pipeline"
    serving_dir: str = "runs/serving"   # Pusher base: <serving_dir>/<model name>/<version>/
    min_auc: float = 0.5              # absolute Evaluator threshold
    max_auc_drop: float = 0.0         # vs last blessed model
    max_gauc_drop: float = 0.0        # vs last blessed model (per-user AUC, the headline metric)

    def validate(self):
        self._require(is_valid_name(self.name), "name", NAME_RULE)
        self._require(0 <= self.min_auc <= 1, "min_auc", "must be in [0, 1]")
        self._require(0 <= self.max_auc_drop <= 1, "max_auc_drop", "must be in [0, 1]")
        self._require(0 <= self.max_gauc_drop <= 1, "max_gauc_drop", "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ServingConfig(ConfigBase):
    """Export and dev-server settings (docs/design.md: Export and serving)."""
    SECTION = "serving"
    model_name: str = "dmgin"
    batch_buckets: Tuple[int, ...] = (1, 8, 32, 128)
    # Candidate counts of `rank`/`score` are padded up to one of these (fixed XLA shapes).
    candidate_buckets: Tuple[int, ...] = (16, 64, 128, 512)
    max_candidates: int = 1000
    # Ports and the rest of the server are `dmgin serve` flags (docs/serving.md). Older
    # configs (every run's config.json written before) carry `port` / `metrics_port`,
    # which nothing ever read: accepted and dropped when read, refused as `--set` overrides.
    LEGACY_KEYS = ("port", "metrics_port")

    @classmethod
    def from_dict(cls, values):
        values = _mapping(cls.SECTION, values)
        return super().from_dict({k: v for k, v in values.items() if k not in cls.LEGACY_KEYS})

    def validate(self):
        self._require(is_valid_name(self.model_name), "model_name", NAME_RULE)
        self._require(len(self.batch_buckets) > 0 and all(b >= 1 for b in self.batch_buckets),
                      "batch_buckets", "must be a non-empty list of positive sizes")
        self._require(len(self.candidate_buckets) > 0 and all(b >= 1 for b in self.candidate_buckets),
                      "candidate_buckets", "must be a non-empty list of positive sizes")
        for f in ("batch_buckets", "candidate_buckets"):
            self._require(list(getattr(self, f)) == sorted(set(getattr(self, f))), f,
                          "must be strictly increasing")
        self._require(1 <= self.max_candidates <= 1_000_000, "max_candidates",
                      "must be in [1, 1000000]")
        self._require(max(self.candidate_buckets) <= self.max_candidates, "candidate_buckets",
                      f"the largest bucket must be <= max_candidates={self.max_candidates}")
        self._require(max(self.batch_buckets) <= 1_000_000, "batch_buckets", "must be <= 1000000")


SECTIONS = {c.SECTION: c for c in (DataConfig, GroupingConfig, ModelConfig, TrainConfig,
                                     BeamConfig, PipelineConfig, ServingConfig)}


@dataclasses.dataclass(frozen=True)
class Config:
    """All sections together."""
    data: DataConfig = DataConfig()
    grouping: GroupingConfig = GroupingConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    beam: BeamConfig = BeamConfig()
    pipeline: PipelineConfig = PipelineConfig()
    serving: ServingConfig = ServingConfig()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "Config":
        values = _mapping("config", values)
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(SECTIONS)}")
        return cls(**{name: SECTIONS[name].from_dict(values.get(name)) for name in SECTIONS})

    def to_dict(self) -> dict:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def apply_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """Overrides like {"model.max_groups": 32}; None values are ignored."""
        merged = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            if "." not in dotted:
                raise ConfigError(f"override {dotted!r} must be section.field")
            section, field = dotted.split(".", 1)
            if section not in merged:
                raise ConfigError(f"override {dotted!r}: unknown section {section!r}")
            if section == ServingConfig.SECTION and field in ServingConfig.LEGACY_KEYS:
                raise ConfigError(f"override {dotted!r}: not a config setting; the server's "
                                  f"ports are `dmgin serve --port / --rest-metrics-port`")
            merged[section][field] = value
        return Config.from_dict(merged)


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Loads a YAML/JSON config file (or defaults when `path` is None) and applies overrides."""
    values: dict = {}
    if path:
        values = read_config_file(path)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    cfg = Config.from_dict(values)
    return cfg.apply_overrides(overrides or {})


def read_config_file(path) -> Any:
    """Parses a YAML/JSON config file; every problem (missing, a directory, not UTF-8,
    syntax, a key given twice) is a one-line ConfigError naming the file."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    if str(path).endswith(".json"):
        def no_duplicates(pairs):
            seen = {}
            for k, v in pairs:
                if k in seen:
                    raise ConfigError(f"{path}: key {k!r} appears twice in one object")
                seen[k] = v
            return seen
        try:
            return json.loads(text, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                              f"{e.msg}") from None
    import yaml

    class _UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise ConfigError(f"{path}: the {type(key).__name__} key on line "
                                  f"{key_node.start_mark.line + 1} is not a field name")
            if key in keys:
                raise ConfigError(f"{path}: key {key!r} appears twice in one mapping "
                                  f"(line {key_node.start_mark.line + 1})")
            keys.add(key)
        return loader.construct_mapping(node, deep=deep)

    _UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                     construct_mapping)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
