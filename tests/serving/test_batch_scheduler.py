"""The dev server's batch scheduler keeps serving when requests of different shapes
share its queue and some are abandoned there: taking a task out of the queue compared
it with the others field by field — numpy arrays of other shapes — which raised inside
the batch thread and left every later request of the signature waiting forever."""
import threading
import time

import grpc
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


def _checked_run(inputs):
    """Refuses the whole merged batch when any row is negative, as the exported
    signatures' in-graph checks do (`tf.debugging.Assert` over the batch)."""
    time.sleep(0.01)
    if (inputs["x"] < 0).any():
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"x must be >= 0, got {inputs['x'].min()}")
    return {"y": inputs["x"].sum(axis=1, keepdims=True)}


def test_one_bad_request_does_not_fail_the_requests_batched_with_it():
    """A merged batch failing the model's input checks is rerun request by request: the
    request at fault gets its error, every other request its own result (TF Serving
    gives the one error to the whole batch)."""
    isolated = []
    sched = BatchScheduler(_checked_run, BatchOptions(max_batch_size=16,
                                                      batch_timeout_micros=50_000,
                                                      allowed_batch_sizes=(4, 16)),
                           on_isolate=isolated.append)
    try:
        xs = [np.full((1, 3), i, np.float32) for i in range(8)]
        xs[5] = np.full((1, 3), -1, np.float32)
        futures = [sched.submit({"x": x}, 1, timeout_s=10) for x in xs]
        for i, f in enumerate(futures):
            if i == 5:
                with pytest.raises(ServingError, match="x must be >= 0") as err:
                    f.result(timeout=10)
                assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            else:
                assert f.result(timeout=10)["y"][0, 0] == 3 * i
        assert sched.isolated_batches >= 1 and sum(isolated) >= 8
    finally:
        sched.close()


def test_other_errors_of_a_merged_batch_still_reach_every_request():
    """Only input-check failures are isolated; an internal error is the batch's."""
    def broken(inputs):
        raise ServingError(grpc.StatusCode.INTERNAL, "out of memory")
    sched = BatchScheduler(broken, BatchOptions(max_batch_size=8, batch_timeout_micros=50_000))
    try:
        futures = [sched.submit({"x": np.ones((1, 2), np.float32)}, 1, timeout_s=10)
                   for _ in range(4)]
        for f in futures:
            with pytest.raises(ServingError, match="out of memory"):
                f.result(timeout=10)
        assert sched.isolated_batches == 0
    finally:
        sched.close()
