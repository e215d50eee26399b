"""Per-user example building under the fixed evaluation protocol (docs/design.md: Evaluation protocol).

One function, `build_user_examples`, turns one user's time-sorted behaviors into labelled
examples; every builder calls it (the in-process numpy builder `build_example_set` below
and the Beam builder in `transform/`), so all runners produce identical examples.

The protocol, exactly:

- Labelled events (behaviors in `spec.labelled_behaviors`) are taken in (timestamp, file
  order). A user with fewer than `min_events_for_test` labelled events is train only.
  Otherwise the last `n_test = max(1, floor(test_fraction * n))` events are test, and of
  the remaining `n_train` events the last `floor(val_fraction * n_train)` are validation.
  Split codes: train 0, val 1, test 2. A sampled negative takes its event's split.
- An example's history is every behavior of the user (labelled or not) with timestamp
  STRICTLY before the example's timestamp: `hist_end` = number of the user's behaviors
  with `timestamp < t`, so the history is `behaviors[hist_end - max_history : hist_end]`
  (newest `max_history` kept; the cut happens when tensors are made, `batches.densify`).
  Behaviors at the same second as the example — including the event itself and exact
  duplicates — are never in its history.
- Label = 1 if the event's behavior is in `spec.positive_behaviors`, else 0.
- Sampled negatives (`spec.sample_negatives`, Taobao): `negatives_per_positive` per
  labelled event, same user / timestamp / history / split, label 0, item drawn uniformly
  from the item universe (catalog order) excluding every item the user ever touched.
  Draws come from a per-user stream fixed by (seed, user_id), see `sample_negative_items`,
  so the result does not depend on runner, worker, process or user order.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zipfile
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from dmgin_tf.config import DataConfig
from dmgin_tf.data.datasets import DatasetSpec
from dmgin_tf.data.item_index import ItemIndex, stable_hash64
from dmgin_tf.errors import DataError
from dmgin_tf.features import BEHAVIOR, ITEM_ID, NUM_RESERVED_IDS, OOV_ID, TIMESTAMP, USER_ID

if TYPE_CHECKING:  # pandas is imported where used: loading/batching needs numpy only
    import pandas as pd

SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
FORMAT_VERSION = 1
ARRAYS_FILE = "examples.npz"
META_FILE = "examples.json"

# Below this fraction of allowed (untouched) items, rejection sampling would need many
# draws per negative; the sampler then indexes the explicit allowed list instead.
_MIN_ACCEPT_RATE = 0.05


def split_code(split: Union[int, str]) -> int:
    """'train'/'val'/'test' (or the code itself) -> 0/1/2; DataError otherwise."""
    if isinstance(split, str):
        if split not in SPLIT_NAMES:
            raise DataError(f"unknown split {split!r}; known: {list(SPLIT_NAMES)}")
        return SPLIT_NAMES.index(split)
    if split not in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST):
        raise DataError(f"unknown split code {split!r}; known: 0 (train), 1 (val), 2 (test)")
    return int(split)


def _floor_fraction(n: int, fraction: float) -> int:
    # The epsilon keeps e.g. 0.7 * 10 = 6.999... from flooring to 6.
    return int(math.floor(n * fraction + 1e-9))


def split_sizes(num_labelled: int, cfg: DataConfig) -> "tuple[int, int, int]":
    """(n_train, n_val, n_test) for a user with `num_labelled` labelled events."""
    n = int(num_labelled)
    if n < cfg.min_events_for_test:
        return n, 0, 0
    n_test = min(n, max(1, _floor_fraction(n, cfg.test_fraction)))
    rest = n - n_test
    n_val = _floor_fraction(rest, cfg.val_fraction)
    return rest - n_val, n_val, n_test


def assign_splits(num_labelled: int, cfg: DataConfig) -> np.ndarray:
    """Split code per labelled event in time order: int8 [num_labelled] of 0/1/2."""
    n_train, n_val, n_test = split_sizes(num_labelled, cfg)
    return np.repeat(np.array([SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST], dtype=np.int8),
                     [n_train, n_val, n_test])


class ItemUniverse:
    """The items negatives are drawn from, in a fixed order (the catalog order).

    Every builder must use the same ids in the same order (`ItemIndex.item_ids`) for
    negatives to agree. Build it once and reuse it: construction is O(N).
    """

    def __init__(self, item_ids: Sequence[str]):
        import pandas as pd
        self.ids = np.asarray(item_ids, dtype=object)
        self._index = pd.Index(self.ids)

    @classmethod
    def of(cls, universe) -> "ItemUniverse":
        if isinstance(universe, ItemUniverse):
            return universe
        if isinstance(universe, ItemIndex):
            return cls(universe.item_ids)
        return cls(universe)

    def __len__(self):
        return len(self.ids)

    def positions(self, item_ids) -> np.ndarray:
        """Positions of `item_ids` in the universe (int64, -1 when absent)."""
        return self._index.get_indexer(np.asarray(item_ids, dtype=object))


def user_bit_generator(seed: int, user_id: str) -> np.random.PCG64:
    """The per-user random stream: PCG64 seeded with blake2b-64 of f"{seed}:{user_id}".

    Stable across processes and machines (no Python `hash()`); PCG64's raw output is
    covered by numpy's stream-compatibility policy.
    """
    return np.random.PCG64(stable_hash64(f"{int(seed)}:{user_id}"))


def sample_negative_items(user_id: str, touched_items, item_universe, count: int,
                          seed: int) -> np.ndarray:
    """Draws `count` items uniformly from the universe minus the user's touched items.

    Algorithm (reproducible outside this code): x_1, x_2, ... = raw uint64 outputs of
    `user_bit_generator(seed, user_id)`; candidate i is `universe[x_i mod N]` (exact
    unsigned 64-bit modulo — not via float64, which loses the low bits); it is kept
    unless the user touched it; the first `count` kept candidates are returned (with
    replacement across draws). If fewer than 5% of the universe is allowed, candidate i is
    `allowed[x_i mod len(allowed)]` (allowed = untouched items in universe order) instead,
    so sampling stays fast for users who touched almost everything.

    Returns: object [count] of item ids; empty when no item is allowed.
    """
    universe = ItemUniverse.of(item_universe)
    n = len(universe)
    if count <= 0 or n == 0:
        return np.empty(0, dtype=object)
    touched_pos = np.unique(universe.positions(np.unique(np.asarray(touched_items, dtype=object))))
    touched_pos = touched_pos[touched_pos >= 0]
    allowed_n = n - len(touched_pos)
    if allowed_n <= 0:
        return np.empty(0, dtype=object)
    bitgen = user_bit_generator(seed, user_id)
    if allowed_n < _MIN_ACCEPT_RATE * n:
        allowed = np.setdiff1d(np.arange(n), touched_pos, assume_unique=True)
        raw = bitgen.random_raw(count)
        return universe.ids[allowed[(raw % np.uint64(allowed_n)).astype(np.int64)]]
    out = []
    need = count
    while need > 0:
        # Chunking does not change the result: kept candidates are the stream's prefix.
        chunk = max(64, int(need * n / allowed_n * 1.25) + 8)
        cand = (bitgen.random_raw(chunk) % np.uint64(n)).astype(np.int64)
        cand = cand[~np.isin(cand, touched_pos, assume_unique=False)][:need]
        out.append(cand)
        need -= len(cand)
    return universe.ids[np.concatenate(out)]


@dataclasses.dataclass
class UserExamples:
    """The examples of one user, in event order (each positive followed by its negatives).

    Arrays are [E]: `cand_item` object (item id str), `label` int8 (0/1), `timestamp`
    int64 (request time), `split` int8 (0 train / 1 val / 2 test), `hist_end` int64 (the
    example's history is the user's sorted behaviors `[max(0, hist_end - max_history),
    hist_end)`), `event` int64 (index of the source labelled event in the user's arrays).
    """
    user_id: str
    cand_item: np.ndarray
    label: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray
    hist_end: np.ndarray
    event: np.ndarray
    num_labelled: int = 0
    negatives_missing: int = 0   # negatives wanted but impossible (user touched everything)

    def __len__(self) -> int:
        return len(self.label)

    def history_start(self, max_history: int) -> np.ndarray:
        """First history index per example when the newest `max_history` are kept: [E]."""
        return np.maximum(self.hist_end - int(max_history), 0)


def _behavior_ids(behaviors, spec: DatasetSpec) -> np.ndarray:
    arr = np.asarray(behaviors)
    if arr.dtype.kind in "iu":
        bad = (arr < 1) | (arr > spec.num_behavior_types)
        if bad.any():
            raise DataError(f"dataset {spec.name!r}: behavior id {arr[bad][0]} out of range "
                            f"1..{spec.num_behavior_types}")
        return arr.astype(np.int64)
    import pandas as pd
    codes = pd.Categorical(arr.astype(object), categories=list(spec.behavior_types)).codes
    if (codes < 0).any():
        unknown = sorted({str(b) for b in arr[codes < 0]})[:5]
        raise DataError(f"dataset {spec.name!r}: unknown behavior(s) {unknown}; known: "
                        f"{list(spec.behavior_types)}")
    return codes.astype(np.int64) + 1


def build_user_examples(user_id: str, items, behaviors, timestamps, spec: DatasetSpec, *,
                        item_universe=None, seed: int = 0,
                        cfg: Optional[DataConfig] = None) -> UserExamples:
    """Labelled examples of one user (the protocol in the module docstring).

    Args:
      user_id: the user's id (seeds the negative sampler).
      items: [n] item id strings of all the user's behaviors.
      behaviors: [n] behavior strings (or behavior ids 1..T of `spec`).
      timestamps: [n] int64 seconds; the three arrays sorted by (timestamp, file order).
      spec: the dataset spec.
      item_universe: `ItemUniverse` / `ItemIndex` / sequence of item ids for negatives
        (required when `spec.sample_negatives`; pass one `ItemUniverse` for many users).
      seed: negative sampling seed (DataConfig.seed).
      cfg: DataConfig for the split fractions (defaults when None).

    Returns: `UserExamples`.
    """
    cfg = cfg or DataConfig()
    items = np.asarray(items, dtype=object)
    ts = np.asarray(timestamps)
    if ts.dtype.kind not in "iu":
        raise DataError(f"user {user_id!r}: timestamps must be integers, got dtype {ts.dtype}")
    ts = ts.astype(np.int64)
    if not (len(items) == len(ts) == len(behaviors)):
        raise DataError(f"user {user_id!r}: items/behaviors/timestamps lengths differ "
                        f"({len(items)}, {len(behaviors)}, {len(ts)})")
    if len(ts) > 1 and (np.diff(ts) < 0).any():
        i = int(np.flatnonzero(np.diff(ts) < 0)[0])
        raise DataError(f"user {user_id!r}: behaviors not sorted by timestamp (position {i + 1}: "
                        f"{ts[i + 1]} after {ts[i]})")
    beh = _behavior_ids(behaviors, spec)
    labelled = np.asarray(spec.id_table("labelled"))[beh]
    positive = np.asarray(spec.id_table("positive"))[beh]
    event = np.flatnonzero(labelled)
    n = len(event)
    split = assign_splits(n, cfg)
    t = ts[event]
    hist_end = np.searchsorted(ts, t, side="left").astype(np.int64)
    label = positive[event].astype(np.int8)
    cand = items[event]

    k = spec.negatives_per_positive if spec.sample_negatives else 0
    missing = 0
    if k and n:
        if item_universe is None:
            raise DataError(f"dataset {spec.name!r} samples negatives: pass item_universe")
        neg = sample_negative_items(user_id, items, item_universe, n * k, seed)
        if len(neg) < n * k:
            missing, k = n * k, 0   # nothing left to sample: this user gets no negatives
        else:
            # Row r of [n, 1 + k]: the event, then its k negatives.
            rep = lambda a: np.repeat(a, 1 + k)  # noqa: E731
            slot = np.tile(np.arange(1 + k), n)
            cand_all = rep(cand)
            cand_all[slot > 0] = neg
            return UserExamples(str(user_id), cand_all, np.where(slot > 0, 0, rep(label)).astype(np.int8),
                                rep(t), rep(split), rep(hist_end), rep(event).astype(np.int64),
                                num_labelled=n)
    return UserExamples(str(user_id), cand, label, t, split, hist_end, event.astype(np.int64),
                        num_labelled=n, negatives_missing=missing)


# ---------------------------------------------------------------------------------------
# ExampleSet: all users' examples in compact numpy form (the TF-free training format)
# ---------------------------------------------------------------------------------------
_BEH_ARRAYS = ("beh_item", "beh_group", "beh_behavior", "beh_time")
_EX_ARRAYS = ("ex_user", "ex_hist_end", "ex_cand_item", "ex_cand_group", "ex_request_time",
              "ex_label", "ex_split")


@dataclasses.dataclass
class ExampleSet:
    """Examples as flat numpy arrays; histories are slices of per-user behavior arrays.

    Per user u (U users): behaviors `user_offsets[u] : user_offsets[u + 1]` of the flat
    behavior arrays, sorted by (timestamp, file order).
      user_ids [U] str, user_offsets [U + 1] int64,
      beh_item / beh_group / beh_behavior [N] int32 (item idx, group id, behavior id 1..T),
      beh_time [N] int64.
    Per example (E examples):
      ex_user [E] int32 (user index), ex_hist_end [E] int32 (relative to the user's first
      behavior; history = the user's behaviors before it), ex_cand_item / ex_cand_group
      [E] int32, ex_request_time [E] int64, ex_label [E] float32, ex_split [E] int8.
    `metadata`: spec, vocabulary sizes, max_history, counts (see `build_example_set`).
    """
    user_ids: np.ndarray
    user_offsets: np.ndarray
    beh_item: np.ndarray
    beh_group: np.ndarray
    beh_behavior: np.ndarray
    beh_time: np.ndarray
    ex_user: np.ndarray
    ex_hist_end: np.ndarray
    ex_cand_item: np.ndarray
    ex_cand_group: np.ndarray
    ex_request_time: np.ndarray
    ex_label: np.ndarray
    ex_split: np.ndarray
    metadata: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ex_label)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec.from_dict(self.metadata["spec"])

    @property
    def max_history(self) -> int:
        return int(self.metadata.get("max_history", 10000))

    def split_indices(self, split: Union[int, str, None]) -> np.ndarray:
        """Example indices of one split ('train'/'val'/'test' or 0/1/2; None = all): int64."""
        if split is None:
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(self.ex_split == split_code(split))

    def counts(self) -> dict:
        """{split: {examples, positives, users}} computed from the arrays."""
        out = {}
        for code, name in enumerate(SPLIT_NAMES):
            m = self.ex_split == code
            out[name] = {"examples": int(m.sum()), "positives": int(self.ex_label[m].sum()),
                         "users": int(len(np.unique(self.ex_user[m])))}
        return out

    def history_profile(self) -> dict:
        """{split: {history_mean, gap_p50_hours, gap_p90_hours}}: the mean number of
        behaviors before an example (uncapped) and percentiles of the time from the newest
        of them to the request (examples with a history). A model trains on the train
        split's profile; val / test with longer histories or longer gaps (a per-user time
        split puts the latest, longest histories in test) read features that are out of
        the training range. NaN where a split has no example (with a history)."""
        out = {}
        for code, name in enumerate(SPLIT_NAMES):
            idx = np.flatnonzero(self.ex_split == code)
            end = self.ex_hist_end[idx].astype(np.int64)
            has = end > 0
            last = self.user_offsets[self.ex_user[idx[has]]] + end[has] - 1
            gap = (self.ex_request_time[idx[has]] - self.beh_time[last]) / 3600.0
            out[name] = {
                "history_mean": float(end.mean()) if len(end) else float("nan"),
                "gap_p50_hours": float(np.percentile(gap, 50)) if len(gap) else float("nan"),
                "gap_p90_hours": float(np.percentile(gap, 90)) if len(gap) else float("nan")}
        return out

    def validate(self) -> None:
        """Checks shapes, integer dtypes and the no-leakage invariant; DataError on violation."""
        U, N = len(self.user_ids), len(self.beh_item)
        if self.user_offsets.shape != (U + 1,) or self.user_offsets[0] != 0 \
                or self.user_offsets[-1] != N or (np.diff(self.user_offsets) < 0).any():
            raise DataError("example set: user_offsets inconsistent with behavior arrays")
        for name in _BEH_ARRAYS:
            if len(getattr(self, name)) != N:
                raise DataError(f"example set: {name} has {len(getattr(self, name))} rows, expected {N}")
        E = len(self.ex_label)
        for name in _EX_ARRAYS:
            if len(getattr(self, name)) != E:
                raise DataError(f"example set: {name} has {len(getattr(self, name))} rows, expected {E}")
        # Ids, positions and times index and compare exactly: a float array (e.g. an
        # examples.npz written by other code) would round ids and times silently.
        for name in ("user_offsets",) + _BEH_ARRAYS + _EX_ARRAYS:
            dtype = getattr(self, name).dtype
            if name != "ex_label" and not np.issubdtype(dtype, np.integer):
                raise DataError(f"example set: {name} has dtype {dtype}, expected integers")
        if E:
            start = self.user_offsets[self.ex_user]
            size = self.user_offsets[self.ex_user + 1] - start
            if (self.ex_hist_end < 0).any() or (self.ex_hist_end > size).any():
                raise DataError("example set: ex_hist_end outside the user's behaviors")
            last = start + self.ex_hist_end - 1
            has = self.ex_hist_end > 0
            if (self.beh_time[last[has]] >= self.ex_request_time[has]).any():
                raise DataError("example set: a history behavior is not before its example")

    # ---- persistence -------------------------------------------------------------------
    def save(self, directory: Union[str, os.PathLike]) -> str:
        """Writes `examples.npz` (arrays, uncompressed for fast loads) + `examples.json`."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        arrays = {name: getattr(self, name) for name in ("user_offsets",) + _BEH_ARRAYS + _EX_ARRAYS}
        arrays["user_ids"] = np.asarray(self.user_ids, dtype=str)  # unicode, no pickle needed
        np.savez(os.path.join(directory, ARRAYS_FILE), **arrays)
        with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
            json.dump(self.metadata, f, indent=1, sort_keys=True)
        return directory

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "ExampleSet":
        """Reads what `save` wrote (numpy + json only; no TensorFlow needed)."""
        directory = os.fspath(directory)
        path = os.path.join(directory, ARRAYS_FILE)
        if not os.path.exists(path):
            raise DataError(f"{directory}: no {ARRAYS_FILE}; build it with `dmgin examples build`")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a readable example set ({type(e).__name__}: {e}); "
                            f"a truncated copy? Copy it again or rebuild it with "
                            f"`dmgin examples build`") from None
        meta_path = os.path.join(directory, META_FILE)
        metadata = {}
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                metadata = json.load(f)
        if metadata.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise DataError(f"{directory}: example set format {metadata['format_version']} is newer "
                            f"than this code ({FORMAT_VERSION})")
        missing = [k for k in ("user_ids", "user_offsets") + _BEH_ARRAYS + _EX_ARRAYS if k not in arrays]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}")
        es = cls(metadata=metadata, **arrays)
        es.validate()
        return es


