"""Dev server, driven only through the official tensorflow-serving-api stubs."""
import os
import re
import threading
import time
import urllib.request

import grpc
import numpy as np
import portpicker
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from dmgin_tf.serving.batching import BatchOptions
from dmgin_tf.serving.protos import read_model_server_config
from dmgin_tf.serving.server import DevServer
from serving.standin import make_example, reference, save_standin, write_models_config

NAME = "standin"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    base = str(root / NAME)
    save_standin(base, 1)
    cfg = read_model_server_config(write_models_config(str(root / "models.config"), NAME, base))
    server = DevServer(cfg, port=portpicker.pick_unused_port(), metrics_port=0,
                       max_batch_size=64, max_message_bytes=1 << 20, poll_interval_s=60)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, prediction_service_pb2_grpc.PredictionServiceStub(channel), \
        model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()
    server.stop(1)


def _request(signature="predict_raw", version=None, label=None, **inputs):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = NAME
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label:
        req.model_spec.version_label = label
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return req


def _abort(stub_call, req):
    with pytest.raises(grpc.RpcError) as info:
        stub_call(req, timeout=10)
    return info.value.code(), info.value.details()


def test_predict_raw_matches_reference(served):
    _, stub, _ = served
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    resp = stub.Predict(_request(x=x), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["ctr"]), reference(x, 1), rtol=1e-6)
    assert resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == "predict_raw"
    # Values in the typed field, as TF Serving answers (Java / Go clients read it).
    assert not resp.outputs["ctr"].tensor_content
    np.testing.assert_allclose(resp.outputs["ctr"].float_val, reference(x, 1), rtol=1e-6)


def test_serving_default_parses_examples(served):
    _, stub, _ = served
    x = np.array([[1, 2, 3], [0, 0, 0]], np.float32)
    ex = np.array([make_example(r) for r in x], dtype=object)
    resp = stub.Predict(_request("serving_default", examples=ex), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["ctr"]), reference(x, 1), rtol=1e-6)


