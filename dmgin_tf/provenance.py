"""What a result records about where it came from: machine and library versions, and the
input files it was built from.

Reads package metadata and /proc; imports nothing heavy, so a benchmark can record the
versions of a backend it has not imported.

    >>> sorted(library_versions("tensorflow"))[:3]          # doctest: +SKIP
    ['backend', 'dmgin_tf', 'keras']
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import List, Optional

BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def machine_info() -> dict:
    """node, machine, cpu_count, platform, and where /proc has them cpu, mem_gb, load_avg."""
    info = {"node": platform.node(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
        info["load_avg"] = [round(x, 1) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def library_versions(backend: Optional[str] = None) -> dict:
    """python, backend, keras, numpy, the backend's packages and dmgin_tf (None if absent)."""
    out = {"python": platform.python_version()}
    if backend:
        out["backend"] = backend
    for pkg in ("keras", "numpy") + BACKEND_PACKAGES.get(backend or "", ()):
        out[pkg] = package_version(pkg)
    from dmgin_tf import __version__
    out["dmgin_tf"] = __version__
    return out


def package_version(name: str) -> Optional[str]:
    """Installed version of distribution `name`, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def file_fingerprint(path) -> List[list]:
    """`[name, bytes, mtime_ns]` of a file, or of every file under a directory (names
    relative to it, sorted): enough to tell that an input changed since a build."""
    path = os.fspath(path)
    if os.path.isfile(path):
        st = os.stat(path)
        return [[os.path.basename(path), st.st_size, st.st_mtime_ns]]
    out = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out.append([os.path.relpath(full, path), st.st_size, st.st_mtime_ns])
    return sorted(out)
