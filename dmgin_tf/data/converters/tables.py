"""Writers for the canonical tables (docs/internals.md): behaviors.parquet, items.parquet.

`BehaviorSink` takes validated rows one at a time and spills them to a temporary
Parquet file every `chunk_rows` rows, so raw text is never held in memory. `finish()`
then sorts the (compact, columnar) table with pyarrow by
(user_id, timestamp, source file, source line), drops exact duplicates and writes
`behaviors.parquet`.
"""
from __future__ import annotations

import pathlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmgin_tf.data.converters.report import ConversionReport, FileReport
from dmgin_tf.features import BEHAVIOR, CATEGORY, DESCRIPTION, IMAGE, ITEM_ID, TIMESTAMP, TITLE, USER_ID

BEHAVIORS_FILE = "behaviors.parquet"
ITEMS_FILE = "items.parquet"

BEHAVIORS_SCHEMA = pa.schema([(USER_ID, pa.string()), (ITEM_ID, pa.string()),
                              (BEHAVIOR, pa.string()), (TIMESTAMP, pa.int64())])
ITEMS_SCHEMA = pa.schema([(ITEM_ID, pa.string()), (TITLE, pa.string()), (DESCRIPTION, pa.string()),
                          (CATEGORY, pa.string()), (IMAGE, pa.binary())])

# Private columns of the spill file: which input file and line a row came from, and the
# raw detail the canonical row drops (MovieLens rating value, tag text) - two rows are
# exact duplicates only when that detail matches too (one user may apply several tags
# to one movie in the same second).
_FILE, _LINE, _DETAIL = "_file", "_line", "_detail"
_SPILL_SCHEMA = pa.schema(list(BEHAVIORS_SCHEMA) + [pa.field(_FILE, pa.int32()), pa.field(_LINE, pa.int64()),
                                                    pa.field(_DETAIL, pa.string())])


class BehaviorSink:
    """Accumulates behavior rows and writes the sorted, de-duplicated behaviors table.

    Args:
      tmp_dir: directory for the spill file (deleted by `finish`).
      files: the `FileReport`s rows can come from; `add(..., file_index=i)` refers to
        `files[i]` (used for duplicate reporting with file:line).
      chunk_rows: rows buffered in Python lists before a spill.
    """

    def __init__(self, tmp_dir, files: Sequence[FileReport], chunk_rows: int = 500_000):
        self.files = list(files)
        self.chunk_rows = chunk_rows
        self._spill = pathlib.Path(tmp_dir) / "_behaviors_spill.parquet"
        self._writer: Optional[pq.ParquetWriter] = None
        self._cols: List[list] = [[] for _ in _SPILL_SCHEMA]
        self.rows = 0

    def add(self, user_id: str, item_id: str, behavior: str, timestamp: int,
            file_index: int, line: int, detail: str = "") -> None:
        """One validated row; `detail` = raw information the canonical row drops."""
        c = self._cols  # unrolled: this runs once per input row
        c[0].append(user_id)
        c[1].append(item_id)
        c[2].append(behavior)
        c[3].append(timestamp)
        c[4].append(file_index)
        c[5].append(line)
        c[6].append(detail)
        self.rows += 1
        if len(c[0]) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._cols[0]:
            return
        batch = pa.record_batch([pa.array(c, type=f.type) for c, f in zip(self._cols, _SPILL_SCHEMA)],
                                schema=_SPILL_SCHEMA)
        if self._writer is None:
            self._spill.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._spill, _SPILL_SCHEMA)
        self._writer.write_batch(batch)
        self._cols = [[] for _ in _SPILL_SCHEMA]

    def finish(self, out_path, report: ConversionReport) -> int:
        """Sorts, drops exact duplicates (reported as bad `duplicate_row`), writes `out_path`.

        Returns the number of rows written.
        """
        self._flush()
        if self._writer is None:
            table = _SPILL_SCHEMA.empty_table()
        else:
            self._writer.close()
            table = pq.read_table(self._spill)
        order = pc.sort_indices(table, sort_keys=[(USER_ID, "ascending"), (TIMESTAMP, "ascending"),
                                                  (_FILE, "ascending"), (_LINE, "ascending")])
        table = table.take(order)
        keep = self._duplicate_mask(table, report)
        if keep is not None:
            table = table.filter(pa.array(keep))
        pq.write_table(table.select(list(BEHAVIORS_SCHEMA.names)).cast(BEHAVIORS_SCHEMA), out_path)
        if self._spill.exists():
            self._spill.unlink()
        return table.num_rows

    def _duplicate_mask(self, table: pa.Table, report: ConversionReport) -> Optional[np.ndarray]:
        """Boolean keep-mask over the sorted table, or None when there are no duplicates.

        Exact duplicates share (user_id, timestamp), so after the sort they sit in runs of
        equal (user_id, timestamp); only rows in such runs are compared in full, which
        keeps this cheap on logs with few same-second events.
        """
        n = table.num_rows
        if n < 2:
            return None
        u, t = table[USER_ID], table[TIMESTAMP]
        same = np.asarray(pc.and_(pc.equal(u.slice(1), u.slice(0, n - 1)),
                                  pc.equal(t.slice(1), t.slice(0, n - 1))))
        if not same.any():
            return None
        in_run = np.zeros(n, dtype=bool)
        in_run[1:] |= same
        in_run[:-1] |= same
        pos = np.flatnonzero(in_run)
        sub = table.take(pa.array(pos)).to_pandas()
        sub["_pos"] = pos
        key = [USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP, _DETAIL]
        dup = sub.duplicated(subset=key, keep="first")  # first = earliest file:line
        if not dup.any():
            return None
        # Map each row's full key to the first occurrence's provenance, for the report.
        first = {k: (f, l) for k, f, l in zip(
            sub.loc[~dup, key].itertuples(index=False, name=None),
            sub.loc[~dup, _FILE], sub.loc[~dup, _LINE])}
        keep = np.ones(n, dtype=bool)
        d = sub[dup]
        for k, f, l, p in zip(d[key].itertuples(index=False, name=None), d[_FILE], d[_LINE], d["_pos"]):
            keep[p] = False
            of, ol = first[k]
            report.bad(self.files[int(f)], int(l), "duplicate_row",
                       f"exact duplicate of {self.files[int(of)].path}:{int(ol)}",
                       ",".join(str(v).strip("\x1f").replace("\x1f", ",") for v in k if v != ""))
        return keep


def write_items(out_path, items: Dict[str, dict]) -> int:
    """Writes the items table, one row per item id in the dict's (catalog) order.

    Args:
      items: item_id -> {title, description, category, image}; missing keys are empty
        strings (image: None).
    """
    ids = list(items)
    cols = {ITEM_ID: ids}
    for key in (TITLE, DESCRIPTION, CATEGORY):
        cols[key] = [items[i].get(key) or "" for i in ids]
    cols[IMAGE] = [items[i].get(IMAGE) for i in ids]
    table = pa.table({k: pa.array(v, type=ITEMS_SCHEMA.field(k).type) for k, v in cols.items()},
                     schema=ITEMS_SCHEMA)
    pq.write_table(table, out_path)
    return table.num_rows
