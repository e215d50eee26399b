"""Development gRPC server speaking TF Serving's API — a stand-in, not a replacement.

Production serving is the official `tensorflow/serving` image with `serving_configs/`.
This server exists so tests, the README demo and benchmarks can run where no TF
Serving binary can be installed. It implements, over the official protos/stubs of
`tensorflow-serving-api`:

- `PredictionService.Predict` (model name / version / version_label, signature_name,
  output_filter) and `PredictionService.GetModelMetadata` (`signature_def`);
- `ModelService.GetModelStatus`;

and reads the same `--model_config_file` (ModelServerConfig) and base-path layout,
polls for new versions and unloads old ones per version policy without dropping
in-flight requests (`model_registry`), checks every request against the version's
contract before it runs (`validation`), batches requests with the parameters of a
`--batching_parameters_file` (`batching`), limits message size and concurrent RPCs
(over the limit: UNAVAILABLE with a retry hint), stops the work of cancelled RPCs,
serves TLS when given a certificate, shuts down gracefully and exports Prometheus
metrics (`metrics`).

Example::

    server = DevServer(read_model_server_config("serving_configs/models.config"), port=0)
    port = server.start()
    ...
    server.stop()
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from typing import Dict, Mapping, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from dmgin_tf.errors import DmginError
from dmgin_tf.serving import model_registry as mr
from dmgin_tf.serving import tensor_protos
from dmgin_tf.serving.batching import BatchOptions, BatchScheduler
from dmgin_tf.serving.errors import ServingError
from dmgin_tf.serving.metrics import DEFAULT_PATH, MetricsHttpServer, ServingMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRY_PUSHBACK_MS = 50   # hint sent with UNAVAILABLE "busy" (gRPC's retry pushback key)
UNKNOWN_LABEL = "unknown"  # metric label of a model / signature name that is not served


class _Declared:
    """A request tensor's declared shape (`.shape`, what `check_shapes` reads)."""
    __slots__ = ("shape",)

    def __init__(self, proto):
        self.shape = tensor_protos.declared_shape(proto)


def _tensor_to_array(name: str, proto) -> np.ndarray:
    try:
        return tensor_protos.to_ndarray(proto)
    except Exception as e:  # wrong content size for the shape, bad dtype enum, ...
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r}: malformed TensorProto: {e}") from None


def _proto_dtype(name: str, proto) -> tf.DType:
    try:
        return tf.as_dtype(proto.dtype)
    except TypeError:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r}: unknown dtype enum {proto.dtype}") from None


