"""Keras callbacks and batch feeding shared by both backends.

- `SplitSequence`: a `keras.utils.PyDataset` over a `Split` (reshuffled every epoch,
  fixed batch size so XLA compiles one shape).
- `predict_split`: predictions over a whole split in fixed-size (padded) batches.
- `ValidationMetrics`: exact AUC / GAUC / logloss on the validation split at each epoch
  end (numpy, `dmgin_tf.evaluation`), put into the epoch logs as `val_auc`, `val_gauc`,
  `val_logloss` so EarlyStopping, checkpoints and TensorBoard see them.
- `EpochTimer`: training seconds and examples/s per epoch (validation excluded).
- `HistoryWriter`: `history.json` + `history.csv` after every epoch (works without
  TensorBoard, i.e. on the JAX-only GPU host).

Import only after the backend is selected (imports keras).
"""
from __future__ import annotations

import concurrent.futures
import csv
import json
import math
import os
import threading
import time
from typing import Dict, List, Optional

import keras
import numpy as np

from dmgin_tf.training.inputs import Split, batch_indices, cast_for_backend


class SplitSequence(keras.utils.PyDataset):
    """Batches `(inputs, labels)` of a split for `model.fit`, optionally made ahead.

    Args:
      split: the split (`inputs.Split`).
      batch_size: examples per batch; the last partial batch is dropped when
        `drop_remainder` (a shuffled epoch covers it next time) so every step has one shape.
      shuffle: reshuffle the order at each epoch with `seed + epoch`.
      backend: the Keras backend (decides the time dtype, see `inputs.cast_for_backend`).
      prefetch: batches built ahead of the one asked for, in `threads` background threads
        (0 = build on demand). Asked for batch i right after i-1, it has the threads
        densify i+1..i+prefetch while the device runs step i (`np.take` releases the
        GIL), so host batch building overlaps device compute instead of adding to it. An
        out-of-order request is built on demand and reads nothing ahead, and batches
        behind the one asked for are dropped: at most `prefetch` batches wait, whatever
        the access order. `model.fit` must get `shuffle=False` (this sequence shuffles
        itself, seeded; Keras would reorder the requests). Order and content are exactly
        those of the on-demand path (batches are keyed by (epoch, index); a reshuffle
        drops the stale ones).
      threads: worker threads for `prefetch`.
    Yields: `({key: [B, L] or [B]}, labels [B] float32)`.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 backend: Optional[str] = None, drop_remainder: bool = True, prefetch: int = 0,
                 threads: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.backend = backend or keras.backend.backend()
        # Dropping the remainder of a split smaller than one batch would leave nothing.
        self.drop_remainder = drop_remainder and len(split) >= self.batch_size
        self.prefetch = max(0, int(prefetch))
        self._epoch = 0
        self._batches = self._make_batches()
        self._lock = threading.Lock()
        self._pending: Dict[tuple, object] = {}     # (epoch, index) -> Future
        self._pool = (concurrent.futures.ThreadPoolExecutor(max(1, int(threads)),
                                                            thread_name_prefix="dmgin-feed")
                      if self.prefetch else None)

    def _make_batches(self):
        return batch_indices(len(self.split), self.batch_size, shuffle=self.shuffle,
                             seed=self.seed + self._epoch, drop_remainder=self.drop_remainder)

    def __len__(self) -> int:
        return len(self._batches)

    def _build(self, batches, index: int):
        idx = batches[index]
        inputs = cast_for_backend(self.split.batch(idx), self.backend)
        return inputs, self.split.labels[idx].astype(np.float32)

    def __getitem__(self, index: int):
        if self._pool is None:
            return self._build(self._batches, index)
        with self._lock:
            epoch, batches = self._epoch, self._batches
            future = self._pending.pop((epoch, index), None)
            sequential = future is not None or index == 0
            # Batches behind this one will not be asked for in order: drop them.
            for key in [k for k in self._pending if k[0] == epoch and k[1] < index]:
                self._pending.pop(key).cancel()
            if future is None:
                future = self._pool.submit(self._build, batches, index)
            if sequential:
                for ahead in range(index + 1, min(index + 1 + self.prefetch, len(batches))):
                    if (epoch, ahead) not in self._pending:
                        self._pending[(epoch, ahead)] = self._pool.submit(self._build, batches,
                                                                          ahead)
        return future.result()

    def on_epoch_end(self):
        with self._lock:
            self._epoch += 1
            if self.shuffle:
                self._batches = self._make_batches()
            # Batches made ahead for the old order are stale after a reshuffle.
            stale = [k for k in self._pending if k[0] < self._epoch] if self.shuffle else []
            for key in stale:
                self._pending.pop(key).cancel()
            if not self.shuffle:   # same order: re-key what was made ahead
                self._pending = {(self._epoch, i): f for (_, i), f in self._pending.items()}

    def close(self) -> None:
        """Stops the feeding threads (pending batches are dropped)."""
        if self._pool is not None:
            with self._lock:
                for future in self._pending.values():
                    future.cancel()
                self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None


def prediction_vector(outputs) -> np.ndarray:
    """Model outputs (tensor [B] / [B, 1] or dict with `ctr`) -> float64 [B]."""
    from dmgin_tf.features import PREDICTION
    if isinstance(outputs, dict):
        outputs = outputs[PREDICTION] if PREDICTION in outputs else next(iter(outputs.values()))
    return np.asarray(outputs, dtype=np.float64).reshape(-1)


def predict_split(model, split: Split, batch_size: int, backend: Optional[str] = None) -> np.ndarray:
    """CTR predictions for every example of `split`: float64 `[N]`, in split order.

    Batches have a fixed size: the last one is padded by repeating its first example and
    the padding's outputs are dropped, so a jit-compiled predict step never sees a new shape.
    """
    backend = backend or keras.backend.backend()
    n = len(split)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        real = len(idx)
        if real < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - real, idx[0])])
        inputs = cast_for_backend(split.batch(idx), backend)
        out[start:start + real] = prediction_vector(model.predict_on_batch(inputs))[:real]
    return out


def split_metrics(labels: np.ndarray, scores: np.ndarray, user_ids: np.ndarray) -> Dict[str, float]:
    """AUC, GAUC, logloss (and counts) of one split, through `dmgin_tf.evaluation`."""
    from dmgin_tf import evaluation
    return evaluation.evaluate(labels, scores, user_ids)


class ValidationMetrics(keras.callbacks.Callback):
    """Exact validation AUC / GAUC / logloss at each epoch end, added to the logs.

    Must come before EarlyStopping / ModelCheckpoint / TensorBoard in the callback list:
    they read `val_auc` from the same logs dict.
    """

    async_safe = True   # epoch hooks only: lets Keras dispatch steps without a host sync

    def __init__(self, split: Split, batch_size: int, prefix: str = "val_", verbose: int = 1):
        super().__init__()
        self.split = split
        self.batch_size = batch_size
        self.prefix = prefix
        self.verbose = verbose
        self.results: Dict[int, dict] = {}   # epoch (0-based) -> full metrics dict

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not len(self.split):
            return
        t0 = time.perf_counter()
        scores = predict_split(self.model, self.split, self.batch_size)
        metrics = split_metrics(self.split.labels, scores, self.split.user_ids)
        self.results[epoch] = metrics
        for name in ("auc", "gauc", "logloss"):
            value = metrics.get(name)
            logs[self.prefix + name] = float("nan") if value is None else float(value)
        logs[self.prefix + "seconds"] = time.perf_counter() - t0
        if self.verbose:
            print(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  "
                  f"{self.prefix}auc {logs[self.prefix + 'auc']:.4f}  "
                  f"{self.prefix}gauc {logs[self.prefix + 'gauc']:.4f}  "
                  f"{self.prefix}logloss {logs[self.prefix + 'logloss']:.4f}  "
                  f"({logs.get('train_examples_per_second', 0):.0f} ex/s)", flush=True)


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch's training steps and examples/s (before validation)."""

    async_safe = True   # epoch hooks only: lets Keras dispatch steps without a host sync

    def __init__(self, examples_per_epoch: int):
        super().__init__()
        self.examples_per_epoch = int(examples_per_epoch)
        self.seconds: List[float] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        dt = time.perf_counter() - self._t0
        self.seconds.append(dt)
        if logs is not None:
            logs["train_seconds"] = dt
            logs["train_examples_per_second"] = self.examples_per_epoch / max(dt, 1e-9)


