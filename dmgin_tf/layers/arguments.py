"""Constructor-argument and input-dtype checks shared by the layers.

A bad size or rate is refused when the layer is constructed, with the layer, the
argument and the value in the message — not later, at build or call time, as a
`ZeroDivisionError` or a backend shape error that names neither.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import keras


def count(layer: str, name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= `minimum` (sizes, heads, layers, buckets)."""
    if isinstance(value, bool) or not _is_int(value) or int(value) < minimum:
        raise ValueError(f"{layer}: {name}={value!r} must be an integer >= {minimum}")
    return int(value)


def rate(layer: str, name: str, value) -> float:
    """`value` as a float in [0, 1) (dropout rates)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = None
    if out is None or isinstance(value, bool) or not 0.0 <= out < 1.0:
        raise ValueError(f"{layer}: {name}={value!r} must be a number in [0, 1)")
    return out


def units(layer: str, name: str, value) -> Tuple[int, ...]:
    """`value` as a tuple of ints >= 1 (MLP widths); an empty tuple is allowed."""
    if _is_int(value) or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{layer}: {name}={value!r} must be a list of layer widths, "
                         f"e.g. (64, 32)")
    return tuple(count(layer, f"{name}[{i}]", u) for i, u in enumerate(value))


def float_input(layer: str, name: str, x) -> None:
    """Raises ValueError unless tensor `x` has a floating dtype (an int tensor would be
    truncated or fail deep in the backend)."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "float" not in dtype:
        raise ValueError(f"{layer}: {name} must be a float tensor, got dtype {dtype} "
                         f"(shape {tuple(x.shape)})")


def same_size(layer: str, what: str, got, want) -> None:
    """Raises ValueError if two static sizes differ (None = unknown: not checked)."""
    if got is not None and want is not None and int(got) != int(want):
        raise ValueError(f"{layer}: {what}: got {got}, expected {want}")


def _is_int(value) -> bool:
    try:
        return int(value) == value and not isinstance(value, float)
    except (TypeError, ValueError):
        return False
