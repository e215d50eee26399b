"""How paths are shown to users in CLI output and logs."""
from __future__ import annotations

import os


def display_path(path) -> str:
    """`path` relative to the working directory when it lies under it (what the user
    typed, e.g. `runs/demo/pipeline`), else unchanged."""
    text = os.fspath(path)
    try:
        rel = os.path.relpath(text)
    except ValueError:            # another drive (Windows)
        return text
    return text if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
