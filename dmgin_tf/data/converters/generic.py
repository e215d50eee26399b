"""Users' own data in the generic layout -> canonical behaviors + items tables.

Layout (docs/data.md, "Your own data"):

* **behaviors** - CSV with a header row, or Parquet; columns `user_id`, `item_id`,
  `behavior`, `timestamp` (any order; extra columns ignored). `timestamp` is Unix
  seconds: an integer (CSV text or Parquet int; integral floats accepted) or a Parquet
  timestamp column. `behavior` must be in the behavior vocabulary given by the user
  (`behavior_types` / `data.behavior_types`); without one, every value is accepted
  and the vocabulary found is reported.
* **items** (optional) - CSV with a header row, or Parquet; `item_id` plus any of
  `title`, `description`, `category`, `image`. `image` is encoded image bytes (Parquet
  binary) or a path to an image file, relative to the items file's directory.

`input_path` may be the behaviors file itself or a directory holding
`behaviors.csv|behaviors.parquet` and optionally `items.csv|items.parquet` (a directory
written by any converter is therefore valid input too).

Flawed rows follow the same rules as the dataset converters: wrong field count, bad
quoting, empty ids, unknown behavior, bad timestamp (not an integer, or after 2100 —
millisecond timestamps are named as such; `timestamp_unit="ms"` converts them),
invalid UTF-8 in a key field, exact duplicates, any unexpected error in one row ->
dropped (bad); invalid UTF-8 in item text -> repaired and flagged; items
without text, images that cannot be read, behaviors on items absent from the items
file -> kept and flagged.
"""
from __future__ import annotations

import pathlib
from typing import Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmgin_tf.config import DataConfig
from dmgin_tf.data.converters.common import ConversionResult, progress_bar, publish, staging
from dmgin_tf.data.converters.reader import (TIMESTAMP_UNITS, check_line, check_timestamp,
                                             file_size, iter_csv_lines, raw_time_detail)
from dmgin_tf.data.converters.report import ConversionReport, FileReport
from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE, BehaviorSink, write_items
from dmgin_tf.errors import DataError
from dmgin_tf.features import (BEHAVIOR, BEHAVIOR_COLUMNS, CATEGORY, DESCRIPTION, IMAGE, ITEM_ID,
                               TIMESTAMP, TITLE, USER_ID)

ITEM_TEXT_COLUMNS = (TITLE, DESCRIPTION, CATEGORY)
_PARQUET_BATCH = 65536


