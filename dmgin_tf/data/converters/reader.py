"""Streaming CSV reading that survives bad bytes, bad quoting and truncated lines.

Files are read as bytes, one physical line at a time (memory stays flat for multi-GB
logs), decoded per line, and split with the `csv` module so quoted commas
(`"American President, The (1995)"`) parse right. One physical line is one record:
a stray quote therefore damages only its own line instead of swallowing the rest of
the file into one field (none of the supported formats has multi-line fields).

Gzip-compressed input (`.gz`, recognised by its magic bytes) is read as is; zip, bzip2,
xz and zstd archives are refused by name (unpack them first).

Timestamps are Unix seconds inside `[0, MAX_TIMESTAMP_S]` (1970..2100): larger values are
bad rows — named as milliseconds when they look like them (>= 1e11), unless the
converter is told `timestamp_unit="ms"`, which divides by 1000.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import os
from typing import Iterator, List, Optional, Tuple

from dmgin_tf.data.converters.report import ConversionReport, FileReport
from dmgin_tf.errors import DataError

MAX_TIMESTAMP_S = 4_102_444_800        # 2100-01-01: nothing later is a real log
MS_LIKELY = 100_000_000_000             # >= 1e11 "seconds" = year 5138+: milliseconds
TIMESTAMP_UNITS = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}
UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_ARCHIVES = ((b"PK\x03\x04", "a zip archive"), (b"BZh", "bzip2-compressed"),
             (b"\xfd7zXZ\x00", "xz-compressed"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"))


def open_text_source(path):
    """Opens `path` for binary line reading: gzip transparently; other archives refused
    by name (DataError)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    for sig, what in _ARCHIVES:
        if magic.startswith(sig):
            raise DataError(f"{path}: {what}; unpack it first (gzip .gz files are read directly)")
    return open(path, "rb")


@dataclasses.dataclass
class Line:
    """One data line. `fields` is None when the line could not be split (see `error`)."""
    number: int                    # 1-based physical line number
    text: str                      # decoded text (invalid UTF-8 replaced by U+FFFD)
    fields: Optional[List[str]]
    error: str = ""                # csv split error, if any
    bad_utf8: str = ""             # description of the invalid bytes, if any


def split_csv(text: str) -> List[str]:
    """Splits one CSV record; raises `csv.Error` on malformed quoting."""
    if '"' not in text:
        return text.split(",")  # fast path: no quoting on the line (most rows)
    return next(csv.reader((text,), strict=True))


def iter_csv_lines(path, progress=None) -> Iterator[Line]:
    """Yields every non-blank line of `path` as a `Line` (header included, number 1).

    Args:
      path: the CSV file.
      progress: optional tqdm-like object; `.update(n_bytes)` is called as bytes are read.
    """
    pending = 0
    with open_text_source(path) as f:
        for number, raw in _lines(f, path):
            pending += len(raw)
            if progress is not None and pending >= 1 << 20:
                progress.update(pending)
                pending = 0
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark written by some spreadsheet tools
            if not raw.strip():
                continue
            bad_utf8 = ""
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                text = raw.decode("utf-8", errors="replace")
                bad_utf8 = f"invalid UTF-8 byte 0x{raw[e.start]:02x} at byte {e.start}"
            try:
                fields, error = split_csv(text), ""
            except csv.Error as e:
                fields, error = None, f"malformed CSV quoting: {e}"
            yield Line(number, text, fields, error, bad_utf8)
    if progress is not None and pending:
        progress.update(pending)


def _lines(f, path):
    """(1-based number, raw line) pairs; a corrupt gzip stream is a DataError naming it."""
    number = 0
    try:
        for raw in f:
            number += 1
            yield number, raw
    except (OSError, EOFError) as e:  # gzip.BadGzipFile, truncated stream
        raise DataError(f"{path}: cannot read past line {number}: {e} (corrupt or truncated "
                        f"compressed file?)") from None


