"""Dataset specs: which behaviors exist, which are labelled, which are positive.

A `DatasetSpec` is the only place that knows what a dataset's behavior strings mean
(docs/design.md: Evaluation protocol). Example building, batching and the model read behavior ids from it:
id 0 is padding and behavior type `behavior_types[i]` has id `i + 1`.

    >>> spec = get_spec("movielens")
    >>> spec.behavior_id("high"), spec.is_positive("high"), spec.is_labelled("tag")
    (3, True, False)
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Tuple

from dmgin_tf.config import DataConfig
from dmgin_tf.errors import DataError
from dmgin_tf.features import PAD_ID


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the behaviors of one dataset mean for example building.

    Attributes:
      name: dataset name (taobao | movielens | generic).
      behavior_types: the behavior vocabulary; type `behavior_types[i]` has id `i + 1`,
        id 0 is padding.
      labelled_behaviors: behaviors that become training examples (others are history only).
      positive_behaviors: labelled behaviors whose example gets label 1 (others label 0).
      sample_negatives: whether each labelled event also gets sampled negatives (data
        without impressions, e.g. Taobao).
      negatives_per_positive: sampled negatives per labelled event when `sample_negatives`.
    """
    name: str
    behavior_types: Tuple[str, ...]
    labelled_behaviors: Tuple[str, ...]
    positive_behaviors: Tuple[str, ...]
    sample_negatives: bool = False
    negatives_per_positive: int = 0

    def __post_init__(self):
        if not self.behavior_types:
            raise DataError(f"dataset {self.name!r}: behavior_types is empty")
        if len(set(self.behavior_types)) != len(self.behavior_types):
            raise DataError(f"dataset {self.name!r}: duplicate behavior_types {self.behavior_types}")
        for field in ("labelled_behaviors", "positive_behaviors"):
            unknown = [b for b in getattr(self, field) if b not in self.behavior_types]
            if unknown:
                raise DataError(f"dataset {self.name!r}: {field} {unknown} not in "
                                f"behavior_types {list(self.behavior_types)}")
        if not self.labelled_behaviors:
            raise DataError(f"dataset {self.name!r}: labelled_behaviors is empty")
        not_labelled = [b for b in self.positive_behaviors if b not in self.labelled_behaviors]
        if not_labelled:
            raise DataError(f"dataset {self.name!r}: positive_behaviors {not_labelled} are not "
                            f"labelled_behaviors {list(self.labelled_behaviors)}")
        if self.negatives_per_positive < 0:
            raise DataError(f"dataset {self.name!r}: negatives_per_positive="
                            f"{self.negatives_per_positive} must be >= 0")
        if self.sample_negatives and self.negatives_per_positive < 1:
            raise DataError(f"dataset {self.name!r}: sample_negatives needs "
                            f"negatives_per_positive >= 1, got {self.negatives_per_positive}")

    def require_both_labels(self) -> None:
        """Refuses a labelling rule under which every example gets the same label.

        Without sampled negatives, the labels come only from `positive_behaviors`: when
        they are all the labelled behaviors (the generic default), every example is
        positive and the model learns nothing while AUC is undefined. Example builders
        call this; the protocol functions themselves accept any spec.

        Raises:
          DataError: naming the `data.*` settings to change.
        """
        if self.sample_negatives or set(self.labelled_behaviors) - set(self.positive_behaviors):
            return
        if self.name == "generic":
            fix = ("Name the behaviors that count as positive (e.g. --set "
                   "data.positive_behaviors=buy; data.labelled_behaviors chooses which become "
                   "examples) or sample negatives (--set data.sample_negatives=true with "
                   "data.negatives_per_positive >= 1)")
        else:
            fix = (f"{self.name}'s labels are fixed and its negatives are sampled: set "
                   f"data.negatives_per_positive >= 1")
        raise DataError(
            f"dataset {self.name!r}: every example would get label 1: the positive behaviors "
            f"{list(self.positive_behaviors)} are all the labelled ones and no negatives are "
            f"sampled. {fix}")

    @property
    def num_behavior_types(self) -> int:
        """T, the number of real behavior types (ids 1..T; 0 is padding)."""
        return len(self.behavior_types)

    @property
    def behavior_vocab_size(self) -> int:
        """T + 1: size of an embedding table over behavior ids incl. padding."""
        return len(self.behavior_types) + 1

    def behavior_id(self, behavior: str) -> int:
        """Id of one behavior string (1..T); DataError naming it when unknown."""
        try:
            return self.behavior_types.index(behavior) + 1
        except ValueError:
            raise DataError(f"dataset {self.name!r}: unknown behavior {behavior!r}; "
                            f"known: {list(self.behavior_types)}") from None

    def is_labelled(self, behavior: str) -> bool:
        return behavior in self.labelled_behaviors

    def is_positive(self, behavior: str) -> bool:
        return behavior in self.positive_behaviors

    def id_table(self, which: str) -> "list[bool]":
        """Boolean table indexed by behavior id (0..T) for `labelled` or `positive`."""
        members = {"labelled": self.labelled_behaviors, "positive": self.positive_behaviors}[which]
        return [False] + [b in members for b in self.behavior_types]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        return cls(name=d["name"], behavior_types=tuple(d["behavior_types"]),
                   labelled_behaviors=tuple(d["labelled_behaviors"]),
                   positive_behaviors=tuple(d["positive_behaviors"]),
                   sample_negatives=bool(d.get("sample_negatives", False)),
                   negatives_per_positive=int(d.get("negatives_per_positive", 0)))


