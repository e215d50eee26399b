"""Server-side request batching with TF Serving's `BatchingParameters` semantics.

Concurrent requests to the same signature are queued; a batch thread merges them
along axis 0 into one call of at most `max_batch_size` rows, waiting no longer than
`batch_timeout_micros` after the oldest queued request; the merged batch is padded
up to the next `allowed_batch_sizes` entry by repeating its first row (what TF
Serving's BatchingSession does), run once, and the outputs are split back.

Differences from TF Serving, on purpose and documented in docs/serving.md:
- only requests whose non-batch dimensions match are merged; TF Serving with the
  shipped `pad_variable_length_inputs: true` also merges requests of different
  candidate counts, padding candidates with each request's first one (the same scores
  for every real candidate; tests/export/test_score_cached.py);
- a request larger than `max_batch_size` fails with RESOURCE_EXHAUSTED (TF Serving:
  INVALID_ARGUMENT "Task size ... is larger than maximum input batch size").
- a merged batch that fails the model's input checks (INVALID_ARGUMENT) is rerun
  request by request, so only the request at fault gets the error; TF Serving gives
  that one error to every request of the batch (docs/serving.md, "Request validation").
A full queue (`max_enqueued_batches`) fails with UNAVAILABLE, like TF Serving, which
`dmgin_tf.serving.Client` retries with backoff. A queued request whose RPC was
cancelled or whose deadline passed is dropped before its batch runs (its rows are not
computed for nobody).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np

from dmgin_tf.serving.errors import ServingError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """The subset of `BatchingParameters` the dev server honours (defaults = TF Serving's)."""
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 1
    allowed_batch_sizes: Tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, p) -> "BatchOptions":
        """From a `BatchingParameters` message (`dmgin_tf.serving.protos`)."""
        d = cls()
        return cls(
            max_batch_size=p.max_batch_size.value if p.HasField("max_batch_size") else d.max_batch_size,
            batch_timeout_micros=(p.batch_timeout_micros.value if p.HasField("batch_timeout_micros")
                                  else d.batch_timeout_micros),
            max_enqueued_batches=(p.max_enqueued_batches.value if p.HasField("max_enqueued_batches")
                                  else d.max_enqueued_batches),
            num_batch_threads=(p.num_batch_threads.value if p.HasField("num_batch_threads")
                               else d.num_batch_threads),
            allowed_batch_sizes=tuple(p.allowed_batch_sizes))

    def padded_size(self, n: int) -> int:
        """Smallest allowed batch size >= n (n itself when no sizes are listed)."""
        for size in self.allowed_batch_sizes:
            if size >= n:
                return size
        return n


@dataclasses.dataclass(eq=False)   # removed from the queue by identity: field equality
class _Task:                       # would compare the arrays of tasks of other shapes
    inputs: Mapping[str, np.ndarray]
    size: int
    key: tuple                      # dtypes + non-batch shapes: tasks merge only if equal
    enqueued: float
    future: Future
    alive: Optional[Callable[[], bool]] = None   # False once the RPC is cancelled
    deadline: Optional[float] = None             # time.monotonic() after which nobody waits

    def abandoned(self, now: float) -> bool:
        return (self.alive is not None and not self.alive()) or \
            (self.deadline is not None and now > self.deadline)


def _merge_key(inputs: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((k, np.asarray(v).dtype.str, np.shape(v)[1:]) for k, v in inputs.items()))


def pad_and_concat(parts: Sequence[Mapping[str, np.ndarray]], target: int) -> Dict[str, np.ndarray]:
    """Concatenates per-request inputs along axis 0 and pads to `target` rows by
    repeating row 0 (padding rows are computed and thrown away)."""
    merged = {k: np.concatenate([np.asarray(p[k]) for p in parts], axis=0) for k in parts[0]}
    for k, v in merged.items():
        if v.shape[0] < target:
            pad = np.repeat(v[:1], target - v.shape[0], axis=0)
            merged[k] = np.concatenate([v, pad], axis=0)
    return merged


