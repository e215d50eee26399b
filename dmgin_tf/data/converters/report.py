"""Bad-row accounting for converters: counts per reason, `file:line` samples, report files.

Every input row ends in exactly one of three states, and the report says which:

* **kept** – written to the canonical tables;
* **bad** – dropped (wrong field count, bad id, bad timestamp, unknown behavior, invalid
  UTF-8 in a key field, exact duplicate, ...); counted per reason, the first
  `max_samples` per (file, reason) kept with `file:line`, the reason and the raw text;
* **flagged** – kept, but worth knowing (out-of-window timestamp, missing item text,
  item category conflict, text repaired from invalid UTF-8, ...).

`ConversionReport.check_error_fraction` raises `DataError` naming the file and its bad
fraction when it exceeds `DataConfig.max_error_fraction`; the report is written first
so the user can read the samples.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Any, Dict, List, Optional

from dmgin_tf.errors import DataError

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# Raw text kept per sample: enough to recognise the row, bounded for huge bad lines.
_MAX_SAMPLE_TEXT = 200


@dataclasses.dataclass
class FileReport:
    """Counters for one input file. `rows_read` counts data rows (no header, no blank lines)."""
    path: str
    role: str                      # behaviors | items | tags ... (what the file feeds)
    rows_read: int = 0
    optional: bool = False         # may hold no data rows (e.g. MovieLens tags.csv)
    bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    flagged: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def rows_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.rows_bad

    @property
    def bad_fraction(self) -> float:
        return self.rows_bad / self.rows_read if self.rows_read else 0.0

    def to_dict(self) -> dict:
        return {"path": self.path, "role": self.role, "rows_read": self.rows_read,
                "rows_kept": self.rows_kept, "rows_bad": self.rows_bad,
                "bad_fraction": self.bad_fraction,
                "bad": dict(sorted(self.bad.items())), "flagged": dict(sorted(self.flagged.items()))}


class ConversionReport:
    """Collects what a converter did with every row of every input file.

    Args:
      dataset: dataset name written into the report.
      max_error_fraction: per-file limit on bad rows / rows read (`DataConfig`).
      max_samples: samples kept per (file, reason, kind).
    """

    def __init__(self, dataset: str, max_error_fraction: float, max_samples: int = 5):
        self.dataset = dataset
        self.max_error_fraction = float(max_error_fraction)
        self.max_samples = int(max_samples)
        self.files: Dict[str, FileReport] = {}
        self.samples: List[dict] = []
        self._sample_counts: collections.Counter = collections.Counter()
        self.decisions: Dict[str, str] = {}
        self.info: Dict[str, Any] = {}

    # --- recording -------------------------------------------------------------------------
    def file(self, path, role: str, optional: bool = False) -> FileReport:
        """The `FileReport` of `path` (created on first use). A file that is not
        `optional` must hold data rows (`publish` fails the conversion otherwise)."""
        key = str(path)
        if key not in self.files:
            self.files[key] = FileReport(path=key, role=role, optional=optional)
        return self.files[key]

    def bad(self, fr: FileReport, line: int, reason: str, detail: str = "", text: str = "") -> None:
        """Counts one dropped row of `fr` (1-based `line`) under `reason`."""
        fr.bad[reason] += 1
        self._sample(fr, line, "bad", reason, detail, text)

    def flag(self, fr: FileReport, line: Optional[int], reason: str, detail: str = "",
             text: str = "") -> None:
        """Counts one kept-but-notable row (or item, `line=None`) under `reason`."""
        fr.flagged[reason] += 1
        self._sample(fr, line, "flagged", reason, detail, text)

    def decide(self, name: str, text: str) -> None:
        """Records a policy the converter applied (shown in report.md)."""
        self.decisions[name] = text

    def _sample(self, fr, line, kind, reason, detail, text):
        key = (fr.path, kind, reason)
        if self._sample_counts[key] >= self.max_samples:
            return
        self._sample_counts[key] += 1
        where = f"{fr.path}:{line}" if line is not None else fr.path
        if len(text) > _MAX_SAMPLE_TEXT:
            text = text[:_MAX_SAMPLE_TEXT] + "..."
        self.samples.append({"where": where, "kind": kind, "reason": reason,
                             "detail": detail, "text": text})

    # --- checks and output -----------------------------------------------------------------
    def check_error_fraction(self, output_dir=None) -> None:
        """Raises `DataError` for the first file whose bad fraction exceeds the limit.

        Writes the report into `output_dir` first (when given) so its samples are readable.
        """
        for fr in self.files.values():
            if fr.rows_read and fr.bad_fraction > self.max_error_fraction:
                if output_dir is not None:
                    self.write(output_dir)
                top = ", ".join(f"{r} {n}" for r, n in fr.bad.most_common(3))
                where = f"; see {pathlib.Path(output_dir) / REPORT_MD}" if output_dir else ""
                raise DataError(
                    f"{fr.path}: {fr.rows_bad} of {fr.rows_read} rows are bad "
                    f"({fr.bad_fraction:.2%} > max_error_fraction {self.max_error_fraction:.2%}; "
                    f"{top}){self.first_bad(fr)}{where}")

    def first_bad(self, fr: FileReport) -> str:
        """`; e.g. <file:line>: <why>` for the most common reason `fr`'s rows were dropped
        (what the user fixes first), or "" when none was."""
        if not fr.bad:
            return ""
        reason = fr.bad.most_common(1)[0][0]
        sample = next((x for x in self.samples if x["kind"] == "bad" and x["reason"] == reason
                       and x["where"].startswith(fr.path)), None)
        return f"; e.g. {sample['where']}: {sample['detail'] or reason}" if sample else ""

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "max_error_fraction": self.max_error_fraction,
                "files": [fr.to_dict() for fr in self.files.values()],
                "rows_read": sum(fr.rows_read for fr in self.files.values()),
                "rows_bad": sum(fr.rows_bad for fr in self.files.values()),
                "decisions": self.decisions, "info": self.info, "samples": self.samples}

    def write(self, output_dir) -> None:
        """Writes `report.json` and a human-readable `report.md` into `output_dir`."""
        out = pathlib.Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        (out / REPORT_MD).write_text(self.to_markdown(), encoding="utf-8")

    def to_markdown(self) -> str:
        lines = [f"# Conversion report: {self.dataset}", "",
                 f"max_error_fraction: {self.max_error_fraction}", "",
                 "| file | role | read | kept | bad | bad % | bad reasons | flagged |",
                 "|---|---|---:|---:|---:|---:|---|---|"]
        for fr in self.files.values():
            bad = ", ".join(f"{r}: {n}" for r, n in sorted(fr.bad.items())) or "-"
            flagged = ", ".join(f"{r}: {n}" for r, n in sorted(fr.flagged.items())) or "-"
            lines.append(f"| {fr.path} | {fr.role} | {fr.rows_read} | {fr.rows_kept} | "
                         f"{fr.rows_bad} | {fr.bad_fraction:.4%} | {bad} | {flagged} |")
        if self.info:
            lines += ["", "## Output", ""]
            lines += [f"- {k}: {v}" for k, v in self.info.items()]
        if self.decisions:
            lines += ["", "## Decisions", ""]
            lines += [f"- **{k}**: {v}" for k, v in self.decisions.items()]
        if self.samples:
            lines += ["", f"## Samples (first {self.max_samples} per file and reason)", "",
                      "| where | kind | reason | detail | text |", "|---|---|---|---|---|"]
            for s in self.samples:
                text = s["text"].replace("|", "\\|")
                detail = s["detail"].replace("|", "\\|")
                lines.append(f"| {s['where']} | {s['kind']} | {s['reason']} | {detail} | `{text}` |")
        return "\n".join(lines) + "\n"


def read_report(output_dir) -> dict:
    """The `report.json` a converter wrote into `output_dir`."""
    return json.loads((pathlib.Path(output_dir) / REPORT_JSON).read_text(encoding="utf-8"))