assert PAD_ID == 0  # behavior ids are position + 1 because padding is 0

# Taobao UserBehavior: every behavior is an implicit positive for its item; the log has
# no impressions, so each gets sampled negatives (docs/design.md: Evaluation protocol).
TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")
# MovieLens: ratings bucketed by value (low <= 2.5, mid 3.0-3.5, high >= 4.0) plus tag
# applications; ratings are labelled (label = high), tags are history only.
MOVIELENS_BEHAVIORS = ("low", "mid", "high", "tag")


def get_spec(name: str, data_cfg: Optional[DataConfig] = None,
             observed_behaviors: Optional[Iterable[str]] = None) -> DatasetSpec:
    """The spec of a dataset by name.

    Args:
      name: taobao | movielens | generic.
      data_cfg: `DataConfig`; supplies `negatives_per_positive` and, for `generic`, the
        behavior vocabulary (`behavior_types`, `labelled_behaviors`, `positive_behaviors`,
        `sample_negatives`).
      observed_behaviors: for `generic` without `data.behavior_types`: the data's
        behavior vocabulary in id order (`data_behavior_types`); duplicates are dropped.
    """
    cfg = data_cfg or DataConfig()
    if name in ("taobao", "movielens"):
        # The labelling keys describe generic data; these datasets fix their own rule.
        ignored = [f"data.{k}" for k in ("behavior_types", "labelled_behaviors",
                                         "positive_behaviors", "sample_negatives")
                   if getattr(cfg, k, None)]
        if ignored:
            raise DataError(f"dataset {name!r} has fixed behavior types and labels "
                            f"(docs/data.md); {', '.join(ignored)} apply to --dataset generic "
                            f"only: drop them")
    if name == "taobao":
        return DatasetSpec("taobao", TAOBAO_BEHAVIORS, TAOBAO_BEHAVIORS, TAOBAO_BEHAVIORS,
                           sample_negatives=cfg.negatives_per_positive > 0,
                           negatives_per_positive=cfg.negatives_per_positive)
    if name == "movielens":
        return DatasetSpec("movielens", MOVIELENS_BEHAVIORS, ("low", "mid", "high"), ("high",),
                           sample_negatives=False, negatives_per_positive=0)
    if name == "generic":
        types = tuple(getattr(cfg, "behavior_types", ()) or ())
        if not types:
            if observed_behaviors is None:
                raise DataError("dataset 'generic': set data.behavior_types or pass the "
                                "behaviors observed in the data")
            types = tuple(dict.fromkeys(str(b) for b in observed_behaviors))
        labelled = tuple(getattr(cfg, "labelled_behaviors", ()) or ()) or types
        positive = tuple(getattr(cfg, "positive_behaviors", ()) or ()) or labelled
        sample = bool(getattr(cfg, "sample_negatives", False)) and cfg.negatives_per_positive > 0
        return DatasetSpec("generic", types, labelled, positive, sample_negatives=sample,
                           negatives_per_positive=cfg.negatives_per_positive if sample else 0)
    raise DataError(f"unknown dataset {name!r}; known: taobao, movielens, generic")


def check_converted_as(data_dir, dataset: str) -> None:
    """Refuses converted data whose conversion (`report.json`) was for another dataset:
    each dataset labels its behaviors its own way (docs/data.md), so generic data built
    as Taobao would train on Taobao's labels without a word.

    Raises:
      DataError: naming the dataset to pass.
    """
    from dmgin_tf.data.converters.report import REPORT_JSON, read_report
    try:
        converted_as = read_report(data_dir).get("dataset")
    except (OSError, ValueError):
        return      # no report (tables written by hand): nothing to check against
    if converted_as and converted_as != dataset:
        raise DataError(f"{data_dir} was converted as dataset {converted_as!r} ({REPORT_JSON}), "
                        f"this run uses dataset {dataset!r}: pass --dataset {converted_as} (or "
                        f"--set data.dataset={converted_as})")


def data_behavior_types(data_dir, observed: Optional[Iterable[str]] = None) -> Tuple[str, ...]:
    """The behavior vocabulary of converted generic data, in id order.

    What its conversion recorded (`report.json`: the converter's `--behaviors` in the
    order given, else the sorted values it found); without a report, the sorted set of
    `observed` values, or of the `behavior` column of `behaviors.parquet` when `observed`
    is None. `data.behavior_types` in the config takes precedence over all of these
    (`get_spec`); set it for retraining, so that ids stay the same when a new span adds
    a behavior.

    Raises:
      DataError: `data_dir` holds neither a conversion report nor behaviors.
    """
    import os
    from dmgin_tf.data.converters.report import REPORT_JSON, read_report
    from dmgin_tf.data.converters.tables import BEHAVIORS_FILE
    from dmgin_tf.features import BEHAVIOR
    if os.path.exists(os.path.join(os.fspath(data_dir), REPORT_JSON)):
        recorded = (read_report(data_dir).get("info") or {}).get("behavior_types")
        if recorded:
            return tuple(str(b) for b in recorded)
    if observed is None:
        path = os.path.join(os.fspath(data_dir), BEHAVIORS_FILE)
        if not os.path.exists(path):
            raise DataError(f"{data_dir}: no {REPORT_JSON} or {BEHAVIORS_FILE} to read the "
                            f"behavior types from; set data.behavior_types")
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        observed = pc.unique(pq.read_table(path, columns=[BEHAVIOR]).column(0)).to_pylist()
    return tuple(sorted({str(b) for b in observed}))
