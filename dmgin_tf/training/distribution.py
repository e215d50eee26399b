"""Data parallelism over the visible accelerators, one code path per backend.

- TensorFlow backend: `tf.distribute.MirroredStrategy` when more than one GPU is visible.
- JAX backend: `keras.distribution.DataParallel` when more than one JAX device is visible
  (the 2/4/8-GPU hosts; on CPU `XLA_FLAGS=--xla_force_host_platform_device_count=N`
  creates N host devices, which is how the tests exercise this path).

`train.distribute` picks the policy: `auto` (above), `off` (never), `force` (always, even
on one device — the cheap way to exercise the strategy code on a CPU-only machine).

Import only after the backend is selected (this module imports keras).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, List, Optional

import keras

from dmgin_tf.errors import DmginError


@dataclasses.dataclass
class Placement:
    """Where training runs.

    Attributes:
      backend: tensorflow | jax.
      devices: device names seen by the backend (accelerators if any, else CPU).
      accelerator: "gpu", "tpu" or "cpu".
      strategy: "mirrored", "data_parallel" or "none".
      replicas: number of devices a global batch is split over.
      handle: the tf.distribute strategy or keras Distribution (None when not distributed).
    """
    backend: str
    devices: List[str]
    accelerator: str
    strategy: str
    replicas: int
    handle: Any = None

    def scope(self):
        """Context in which to build, compile, fit and predict."""
        if self.handle is None:
            return contextlib.nullcontext()
        return self.handle.scope()

    def describe(self) -> dict:
        return {"backend": self.backend, "accelerator": self.accelerator,
                "devices": list(self.devices), "strategy": self.strategy,
                "replicas": self.replicas}


def _tf_devices():
    import tensorflow as tf
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus], "gpu"
    return [d.name for d in tf.config.list_logical_devices("CPU")], "cpu"


def _jax_devices():
    import jax
    devices = jax.devices()
    return [str(d) for d in devices], devices[0].platform


def make_placement(policy: str = "auto", batch_size: Optional[int] = None) -> Placement:
    """Chooses the distribution for the active Keras backend.

    Args:
      policy: auto | off | force (see module docstring).
      batch_size: global batch size; must split evenly over the replicas.

    Raises:
      DmginError: bad policy, or a batch size that does not divide over the devices.
    """
    if policy not in ("auto", "off", "force"):
        raise DmginError(f"train.distribute={policy!r}: must be auto, off or force")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        devices, accel = _tf_devices()
        multi = accel == "gpu" and len(devices) > 1
        if policy == "force" or (policy == "auto" and multi):
            import tensorflow as tf
            strategy = tf.distribute.MirroredStrategy(devices=devices)
            placement = Placement(backend, devices, accel, "mirrored",
                                  strategy.num_replicas_in_sync, strategy)
        else:
            placement = Placement(backend, devices, accel, "none", 1)
    elif backend == "jax":
        devices, accel = _jax_devices()
        if policy == "force" or (policy == "auto" and len(devices) > 1):
            import jax
            dist = keras.distribution.DataParallel(devices=jax.devices())
            placement = Placement(backend, devices, accel, "data_parallel", len(devices), dist)
        else:
            placement = Placement(backend, devices, accel, "none", 1)
    else:
        raise DmginError(f"Keras backend {backend!r} is not supported for training; "
                         f"use tensorflow or jax")
    if batch_size is not None and batch_size % placement.replicas:
        raise DmginError(f"train.batch_size={batch_size} does not split evenly over "
                         f"{placement.replicas} devices ({placement.strategy}); use a multiple "
                         f"of {placement.replicas}")
    return placement


def precision_policy(enabled: bool, placement: Placement, jit_compile: bool = True) -> str:
    """The Keras dtype policy for `train.mixed_precision`.

    float16 with loss scaling on TF GPUs (what their tensor cores and Keras' loss-scale
    optimizer are built for); bfloat16 on JAX and on CPU (no loss scaling needed, same
    exponent range as float32). The model's `ctr` output stays float32 either way.

    Raises:
      DmginError: mixed precision on a CPU under XLA (the JAX backend, or TensorFlow with
        `train.jit_compile`): XLA's CPU code generator cannot compile batched
        matrix-vector products in bfloat16 (every model's attention has them), so the
        first step would fail with "unsupported operand type BF16 in op dot".
    """
    if not enabled:
        return "float32"
    if placement.accelerator == "cpu" and (placement.backend == "jax" or jit_compile):
        how = ("the JAX backend compiles with XLA" if placement.backend == "jax"
               else "train.jit_compile=true")
        raise DmginError(
            f"train.mixed_precision=true on CPU ({how}): XLA on CPU cannot compile the "
            f"attention's bfloat16 matrix-vector products. Train in float32 on CPU, set "
            f"train.jit_compile=false (TensorFlow backend, graph mode), or train on a GPU")
    if placement.backend == "tensorflow" and placement.accelerator == "gpu":
        return "mixed_float16"
    return "mixed_bfloat16"
