"""Model versions on disk → loaded servables, the way TF Serving manages them.

Layout (same as TF Serving): `<base_path>/<version>/saved_model.pb` with integer
version directories. A `ModelRegistry` reads a `ModelServerConfig`, scans each model's
base path, loads the versions its version policy asks for (`latest {num_versions}`,
default 1; `all {}`; `specific {versions}`) and unloads the rest.

Hot swap without dropping requests (TF Serving's availability-preserving policy): a new
version is loaded (and warmed up) *before* an old one is taken out of the serving map;
a removed version stays alive until its last in-flight request has returned
(`acquire()` counts them), only then is it released.

Versions must appear atomically (write to a temp dir, then rename — as
`dmgin_tf.export.saved_model.export_model` does); a directory without
`saved_model.pb` is ignored until the file is there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from dmgin_tf.serving import tensor_protos
from dmgin_tf.serving.errors import ServingError

log = logging.getLogger(__name__)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit

# ModelVersionStatus.State values (tensorflow_serving/apis/get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


class SignatureRunner:
    """One signature of a loaded SavedModel: input validation + execution.

    Inputs and outputs are numpy arrays keyed by the signature's tensor names;
    shapes/dtypes are checked against the signature's TensorSpecs before running,
    so a bad request fails with INVALID_ARGUMENT naming the input instead of a
    TensorFlow stack trace.
    """

    def __init__(self, name: str, fn):
        self.name = name
        self._fn = fn
        self.inputs: Dict[str, tf.TensorSpec] = dict(fn.structured_input_signature[1])
        self.outputs: Dict[str, tf.TensorSpec] = dict(fn.structured_outputs)
        # Batchable = every input and output has a leading batch dimension, so requests
        # can be concatenated along axis 0 and the outputs split back.
        self.batchable = all(s.shape.rank is not None and s.shape.rank >= 1
                             for s in list(self.inputs.values()) + list(self.outputs.values()))

    def check_dtypes(self, dtypes: Mapping[str, tf.DType]) -> None:
        """Checks input names and dtypes (from the request's TensorProtos)."""
        missing = sorted(set(self.inputs) - set(dtypes))
        if missing:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature {self.name!r}: missing input(s) {missing}; "
                               f"expected {sorted(self.inputs)}")
        extra = sorted(set(dtypes) - set(self.inputs))
        if extra:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature {self.name!r}: unknown input(s) {extra}; "
                               f"expected {sorted(self.inputs)}")
        for key, spec in self.inputs.items():
            if dtypes[key] != spec.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"signature {self.name!r}: input {key!r} has dtype "
                                   f"{dtypes[key].name}, expected {spec.dtype.name}")

    def check_shapes(self, inputs: Mapping[str, np.ndarray]) -> None:
        for key, spec in self.inputs.items():
            shape = tuple(np.shape(inputs[key]))
            if not spec.shape.is_compatible_with(shape):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"signature {self.name!r}: input {key!r} has shape "
                                   f"{list(shape)}, expected {_shape_str(spec.shape)}")

    def batch_size(self, inputs: Mapping[str, np.ndarray]) -> Optional[int]:
        """The common leading dimension of all inputs, or None if they differ."""
        sizes = {np.shape(v)[0] for v in inputs.values() if np.ndim(v) >= 1}
        return sizes.pop() if len(sizes) == 1 else None

    def run(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs the signature; TensorFlow errors become ServingErrors."""
        try:
            out = self._fn(**{k: tf.convert_to_tensor(v, dtype=self.inputs[k].dtype)
                              for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature {self.name!r}: {_first_line(e.message)}") from None
        except UnicodeDecodeError as e:
            # TF fails to decode its own error message when it quotes binary input
            # (e.g. a malformed serialized tf.Example); the raw message is in e.object.
            msg = bytes(e.object).decode("utf-8", "replace")
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature {self.name!r}: {_first_line(msg)}") from None
        except tf.errors.OpError as e:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"signature {self.name!r}: {_first_line(e.message)}") from None
        return {k: v.numpy() for k, v in out.items()}


def _shape_str(shape: tf.TensorShape) -> str:
    if shape.rank is None:
        return "any shape"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


def _first_line(msg: str) -> str:
    """The op's own message from a TF error: drops "Graph execution error", the
    "Detected at node ... defined at" traceback and the trailing node/op annotation."""
    msg = msg.split("\n\t [[")[0].split(" [Op:")[0]
    lines = [ln.strip() for ln in msg.strip().split("\n") if ln.strip()]
    body = [ln for ln in lines if not (ln.startswith("Graph execution error")
                                       or ln.startswith("Detected at node")
                                       or ln.startswith("File \""))]
    return (body[-1] if body else (lines[-1] if lines else msg))[:2000]


class Servable:
    """One loaded model version: signatures, SignatureDef protos, in-flight counter."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self._module = tf.saved_model.load(path)
        self.signatures: Dict[str, SignatureRunner] = {
            k: SignatureRunner(k, fn) for k, fn in self._module.signatures.items()}
        self.signature_defs = _read_signature_defs(path)
        self._inflight = 0
        self._cond = threading.Condition()
        self.extras: dict = {}  # per-servable state owned by the server (batch schedulers)

    def signature(self, name: str) -> SignatureRunner:
        runner = self.signatures.get(name or "serving_default")
        if runner is None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {self.name!r} version {self.version}: serving signature "
                               f"{name!r} not found; available: {sorted(self.signatures)}")
        return runner

    def warmup(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictLog records) like TF
        Serving does at load time, so XLA clusters compile before traffic arrives."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        n = 0
        for raw in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            plog = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            if plog.WhichOneof("log_type") != "predict_log":
                continue
            req = plog.predict_log.request
            runner = self.signature(req.model_spec.signature_name)
            runner.run({k: tensor_protos.to_ndarray(v) for k, v in req.inputs.items()})
            n += 1
        return n

    def acquire(self) -> None:
        with self._cond:
            self._inflight += 1

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)