def test_metadata_and_status(served):
    _, stub, model_stub = served
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = NAME
    req.metadata_field.append("signature_def")
    resp = stub.GetModelMetadata(req, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    # as TF Serving lists them: the SavedModel's init op too
    assert set(sig_map.signature_def) == {"serving_default", "predict_raw", "rank",
                                          "__saved_model_init_op"}
    assert set(sig_map.signature_def["predict_raw"].inputs) == {"x"}
    assert resp.model_spec.version.value == 1

    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = NAME
    status = model_stub.GetModelStatus(sreq, timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    sreq.model_spec.version.value = 7           # the versions there are, named
    code, details = _abort(model_stub.GetModelStatus, sreq)
    assert code == grpc.StatusCode.NOT_FOUND and "versions with a status: [1]" in details, details


@pytest.mark.parametrize("case", [
    "missing_input", "extra_input", "wrong_dtype", "wrong_shape", "wrong_rank", "malformed_example",
    "example_missing_feature", "example_wrong_type", "unknown_signature",
    "unknown_model", "unknown_version", "unknown_label", "oversized_batch",
    "oversized_message", "malformed_tensor", "bad_output_filter", "duplicate_output_filter",
    "repeated_value_shape",
    "repeated_value_rows"])
def test_bad_input_gets_status_and_server_keeps_serving(served, case):
    _, stub, _ = served
    ok = np.zeros((1, 3), np.float32)
    expected = grpc.StatusCode.INVALID_ARGUMENT
    if case == "missing_input":
        req, words = _request(), ["missing", "'x'"]
    elif case == "extra_input":
        req, words = _request(x=ok, y=ok), ["unknown input", "'y'"]
    elif case == "wrong_dtype":
        req, words = _request(x=ok.astype(np.int64)), ["'x'", "int64", "float32"]
    elif case == "wrong_shape":
        req, words = _request(x=np.zeros((2, 4), np.float32)), ["'x'", "[2, 4]", "[?, 3]"]
    elif case == "wrong_rank":
        req, words = _request(x=np.zeros((3,), np.float32)), ["'x'", "[3]", "[?, 3]"]
    elif case == "malformed_example":
        req, words = _request("serving_default", examples=np.array([b"\xff\x00garbage"], object)), \
            ["'examples'", "example 0 (9 bytes) is not a serialized tf.train.Example"]
    elif case == "example_missing_feature":
        empty = tf.train.Example().SerializeToString()
        req, words = _request("serving_default", examples=np.array([empty], object)), ["x", "required"]
    elif case == "example_wrong_type":
        bad = tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(
            int64_list=tf.train.Int64List(value=[1, 2, 3]))})).SerializeToString()
        req, words = _request("serving_default", examples=np.array([bad], object)), ["x", "type"]
    elif case == "unknown_signature":
        req, words = _request("nope", x=ok), ["'nope'", "not found"]
        expected = grpc.StatusCode.FAILED_PRECONDITION      # as TF Serving answers
    elif case == "unknown_model":
        req, words = _request(x=ok), ["'other'", "not found"]
        req.model_spec.name = "other"
        expected = grpc.StatusCode.NOT_FOUND
    elif case == "unknown_version":
        req, words, expected = _request(version=7, x=ok), ["version 7"], grpc.StatusCode.NOT_FOUND
    elif case == "unknown_label":
        req, words = _request(label="canary", x=ok), ["'canary'", "unrecognized"]  # TF Serving's
    elif case == "oversized_batch":
        req, words = _request(x=np.zeros((65, 3), np.float32)), ["65 rows", "64"]
        expected = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif case == "oversized_message":
        req, words = _request(x=np.zeros((200_000, 3), np.float32)), ["message"]
        expected = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif case == "malformed_tensor":
        req, words = _request(x=ok), ["'x'", "malformed"]
        req.inputs["x"].tensor_content = b"\x00" * 5  # 5 bytes for a [1, 3] float tensor
    elif case == "bad_output_filter":
        req, words = _request(x=ok), ["output_filter", "'prob'"]
        req.output_filter.append("prob")
    elif case == "duplicate_output_filter":
        req, words = _request(x=ok), ["duplicate", "'ctr'"]
        req.output_filter.extend(["ctr", "ctr"])
    elif case in ("repeated_value_shape", "repeated_value_rows"):
        # A few bytes declaring 600M values (TensorFlow would repeat the one value):
        # refused from the header, before any value is decoded.
        req = _request(x=ok)
        shape = [1, 600_000_000] if case == "repeated_value_shape" else [200_000_000, 3]
        proto = tf.make_tensor_proto(0.0, dtype=tf.float32)
        proto.tensor_shape.Clear()
        for d in shape:
            proto.tensor_shape.dim.add(size=d)
        req.inputs["x"].CopyFrom(proto)
        words = (["'x'", "[1, 600000000]", "[?, 3]"] if case == "repeated_value_shape" else
                 ["'x'", "declares 600,000,000 values but the proto carries 1"])
    code, details = _abort(stub.Predict, req)
    assert code == expected, details
    for w in words:
        assert w.lower() in details.lower(), details
    # The next good request is served.
    resp = stub.Predict(_request(x=ok), timeout=10)
    assert tf.make_ndarray(resp.outputs["ctr"]).shape == (1,)


def test_metrics_endpoint_counts_requests(served):
    server, stub, _ = served
    stub.Predict(_request(x=np.zeros((2, 3), np.float32)), timeout=10)
    url = f"http://127.0.0.1:{server.metrics_http.port}/monitoring/prometheus/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'dmgin_serving_requests_total{code="OK",method="Predict",model="standin",signature="predict_raw"}' in text
    assert 'dmgin_serving_model_version_state{model="standin",version="1"} 30.0' in text
    # Names a client makes up do not become label values (unbounded time series).
    ok = np.zeros((1, 3), np.float32)
    for i in range(3):
        _abort(stub.Predict, _request(signature=f"sig{i}", x=ok))
        req = _request(x=ok)
        req.model_spec.name = f"model{i}"
        _abort(stub.Predict, req)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "sig0" not in text and "model0" not in text
    labels = set(re.findall(r'dmgin_serving_requests_total\{code="\w+",method="Predict",'
                            r'model="(\w+)",signature="(\w+)"\}', text))
    assert {("standin", "unknown"), ("unknown", "unknown")} <= labels, labels