def _check_alive(context) -> None:
    """Stops a request whose client has gone (cancelled, deadline passed) before it
    costs a model run."""
    if context is None:
        return
    if not context.is_active():
        raise ServingError(grpc.StatusCode.CANCELLED, "request cancelled by the client")
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "deadline exceeded before the request ran")


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: "DevServer"):
        self._s = server

    def Predict(self, request, context):
        s = self._s
        spec = request.model_spec
        signature = spec.signature_name or "serving_default"
        start = time.perf_counter()
        if not s._slots.acquire(blocking=False):
            s._count("Predict", spec.name, signature, grpc.StatusCode.UNAVAILABLE)
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(RETRY_PUSHBACK_MS)),))
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"server busy: {s.max_concurrent_rpcs} concurrent requests are being "
                          f"served (--max-concurrent-rpcs); retry in ~{RETRY_PUSHBACK_MS} ms")
        s.metrics.inflight.inc()
        try:
            version = spec.version.value if spec.HasField("version") else None
            with s.registry.acquire(spec.name, version, spec.version_label or None) as servable:
                runner = servable.signature(signature)
                runner.check_dtypes({k: _proto_dtype(k, t) for k, t in request.inputs.items()})
                # Shapes from the protos' headers first: no values are decoded for a
                # request whose shapes the signature refuses.
                runner.check_shapes({k: _Declared(t) for k, t in request.inputs.items()})
                inputs = {k: _tensor_to_array(k, t) for k, t in request.inputs.items()}
                servable.check_request(runner, inputs)
                _check_alive(context)
                outputs = s._execute(servable, runner, inputs, context)
                wanted = list(request.output_filter) or sorted(outputs)
                repeated = sorted({k for k in wanted if wanted.count(k) > 1})
                if repeated:     # TF Serving refuses them too
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"duplicate output tensor alias in output_filter: "
                                       f"{repeated}")
                unknown = sorted(set(wanted) - set(outputs))
                if unknown:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"output_filter names unknown output(s) {unknown}; "
                                       f"outputs: {sorted(outputs)}")
                response = predict_pb2.PredictResponse()
                response.model_spec.name = spec.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = signature
                for k in wanted:
                    tensor_protos.write_typed(response.outputs[k], outputs[k])
        except ServingError as e:
            s._count("Predict", spec.name, signature, e.code)
            context.abort(e.code, e.message)
        finally:
            s.metrics.inflight.dec()
            s._slots.release()
        s.metrics.latency.labels(spec.name, signature).observe(time.perf_counter() - start)
        s._count("Predict", spec.name, signature, grpc.StatusCode.OK)
        return response

    def GetModelMetadata(self, request, context):
        s = self._s
        spec = request.model_spec
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"metadata_field must be ['signature_def'], got {fields}")
            version = spec.version.value if spec.HasField("version") else None
            with s.registry.acquire(spec.name, version, spec.version_label or None) as servable:
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for k, v in servable.signature_defs.items():
                    sig_map.signature_def[k].CopyFrom(v)
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = spec.name
                response.model_spec.version.value = servable.version
                response.metadata["signature_def"].Pack(sig_map)
        except ServingError as e:
            s._count("GetModelMetadata", spec.name, "", e.code)
            context.abort(e.code, e.message)
        s._count("GetModelMetadata", spec.name, "", grpc.StatusCode.OK)
        return response

    def _unimplemented(self, method, model, context):
        # The generated base class raises NotImplementedError, which gRPC logs as a
        # server error with a traceback on every call; this is a client's choice of API.
        self._s._count(method, model, "", grpc.StatusCode.UNIMPLEMENTED)
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{method} is not served by dmgin serve; use Predict (the model's "
                      f"signatures: GetModelMetadata)")

    def Classify(self, request, context):
        self._unimplemented("Classify", request.model_spec.name, context)

    def Regress(self, request, context):
        self._unimplemented("Regress", request.model_spec.name, context)

    def MultiInference(self, request, context):
        self._unimplemented("MultiInference", request.tasks[0].model_spec.name
                            if request.tasks else "", context)


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: "DevServer"):
        self._s = server

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        try:
            version = spec.version.value if spec.HasField("version") else None
            items = self._s.registry.status(spec.name, version)
        except ServingError as e:
            context.abort(e.code, e.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, st in items:
            mvs = response.model_version_status.add(version=v, state=st.state)
            mvs.status.error_code = st.error_code
            mvs.status.error_message = st.error_message
        return response


class DevServer:
    """The development PredictionService/ModelService server.

    Args:
      model_config: `ModelServerConfig` (see `protos.read_model_server_config`).
      port: gRPC port on `host`; 0 picks a free one (returned by `start()`).
      batching: `BatchingParameters` message or `BatchOptions`; None = no batching.
      max_batch_size: without batching, requests with more rows fail RESOURCE_EXHAUSTED.
      max_message_bytes: gRPC receive/send limit (TF Serving's default is 2 GB;
        larger messages fail RESOURCE_EXHAUSTED in grpc itself).
      max_concurrent_rpcs: more concurrent Predict RPCs fail UNAVAILABLE with a retry
        hint (trailing metadata `grpc-retry-pushback-ms`); Client retries them.
      poll_interval_s: version polling (TF Serving's --file_system_poll_wait_seconds).
      metrics_port: serve Prometheus metrics on this port (0 = free port, None = off).
      max_candidates: cap on candidates per user for every model (None: each export's
        `max_candidates`, see `validation`).
      settle_s: a new version directory must be complete and unchanged this long.
      ssl_cert, ssl_key: PEM file paths; both given = TLS (gRPC's own SSL credentials).
    """

    def __init__(self, model_config, port: int = 0, host: str = "127.0.0.1", batching=None,
                 max_batch_size: int = 4096, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_concurrent_rpcs: Optional[int] = 64, max_workers: int = 16,
                 poll_interval_s: float = 1.0, metrics_port: Optional[int] = None,
                 metrics_path: str = DEFAULT_PATH, warmup: bool = True,
                 max_candidates: Optional[int] = None, settle_s: float = 1.0,
                 ssl_cert: Optional[str] = None, ssl_key: Optional[str] = None):
        if bool(ssl_cert) != bool(ssl_key):
            raise DmginError("TLS needs both --ssl-cert and --ssl-key")
        self._credentials = None
        if ssl_cert:
            pems = []
            for what, path in (("--ssl-key", ssl_key), ("--ssl-cert", ssl_cert)):
                try:
                    pems.append(open(path, "rb").read())
                except OSError as e:
                    raise DmginError(f"{what} {path}: {e.strerror}") from None
            self._credentials = grpc.ssl_server_credentials([tuple(pems)])
        self.metrics = ServingMetrics()
        self.registry = mr.ModelRegistry(
            model_config, poll_interval_s=poll_interval_s, warmup=warmup, settle_s=settle_s,
            max_candidates=max_candidates,
            on_change=lambda m, v, st: self.metrics.version_state.labels(m, str(v)).set(st))
        if batching is not None and not isinstance(batching, BatchOptions):
            batching = BatchOptions.from_proto(batching)
        self.batching: Optional[BatchOptions] = batching
        self.max_batch_size = batching.max_batch_size if batching else max_batch_size
        self.host, self._port = host, port
        self._metrics_port, self._metrics_path = metrics_port, metrics_path
        self.metrics_http: Optional[MetricsHttpServer] = None
        self._sched_lock = threading.Lock()
        # The concurrency limit is ours (a semaphore answering UNAVAILABLE + retry hint);
        # grpc's own (RESOURCE_EXHAUSTED, not retried by clients) only backs it at 4x.
        self.max_concurrent_rpcs = max_concurrent_rpcs or 1 << 30
        self._slots = threading.BoundedSemaphore(self.max_concurrent_rpcs)
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        workers = max(max_workers, min(self.max_concurrent_rpcs, 256) + 4)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                              thread_name_prefix="grpc"),
                                   options=options,
                                   maximum_concurrent_rpcs=(4 * max_concurrent_rpcs
                                                            if max_concurrent_rpcs else None))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(self), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), self._server)
        self.port: Optional[int] = None

    def start(self) -> int:
        """Binds the port, loads the models on disk, starts polling, gRPC and metrics;
        returns the port. Raises DmginError when the port is taken or a base_path does
        not exist."""
        for mc in self.registry.configs:
            if not os.path.isdir(mc.base_path):
                raise DmginError(f"model {mc.name!r}: base_path {mc.base_path} "
                                 f"{'is not a directory' if os.path.exists(mc.base_path) else 'does not exist'}")
        address = f"{self.host}:{self._port}"
        try:
            if self._credentials is not None:
                self.port = self._server.add_secure_port(address, self._credentials)
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError:  # grpc >= 1.5x raises instead of returning 0
            self.port = 0
        if not self.port:
            raise DmginError(f"cannot listen on {address}: the port is in use or the address "
                             f"is not local (pick another --port)")
        self.registry.start()
        for name in self.registry.model_names:
            if not self.registry.available_versions(name):
                log.warning("model %s: no servable version under %s yet (%s)", name,
                            self.registry.config(name).base_path,
                            self.registry.why_unavailable(name))
        self._server.start()
        if self._metrics_port is not None:
            self.metrics_http = MetricsHttpServer(self.metrics, self._metrics_port, self.host,
                                                  self._metrics_path)
        log.info("dev server on %s:%d serving %s", self.host, self.port, self.registry.model_names)
        return self.port

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting RPCs, lets in-flight ones finish (up to grace_s), then stops
        polling, batch threads and the metrics endpoint."""
        self._server.stop(grace_s).wait()
        self.registry.stop()
        for name in self.registry.model_names:
            for v in self.registry.available_versions(name):
                try:
                    for sched in self.registry.resolve(name, v).extras.values():
                        sched.close()
                except ServingError:
                    pass
        if self.metrics_http:
            self.metrics_http.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    # ---- request execution ---------------------------------------------------------------
    def _count(self, method: str, model: str, signature: str, code: grpc.StatusCode) -> None:
        # Label values come from the request: names that are not served are counted as
        # "unknown", or any client could create new time series without bound. A served
        # request named a served model and signature, so only failures are looked up.
        if code != grpc.StatusCode.OK:
            if model not in self.registry.model_names:
                model, signature = UNKNOWN_LABEL, UNKNOWN_LABEL
            elif signature and not self.registry.known_signature(model, signature):
                signature = UNKNOWN_LABEL
        self.metrics.requests.labels(method, model, signature, code.name).inc()

    def _execute(self, servable: mr.Servable, runner: mr.SignatureRunner,
                 inputs: Mapping[str, np.ndarray], context) -> Dict[str, np.ndarray]:
        size = runner.batch_size(inputs) if runner.batchable else None
        if size is not None and size > self.max_batch_size:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"request has {size} rows, more than the server's max batch "
                               f"size {self.max_batch_size}; split it into smaller requests")
        if self.batching is None or size is None:
            outputs = runner.run(inputs)
            self.metrics.batch_rows.labels(servable.name, runner.name).observe(size or 1)
            return outputs
        sched = self._scheduler(servable, runner)
        remaining = context.time_remaining() if context is not None else None
        try:
            return sched(inputs, size, timeout_s=remaining,
                         alive=context.is_active if context is not None else None)
        except futures.TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "deadline exceeded while waiting for a batch") from None

    def _scheduler(self, servable: mr.Servable, runner: mr.SignatureRunner) -> BatchScheduler:
        with self._sched_lock:
            sched = servable.extras.get(runner.name)
            if sched is None:
                labels = (servable.name, runner.name)

                def on_batch(real, padded):
                    self.metrics.batch_rows.labels(*labels).observe(real)
                    self.metrics.padded_rows.labels(*labels).inc(padded - real)

                sched = BatchScheduler(
                    runner.run, self.batching, on_batch,
                    name=f"batch-{servable.name}-{servable.version}-{runner.name}",
                    on_isolate=lambda n: self.metrics.isolated_batches.labels(*labels).inc())
                servable.extras[runner.name] = sched
            return sched
