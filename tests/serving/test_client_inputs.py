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