def test_classify_and_regress_answer_unimplemented_without_a_server_traceback(served,
                                                                            caplog):
    """The generated servicer's NotImplementedError was logged by gRPC as a server
    error with a traceback on every such call."""
    import logging

    from tensorflow_serving.apis import (classification_pb2, inference_pb2,
                                         regression_pb2)
    _, stub, _ = served
    with caplog.at_level(logging.ERROR):
        for call, req in ((stub.Classify, classification_pb2.ClassificationRequest()),
                          (stub.Regress, regression_pb2.RegressionRequest()),
                          (stub.MultiInference, inference_pb2.MultiInferenceRequest())):
            if call is not stub.MultiInference:
                req.model_spec.name = NAME
            code, details = _abort(call, req)
            assert code == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in details, details
    assert not [r for r in caplog.records if "Exception calling application" in r.getMessage()]


def test_batching_merges_concurrent_requests_and_pads(tmp_path):
    base = str(tmp_path / NAME)
    save_standin(base, 3)
    cfg = read_model_server_config(write_models_config(str(tmp_path / "m.config"), NAME, base))
    opts = BatchOptions(max_batch_size=8, batch_timeout_micros=200_000, max_enqueued_batches=100,
                        num_batch_threads=1, allowed_batch_sizes=(4, 8))
    server = DevServer(cfg, port=0, batching=opts, poll_interval_s=60)
    port = server.start()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 2, 3, 1, 1)]
    results, errors = [None] * len(xs), []

    def call(i):
        try:
            results[i] = tf.make_ndarray(stub.Predict(_request(x=xs[i]), timeout=10).outputs["ctr"])
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    try:
        assert not errors
        for x, r in zip(xs, results):
            np.testing.assert_allclose(r, reference(x, 3), rtol=1e-6)
        # 8 rows arrived within the 200 ms window: fewer executed batches than requests,
        # all padded to an allowed size.
        samples = {s.name: s.value for m in server.metrics.registry.collect() for s in m.samples}
        n_batches = samples['dmgin_serving_batch_rows_count']
        assert n_batches < len(xs)
        assert samples['dmgin_serving_batch_rows_sum'] == 8
        # a 9-row request exceeds max_batch_size
        code, details = _abort(stub.Predict, _request(x=np.zeros((9, 3), np.float32)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max batch size 8" in details
    finally:
        server.stop(1)


def test_a_request_failing_the_models_checks_does_not_fail_its_batch(tmp_path):
    """With server-side batching, one request the model refuses (here a tf.Example
    without the feature `x`: the graph's parse fails for the merged batch) gets
    INVALID_ARGUMENT, and the requests merged with it are answered."""
    base = str(tmp_path / NAME)
    save_standin(base, 2)
    cfg = read_model_server_config(write_models_config(str(tmp_path / "m.config"), NAME, base))
    opts = BatchOptions(max_batch_size=8, batch_timeout_micros=300_000, max_enqueued_batches=100,
                        num_batch_threads=1, allowed_batch_sizes=(4, 8))
    server = DevServer(cfg, port=0, batching=opts, poll_interval_s=60)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=3).astype(np.float32) for _ in range(6)]
    bad = tf.train.Example().SerializeToString()
    examples = [make_example(x) for x in xs]
    examples[3] = bad
    results, codes = [None] * len(xs), [None] * len(xs)

    def call(i):
        req = _request("serving_default", examples=np.array([examples[i]], object))
        try:
            results[i] = tf.make_ndarray(stub.Predict(req, timeout=20).outputs["ctr"])
            codes[i] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            codes[i] = e.code()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert codes[3] == grpc.StatusCode.INVALID_ARGUMENT
        for i, x in enumerate(xs):
            if i != 3:
                assert codes[i] == grpc.StatusCode.OK, (i, codes)
                np.testing.assert_allclose(results[i], reference(x[None], 2), rtol=1e-6)
        samples = {s.name: s.value for m in server.metrics.registry.collect() for s in m.samples}
        assert samples["dmgin_serving_isolated_batches_total"] >= 1
    finally:
        channel.close()
        server.stop(1)