class BatchScheduler:
    """Batches calls to one `run(inputs) -> outputs` function (one model signature).

    Args:
      run_fn: runs a merged batch; inputs/outputs are dicts of arrays with a shared
        leading dimension.
      options: `BatchOptions`.
      on_batch: called with (real_rows, padded_rows) after each batch (metrics).
      on_isolate: called with the number of requests each time a merged batch that
        failed the model's input checks is rerun request by request (metrics).
    """

    def __init__(self, run_fn: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
                 options: BatchOptions, on_batch: Optional[Callable[[int, int], None]] = None,
                 name: str = "batch", on_isolate: Optional[Callable[[int], None]] = None):
        self._run = run_fn
        self.options = options
        self._on_batch = on_batch or (lambda real, padded: None)
        self._on_isolate = on_isolate or (lambda requests: None)
        self._queue: Deque[_Task] = collections.deque()
        self._queued_rows = 0
        self.isolated_batches = 0    # merged batches rerun request by request (see _loop)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, options.num_batch_threads))]
        for t in self._threads:
            t.start()

    def submit(self, inputs: Mapping[str, np.ndarray], size: int,
               alive: Optional[Callable[[], bool]] = None,
               timeout_s: Optional[float] = None) -> Future:
        """Queues one request of `size` rows; the future yields its outputs. `alive`
        (the RPC's `is_active`) and `timeout_s` let an abandoned request be dropped."""
        opts = self.options
        if size > opts.max_batch_size:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"request has {size} rows, more than the server's max_batch_size "
                               f"{opts.max_batch_size}; split it (Client does this for candidates)")
        now = time.monotonic()
        task = _Task(inputs, size, _merge_key(inputs), now, Future(), alive,
                     None if timeout_s is None else now + timeout_s)
        with self._cond:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            queued_batches = -(-(self._queued_rows + size) // opts.max_batch_size)
            if queued_batches > opts.max_enqueued_batches:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"batch queue full ({self._queued_rows} rows queued, "
                                   f"max_enqueued_batches={opts.max_enqueued_batches}); retry")
            self._queue.append(task)
            self._queued_rows += size
            self._cond.notify_all()
        return task.future

    def __call__(self, inputs: Mapping[str, np.ndarray], size: int,
                 timeout_s: Optional[float] = None,
                 alive: Optional[Callable[[], bool]] = None) -> Mapping[str, np.ndarray]:
        return self.submit(inputs, size, alive, timeout_s).result(timeout=timeout_s)

    def _take_batch(self) -> Optional[List[_Task]]:
        """Waits for a batch: full, or the oldest task's timeout expired."""
        opts = self.options
        timeout_s = opts.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                for t in [t for t in self._queue if t.abandoned(now)]:
                    self._queue.remove(t)
                    self._queued_rows -= t.size
                    t.future.set_exception(ServingError(grpc.StatusCode.CANCELLED,
                                                        "request abandoned before its batch ran"))
                if not self._queue:
                    continue
                head = self._queue[0]
                same = [t for t in self._queue if t.key == head.key]
                rows, batch = 0, []
                for t in same:
                    if rows + t.size > opts.max_batch_size:
                        break
                    batch.append(t)
                    rows += t.size
                full = rows >= opts.max_batch_size or len(batch) < len(same)
                remaining = head.enqueued + timeout_s - time.monotonic()
                if full or remaining <= 0 or self._closed:
                    for t in batch:
                        self._queue.remove(t)
                    self._queued_rows -= rows
                    return batch
                self._cond.wait(timeout=remaining)

    def _loop(self) -> None:
        while True:
            try:
                batch = self._take_batch()
            except Exception as e:  # noqa: BLE001 — a dead batch thread would hang the queue
                log.exception("batch scheduler: taking a batch failed; failing the queued "
                              "requests")
                self._fail_queued(ServingError(grpc.StatusCode.INTERNAL,
                                               f"batch scheduler error: {e}"))
                continue
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except ServingError as e:
                if len(batch) > 1 and e.code == grpc.StatusCode.INVALID_ARGUMENT:
                    # One request's values failed the model's checks (a stale group, a
                    # time in milliseconds): the others merged with it are not wrong.
                    # Each runs alone, so only the request at fault gets the error.
                    self.isolated_batches += 1
                    self._on_isolate(len(batch))
                    for t in batch:
                        self._run_batch([t], fail=True)
                else:
                    self._fail(batch, e)
            except BaseException as e:  # every waiting request gets the error
                self._fail(batch, e)

    def _run_batch(self, batch: List[_Task], fail: bool = False) -> None:
        """Runs `batch` merged (padded to an allowed size) and completes its futures;
        raises the run's error unless `fail`, which gives it to the batch's futures."""
        rows = sum(t.size for t in batch)
        padded = self.options.padded_size(rows)
        try:
            if len(batch) == 1 and padded == rows:
                outputs = self._run(batch[0].inputs)
            else:
                outputs = self._run(pad_and_concat([t.inputs for t in batch], padded))
        except BaseException as e:
            if not fail:
                raise
            self._fail(batch, e)
            return
        self._on_batch(rows, padded)
        start = 0
        for t in batch:
            t.future.set_result({k: v[start:start + t.size] for k, v in outputs.items()})
            start += t.size

    @staticmethod
    def _fail(batch: List[_Task], error: BaseException) -> None:
        for t in batch:
            if not t.future.done():
                t.future.set_exception(error)

    def _fail_queued(self, error: Exception) -> None:
        with self._cond:
            while self._queue:
                task = self._queue.popleft()
                if not task.future.done():
                    task.future.set_exception(error)
            self._queued_rows = 0

    def close(self) -> None:
        """Finishes queued work, then stops the batch threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)
