"""The frame every converter runs in: temp space, progress bars, atomic publish."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Iterator

from dmgin_tf.data.converters.report import ConversionReport
from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """Where a converter wrote its tables, and its report (the content of report.json)."""
    output_dir: pathlib.Path
    behaviors_path: pathlib.Path
    items_path: pathlib.Path
    report: dict


@contextlib.contextmanager
def staging(output_dir) -> Iterator[pathlib.Path]:
    """A temp dir inside `output_dir` (same filesystem, so publishing is a rename)."""
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".convert-", dir=out))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: pathlib.Path, output_dir, report: ConversionReport) -> ConversionResult:
    """Checks the error fraction, then moves the staged tables into `output_dir`.

    On too many bad rows only the report is written (no half-valid tables are left
    behind) and `DataError` is raised.
    """
    out = pathlib.Path(output_dir)
    report.check_error_fraction(out)
    for name in (BEHAVIORS_FILE, ITEMS_FILE):
        os.replace(tmp / name, out / name)
    report.write(out)
    return ConversionResult(out, out / BEHAVIORS_FILE, out / ITEMS_FILE, report.to_dict())


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "B"):
    """A tqdm bar on stderr (hidden when `enabled` is False or stderr is not a terminal)."""
    from tqdm import tqdm
    return tqdm(total=total or None, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                disable=None if enabled else True, leave=False)


def resolve_file(input_path, default_name: str) -> pathlib.Path:
    """`input_path` itself, or `input_path/default_name` when it is a directory."""
    p = pathlib.Path(input_path)
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    return p