def test_version_hot_swap_under_load_drops_nothing(tmp_path):
    base = str(tmp_path / NAME)
    save_standin(base, 1)
    cfg = read_model_server_config(write_models_config(str(tmp_path / "m.config"), NAME, base))
    server = DevServer(cfg, port=0, poll_interval_s=0.05)
    port = server.start()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    x = np.ones((4, 3), np.float32)
    stop = threading.Event()
    seen, failures, counts = set(), [], [0]

    def traffic():
        while not stop.is_set():
            try:
                resp = stub.Predict(_request(x=x), timeout=10)
                v = resp.model_spec.version.value
                np.testing.assert_allclose(tf.make_ndarray(resp.outputs["ctr"]), reference(x, v), rtol=1e-6)
                seen.add(v)
                counts[0] += 1
            except Exception as e:  # any failure is a dropped request
                failures.append(repr(e))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        save_standin(base, 2)
        deadline = time.monotonic() + 30
        while server.registry.available_versions(NAME) != [2] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        server.stop(1)
    assert server.registry.available_versions(NAME) == [2]
    assert not failures, failures[:3]
    assert seen == {1, 2} and counts[0] > 20
    states = dict((v, s.state) for v, s in server.registry.status(NAME))
    assert states == {1: 50, 2: 30}  # END, AVAILABLE


def test_signature_runner_flat_call_equals_structured_call(tmp_path):
    """Requests run through the function's flat parameter order (the fast path); it must
    give what the keyword call gives, with the inputs in any dict order."""
    from serving.standin import ids_inputs, save_ids_standin
    from dmgin_tf.serving.model_registry import SignatureRunner
    loaded = tf.saved_model.load(save_ids_standin(str(tmp_path), 1))
    fn = loaded.signatures["rank"]
    runner = SignatureRunner("rank", fn)
    assert runner._flat_order is not None  # the pinned TensorFlow exposes the order
    inputs = dict(reversed(list(ids_inputs(users=2, cands=4).items())))
    fast = runner.run(inputs)
    slow = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    assert sorted(fast) == sorted(slow)
    for k in slow:
        np.testing.assert_array_equal(fast[k], slow[k])
    runner._flat_order = None  # the fallback path
    for k, v in runner.run(inputs).items():
        np.testing.assert_array_equal(v, slow[k])