def _read_signature_defs(path: str):
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    defs = sm.meta_graphs[0].signature_def
    return {k: v for k, v in defs.items() if not k.startswith("__")}


def list_versions(base_path: str) -> List[int]:
    """Integer version dirs under `base_path` that hold a complete SavedModel."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isfile(os.path.join(base_path, n, "saved_model.pb")))


def aspired_versions(model_config, on_disk: List[int]) -> List[int]:
    """Applies a ModelConfig's `model_version_policy` to the versions found on disk."""
    policy = model_config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return list(on_disk)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in on_disk if v in wanted]
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return sorted(on_disk)[-n:]


@dataclasses.dataclass
class VersionStatus:
    state: int
    error_code: int = 0        # google.rpc/tensorflow error code, 0 = OK
    error_message: str = ""


class ModelRegistry:
    """Loads/unloads versions per a ModelServerConfig; thread-safe lookup for requests.

    Args:
      model_config: a `ModelServerConfig` with a `model_config_list`.
      poll_interval_s: how often `start()`'s thread rescans base paths (TF Serving's
        `--file_system_poll_wait_seconds`).
      warmup: replay each version's warmup records before making it available.
      unload_grace_s: how long an unloaded version waits for in-flight requests.
      on_change: called with (model, version, state) after each state change (metrics).
    """

    def __init__(self, model_config, poll_interval_s: float = 1.0, warmup: bool = True,
                 unload_grace_s: float = 30.0,
                 on_change: Optional[Callable[[str, int, int], None]] = None):
        self._configs = {mc.name: mc for mc in model_config.model_config_list.config}
        self.poll_interval_s = poll_interval_s
        self.warmup = warmup
        self.unload_grace_s = unload_grace_s
        self._on_change = on_change or (lambda *a: None)
        self._lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._available: Dict[str, Dict[int, Servable]] = {n: {} for n in self._configs}
        self._status: Dict[str, Dict[int, VersionStatus]] = {n: {} for n in self._configs}
        self._failed: Dict[Tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Loads what is on disk now, then polls in a background thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="model-registry-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
            except Exception:  # keep polling; one bad scan must not stop serving
                log.exception("model registry refresh failed")

    def refresh(self) -> None:
        """One scan: load aspired versions that are new, then unload the rest."""
        with self._refresh_lock:
            for name, mc in list(self._configs.items()):
                aspired = aspired_versions(mc, list_versions(mc.base_path))
                for v in aspired:
                    if v not in self._available[name] and (name, v) not in self._failed:
                        self._load(name, v, os.path.join(mc.base_path, str(v)))
                # Only unload once at least one aspired version is serving, so a model
                # never drops to zero versions during a swap.
                if any(v in self._available[name] for v in aspired) or not aspired:
                    for v in sorted(set(self._available[name]) - set(aspired)):
                        self._unload(name, v)

    def _set_status(self, name, version, state, code=0, msg=""):
        with self._lock:
            self._status[name][version] = VersionStatus(state, code, msg)
        self._on_change(name, version, state)

    def _load(self, name: str, version: int, path: str) -> None:
        self._set_status(name, version, LOADING)
        try:
            servable = Servable(name, version, path)
            if self.warmup:
                n = servable.warmup()
                log.info("model %s version %d: %d warmup requests replayed", name, version, n)
        except Exception as e:  # a broken version must not take the server down
            log.exception("model %s version %d failed to load", name, version)
            self._failed[(name, version)] = time.time()
            self._set_status(name, version, END, 13, f"failed to load {path}: {e}")  # INTERNAL
            return
        with self._lock:
            self._available[name][version] = servable
        self._set_status(name, version, AVAILABLE)
        log.info("model %s version %d available", name, version)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            servable = self._available[name].pop(version)
        self._set_status(name, version, UNLOADING)
        # Requests that already hold the servable finish on it; new ones see the new map.
        if not servable.wait_idle(self.unload_grace_s):
            log.warning("model %s version %d unloaded with requests still in flight", name, version)
        for closer in servable.extras.values():
            getattr(closer, "close", lambda: None)()
        self._set_status(name, version, END)
        log.info("model %s version %d unloaded", name, version)

    # ---- lookups -------------------------------------------------------------------------
    @property
    def model_names(self) -> List[str]:
        return sorted(self._configs)

    def resolve(self, name: str, version: Optional[int] = None,
                label: Optional[str] = None) -> Servable:
        """Picks the servable for a ModelSpec (latest available when no version given)."""
        with self._lock:
            if name not in self._configs:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} not found; served models: {self.model_names}")
            available = self._available[name]
            if label:
                labels = dict(self._configs[name].version_labels)
                if label not in labels:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"model {name!r}: version label {label!r} not found; "
                                       f"labels: {sorted(labels)}")
                version = labels[label]
            if version is None:
                if not available:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"model {name!r}: no version is available yet")
                return available[max(available)]
            if version not in available:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} version {version} not found; available "
                                   f"versions: {sorted(available)}")
            return available[version]

    @contextlib.contextmanager
    def acquire(self, name: str, version: Optional[int] = None,
                label: Optional[str] = None) -> Iterator[Servable]:
        """Holds a servable for the duration of one request (delays its unloading)."""
        with self._lock:  # resolve + count atomically, so unload can't slip in between
            servable = self.resolve(name, version, label)
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def status(self, name: str, version: Optional[int] = None) -> List[Tuple[int, VersionStatus]]:
        with self._lock:
            if name not in self._configs:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} not found; served models: {self.model_names}")
            items = sorted(self._status[name].items())
        if version is not None:
            items = [(v, s) for v, s in items if v == version]
            if not items:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} version {version} not found")
        return items

    def available_versions(self, name: str) -> List[int]:
        with self._lock:
            return sorted(self._available.get(name, {}))
