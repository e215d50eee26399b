"""Checks on a converted data directory (`dmgin data convert` output) before anything
reads it: example building, training, benchmarks and the pipeline's spans.

A converted directory is two Parquet tables (docs/internals.md) plus the conversion's
`report.json`. Refused, with the file and the reason named:
- a directory whose last conversion failed (`<dir>.failed/report.md` newer than the
  tables): it still holds the previous, successful conversion, and a scheduled job
  would otherwise train today's run on yesterday's data without a word;
- a table that is not readable Parquet, lacks a column, or is empty;
- null ids or negative timestamps (tables written or edited by hand; the converters
  never write them), read from the Parquet column statistics without loading rows.
"""
from __future__ import annotations

import os

from dmgin_tf.errors import DataError
from dmgin_tf.features import BEHAVIOR, ITEM_ID, MAX_TIME_S, MS_HINT_MIN, TIMESTAMP, USER_ID

BEHAVIOR_COLUMNS = (USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP)
ITEM_COLUMNS = (ITEM_ID,)


def check_converted(data_dir, dataset: str) -> None:
    """Raises DataError unless `data_dir` is a usable conversion for `dataset`."""
    from dmgin_tf.data.converters.common import failure_dir
    from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE
    from dmgin_tf.data.datasets import check_converted_as
    data_dir = os.fspath(data_dir)
    behaviors = os.path.join(data_dir, BEHAVIORS_FILE)
    items = os.path.join(data_dir, ITEMS_FILE)
    failed = os.path.join(failure_dir(data_dir), "report.md")
    if os.path.exists(failed) and os.path.exists(behaviors) \
            and os.path.getmtime(failed) >= os.path.getmtime(behaviors):
        raise DataError(f"the last conversion into {data_dir} failed (see {failed}); the "
                        f"directory still holds the previous conversion. Fix the input and "
                        f"convert again, or delete {os.path.dirname(failed)} to use the "
                        f"previous conversion")
    check_converted_as(data_dir, dataset)
    _check_table(behaviors, BEHAVIOR_COLUMNS, ids=(USER_ID, ITEM_ID, BEHAVIOR))
    _check_table(items, ITEM_COLUMNS, ids=(ITEM_ID,))


def _check_table(path: str, columns, ids) -> None:
    """Readable Parquet with `columns`, at least one row, no null in `ids`, no negative
    timestamp (from the footer's statistics; row groups without statistics pass)."""
    import pyarrow.parquet as pq
    if not os.path.exists(path):
        raise DataError(f"{path} not found: convert the raw data first (`dmgin data convert`)")
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # noqa: BLE001 — pyarrow raises ArrowInvalid/OSError/...
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {names}")
    if meta.num_rows == 0:
        raise DataError(f"{path}: the table is empty (0 rows)")
    if TIMESTAMP in columns:
        _check_time_type(path)
    for g, name, stats in column_statistics(meta):
        if name in ids and stats.null_count:
            raise DataError(f"{path}: column {name!r} has {stats.null_count} null "
                            f"value(s) (row group {g})")
        if name == TIMESTAMP and stats.has_min_max and stats.min < 0:
            raise DataError(f"{path}: column {TIMESTAMP!r} has negative values (min "
                            f"{stats.min}, row group {g}); timestamps are Unix seconds")
        if name == TIMESTAMP and stats.has_min_max and stats.max > MAX_TIME_S:
            hint = "; this looks like milliseconds" if stats.max >= MS_HINT_MIN else ""
            raise DataError(f"{path}: column {TIMESTAMP!r} has values after 2100 (max "
                            f"{stats.max}, row group {g}); timestamps are Unix seconds{hint}")


def _check_time_type(path: str) -> None:
    """Timestamps are integer Unix seconds: a float column would be truncated to whole
    seconds (sub-second order becomes ties, which the strictly-before rule drops from
    each other's histories), strings or dates would fail deep inside a build."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    kind = pq.ParquetFile(path).schema_arrow.field(TIMESTAMP).type
    if not pa.types.is_integer(kind):
        raise DataError(f"{path}: column {TIMESTAMP!r} is {kind}, not integers; timestamps "
                        f"are integer Unix seconds (convert dates and floats when writing "
                        f"the table)")


def column_statistics(meta):
    """(row group, column name, statistics) of a Parquet footer (`pq.FileMetaData`), for
    the columns that have statistics: checks without reading any row."""
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for i in range(group.num_columns):
            col = group.column(i)
            if col.statistics is not None:
                yield g, col.path_in_schema, col.statistics