def test_serve_sets_tensorflow_thread_pools(tmp_path):
    """`dmgin serve --tensorflow-intra/inter-op-parallelism` (TF Serving's flags) set the
    pools before the model loads, say so on the start line, and the server serves."""
    import subprocess
    import sys
    from dmgin_tf.serving import Client
    base = str(tmp_path / "m")
    save_standin(base, 1)
    cfg = write_models_config(str(tmp_path / "models.config"), "m", base)
    port = portpicker.pick_unused_port()
    proc = subprocess.Popen([sys.executable, "-m", "dmgin_tf.cli.main", "serve",
                             "--model-config-file", cfg, "--port", str(port),
                             "--tensorflow-intra-op-parallelism", "1",
                             "--tensorflow-inter-op-parallelism", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "TensorFlow threads: intra-op 1, inter-op 2" in line, line
        x = np.array([[1.0, 2.0, 3.0]], np.float32)
        with Client(f"127.0.0.1:{port}", "m", signature="predict_raw", timeout_s=30) as c:
            np.testing.assert_allclose(c.predict({"x": x})["ctr"], reference(x, 1), rtol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_out_of_vocabulary_hints_name_the_right_unknown_id():
    """Items and groups have an OOV id (1); behavior types do not (1 is the first type,
    0 the unknown one), so each error says what to send instead."""
    from dmgin_tf import features as F
    from dmgin_tf.serving.errors import ServingError
    from dmgin_tf.serving.validation import Contract, check_request
    contract = Contract(item_vocab_size=10, group_vocab_size=5, num_behavior_types=4)
    ok = {F.HIST_ITEM: np.array([[2, 3]]), F.HIST_BEHAVIOR_ID: np.array([[1, 2]])}
    check_request("predict_raw", ok, contract)
    with pytest.raises(ServingError, match=r"'hist_behavior_id': id 99 .*send 0 for an "
                                           r"unknown type"):
        check_request("predict_raw", dict(ok, **{F.HIST_BEHAVIOR_ID: np.array([[1, 99]])}),
                      contract)
    with pytest.raises(ServingError, match=r"'hist_item': id 10 .*send the OOV id 1"):
        check_request("predict_raw", dict(ok, **{F.HIST_ITEM: np.array([[2, 10]])}), contract)


def test_history_after_the_request_and_unparsable_examples_are_refused():
    """Both used to pass: a later history event was scored (a clock or unit bug on the
    client), and garbage bytes failed inside the signature with a raw TF message."""
    from tensorflow.core.example import example_pb2

    from dmgin_tf import features as F
    from dmgin_tf.serving.errors import ServingError
    from dmgin_tf.serving.validation import Contract, check_request
    contract = Contract()
    raw = {F.HIST_ITEM: np.array([[5, 6, 0]]), F.HIST_TIME: np.array([[100, 200, 999]]),
           F.REQUEST_TIME: np.array([200])}
    check_request("predict_raw", raw, contract)      # equal time and a padded slot: fine
    # score_cached: the state holds the user's events up to state_time.
    cached = {"state_time": np.array([200, 300]), F.REQUEST_TIME: np.array([200, 400])}
    check_request("score_cached", cached, contract)
    with pytest.raises(ServingError, match=r"'request_time': 250 \(\[1\]\) is before the "
                                           r"user state's state_time 300"):
        check_request("score_cached", dict(cached, **{F.REQUEST_TIME: np.array([200, 250])}),
                      contract)
    with pytest.raises(ServingError, match=r"'hist_time': history event at 300 \(\[0, 1\]\) "
                                           r"is after request_time 200"):
        check_request("predict_raw", dict(raw, **{F.HIST_TIME: np.array([[100, 300, 0]])}),
                      contract)

    def example(now, past):
        ex = example_pb2.Example()
        ex.features.feature[F.TIMESTAMP].int64_list.value.append(now)
        ex.features.feature[F.HIST_TIMESTAMP].int64_list.value.extend(past)
        return ex.SerializeToString()
    check_request("serving_default", {"examples": np.array([example(200, [100, 200])],
                                                            dtype=object)}, contract)
    with pytest.raises(ServingError, match=r"example 1: 'hist_timestamp' holds 300, after "
                                           r"its 'timestamp' 200"):
        check_request("serving_default", {"examples": np.array(
            [example(200, [100]), example(200, [300])], dtype=object)}, contract)
    with pytest.raises(ServingError, match=r"example 0 \(9 bytes\) is not a serialized "
                                           r"tf.train.Example"):
        check_request("serving_default", {"examples": np.array([b"\xff\x00garbage"],
                                                               dtype=object)}, contract)


def test_the_log_says_when_a_version_starts_loading(tmp_path, caplog):
    """A load with warmup can take a minute; the log used to say only 'available' at
    the end, so a busy server gave no sign of why."""
    import logging

    from dmgin_tf.serving.model_registry import ModelRegistry
    base = str(tmp_path / NAME)
    save_standin(base, 1)
    cfg = read_model_server_config(write_models_config(str(tmp_path / "m.config"), NAME, base))
    with caplog.at_level(logging.INFO, logger="dmgin_tf.serving.model_registry"):
        ModelRegistry(cfg, settle_s=0).refresh(initial=True)
    messages = [r.getMessage() for r in caplog.records]
    loading = [i for i, m in enumerate(messages) if "version 1: loading from" in m]
    available = [i for i, m in enumerate(messages) if "version 1 available" in m]
    assert loading and available and loading[0] < available[0], messages


def test_negative_counts_in_a_user_state_are_refused():
    """A negative group size made score_cached's scores NaN, negative counts shifted
    them, both under status OK (the graph refuses them too: tests/export)."""
    from dmgin_tf.serving.errors import ServingError
    from dmgin_tf.serving.validation import Contract, check_request
    state = {"lookup_group_size": np.array([[3, 0]], np.int32),
             "item_counts": np.zeros((1, 2, 4), np.float32)}
    check_request("score_cached", state, Contract())
    with pytest.raises(ServingError, match=r"'lookup_group_size': count -1 at \[0, 1\] is "
                                           r"negative"):
        check_request("score_cached", dict(state, lookup_group_size=np.array([[3, -1]])),
                      Contract())
    with pytest.raises(ServingError, match=r"'item_counts': count -1000000000.0 at "
                                           r"\[0, 0, 0\] is negative"):
        check_request("score_cached", dict(state, item_counts=state["item_counts"] - 1e9),
                      Contract())


def test_histories_newest_first_are_refused():
    """The model keeps and groups the newest events by position: a history sent newest
    first (a common feature-store order) was read backwards and scored under OK."""
    from tensorflow.core.example import example_pb2

    from dmgin_tf import features as F
    from dmgin_tf.serving.errors import ServingError
    from dmgin_tf.serving.validation import Contract, check_request
    raw = {F.HIST_ITEM: np.array([[0, 5, 6, 7, 0]]),           # padding on both sides
           F.HIST_TIME: np.array([[0, 100, 100, 200, 0]]), F.REQUEST_TIME: np.array([300])}
    check_request("predict_raw", raw, Contract())          # equal times are in order
    with pytest.raises(ServingError, match=r"'hist_time': history not oldest first: 100 at "
                                           r"\[0, 3\] is before 200 at \[0, 2\]"):
        check_request("predict_raw", dict(raw, **{F.HIST_TIME: np.array([[0, 100, 200, 100,
                                                                          0]])}), Contract())
    ex = example_pb2.Example()
    ex.features.feature[F.TIMESTAMP].int64_list.value.append(300)
    ex.features.feature[F.HIST_TIMESTAMP].int64_list.value.extend([200, 100])
    with pytest.raises(ServingError, match=r"example 0: 'hist_timestamp' is not oldest first: "
                                           r"100 at position 1 is before 200 at 0"):
        check_request("serving_default", {"examples": np.array([ex.SerializeToString()],
                                                               dtype=object)}, Contract())


def test_client_versions_per_thread_and_the_newest_available(tmp_path):
    """`last_version` was one attribute for every thread sharing a Client (a thread could
    read another call's version), and `wait_until_available` returned the oldest of the
    available versions — pinning callers to the model being replaced."""
    from dmgin_tf.serving import Client
    from serving.standin import ids_inputs, save_ids_standin
    base = str(tmp_path / "ids")
    for v in (1, 2):
        save_ids_standin(base, v)
    cfg = read_model_server_config(write_models_config(str(tmp_path / "models.config"), "ids",
                                                       base, policy="all {}"))
    server = DevServer(cfg, port=portpicker.pick_unused_port(), metrics_port=0,
                       poll_interval_s=60)
    port = server.start()
    try:
        with Client(f"127.0.0.1:{port}", "ids", candidate_buckets=(4, 8)) as c:
            assert c.wait_until_available(10) == 2
            assert c.wait_until_available(10, version=1) == 1
            hist = {k: v[0] for k, v in ids_inputs(1, 1).items() if not k.startswith("cand")}
            seen = {}

            def call(version, then):
                c.predict(dict(ids_inputs(1, 3, rank=False)), signature="predict_raw",
                          version=version)
                then.wait(10)
                seen[version] = c.last_version
            other = threading.Event()
            t = threading.Thread(target=call, args=(1, other))
            t.start()
            c.rank(hist, [5, 5], [2, 2])             # this thread: answered by version 2
            other.set()
            t.join(10)
            assert seen == {1: 1} and c.last_version == 2
    finally:
        server.stop(1)


def test_version_folders_are_read_like_tf_serving(tmp_path):
    """A folder whose name passed str.isdigit but not int() ('²') failed every scan, so no
    new version of any model loaded; a name past int64 loaded as the latest version and
    then broke every request; '0003' was read as version 3 and looked for in '3', so a
    complete model there never loaded, silently."""
    import shutil

    from dmgin_tf.serving.model_registry import ModelRegistry, version_dirs
    base = tmp_path / NAME
    v1 = save_standin(str(base), 1)
    for stray in ("²", "99999999999999999999999"):
        shutil.copytree(v1, base / stray)
    shutil.copytree(v1, base / "0003")
    assert version_dirs(str(base)) == {1: v1, 3: str(base / "0003")}
    cfg = read_model_server_config(write_models_config(str(tmp_path / "m.config"), NAME,
                                                       str(base)))
    registry = ModelRegistry(cfg, settle_s=0)
    registry.refresh(initial=True)
    served = registry.resolve(NAME)
    assert (served.version, served.path) == (3, str(base / "0003"))
    # Version 5 arrives later: the stray folders do not stop the scan.
    save_standin(str(base), 5)
    registry.refresh()
    assert registry.resolve(NAME).version == 5
    # "7" and "007" both: the folder spelled without leading zeros is version 7.
    shutil.copytree(v1, base / "007")
    shutil.copytree(v1, base / "7")
    assert version_dirs(str(base))[7] == str(base / "7")
