"""`Client` refuses what a cast to the signature dtypes would change, and waits through a
server that accepts connections but does not answer yet (no server needed for either)."""
import re
import socket

import numpy as np
import pytest

from dmgin_tf import features as F
from dmgin_tf.serving.client import Client, request_array

L = 4


def _history():
    return {F.HIST_ITEM: np.array([2, 3, 0, 0]), F.HIST_GROUP: np.array([2, 2, 0, 0]),
            F.HIST_BEHAVIOR_ID: np.array([1, 1, 0, 0]),
            F.HIST_TIME: np.array([100, 200, 0, 0]), F.REQUEST_TIME: 300}


@pytest.mark.parametrize("change, words", [
    ({"cand_item": np.array([2, 2 ** 32 + 2], np.int64)}, "input 'cand_item': 4294967298 does "
                                                           "not fit the signature's int32"),
    ({"cand_group": np.array([-2 ** 31 - 1, 2])}, "input 'cand_group': -2147483649"),
    ({F.HIST_TIME: np.array([100.5, 200, 0, 0])}, "input 'hist_time': integer values expected"),
    ({F.HIST_ITEM: np.array(["2", "3", "0", "0"])}, "input 'hist_item': integer values expected"),
])
def test_rank_refuses_ids_a_cast_would_change(change, words):
    """numpy wraps 2**32 + 2 to 2 (a valid item) and truncates 100.5 to 100: the request
    would be scored for other values than the caller's, with no error anywhere."""
    client = Client("127.0.0.1:1", "dmgin")          # never contacted: the inputs fail first
    hist = dict(_history(), **{k: v for k, v in change.items() if not k.startswith("cand")})
    cand = {"cand_item": np.array([2, 3]), "cand_group": np.array([2, 2])}
    cand.update({k: v for k, v in change.items() if k.startswith("cand")})
    with pytest.raises(ValueError, match=re.escape(words)):
        client.rank(hist, **cand)
    client.close()


def test_request_array_keeps_what_fits():
    out = request_array("cand_item", np.array([2.0, 7.0]), np.int32)
    assert out.dtype == np.int32 and out.tolist() == [2, 7]
    assert request_array("hist_time", [2 ** 40], np.int64).tolist() == [2 ** 40]
    assert request_array("cand_item", np.zeros(0), np.int32).shape == (0,)