def build_example_set(behaviors_df: pd.DataFrame, items_df: Optional[pd.DataFrame],
                      spec: DatasetSpec, item_index: Optional[ItemIndex] = None,
                      data_cfg: Optional[DataConfig] = None, progress: bool = True) -> ExampleSet:
    """Builds every user's examples in process (numpy); the reference builder.

    Args:
      behaviors_df: canonical behaviors (user_id, item_id, behavior, timestamp). Rows are
        stably re-sorted by (user_id, timestamp), so file order breaks timestamp ties.
      items_df: canonical items; used to build an item_id-grouped `ItemIndex` when
        `item_index` is None.
      spec: dataset spec.
      item_index: item idx / group lookup; its catalog is also the negatives' universe.
      data_cfg: DataConfig (split fractions, max_history, seed).
      progress: show a tqdm bar over users.
    """
    import pandas as pd
    t0 = time.perf_counter()
    cfg = data_cfg or DataConfig()
    missing = [c for c in (USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP) if c not in behaviors_df.columns]
    if missing:
        raise DataError(f"behaviors table: missing column(s) {missing}; columns: "
                        f"{list(behaviors_df.columns)}")
    if item_index is None:
        if items_df is None:
            raise DataError("build_example_set: pass items_df or item_index")
        item_index = ItemIndex.build(items_df, "item_id")
    ts = behaviors_df[TIMESTAMP]
    if ts.isna().any() or ts.dtype.kind not in "iu":
        raise DataError(f"behaviors table: {TIMESTAMP} must be non-null integers (dtype {ts.dtype})")
    user_codes, user_ids = pd.factorize(behaviors_df[USER_ID].astype(str), sort=True)
    ts = ts.to_numpy(dtype=np.int64)
    order = np.lexsort((ts, user_codes))  # stable: file order breaks ties
    user_codes, ts = user_codes[order], ts[order]
    item_str = behaviors_df[ITEM_ID].astype(str).to_numpy(dtype=object)[order]
    beh_id = _behavior_ids(behaviors_df[BEHAVIOR].to_numpy(dtype=object)[order], spec)
    beh_item = item_index.lookup(item_str)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_codes, minlength=len(user_ids)))])
    universe = ItemUniverse(item_index.item_ids) if spec.sample_negatives else None

    parts = []
    users = range(len(user_ids))
    if progress:
        from tqdm.auto import tqdm
        users = tqdm(users, desc=f"examples ({spec.name})", unit="user", mininterval=1.0,
                     disable=None)     # None: no bar when stderr is not a terminal (a log file)
    missing_neg_users = 0
    for u in users:
        s, e = offsets[u], offsets[u + 1]
        ue = build_user_examples(user_ids[u], item_str[s:e], beh_id[s:e], ts[s:e], spec,
                                 item_universe=universe, seed=cfg.seed, cfg=cfg)
        missing_neg_users += ue.negatives_missing > 0
        parts.append((u, ue))

    def cat(attr, dtype):
        if not parts:
            return np.empty(0, dtype=dtype)
        return np.concatenate([getattr(ue, attr) for _, ue in parts]).astype(dtype)

    ex_user = (np.concatenate([np.full(len(ue), u, np.int32) for u, ue in parts])
               if parts else np.empty(0, np.int32))
    cand_str = cat("cand_item", object)
    cand_item = item_index.lookup(cand_str)
    es = ExampleSet(
        user_ids=np.asarray(user_ids, dtype=str), user_offsets=offsets.astype(np.int64),
        beh_item=beh_item.astype(np.int32), beh_group=item_index.groups_of(beh_item).astype(np.int32),
        beh_behavior=beh_id.astype(np.int32), beh_time=ts,
        ex_user=ex_user, ex_hist_end=cat("hist_end", np.int32),
        ex_cand_item=cand_item.astype(np.int32),
        ex_cand_group=item_index.groups_of(cand_item).astype(np.int32),
        ex_request_time=cat("timestamp", np.int64), ex_label=cat("label", np.float32),
        ex_split=cat("split", np.int8))
    n_lab = np.array([ue.num_labelled for _, ue in parts], dtype=np.int64)
    if spec.sample_negatives and len(es) and not (es.ex_label == 0).any():
        # Every label 1: a model would learn a constant (the catalog is empty, or every
        # user touched all of its items).
        raise DataError(f"no negative could be sampled for any of {int((n_lab > 0).sum())} "
                        f"users: the item catalog has {len(item_index.item_ids)} item(s) and "
                        f"negatives are drawn from the items a user never touched")
    es.metadata = {
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "item_vocab_size": item_index.item_vocab_size,
        "group_vocab_size": item_index.group_vocab_size,
        "behavior_vocab_size": spec.behavior_vocab_size,
        "num_behavior_types": spec.num_behavior_types,
        "grouping_key": item_index.grouping_key,
        "max_history": cfg.max_history,
        "data_config": cfg.to_dict(),
        "num_users": int(len(user_ids)),
        "num_behaviors": int(len(ts)),
        "num_examples": int(len(es)),
        "users_train_only": int((n_lab < cfg.min_events_for_test).sum()),
        "users_without_labelled_events": int((n_lab == 0).sum()),
        "users_without_negatives": int(missing_neg_users),
        "history_oov_behaviors": int((beh_item == OOV_ID).sum()),
        "candidate_oov_examples": int((cand_item == OOV_ID).sum()),
        "history_length": _percentiles(es),
        "counts": es.counts(),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    return es


def _percentiles(es: ExampleSet) -> dict:
    """Full (untruncated) history length per example: mean / p50 / p90 / p99 / max."""
    if not len(es):
        return {}
    h = es.ex_hist_end.astype(np.float64)
    p = np.percentile(h, [50, 90, 99])
    return {"mean": round(float(h.mean()), 2), "p50": float(p[0]), "p90": float(p[1]),
            "p99": float(p[2]), "max": int(h.max())}


assert NUM_RESERVED_IDS == 2


def group_table_note(metadata: dict) -> Optional[str]:
    """A line for the catalog items a group table leaves out (they share the unknown
    group, so a table that misses most of the catalog groups almost nothing)."""
    info = metadata.get("grouping_info") or {}
    missing = int(info.get("catalog_items_without_group", 0))
    if metadata.get("grouping_key") != "table" or not missing:
        return None
    total = max(int(metadata.get("item_vocab_size", 0)) - NUM_RESERVED_IDS, missing)
    return (f"note: the group table leaves {missing:,} of {total:,} catalog items "
            f"({100 * missing / total:.1f}%) without a group; they share the unknown group")


def build_from_canonical(data_dir: Union[str, os.PathLike], output_dir: Union[str, os.PathLike],
                         data_cfg: Optional[DataConfig] = None, *, grouping_key: str = "item_id",
                         group_table=None, num_groups: int = 0, grouping_seed: int = 0,
                         progress: bool = True) -> ExampleSet:
    """Converted data directory -> ExampleSet + item index written to `output_dir`.

    Reads `behaviors.parquet` and `items.parquet` (converter output, docs/internals.md),
    builds the `ItemIndex` for `grouping_key` and the examples for `data_cfg.dataset`,
    and writes `examples.npz`, `examples.json` and `item_index.parquet`.
    """
    import pandas as pd
    from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE
    from dmgin_tf.data.converted import check_converted
    from dmgin_tf.data.datasets import data_behavior_types, get_spec
    cfg = data_cfg or DataConfig()
    data_dir = os.fspath(data_dir)
    paths = {name: os.path.join(data_dir, name) for name in (BEHAVIORS_FILE, ITEMS_FILE)}
    check_converted(data_dir, cfg.dataset)
    behaviors = pd.read_parquet(paths[BEHAVIORS_FILE], columns=[USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP])
    items = pd.read_parquet(paths[ITEMS_FILE])
    spec = get_spec(cfg.dataset, cfg, observed_behaviors=data_behavior_types(
        data_dir, behaviors[BEHAVIOR].unique()))
    spec.require_both_labels()
    index = ItemIndex.build(items, grouping_key, num_groups=num_groups, seed=grouping_seed,
                            group_table=group_table)
    es = build_example_set(behaviors, items, spec, index, cfg, progress=progress)
    es.metadata["source"] = os.path.abspath(data_dir)
    es.metadata["grouping_info"] = {k: v for k, v in index.info.items()
                                    if isinstance(v, (int, float, str))}
    es.save(output_dir)
    index.save(output_dir)
    return es
