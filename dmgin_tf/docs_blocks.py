"""Marked blocks in Markdown pages that a command regenerates, keeping the rest of the page.

A block is everything from a start marker to an end marker, e.g. `<!-- scale:start -->` …
`<!-- scale:end -->`. Benchmarks rewrite their own block of docs/benchmarks.md this way;
prose outside the markers is never touched.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "b.md")
    >>> replace_block(p, "<!-- x:start -->\\nrows\\n<!-- x:end -->")
    >>> replace_block(p, "<!-- x:start -->\\nnew rows\\n<!-- x:end -->")
    >>> print(open(p).read())
    # Benchmarks
    <BLANKLINE>
    <!-- x:start -->
    new rows
    <!-- x:end -->
    <BLANKLINE>
"""
from __future__ import annotations

import os
from typing import Callable, Optional

NEW_PAGE = "# Benchmarks\n"


def replace_block(path: str, block: str, start: Optional[str] = None, end: Optional[str] = None,
                  append: Optional[Callable[[str, str], str]] = None) -> None:
    """Writes `block` (which starts with `start` and ends with `end`) into the page at `path`.

    Args:
      path: the Markdown page; created (titled "# Benchmarks") when missing.
      block: the full block text, markers included.
      start, end: the markers; default the first and last line of `block`.
      append: where a page without the block gets it: `append(page_text, block) -> text`;
        default at the end of the page.
    """
    lines = block.strip("\n").splitlines()
    start = start or lines[0]
    end = end or lines[-1]
    if not (block.lstrip("\n").startswith(start) and block.rstrip("\n").endswith(end)):
        raise ValueError(f"block must start with {start!r} and end with {end!r}")
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else NEW_PAGE
    if start in text and end in text.split(start, 1)[1]:
        before, rest = text.split(start, 1)
        text = before + block.strip("\n") + rest.split(end, 1)[1]
    elif append is not None:
        text = append(text, block.strip("\n"))
    else:
        text = text.rstrip("\n") + "\n\n" + block.strip("\n") + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
