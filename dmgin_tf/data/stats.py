"""Summary statistics of a converted dataset (the canonical tables in one directory).

    >>> s = dataset_stats("runs/data/movielens")            # doctest: +SKIP
    >>> s["users"], s["history_length"]["p50"]              # doctest: +SKIP

Definitions (what `tests/data/test_stats.py` re-computes with pandas):
  users / interactions: distinct user_id / rows of behaviors.parquet;
  items: rows of items.parquet (the catalog); items_with_behaviors: distinct item_id in
  behaviors; history_length: behaviors per user (all behavior types), percentiles by
  numpy's default linear interpolation; behavior_counts: rows per behavior type;
  item_text_fraction: items whose title or description is non-empty;
  item_image_fraction: items whose image is non-null.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE
from dmgin_tf.errors import DataError
from dmgin_tf.features import BEHAVIOR, DESCRIPTION, IMAGE, ITEM_ID, TIMESTAMP, TITLE, USER_ID

PERCENTILES = (50, 90, 99)


def dataset_stats(path) -> dict:
    """Statistics of the converted dataset in directory `path` (see module docstring).

    Reads only the columns it needs, one at a time.

    Raises:
      DataError: `path` lacks behaviors.parquet or items.parquet.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: " + ("is a file; give the directory `dmgin data convert` wrote"
                                       if root.exists() else "no such directory"))
    for name in (BEHAVIORS_FILE, ITEMS_FILE):
        if not (root / name).is_file():
            raise DataError(f"{root}: no {name}; run `dmgin data convert` first")
    beh = pq.ParquetFile(root / BEHAVIORS_FILE)
    users = pq.read_table(root / BEHAVIORS_FILE, columns=[USER_ID])[USER_ID]
    per_user = np.asarray(pc.value_counts(users).field("counts"), dtype=np.int64)
    del users
    behaviors = pc.value_counts(pq.read_table(root / BEHAVIORS_FILE, columns=[BEHAVIOR])[BEHAVIOR])
    ts = pq.read_table(root / BEHAVIORS_FILE, columns=[TIMESTAMP])[TIMESTAMP]
    items_seen = pc.count_distinct(pq.read_table(root / BEHAVIORS_FILE, columns=[ITEM_ID])[ITEM_ID]).as_py()
    items = pq.read_table(root / ITEMS_FILE, columns=[TITLE, DESCRIPTION, IMAGE])
    n_items = items.num_rows
    has_text = pc.or_(pc.greater(pc.utf8_length(pc.fill_null(items[TITLE], "")), 0),
                      pc.greater(pc.utf8_length(pc.fill_null(items[DESCRIPTION], "")), 0))
    n_text = pc.sum(has_text).as_py() or 0
    n_image = n_items - items[IMAGE].null_count
    hist = {f"p{p}": float(np.percentile(per_user, p)) if per_user.size else 0.0 for p in PERCENTILES}
    hist["max"] = int(per_user.max()) if per_user.size else 0
    hist["mean"] = float(per_user.mean()) if per_user.size else 0.0
    counts = dict(sorted(((d["values"], d["counts"]) for d in behaviors.to_pylist()),
                         key=lambda kv: -kv[1]))
    return {
        "path": str(root),
        "users": int(per_user.size),
        "items": int(n_items),
        "items_with_behaviors": int(items_seen),
        "interactions": int(beh.metadata.num_rows),
        "history_length": hist,
        "behavior_counts": counts,
        "item_text_fraction": n_text / n_items if n_items else 0.0,
        "item_image_fraction": n_image / n_items if n_items else 0.0,
        "time_min": pc.min(ts).as_py(),
        "time_max": pc.max(ts).as_py(),
    }


def format_stats(stats: dict) -> str:
    """A two-column text table of `dataset_stats` output, for the CLI."""
    import datetime

    def when(t):
        if t is None:
            return "-"
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    h = stats["history_length"]
    rows = [("path", stats["path"]),
            ("users", f"{stats['users']:,}"),
            ("items (catalog)", f"{stats['items']:,}"),
            ("items with behaviors", f"{stats['items_with_behaviors']:,}"),
            ("interactions", f"{stats['interactions']:,}"),
            ("history length p50 / p90 / p99 / max",
             f"{h['p50']:,.0f} / {h['p90']:,.0f} / {h['p99']:,.0f} / {h['max']:,}"),
            ("history length mean", f"{h['mean']:.1f}")]
    total = stats["interactions"] or 1
    for b, n in stats["behavior_counts"].items():
        rows.append((f"behavior {b}", f"{n:,} ({n / total:.1%})"))
    rows += [("items with text", f"{stats['item_text_fraction']:.1%}"),
             ("items with image", f"{stats['item_image_fraction']:.1%}"),
             ("time range", f"{when(stats['time_min'])} .. {when(stats['time_max'])}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