def _find(root: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
    for ext in (".parquet", ".csv"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    return None


def _is_parquet(path: pathlib.Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _records(path: pathlib.Path, required: Sequence[str], optional: Sequence[str],
             report: ConversionReport, fr: FileReport, key_columns: Sequence[str], bar) -> Iterator:
    """Yields `(line_or_row, {column: value}, raw_text, extra)` per structurally valid row.

    CSV values are str; Parquet values are Python objects (None for nulls) and the
    "line" is the 1-based row number. `extra` joins the values of the other columns:
    rows are exact duplicates only when those match too (so an event-id column keeps
    repeated identical events apart).
    """
    if _is_parquet(path):
        yield from _parquet_records(path, required, optional, fr, bar)
        return
    lines = iter_csv_lines(path, bar)
    header = next(lines, None)
    names = [c.strip() for c in header.fields] if header is not None and header.fields else []
    repeated = sorted({c for c in names if names.count(c) > 1 and c})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {repeated} more than once")
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: header must name columns {list(required)}; missing {missing}, "
                        f"got {names}")
    index = {c: names.index(c) for c in list(required) + [c for c in optional if c in names]}
    keys = tuple(index[c] for c in key_columns)
    others = [i for i in range(len(names)) if i not in index.values()]
    for line in lines:
        f = check_line(line, len(names), report, fr, keys)
        if f is not None:
            yield (line.number, {c: f[i] for c, i in index.items()}, line.text,
                   "\x1f".join(f[i] for i in others))


def _parquet_file(path) -> pq.ParquetFile:
    """Opens a Parquet input, or a DataError naming it (not pyarrow's ArrowInvalid)."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e}); behaviors and items are "
                        f"CSV with a header row or Parquet") from None


def _parquet_records(path, required, optional, fr, bar):
    pf = _parquet_file(path)
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: Parquet must have columns {list(required)}; missing {missing}, "
                        f"got {names}")
    cols = list(required) + [c for c in optional if c in names]
    _check_key_types(path, pf.schema_arrow, (USER_ID, ITEM_ID, BEHAVIOR))
    others = [c for c in names if c not in cols]
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=cols + others):
        values = {}
        for c in cols:
            arr = batch.column(batch.schema.get_field_index(c))
            if pa.types.is_timestamp(arr.type):  # -> Unix seconds
                arr = pc.divide(arr.cast(pa.int64()), TIMESTAMP_UNITS[arr.type.unit])
            values[c] = arr.to_pylist()
        extra = ["\x1f".join(map(str, vs)) for vs in zip(*(values_of(batch, c) for c in others))] \
            if others else None
        for i in range(batch.num_rows):
            row += 1
            fr.rows_read += 1
            rec = {c: values[c][i] for c in cols}
            yield (row, rec, ",".join("<bytes>" if isinstance(v, bytes) else str(v) for v in rec.values()),
                   extra[i] if extra else "")
        if bar is not None:
            bar.update(batch.num_rows)


def _check_unit_applies(path, unit: str) -> None:
    """A Parquet timestamp column is read in the unit its type carries; a
    `timestamp_unit` other than seconds would divide those seconds again (every event in
    January 1970), so the combination is refused."""
    if unit == "s" or not _is_parquet(path):
        return
    schema = _parquet_file(path).schema_arrow
    i = schema.get_field_index(TIMESTAMP)
    if i >= 0 and pa.types.is_timestamp(schema.field(i).type):
        raise DataError(f"{path}: column {TIMESTAMP!r} is a Parquet {schema.field(i).type} "
                        f"column, read in the unit its type carries; --timestamp-unit {unit} "
                        f"is for integer timestamps only (leave it out)")


def values_of(batch: pa.RecordBatch, column: str) -> list:
    return batch.column(batch.schema.get_field_index(column)).to_pylist()


def _timestamp(value, unit: str = "s"):
    """(Unix seconds, None) or (None, (reason, detail)) from CSV text, an int or an
    integral float (`reader.check_timestamp`)."""
    if isinstance(value, float) and value.is_integer() and 0 <= value < 2.0 ** 63:
        value = int(value)
    if isinstance(value, (bool, float)) or value is None:
        return None, ("bad_timestamp", f"timestamp {value!r} is not a non-negative integer "
                                       f"(Unix seconds)")
    return check_timestamp(value if isinstance(value, int) else str(value), unit)


def _text(value, errors: str = "strict") -> str:
    """A CSV or Parquet field as text. Parquet binary values (Spark writes strings so) are
    decoded as UTF-8 (`errors`: "strict" for ids, "replace" for free text); integral
    floats (pandas stores integer ids with nulls as float64) read as integers, so id 10
    is "10" in both files; NaN reads as empty."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8", errors)
        except UnicodeDecodeError as e:
            raise DataError(f"binary value is not UTF-8 text ({e.reason} at byte {e.start})") \
                from None
    elif isinstance(value, float):
        if value != value:
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def _check_key_types(path, schema: pa.Schema, columns: Sequence[str]) -> None:
    """Id and behavior columns must hold scalars that read as text (string, binary,
    integer, float); lists, structs, maps and booleans would become strings like
    "[1, 2]" or "True"."""
    for c in columns:
        if c not in schema.names:
            continue
        t = schema.field(c).type
        ok = (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
              or pa.types.is_large_binary(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
              or pa.types.is_dictionary(t) or pa.types.is_null(t))
        if not ok:
            raise DataError(f"{path}: column {c!r} has Parquet type {t}; ids and behaviors must "
                            f"be strings or integers")


def convert_generic(input_path, output_dir, config: DataConfig | None = None, *,
                    items_path=None, behavior_types: Sequence[str] | None = None,
                    show_progress: bool = False, max_samples: int = 5,
                    timestamp_unit: str = "s") -> ConversionResult:
    """Converts behaviors (+ optional items) in the generic layout into `output_dir`.

    Args:
      input_path: behaviors CSV/Parquet file, or a directory holding `behaviors.*`
        (and optionally `items.*`).
      items_path: items CSV/Parquet; default: `items.*` beside a directory input.
      behavior_types: the behavior vocabulary; default `config.behavior_types` if the
        config has it; empty = accept every value (the vocabulary found is reported).

    Raises:
      DataError: a file's bad fraction exceeds `config.max_error_fraction`, or a required
        column is missing.
    """
    cfg = config or DataConfig()
    src = pathlib.Path(input_path)
    if src.is_dir():
        beh_path = _find(src, "behaviors")
        if beh_path is None:
            raise FileNotFoundError(f"{src}: no behaviors.parquet or behaviors.csv")
        if items_path is None:
            items_path = _find(src, "items")
    else:
        beh_path = src
        if not beh_path.is_file():
            raise FileNotFoundError(f"input file not found: {beh_path}")
    items_file = pathlib.Path(items_path) if items_path else None
    if items_file is not None and not items_file.is_file():
        raise FileNotFoundError(f"items file not found: {items_file}")
    vocab = tuple(behavior_types or getattr(cfg, "behavior_types", ()) or ())
    _check_unit_applies(beh_path, timestamp_unit)

    report = ConversionReport("generic", cfg.max_error_fraction, max_samples)
    items_fr = report.file(items_file, "items") if items_file else None
    beh_fr = report.file(beh_path, "behaviors")
    items: dict = {}
    if items_file is not None:
        items = _read_items(items_file, report, items_fr, show_progress)

    with staging(output_dir) as tmp:
        sink = BehaviorSink(tmp, [beh_fr])
        allowed = set(vocab)
        seen_behaviors: dict = {}
        extra_items: dict = {}
        unit = "rows" if _is_parquet(beh_path) else "B"
        total = _parquet_file(beh_path).metadata.num_rows if unit == "rows" else file_size(beh_path)
        bar = progress_bar(total, f"generic {beh_path.name}", show_progress, unit=unit)
        for number, rec, text, extra in _records(beh_path, BEHAVIOR_COLUMNS, (), report, beh_fr,
                                          BEHAVIOR_COLUMNS, bar):
            try:
                user, item, behavior = _text(rec[USER_ID]), _text(rec[ITEM_ID]), _text(rec[BEHAVIOR])
                ts, ts_bad = _timestamp(rec[TIMESTAMP], timestamp_unit)
                bad_id = f"empty {USER_ID}" if not user else _item_id_problem(item)
                if bad_id:
                    report.bad(beh_fr, number, "bad_id", bad_id, text)
                elif not behavior or (allowed and behavior not in allowed):
                    report.bad(beh_fr, number, "unknown_behavior",
                               f"behavior {behavior!r} not in {list(vocab)}"
                               + _case_hint(behavior, vocab) if behavior
                               else "empty behavior", text)
                elif ts_bad is not None:
                    report.bad(beh_fr, number, ts_bad[0], ts_bad[1], text)
                else:
                    seen_behaviors.setdefault(behavior, None)
                    if item not in items:
                        extra_items.setdefault(item, {})
                        if items_file is not None:   # counted per row, as every flag here
                            report.flag(beh_fr, number, "item_not_in_catalog",
                                        f"item {item!r} not in {items_file.name}; added with "
                                        f"empty text", text)
                    sink.add(user, item, behavior, ts, 0, number,
                             raw_time_detail(extra, rec[TIMESTAMP], timestamp_unit))
            except Exception as e:  # one row never stops the conversion
                report.bad(beh_fr, number, "row_error", f"{type(e).__name__}: {e}", text)
        bar.close()
        n_behaviors = sink.finish(tmp / BEHAVIORS_FILE, report)
        items.update(extra_items)
        n_items = write_items(tmp / ITEMS_FILE, items)
        types = list(vocab) if vocab else sorted(seen_behaviors)
        report.decide("behavior_types", f"given: {list(vocab)}" if vocab else
                      f"none given: every value accepted; found {types}")
        report.decide("duplicate_row", "exact duplicate rows (all columns equal, extra columns "
                      "included) are dropped, keeping the first")
        if items_file is None:
            report.decide("items", "no items file: items are the behaviors' item ids, without text")
        report.info.update({"behaviors": n_behaviors, "items": n_items, "behavior_types": types,
                            "items_with_text": sum(1 for v in items.values()
                                                   if v.get(TITLE) or v.get(DESCRIPTION))})
        return publish(tmp, output_dir, report)


def _case_hint(behavior: str, vocab) -> str:
    """", which differs only in case from 'pv'" when a known name matches `behavior`
    ignoring case (names are case-sensitive), else ""."""
    near = [v for v in vocab if v.casefold() == behavior.casefold()]
    return f" (names are case-sensitive: the list has {near[0]!r})" if near else ""


def case_collisions(names) -> list:
    """Groups of behavior names that differ only in case, e.g. [['PV', 'pv']]."""
    groups: dict = {}
    for n in names:
        groups.setdefault(n.casefold(), []).append(n)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _item_id_problem(item: str) -> Optional[str]:
    """Why `item` cannot be an item id, or None. The pipeline's vocabulary stores one
    `item|group` line per item, so `|` and line breaks cannot be part of an id."""
    if not item:
        return f"empty {ITEM_ID}"
    if "|" in item or "\n" in item or "\r" in item:
        return f"{ITEM_ID} {item!r} contains '|' or a line break (reserved by the vocabulary format)"
    return None


def _read_items(path: pathlib.Path, report: ConversionReport, fr: FileReport, show_progress) -> dict:
    """item_id -> {title, description, category, image} from an items CSV/Parquet file."""
    items: dict = {}
    unit = "rows" if _is_parquet(path) else "B"
    total = _parquet_file(path).metadata.num_rows if unit == "rows" else file_size(path)
    bar = progress_bar(total, f"generic {path.name}", show_progress, unit=unit)
    for number, rec, text, _ in _records(path, (ITEM_ID,), ITEM_TEXT_COLUMNS + (IMAGE,), report, fr,
                                      (ITEM_ID,), bar):
        try:
            item = _text(rec[ITEM_ID])
        except DataError as e:
            report.bad(fr, number, "non_utf8", f"{ITEM_ID}: {e}", text)
            continue
        bad_id = _item_id_problem(item)
        if bad_id:
            report.bad(fr, number, "bad_id", bad_id, text)
            continue
        if item in items:
            report.bad(fr, number, "duplicate_item", f"item {item!r} already defined", text)
            continue
        entry = {c: _text(rec.get(c), errors="replace") for c in ITEM_TEXT_COLUMNS}
        entry[IMAGE] = _image(rec.get(IMAGE), path, report, fr, number, text)
        if not entry[TITLE] and not entry[DESCRIPTION]:
            report.flag(fr, number, "missing_item_text", f"item {item!r} has no title or description", text)
        items[item] = entry
    bar.close()
    return items


def _image(value, items_path: pathlib.Path, report, fr, number, text) -> Optional[bytes]:
    """Image bytes from a binary value or a path relative to the items file; None if absent."""
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    p = pathlib.Path(str(value).strip())
    if not p.is_absolute():
        p = items_path.parent / p
    try:
        return p.read_bytes()
    except OSError as e:
        report.flag(fr, number, "missing_image", f"cannot read image {str(p)!r}: {e.strerror}; image null",
                    text)
        return None
