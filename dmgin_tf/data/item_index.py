"""Item index: item id string -> item idx, and item -> interest group id.

Ids (docs/internals.md): items 0 = padding, 1 = unknown (OOV), 2.. = catalog order;
groups 0 = padding, 1 = unknown, 2.. = groups of the chosen grouping key:

- `item_id`: every item is its own group (group id = item idx; DGIN's grouping).
- `category`: one group per distinct non-empty category, in sorted category order
  (independent of catalog row order); items without a category -> group 1.
- `random`: K groups by a stable hash of (seed, item id) — an ablation baseline; the same
  item lands in the same group in every run and on every machine.
- `table` (alias `cluster`): an item -> group table (columns `item_id`, `group_id`, with
  group_id the cluster number 0..K-1) from the k-means stage in `transform/`; model group
  id = group_id + 2. Catalog items missing from the table -> group 1.

    >>> import pandas as pd
    >>> idx = ItemIndex.build(pd.DataFrame({"item_id": ["a", "b"], "category": ["x", "x"]}),
    ...                       "category")
    >>> idx.lookup(["b", "zzz"]).tolist(), idx.groups_of(idx.lookup(["a", "b"])).tolist()
    ([3, 1], [2, 2])
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from dmgin_tf.errors import DataError
from dmgin_tf.features import CATEGORY, ITEM_ID, NUM_RESERVED_IDS, OOV_ID, PAD_ID

if TYPE_CHECKING:  # pandas is imported where used: loading/batching needs numpy only
    import pandas as pd

GROUP_ID = "group_id"    # column of the k-means item -> group table
ITEM_IDX = "item_idx"    # column of item_index.parquet
GROUPING_KEYS = ("item_id", "category", "random", "table", "cluster")
_META_KEY = b"dmgin_item_index"
FILE_NAME = "item_index.parquet"
KMEANS_GROUPS_DIR = "item_groups"   # the item -> group table `dmgin grouping fit --key cluster` writes


def stable_hash64(text: str) -> int:
    """A 64-bit hash that is the same in every process and on every machine.

    Python's `hash()` is salted per process; anything that must agree across Beam workers,
    runs or machines (random groups, negative sampling seeds) goes through this.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class ItemIndex:
    """Item id -> item idx and item idx -> group id, plus vocabulary sizes.

    Attributes:
      item_ids: [N] str, the catalog's item ids in catalog order (idx = position + 2).
      group_of_idx: [N + 2] int32, group id per item idx (entries 0/1 are PAD/OOV -> 0/1).
      grouping_key: item_id | category | random | table.
      group_vocab_size: size of a group embedding table (ids 0..group_vocab_size-1).
      info: dict of build facts (groups used, table coverage) saved with the index.
    """

    def __init__(self, item_ids: Sequence[str], group_of_idx: np.ndarray, grouping_key: str,
                 group_vocab_size: int, info: Optional[dict] = None):
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.group_of_idx = np.asarray(group_of_idx, dtype=np.int32)
        if self.group_of_idx.shape != (len(self.item_ids) + NUM_RESERVED_IDS,):
            raise DataError(f"item index: group_of_idx has shape {self.group_of_idx.shape}, "
                            f"expected ({len(self.item_ids) + NUM_RESERVED_IDS},)")
        self.grouping_key = grouping_key
        self.group_vocab_size = int(group_vocab_size)
        self.info = dict(info or {})
        import pandas as pd
        self._index = pd.Index(self.item_ids)
        if not self._index.is_unique:
            dup = self._index[self._index.duplicated()][:5].tolist()
            raise DataError(f"item index: duplicate item_id values, e.g. {dup}")

    # ---- sizes -------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_vocab_size(self) -> int:
        """N + 2: size of an item embedding table incl. PAD and OOV."""
        return len(self.item_ids) + NUM_RESERVED_IDS

    # ---- lookups -----------------------------------------------------------------------
    def lookup(self, ids) -> np.ndarray:
        """Item id strings [...] -> item idx int32 [...] (unknown ids -> OOV_ID = 1)."""
        arr = np.asarray(ids, dtype=object)
        pos = self._index.get_indexer(arr.ravel())
        out = np.where(pos >= 0, pos + NUM_RESERVED_IDS, OOV_ID).astype(np.int32)
        return out.reshape(arr.shape)

    def groups_of(self, item_idx) -> np.ndarray:
        """Item idx int [...] -> group id int32 [...] (PAD -> 0, OOV -> 1)."""
        return self.group_of_idx[np.asarray(item_idx)]

    def lookup_groups(self, ids) -> np.ndarray:
        """Item id strings [...] -> group id int32 [...]."""
        return self.groups_of(self.lookup(ids))

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def build(cls, items: pd.DataFrame, grouping_key: str = "item_id", *,
              num_groups: int = 0, seed: int = 0,
              group_table: Union[None, str, os.PathLike, pd.DataFrame] = None) -> "ItemIndex":
        """Builds the index from the canonical items table.

        Args:
          items: DataFrame with column `item_id` (+ `category` for grouping_key=category);
            one row per item, catalog order defines item idx.
          grouping_key: item_id | category | random | table (cluster = table).
          num_groups: K for `random` (required) and, for `table`, the number of clusters
            (0 = max group_id + 1) so the vocabulary does not depend on empty clusters.
          seed: `random` grouping seed.
          group_table: `table`: DataFrame or Parquet/CSV path with `item_id`, `group_id`.
        """
        import pandas as pd
        if grouping_key not in GROUPING_KEYS:
            raise DataError(f"grouping key {grouping_key!r} is unknown; known: "
                            f"{list(GROUPING_KEYS[:-1])}")
        if ITEM_ID not in items.columns:
            raise DataError(f"items table has no {ITEM_ID!r} column; columns: {list(items.columns)}")
        item_ids = items[ITEM_ID].astype(str).to_numpy(dtype=object)
        n = len(item_ids)
        group = np.empty(n + NUM_RESERVED_IDS, dtype=np.int64)
        group[PAD_ID], group[OOV_ID] = PAD_ID, OOV_ID
        info: dict = {}
        if grouping_key == "item_id":
            group[NUM_RESERVED_IDS:] = np.arange(NUM_RESERVED_IDS, n + NUM_RESERVED_IDS)
            vocab = n + NUM_RESERVED_IDS
        elif grouping_key == "category":
            if CATEGORY not in items.columns:
                raise DataError(f"grouping key 'category' needs a {CATEGORY!r} column in the "
                                f"items table; columns: {list(items.columns)}")
            cats = items[CATEGORY].fillna("").astype(str).str.strip().to_numpy(dtype=object)
            known = cats != ""
            vocab_cats = np.unique(cats[known].astype(str))
            if n and not len(vocab_cats):
                raise DataError(f"grouping key 'category': none of the {n:,} items has a "
                                f"category (the items table's {CATEGORY!r} column is empty), so "
                                f"every item would share one group; group by another key "
                                f"(item_id, or cluster with item text) or give items a category")
            codes = np.searchsorted(vocab_cats, cats[known].astype(str))
            g = np.full(n, OOV_ID, dtype=np.int64)
            g[known] = codes + NUM_RESERVED_IDS
            group[NUM_RESERVED_IDS:] = g
            vocab = len(vocab_cats) + NUM_RESERVED_IDS
            info.update(num_categories=int(len(vocab_cats)),
                        items_without_category=int((~known).sum()))
        elif grouping_key == "random":
            if num_groups < 1:
                raise DataError(f"grouping key 'random' needs num_groups >= 1, got {num_groups}")
            h = np.fromiter((stable_hash64(f"{seed}:{i}") % num_groups for i in item_ids),
                            dtype=np.int64, count=n)
            group[NUM_RESERVED_IDS:] = h + NUM_RESERVED_IDS
            vocab = num_groups + NUM_RESERVED_IDS
            info.update(num_groups=int(num_groups), seed=int(seed))
        else:  # table / cluster
            table = _read_group_table(group_table)
            tab_idx = pd.Index(table[ITEM_ID].to_numpy(dtype=object))
            pos = tab_idx.get_indexer(item_ids)
            tgroups = table[GROUP_ID].to_numpy(dtype=np.int64)
            k = int(tgroups.max()) + 1 if len(tgroups) else 0
            if num_groups and num_groups < k:
                raise DataError(f"group table has group_id up to {k - 1} but num_groups="
                                f"{num_groups}")
            k = max(k, int(num_groups or 0))
            matched = pos >= 0
            if n and not matched.any():
                raise DataError(f"group table shares no item_id with the catalog (table e.g. "
                                f"{tab_idx[:3].tolist()}, catalog e.g. {item_ids[:3].tolist()})")
            g = np.full(n, OOV_ID, dtype=np.int64)
            g[matched] = tgroups[pos[matched]] + NUM_RESERVED_IDS
            group[NUM_RESERVED_IDS:] = g
            vocab = k + NUM_RESERVED_IDS
            grouping_key = "table"
            info.update(num_groups=k, catalog_items_without_group=int((~matched).sum()),
                        table_items_not_in_catalog=int(len(tab_idx) - matched.sum()))
        return cls(item_ids, group.astype(np.int32), grouping_key, vocab, info)

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> str:
        """Writes `item_index.parquet` (item_id, item_idx, group_id + metadata).

        `path` is a directory (the file goes inside it; also one whose name ends in
        `.parquet`, as an example-set directory may) or a `.parquet` file path.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = os.fspath(path)
        if os.path.isdir(path) or not path.endswith(".parquet"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, FILE_NAME)
        meta = {"grouping_key": self.grouping_key, "group_vocab_size": self.group_vocab_size,
                "item_vocab_size": self.item_vocab_size, "info": self.info}
        table = pa.table({
            ITEM_ID: pa.array(self.item_ids.tolist(), type=pa.string()),
            ITEM_IDX: pa.array(np.arange(NUM_RESERVED_IDS, self.item_vocab_size, dtype=np.int32)),
            GROUP_ID: pa.array(self.group_of_idx[NUM_RESERVED_IDS:]),
        }).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        pq.write_table(table, path)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ItemIndex":
        """Reads what `save` wrote (a directory holding item_index.parquet, or the file)."""
        import pyarrow.parquet as pq
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FILE_NAME)
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise DataError(f"{path}: not an item index written by dmgin (no metadata)")
        meta = json.loads(raw)
        item_ids = np.asarray(table.column(ITEM_ID).to_pylist(), dtype=object)
        idx = table.column(ITEM_IDX).to_numpy()
        if not np.array_equal(idx, np.arange(NUM_RESERVED_IDS, len(item_ids) + NUM_RESERVED_IDS)):
            raise DataError(f"{path}: item_idx column is not 2..N+1 in row order")
        group = np.concatenate([[PAD_ID, OOV_ID], table.column(GROUP_ID).to_numpy()])
        return cls(item_ids, group.astype(np.int32), meta["grouping_key"],
                   meta["group_vocab_size"], meta.get("info"))

    def __repr__(self):
        return (f"ItemIndex(items={self.num_items}, grouping_key={self.grouping_key!r}, "
                f"group_vocab_size={self.group_vocab_size})")


def _group_table_file(name: str) -> str:
    """The table file of a `--group-table` argument: a file as given, or inside a
    `dmgin grouping fit` output directory its k-means table (`item_groups/`) or its
    `item_index.parquet`."""
    if not os.path.exists(name):
        raise DataError(f"group table {name} does not exist")
    if not os.path.isdir(name):
        return name
    for inner in (KMEANS_GROUPS_DIR, FILE_NAME):
        if os.path.exists(os.path.join(name, inner)):
            return os.path.join(name, inner)
    if any(f.endswith(".parquet") for f in os.listdir(name)):
        return name     # a directory of Parquet parts (item_id, group_id)
    raise DataError(f"group table {name} is a directory without {KMEANS_GROUPS_DIR}/, "
                    f"{FILE_NAME} or Parquet files; pass a `dmgin grouping fit` output "
                    f"directory or an item_id,group_id table")


def _is_item_index(name: str) -> bool:
    """Whether `name` is an `item_index.parquet` (model group ids, not table ids)."""
    if os.path.isdir(name) or not name.endswith(".parquet"):
        return False
    import pyarrow.parquet as pq
    try:
        return _META_KEY in (pq.read_schema(name).metadata or {})
    except (OSError, ValueError):
        return False        # not readable as Parquet: the reader below says so


def _read_group_table(src) -> pd.DataFrame:
    """Reads and validates an item -> group table (DataFrame, Parquet or CSV path)."""
    import pandas as pd
    if src is None:
        raise DataError("grouping.key=cluster (or table) needs an item -> group table "
                        "(item_id, group_id; `dmgin grouping fit --key cluster --embeddings "
                        "...` writes one from embeddings): pass --group-table DIR_OR_FILE, or "
                        "group by another key (--set grouping.key=category, item_id or random)")
    name = "group table"
    if isinstance(src, pd.DataFrame):
        df = src
    else:
        name = _group_table_file(os.fspath(src))
        if _is_item_index(name):
            # model ids (0 pad, 1 unknown, 2.. groups) -> the table's groups 0..K-1
            index = ItemIndex.load(name)
            groups = index.group_of_idx[NUM_RESERVED_IDS:]
            keep = groups >= NUM_RESERVED_IDS
            return pd.DataFrame({ITEM_ID: index.item_ids[keep].astype(str),
                                 GROUP_ID: groups[keep].astype(np.int64) - NUM_RESERVED_IDS})
        try:
            if name.endswith((".csv", ".tsv")):
                df = pd.read_csv(name, dtype={ITEM_ID: str}, sep="\t" if name.endswith(".tsv") else ",")
            else:
                df = pd.read_parquet(name)
        except (ValueError, OSError, UnicodeDecodeError, ImportError) as e:
            # pandas' EmptyDataError / ParserError and pyarrow's ArrowInvalid are ValueErrors.
            raise DataError(f"group table {name}: cannot read it as "
                            f"{'CSV' if name.endswith(('.csv', '.tsv')) else 'Parquet'} "
                            f"({type(e).__name__}: {e}); give a .csv / .tsv with a header row "
                            f"item_id,group_id, or Parquet") from None
    missing = [c for c in (ITEM_ID, GROUP_ID) if c not in df.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; columns: {list(df.columns)}")
    df = df[[ITEM_ID, GROUP_ID]].copy()
    df[ITEM_ID] = df[ITEM_ID].astype(str)
    g = pd.to_numeric(df[GROUP_ID], errors="coerce")
    bad = g.isna() | (g < 0) | (g != np.floor(g))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{name}: group_id must be an integer >= 0; row {row} has "
                        f"{df[GROUP_ID].iloc[row]!r} (item {df[ITEM_ID].iloc[row]!r})")
    df[GROUP_ID] = g.astype(np.int64)
    # Group ids index an embedding table of (largest id + 1) rows, stored as int32.
    top, distinct = (int(df[GROUP_ID].max()), int(df[GROUP_ID].nunique())) if len(df) else (0, 0)
    if top >= 2 ** 31 - 1 - NUM_RESERVED_IDS or (top >= 100_000 and top >= 10 * distinct):
        raise DataError(f"{name}: group_id goes up to {top:,} for {distinct:,} distinct groups; "
                        f"ids index an embedding table of (largest id + 1) rows, so number the "
                        f"groups 0..K-1 (e.g. by rank of their original id)")
    dup = df[ITEM_ID].duplicated()
    if dup.any():
        raise DataError(f"{name}: item_id appears more than once, e.g. "
                        f"{df.loc[dup, ITEM_ID].head(3).tolist()}")
    return df
