"""The dev server's batch scheduler keeps serving when requests of different shapes
share its queue and some are abandoned there: taking a task out of the queue compared
it with the others field by field — numpy arrays of other shapes — which raised inside
the batch thread and left every later request of the signature waiting forever."""
import threading
import time

import numpy as np
import pytest

from dmgin_tf.serving.batching import BatchOptions, BatchScheduler
from dmgin_tf.serving.errors import ServingError


def _run(inputs):
    time.sleep(0.01)
    return {"y": inputs["x"].sum(axis=1, keepdims=True)}


def test_mixed_shapes_and_abandoned_requests_leave_the_scheduler_serving():
    sched = BatchScheduler(_run, BatchOptions(max_batch_size=8, batch_timeout_micros=20_000,
                                              num_batch_threads=1))
    try:
        rng = np.random.default_rng(0)
        futures, expected, abandoned = [], [], []
        for i in range(24):
            x = rng.normal(size=(1, 16 if i % 2 else 64)).astype(np.float32)
            if i % 3 == 0:      # gone before its batch runs (deadline already over)
                abandoned.append(sched.submit({"x": x}, 1, timeout_s=0.0))
            else:
                futures.append(sched.submit({"x": x}, 1, timeout_s=10))
                expected.append(x.sum())
        for f, want in zip(futures, expected):
            np.testing.assert_allclose(f.result(timeout=10)["y"][0, 0], want, rtol=1e-5)
        for f in abandoned:
            with pytest.raises(ServingError, match="abandoned"):
                f.result(timeout=10)
        # Still serving afterwards, and its threads are alive.
        x = np.ones((1, 64), np.float32)
        assert sched({"x": x}, 1, timeout_s=10)["y"][0, 0] == 64
        assert all(t.is_alive() for t in threading.enumerate() if t.name.startswith("batch-"))
    finally:
        sched.close()


def test_an_error_while_taking_a_batch_fails_the_queued_requests_not_the_thread(monkeypatch):
    """Whatever goes wrong in the queue, the requests waiting there get an error and the
    scheduler keeps serving; a dead batch thread left them waiting for their deadline."""
    from dmgin_tf.serving import batching
    calls = {"n": 0}
    abandoned = batching._Task.abandoned

    def fails_once(self, now):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return abandoned(self, now)

    monkeypatch.setattr(batching._Task, "abandoned", fails_once)
    sched = BatchScheduler(_run, BatchOptions(max_batch_size=8, batch_timeout_micros=1000))
    try:
        first = sched.submit({"x": np.ones((1, 4), np.float32)}, 1, timeout_s=10)
        with pytest.raises(ServingError, match="batch scheduler error: boom"):
            first.result(timeout=10)
        assert sched({"x": np.ones((1, 4), np.float32)}, 1, timeout_s=10)["y"][0, 0] == 4
    finally:
        sched.close()
