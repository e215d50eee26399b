"""The frame every converter runs in: staging, progress bars, atomic publish.

A conversion writes everything (tables and report) into a staging directory beside
the output (`.<name>.convert-<pid>-*`, same filesystem) and swaps it in only when it
succeeded, so a failed or interrupted run never leaves half-new tables, and never
mixes new tables with old ones:

* success: the staged directory replaces `output_dir` (a rename; when `output_dir`
  also holds files that are not converter output, the four files are replaced one by
  one instead, each atomically); a stale failure report beside it is removed;
* failure (too many bad rows, no data, ...): `output_dir` is left exactly as it was (the
  previous good conversion, if any) and the failure report goes to a separate
  directory beside it, `<output_dir>.failed/` (`failure_dir`);
* SIGTERM/SIGHUP during the run: the staging directory is removed before the process
  exits; one left by a killed run (SIGKILL) is removed by the next run into the same
  output.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
from typing import Iterator

from dmgin_tf.data.converters.report import REPORT_JSON, REPORT_MD, ConversionReport
from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE
from dmgin_tf.errors import DataError

OUTPUT_FILES = (BEHAVIORS_FILE, ITEMS_FILE, REPORT_JSON, REPORT_MD)
FAILED_SUFFIX = ".failed"


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """Where a converter wrote its tables, and its report (the content of report.json)."""
    output_dir: pathlib.Path
    behaviors_path: pathlib.Path
    items_path: pathlib.Path
    report: dict


def failure_dir(output_dir) -> pathlib.Path:
    """Where a failed conversion into `output_dir` writes its report."""
    out = pathlib.Path(output_dir)
    return out.parent / (out.name + FAILED_SUFFIX)


def _staging_prefix(out: pathlib.Path, step: str = "convert") -> str:
    return f".{out.name}.{step}-"


def _remove_stale_staging(out: pathlib.Path, step: str = "convert") -> None:
    """Staging dirs of runs that were killed (their pid is gone)."""
    remove_dead_staging(out.parent, _staging_prefix(out, step))


def remove_dead_staging(parent, prefix: str) -> None:
    """Deletes the folders in `parent` named `<prefix><pid>[-...]` whose process is gone
    (a run killed before its own cleanup); live runs' folders and this process's stay."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Terminated(BaseException):
    """Raised by the SIGTERM/SIGHUP handler so `finally` blocks clean up."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _cleanup_on_signals():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    received = []

    def handler(signum, frame):
        received.append(signum)
        raise _Terminated(signum)

    def die(signum):
        for s, h in previous.items():
            signal.signal(s, h)
        # the caller's `finally` already ran; die of the same signal
        os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    except _Terminated as t:
        die(t.signum)
    except BaseException:
        # The signal's exception can be swallowed on its way up (raised inside an import,
        # importlib prints "Exception ignored" and a half-imported module fails later):
        # what surfaces is then an unrelated error. The signal still ends the run.
        if received:
            die(received[0])
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_output_dir(output_dir) -> None:
    """Raises DataError naming `output_dir` when it cannot be a directory: it is a file,
    or a file stands where one of its parents should be."""
    out = pathlib.Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    for above in out.parents:
        if above.exists():
            if not above.is_dir():
                raise DataError(f"output {out}: {above} is a file, not a directory")
            break


@contextlib.contextmanager
def staging(output_dir, step: str = "convert") -> Iterator[pathlib.Path]:
    """A temp dir beside `output_dir` (same filesystem, so publishing is a rename);
    removed on exit, on an exception and on SIGTERM/SIGHUP. `step` names it
    (`.<name>.<step>-<pid>-*`). An output that cannot be written raises DataError naming
    `output_dir`, not the temp dir."""
    out = pathlib.Path(output_dir)
    check_output_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out, step)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out, step)}{os.getpid()}-",
                                            dir=out.parent))
    except OSError as e:
        # Name the path the user gave (or the parent that failed), never the temp dir.
        failed = e.filename and not os.path.basename(str(e.filename)).startswith(
            _staging_prefix(out, step))
        raise DataError(f"output {out}: cannot write there ({e.strerror or e}"
                        f"{': ' + str(e.filename) if failed else ''})") from None
    with _cleanup_on_signals():
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _fail(report: ConversionReport, out: pathlib.Path, error: DataError) -> None:
    """Writes the failure report beside `out` and raises `error` pointing at it."""
    where = failure_dir(out)
    shutil.rmtree(where, ignore_errors=True)
    report.write(where)
    kept = (f"; {out} still holds the previous conversion" if (out / BEHAVIORS_FILE).exists()
            else "")
    raise DataError(f"{error}; report: {where / REPORT_MD}{kept}") from None


def publish(tmp: pathlib.Path, output_dir, report: ConversionReport) -> ConversionResult:
    """Checks the staged conversion, then swaps it into `output_dir` (module docstring).

    Raises:
      DataError: too many bad rows, or no behaviors at all (empty input). `output_dir`
        is untouched; the report is in `failure_dir(output_dir)`.
    """
    out = pathlib.Path(output_dir)
    try:
        report.check_error_fraction()
        for fr in report.files.values():
            # A header-only catalog used to pass, leaving every behavior's item unknown.
            if fr.role in ("behaviors", "items") and fr.rows_read == 0 and not fr.optional:
                empty = os.path.isfile(fr.path) and os.path.getsize(fr.path) == 0
                raise DataError(f"{fr.path}: no data rows"
                                + (" (empty file)" if empty else " (a header only?)"))
        if not report.info.get("behaviors"):
            raise DataError(f"no behaviors converted from "
                            f"{', '.join(fr.path for fr in report.files.values())}"
                            + "".join(report.first_bad(fr) for fr in report.files.values()
                                      if fr.role == "behaviors"))
    except DataError as e:
        _fail(report, out, e)
    report.write(tmp)
    _swap_in(tmp, out)
    shutil.rmtree(failure_dir(out), ignore_errors=True)
    return ConversionResult(out, out / BEHAVIORS_FILE, out / ITEMS_FILE, report.to_dict())


def _swap_in(tmp: pathlib.Path, out: pathlib.Path) -> None:
    staged = [n for n in os.listdir(tmp) if n in OUTPUT_FILES]
    foreign = [n for n in (os.listdir(out) if out.is_dir() else [])
               if n not in OUTPUT_FILES]
    if foreign or out.is_symlink():
        # the user keeps other files here (or links the directory elsewhere): replace
        # ours one by one, each atomically
        for name in staged:
            os.replace(tmp / name, out / name)
        return
    keep = tmp.parent / (tmp.name + ".new")
    final = tmp.parent / (tmp.name + ".old")
    os.mkdir(keep)
    for name in staged:
        os.replace(tmp / name, keep / name)
    if out.exists():
        os.rename(out, final)
    try:
        os.rename(keep, out)
    except OSError:
        if final.exists():
            os.rename(final, out)  # put the previous conversion back
        raise
    finally:
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(keep, ignore_errors=True)


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "B"):
    """A tqdm bar on stderr (hidden when `enabled` is False or stderr is not a terminal)."""
    from tqdm import tqdm
    return tqdm(total=total or None, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                disable=None if enabled else True, leave=False)


def resolve_file(input_path, default_name: str) -> pathlib.Path:
    """`input_path` itself, or `input_path/default_name` (or `default_name.gz`) when it
    is a directory."""
    p = pathlib.Path(input_path)
    folder = p if p.is_dir() else None
    if folder is not None:
        gz = p / (default_name + ".gz")
        p = gz if not (p / default_name).exists() and gz.is_file() else p / default_name
    if not p.is_file():
        held = ""
        if folder is not None:       # say what the folder does hold
            names = sorted(x.name for x in folder.iterdir())
            held = (f" ({folder} is empty)" if not names else f" ({folder} holds "
                    f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        raise FileNotFoundError(f"input file not found: {p}{held}")
    return p