class StepProgress(keras.callbacks.Callback):
    """A progress line within long epochs, at most one per `every_s` seconds:
    ``  epoch 1: step 120/700 (17%), 950 ex/s, ~61 s left``. Short epochs print none
    (the epoch's own line follows soon enough). Reads no logs, so steps are not synced.
    The first epoch's first steps include the compilation, so its rate starts low."""

    async_safe = True

    def __init__(self, steps_per_epoch: int, batch_size: int, every_s: float = 30.0):
        super().__init__()
        self.steps, self.batch_size, self.every_s = int(steps_per_epoch), int(batch_size), every_s
        self._epoch = 0
        self._t0 = self._last = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._t0 = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self._last < self.every_s or batch + 1 >= self.steps:
            return
        self._last = now
        done = batch + 1
        rate = done * self.batch_size / max(now - self._t0, 1e-9)
        left = (self.steps - done) * self.batch_size / max(rate, 1e-9)
        print(f"  epoch {self._epoch + 1}: step {done:,}/{self.steps:,} "
              f"({100 * done / self.steps:.0f}%), {rate:,.0f} ex/s, ~{left:.0f} s left",
              flush=True)


class EpochCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that saves at epoch ends only (`save_freq="epoch"`), marked
    async-safe.

    Keras' ModelCheckpoint defines `on_train_batch_end`, so a callback list holding one
    turns off async dispatch and pythonifies every step's logs: one host <-> device sync
    per step, which stops the host from building the next batch while the device runs
    this one. Saving per epoch never reads batch logs, so the sync buys nothing.
    """

    async_safe = True

    def __init__(self, filepath: str, **kwargs):
        if kwargs.get("save_freq", "epoch") != "epoch":
            raise ValueError(f"EpochCheckpoint saves per epoch; got save_freq={kwargs['save_freq']!r}")
        super().__init__(filepath, **kwargs)


def _jsonable(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return None if math.isnan(value) else value


class HistoryWriter(keras.callbacks.Callback):
    """Appends each epoch's logs to `history.json` / `history.csv` in `directory`."""

    async_safe = True   # epoch hooks only: lets Keras dispatch steps without a host sync

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.rows: List[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: _jsonable(v) for k, v in sorted((logs or {}).items())})
        self.rows.append(row)
        write_history(self.rows, self.directory)


def write_history(rows: List[dict], directory: str) -> None:
    """Writes per-epoch rows as history.json and history.csv."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "history.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "epoch", k))
    with open(os.path.join(directory, "history.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
