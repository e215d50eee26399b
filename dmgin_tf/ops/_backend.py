"""The one backend-specific question the grouping op asks: how is this trace executed?

The op's math is pure `keras.ops` and gives bit-identical integer results on every
path; only the *choice among equivalent algorithms* depends on the executor, because
the fast primitive differs by up to 10x (measured on a 2-core x86 CPU, B=64, L=10 000):

| primitive                    | TF graph / eager | XLA (TF jit_compile, JAX) |
|------------------------------|------------------|---------------------------|
| `cumsum` (XLA:CPU: O(L²))    | 8 ms             | 9 s at B=256 → pairwise scan (1–4 ms) |
| `take_along_axis`            | 19 ms            | 1.7 ms (flat `take`: 7.7 ms in graph)      |
| stable `argsort`             | 150–200 ms       | 335–520 ms (XLA:CPU sort) → radix passes   |

`Executor` captures the answer at trace time (a Python bool per property).
"""
from __future__ import annotations

import dataclasses

import keras


@dataclasses.dataclass(frozen=True)
class Executor:
    """How the current trace runs; decides between equivalent algorithms.

    xla: the whole computation is compiled by XLA (TF `jit_compile=True`, any JAX).
    slow_sort: XLA's sort is the slow comparator-callback sort of XLA:CPU, so a
      radix sort built from scans and scatters beats it.
    """
    xla: bool
    slow_sort: bool

    @property
    def xla_cpu(self) -> bool:
        """XLA compiling for the host CPU: its temporaries come from `malloc`, so the op
        runs in row chunks of bounded size there (`kernels.map_row_chunks`)."""
        return self.xla and self.slow_sort


def current_executor() -> Executor:
    """Inspects the Keras backend and, for TensorFlow, the XLA context of the trace."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return Executor(xla=True, slow_sort=jax.default_backend() == "cpu")
    if backend == "tensorflow":
        return Executor(xla=_tf_in_xla_context(), slow_sort=not _tf_has_gpu())
    return Executor(xla=False, slow_sort=False)


def _tf_in_xla_context() -> bool:
    """True while tracing a `tf.function(jit_compile=True)` (or code nested in one)."""
    import tensorflow as tf
    if tf.executing_eagerly():
        return False
    # tf.function(jit_compile=True) enters an XLA control-flow context for its trace;
    # this is the check TensorFlow itself uses (polymorphic_function.__call__).
    from tensorflow.python.ops import control_flow_util
    return bool(control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()))


def _tf_has_gpu() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_logical_devices("GPU"))