def test_wait_until_available_waits_through_a_silent_server():
    """A port that accepts TCP connections but never answers (a server still loading its
    models) is waited on until the timeout, not reported as DEADLINE_EXCEEDED at once."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = Client(f"127.0.0.1:{port}", "dmgin")
        with pytest.raises(TimeoutError, match="not AVAILABLE"):
            client.wait_until_available(timeout_s=2.5)
        client.close()


@pytest.mark.parametrize("call, words", [
    (lambda c: c.rank(_history(), np.ones((2, 3), np.int32), np.ones((2, 3), np.int32)),
     "input 'cand_item': shape [2, 3]; one user's candidates are [N]"),
    (lambda c: c.rank(dict(_history(), **{F.HIST_ITEM: np.ones((2, L), np.int32)}),
                      [2], [2]), "input 'hist_item': shape [2, 4]; one user's history"),
    (lambda c: c.rank(dict(_history(), **{F.REQUEST_TIME: np.array([300, 301])}), [2], [2]),
     "input 'request_time': shape [2]; one user's request time"),
    (lambda c: c.score_cached({"state_time": np.int64(1)}, [2], [2], request_time=300.5),
     "input 'request_time': integer values expected"),
    (lambda c: c.rank(_history(), np.array([True, False]), [2, 2]),
     "input 'cand_item': integer values expected, got booleans"),
    (lambda c: c.rank(dict(_history(), **{F.REQUEST_TIME: float(2 ** 63)}), [2], [2]),
     "does not fit the signature's int64"),
])
def test_one_user_calls_refuse_batch_shapes_and_lossy_values_by_name(call, words):
    """A [2, 3] candidate array was flattened into one user's 6 candidates, two users'
    histories into one [1, 2L] row; score_cached truncated a float request_time."""
    client = Client("127.0.0.1:1", "dmgin")
    with pytest.raises(ValueError, match=re.escape(words)):
        call(client)
    client.close()


def test_client_settings_are_checked_and_a_callers_channel_stays_open():
    import grpc
    with pytest.raises(ValueError, match="candidate_buckets"):
        Client("127.0.0.1:1", "dmgin", candidate_buckets=())
    with pytest.raises(ValueError, match="timeout_s"):
        Client("127.0.0.1:1", "dmgin", timeout_s=None)
    channel = grpc.insecure_channel("127.0.0.1:1")
    with Client("127.0.0.1:1", "dmgin", channel=channel):
        pass
    channel.close()                     # still the caller's, still open until here


class _Status(Exception):
    """A stand-in gRPC error (code, details)."""

    def __init__(self, code, details=""):
        import grpc
        super().__init__(details)
        self._code = getattr(grpc.StatusCode, code)

    def code(self):
        return self._code

    def details(self):
        return str(self)


class _Scripted(Client):
    """`predict` answered by a script: (version that answers, error or None, seconds)."""

    def __init__(self, script, **kw):
        super().__init__("127.0.0.1:1", "dmgin", candidate_buckets=(4,), **kw)
        self.script, self.asked = list(script), []

    def predict(self, inputs, *, signature=None, version=None, timeout_s=None, **kw):
        import grpc
        import time
        answer, error, sleep = self.script.pop(0)
        self.asked.append(version)
        time.sleep(sleep)
        if error:
            raise type("E", (_Status, grpc.RpcError), {})(*error)
        self.last_version = answer
        return {F.PREDICTION: np.full((1, 4), answer / 10, np.float32)}


def test_rank_scores_a_whole_list_with_one_version_and_one_deadline():
    import grpc
    # The first chunk's version answers every chunk (no mix after a hot swap) ...
    c = _Scripted([(1, None, 0), (1, None, 0), (1, None, 0)])
    np.testing.assert_allclose(c.rank(_history(), np.arange(2, 12), np.full(10, 2)),
                               np.full(10, 0.1), rtol=1e-6)
    assert c.asked == [None, 1, 1]
    # ... and when it is unloaded mid-list, the list starts over on the new one.
    c = _Scripted([(1, None, 0), (None, ("NOT_FOUND", "version 1 not found"), 0),
                   (2, None, 0), (2, None, 0)])
    np.testing.assert_allclose(c.rank(_history(), np.arange(2, 8), np.full(6, 2)),
                               np.full(6, 0.2), rtol=1e-6)
    assert c.asked == [None, 1, None, 2]
    # No candidates, no call: no version answered (not this thread's previous one).
    assert c.rank(_history(), [], []).shape == (0,) and c.last_version is None
    # One deadline for the list, not one per chunk.
    c = _Scripted([(1, None, 0.3)] * 5, timeout_s=0.5)
    with pytest.raises(grpc.RpcError) as e:
        c.rank(_history(), np.arange(2, 22), np.full(20, 2))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and 1 <= len(c.asked) < 5
    # A chunk's error names where in the caller's list its positions start.
    c = _Scripted([(1, None, 0), (None, ("INVALID_ARGUMENT", "id 99 at [0, 1]"), 0)])
    with pytest.raises(grpc.RpcError) as e:
        c.rank(_history(), np.arange(2, 8), np.full(6, 2))
    assert "candidates 4..5 of the list" in e.value.details(), e.value.details()


def test_example_lists_go_in_batches_and_errors_name_the_batch():
    """`tensorize` sent every example in one request (a server's max batch size refused
    5,000), and an error's "example k" counted within the failing batch."""
    import grpc
    sent = []

    class Fake(Client):
        def predict(self, inputs, *, signature=None, timeout_s=None, **kw):
            sent.append(len(inputs["examples"]))
            if b"bad" in list(inputs["examples"]):
                raise type("E", (_Status, grpc.RpcError), {})(
                    "INVALID_ARGUMENT", "example 1 (3 bytes) is not a serialized tf.train.Example")
            return {F.HIST_ITEM: np.zeros((len(inputs["examples"]), L), np.int32)}
    c = Fake("127.0.0.1:1", "dmgin")
    assert c.tensorize([b"x"] * 2, batch_size=2)[F.HIST_ITEM].shape == (2, L)
    assert c.tensorize([])[F.HIST_ITEM].shape == (0, L)     # keys and shapes, no rows
    assert sent == [2, 0]
    sent.clear()
    with pytest.raises(grpc.RpcError) as e:
        c.tensorize([b"x", b"x", b"x", b"bad", b"x"], batch_size=2)
    assert sent == [2, 2] and "examples 2..3 of the list" in e.value.details()
