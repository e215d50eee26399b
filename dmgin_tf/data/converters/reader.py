"""Streaming CSV reading that survives bad bytes, bad quoting and truncated lines.

Files are read as bytes, one physical line at a time (memory stays flat for multi-GB
logs), decoded per line, and split with the `csv` module so quoted commas
(`"American President, The (1995)"`) parse right. One physical line is one record:
a stray quote therefore damages only its own line instead of swallowing the rest of
the file into one field (none of the supported formats has multi-line fields).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterator, List, Optional

from dmgin_tf.data.converters.report import ConversionReport, FileReport


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
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
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


def is_int_id(value: str) -> bool:
    """Numeric ids (Taobao, MovieLens) are ASCII digit strings."""
    return bool(value) and value.isascii() and value.isdigit()


def file_size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