def check_line(line: Line, n_fields: int, report: ConversionReport, fr: FileReport,
               key_fields: tuple = ()) -> Optional[List[str]]:
    """Counts the line as read and returns its fields, or records why it is bad.

    Args:
      line: from `iter_csv_lines`.
      n_fields: the number of fields a record must have.
      key_fields: indices of fields that must be valid UTF-8 (ids, behavior, timestamp);
        invalid bytes elsewhere (free text) are replaced by U+FFFD and the row is kept
        but flagged `non_utf8_text_repaired`.

    Returns:
      The fields, or None when the row was recorded as bad.
    """
    fr.rows_read += 1
    if line.fields is None:
        report.bad(fr, line.number, "bad_quoting", line.error, line.text)
        return None
    if len(line.fields) != n_fields:
        report.bad(fr, line.number, "wrong_field_count",
                   f"expected {n_fields} fields, got {len(line.fields)} (truncated or extra commas?)",
                   line.text)
        return None
    if line.bad_utf8:
        damaged = [i for i, v in enumerate(line.fields) if "\ufffd" in v]
        if any(i in key_fields for i in damaged) or not damaged:
            report.bad(fr, line.number, "non_utf8", line.bad_utf8 + " in a key field", line.text)
            return None
        report.flag(fr, line.number, "non_utf8_text_repaired",
                    line.bad_utf8 + "; replaced by U+FFFD in a text field", line.text)
    return line.fields


def parse_timestamp(value: str) -> Optional[int]:
    """Unix seconds from a decimal integer string; None when not a non-negative integer."""
    v = value.strip()
    if not v or not (v.isdigit() and v.isascii()):
        return None  # '-5', '1.5e9', '', 'abc' are all rejected
    return int(v)


def check_timestamp(value, unit: str = "s", not_before: Optional[Tuple[int, str]] = None
                    ) -> Tuple[Optional[int], Optional[Tuple[str, str]]]:
    """(Unix seconds, None) or (None, (reason, detail)) for a timestamp field.

    `value` is text (CSV) or an int; `unit` one of `TIMESTAMP_UNITS` ("ms", "us", "ns"
    are divided down to seconds, rounded down). Reasons: `bad_timestamp` (not a
    non-negative integer), `timestamp_out_of_range` (past 2100 or beyond int64 — the
    detail names the unit the value looks like, e.g. milliseconds, and the flag that
    converts it — or, with `not_before=(seconds, what)`, before a data set's first
    possible time: a line cut short or a zero, not an event).
    """
    ts = value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else parse_timestamp(str(value)) if isinstance(value, str) else None
    if ts is None:
        return None, ("bad_timestamp", f"timestamp {value!r} is not a non-negative integer "
                                       f"(Unix seconds)")
    seconds = ts // TIMESTAMP_UNITS[unit]
    if seconds > MAX_TIMESTAMP_S:
        likely = likely_unit(ts)
        if likely is not None and likely != unit:
            words = UNIT_WORDS[likely]
            why = (f"looks like {words}; the format wants Unix seconds (convert {words} "
                   f"logs with `dmgin data convert --timestamp-unit {likely}`)")
        elif unit == "s":
            why = "is after 2100-01-01 (Unix seconds expected)"
        else:
            why = f"is after 2100-01-01 even read as {UNIT_WORDS[unit]} (--timestamp-unit {unit})"
        return None, ("timestamp_out_of_range", f"timestamp {ts} {why}")
    if not_before is not None and seconds < not_before[0]:
        return None, ("timestamp_out_of_range", f"timestamp {seconds} is before "
                                                f"{not_before[1]} (a truncated line?)")
    return seconds, None


def likely_unit(ts: int) -> Optional[str]:
    """The unit in which `ts` falls between 1973 and 2100 (e.g. "ms" for 1511544070123),
    or None. The ranges of the units do not overlap: [1e11, 4.1e12] ms, [1e14, 4.1e15] µs,
    [1e17, 4.1e18] ns (1e11 ms is March 1973)."""
    for unit in ("ms", "us", "ns"):
        scale = TIMESTAMP_UNITS[unit]
        if MS_LIKELY * scale // 1000 <= ts <= MAX_TIMESTAMP_S * scale:
            return unit
    return None


def raw_time_detail(detail: str, raw, unit: str) -> str:
    """The duplicate check's `detail` plus the raw timestamp where converting it to
    seconds drops digits (`unit` "ms"): two clicks 300 ms apart are distinct events, not
    an exact duplicate, though both become the same second."""
    if unit == "s":
        return detail
    return f"{detail}\x1f{raw}"


def is_int_id(value: str) -> bool:
    """Numeric ids (Taobao, MovieLens) are ASCII digit strings."""
    return bool(value) and value.isascii() and value.isdigit()


def int_id(value: str) -> str:
    """A numeric id (`is_int_id`) as its number, without leading zeros (`007` → `7`):
    an export that pads ids must not split one user or item into two."""
    return value.lstrip("0") or "0"


def file_size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
