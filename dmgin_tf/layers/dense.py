"""`Dense` and `matmul_rows`: projections of `[..., D]` tensors as 2-D matmuls.

Keras' TensorFlow backend lowers `x @ W` for `x` of rank ≥ 3 to a batched matmul with
`W` broadcast over all leading axes; under XLA on CPU that runs as many tiny dots and
was the largest cost of ranking (`TargetAttention` over 128 × 64 (candidate, group)
pairs: about 3.5 → 1.5 ms on one core). Flattening those axes first gives one
`[rows, D] @ [D, H]` GEMM — the same numbers on every backend (JAX already lowers
`jnp.matmul` this way).
"""
from __future__ import annotations

import keras
from keras import ops


def _on_rows(fn, x, width):
    """fn on the rows of x `[..., K]` flattened to `[rows, K]` → `[..., width]`."""
    if len(x.shape) <= 2:
        return fn(x)
    lead = ops.shape(x)[:-1]
    return ops.reshape(fn(ops.reshape(x, (-1, x.shape[-1]))), tuple(lead) + (width,))


def matmul_rows(x, w):
    """x `[..., K]` @ w `[K, H]` → `[..., H]`, computed as one `[rows, K]` matmul."""
    return _on_rows(lambda rows: ops.matmul(rows, w), x, w.shape[-1])


@keras.saving.register_keras_serializable(package="dmgin_tf")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` (same arguments, weights and results) that applies itself to
    the rows of a `[..., D]` input as one 2-D matmul (see the module docstring)."""

    def call(self, inputs, training=None):
        return _on_rows(lambda rows: super(Dense, self).call(rows, training=training),
                        inputs, self.units)
