"""Choosing the Keras 3 backend before Keras is imported.

Keras 3 reads `KERAS_BACKEND` once, when `keras` is first imported, and cannot switch
afterwards. `dmgin train --backend jax|tensorflow` therefore calls `select_backend`
before anything imports Keras; when Keras is already loaded with another backend we fail
with a message that says so instead of silently training on the wrong one.

This module imports nothing heavy (no keras, no tensorflow, no jax) on purpose.
"""
from __future__ import annotations

import os
import sys

from dmgin_tf.errors import DmginError

BACKENDS = ("tensorflow", "jax")


def loaded_backend() -> str | None:
    """The backend of the already-imported `keras` package, or None if Keras is not loaded."""
    if "keras" not in sys.modules:
        return None
    keras = sys.modules["keras"]
    try:
        return keras.backend.backend()
    except AttributeError:  # partially imported; trust the environment variable
        return os.environ.get("KERAS_BACKEND", "tensorflow")


def select_backend(name: str) -> str:
    """Makes `name` the Keras backend of this process; returns it.

    Sets `KERAS_BACKEND` (and, for JAX, keeps 64-bit ints off: timestamps are cast to
    int32 on the JAX path, see docs/internals.md). Raises DmginError when Keras was
    already imported with a different backend, since Keras cannot switch backends
    inside one process.
    """
    if name not in BACKENDS:
        raise DmginError(f"--backend {name!r}: must be one of {', '.join(BACKENDS)}")
    current = loaded_backend()
    if current is not None and current != name:
        raise DmginError(
            f"--backend {name}: Keras is already imported in this process with the "
            f"{current!r} backend and cannot switch; start a fresh process with "
            f"KERAS_BACKEND={name} (or import nothing Keras-related before selecting the backend)")
    os.environ["KERAS_BACKEND"] = name
    return name
