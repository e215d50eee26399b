"""Layers whose float inputs must keep float32 under a mixed-precision policy.

Keras casts every floating-point call argument to the layer's compute dtype. Under
`mixed_float16` that turns ages in seconds into inf past 65,504 s (18 hours) and raw
counts into inf past 65,504, before the layer can take a log or a time bucket of them.
Layers that read such inputs mix in `KeepsInputDtypes`: Keras' conversion is off, numpy
inputs become tensors of their own dtype, and the layer casts what it needs itself
(vectors to `self.compute_dtype`, times and counts to float32).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


def _as_tensor(x):
    return ops.convert_to_tensor(x) if isinstance(x, np.ndarray) else x


class KeepsInputDtypes:
    """Mixin for a `keras.layers.Layer` (list it first among the bases); call
    `self._keep_input_dtypes()` in `__init__` after `super().__init__`."""

    def _keep_input_dtypes(self) -> None:
        self._convert_input_args = False

    def __call__(self, *args, **kwargs):
        args = keras.tree.map_structure(_as_tensor, args)
        kwargs = {k: keras.tree.map_structure(_as_tensor, v) for k, v in kwargs.items()}
        return super().__call__(*args, **kwargs)
