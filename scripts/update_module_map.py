"""Rewrites the "## Module map" section of docs/internals.md from the modules git tracks.

    python scripts/update_module_map.py

One row per module: the first paragraph of its docstring (or the line in OVERRIDE), so a
module's own docstring is where it is described. tests/test_docs_module_map.py checks
that the page names every module and no module that is gone.
"""
from __future__ import annotations

import ast
import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "internals.md"
PACKAGES = ("dmgin_tf", "transform", "tfx_pipeline")
MAX_CHARS = 150
# Rows whose docstring's first paragraph does not read well in a table (None: no row).
OVERRIDE = {
    "dmgin_tf/__init__.py": "package version; importing it changes nothing in the process",
    "dmgin_tf/cli/__init__.py": None,
    "transform/__init__.py": None,
    "tfx_pipeline/__init__.py": None,
    "dmgin_tf/cli/common.py": "flags shared by subcommands; `configure_process` (TF_USE_LEGACY_KERAS, "
                              "quiet logs unless `--verbose`)",
    "dmgin_tf/cli/main.py": "`dmgin` entry point: subcommand registry, process set-up, one-line errors",
    "dmgin_tf/bench/popularity.py": "item-popularity baseline row of the quality table",
    "dmgin_tf/data/fetch.py": "`dmgin data fetch`: MovieLens from GroupLens, size/SHA-256/CRC-checked; "
                              "Taobao instructions",
    "tfx_pipeline/components/__init__.py": "the custom components, exported",
    "transform/encoder/benchmark.py": "retrieval benchmark of the encoder (one command)",
}


def describe(path: pathlib.Path) -> str:
    """First paragraph of the module docstring, on one line, without design.md pointers."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    line = " ".join(doc.split("\n\n")[0].split())
    line = re.sub(r"\s*\(docs/design\.md:[^)]*\)", "", line)
    if len(line) > MAX_CHARS:
        line = line[:line.rfind(" ", 0, MAX_CHARS - 3)] + " …"
    return line.rstrip(".").replace("|", "/")


def module_rows() -> dict[str, list[tuple[str, str]]]:
    """{folder: [(module path, description)]} for every tracked module, folder by folder."""
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    rows: dict[str, list[tuple[str, str]]] = {}
    for rel in sorted(f for f in tracked if f.endswith(".py") and "sample_data" not in f):
        if not (REPO / rel).exists():
            continue
        desc = OVERRIDE[rel] if rel in OVERRIDE else describe(REPO / rel)
        if desc is None:
            continue
        rows.setdefault(rel.rsplit("/", 1)[0], []).append((rel, desc))
    return rows


def render(rows) -> str:
    out = ["## Module map", "",
           "Every module of the three packages, by folder (the first line of its docstring; "
           "details there).", "`dmgin_tf/sample_data/` holds the embedded real sample and its "
           "licenses.", ""]
    for folder in sorted(rows, key=lambda f: (PACKAGES.index(f.split("/")[0]), f)):
        out += [f"**`{folder}/`**", "", "| module | what |", "|---|---|"]
        out += [f"| `{rel}` | {desc} |" for rel, desc in rows[folder]]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    page = PAGE.read_text(encoding="utf-8")
    start = page.index("## Module map")
    end = page.index("\n## ", start + 1)
    PAGE.write_text(page[:start] + render(module_rows()) + page[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
