"""Model versions on disk → loaded servables, the way TF Serving manages them.

Layout (same as TF Serving): `<base_path>/<version>/saved_model.pb` with integer
version directories. A `ModelRegistry` reads a `ModelServerConfig`, scans each model's
base path, loads the versions its version policy asks for (`latest {num_versions}`,
default 1; `all {}`; `specific {versions}`) and unloads the rest.

Version transitions keep the model available:

- **Only complete versions load.** A version directory is ready when `saved_model.pb`,
  `variables/variables.index` and every `variables.data-*-of-N` shard exist and no file
  in it changed size or mtime for `settle_s` (a copy still in progress is waited for,
  not loaded half-written).
- **A version that fails to load is skipped, with its real cause** (truncated
  `saved_model.pb`, missing variables, failing warmup) in `GetModelStatus`; the policy
  is applied to the remaining good versions, so the newest *good* version serves — also
  right after a restart with a corrupt newest version. The failed version is retried
  with exponential backoff (1 s doubling to 60 s), at once when its files change.
- **Warm before flip.** A new version replays its warmup records (or, without any,
  requests of every configured batch/candidate bucket made from the export's
  contract) *before* it enters the serving map; only then is an old version taken out.
- A removed version stays alive until its last in-flight request has returned
  (`acquire()` counts them), only then is it released.
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

from dmgin_tf.serving import tensor_protos, validation
from dmgin_tf.serving.errors import ServingError

log = logging.getLogger(__name__)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0  # backoff of a version that failed to load

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
        self._dims = {k: (None if spec.shape.rank is None else spec.shape.as_list())
                      for k, spec in self.inputs.items()}
        # The structured call binds keyword arguments and walks nests on every request
        # (~0.5 ms of a 2-3 ms `score_cached` on 2 cores). The inputs are checked before
        # `run` (names, dtypes, shapes), so requests take the flat path: the tensors in
        # the function's own parameter order. Falls back to the structured call where
        # the loaded function does not expose that order (other TensorFlow versions).
        params = list(getattr(getattr(fn, "function_type", None), "parameters", None) or ())
        self._flat_order = (params if sorted(params) == sorted(self.inputs)
                            and callable(getattr(fn, "_call_flat", None)) else None)

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
            dims = self._dims[key]      # plain lists: TensorShape checks cost ~15 us each
            if dims is not None and (len(dims) != len(shape) or any(
                    d is not None and d != n for d, n in zip(dims, shape))):
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
            if self._flat_order is not None:
                out = self._fn._call_flat(  # noqa: SLF001 — see __init__
                    [tf.convert_to_tensor(inputs[k], dtype=self.inputs[k].dtype)
                     for k in self._flat_order], self._fn.captured_inputs)
            else:
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
    """One loaded model version: signatures, SignatureDef protos, the request contract
    (`validation.Contract`), in-flight counter.

    Raises `VersionLoadError` with the real cause when the directory is not a loadable
    SavedModel (checked before TensorFlow's loader, whose messages mislead on a
    truncated file: "requires a tags= argument").
    """

    def __init__(self, name: str, version: int, path: str,
                 max_candidates: Optional[int] = None):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = _read_signature_defs(path)
        try:
            self._module = tf.saved_model.load(path)
        except Exception as e:
            raise VersionLoadError(f"TensorFlow could not load it: "
                                   f"{_first_line(str(getattr(e, 'message', e)))}") from None
        self.signatures: Dict[str, SignatureRunner] = {
            k: SignatureRunner(k, fn) for k, fn in self._module.signatures.items()}
        try:
            self.contract = validation.Contract.from_version_dir(path, max_candidates)
        except (ValueError, OSError) as e:
            raise VersionLoadError(f"{validation.EXPORT_INFO}: {e}") from None
        self._inflight = 0
        self._cond = threading.Condition()
        self.extras: dict = {}  # per-servable state owned by the server (batch schedulers)

    def signature(self, name: str) -> SignatureRunner:
        runner = self.signatures.get(name or "serving_default")
        if runner is None:
            # TF Serving: FAILED_PRECONDITION 'Serving signature key "..." not found.'
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key {name!r} not found (model "
                               f"{self.name!r} version {self.version}; signatures: "
                               f"{sorted(self.signatures)})")
        return runner

    def check_request(self, runner: SignatureRunner, inputs: Mapping[str, np.ndarray]) -> None:
        """The contract's rules (`validation`); INVALID_ARGUMENT on the first broken one."""
        validation.check_request(runner.name, inputs, self.contract)

    def warmup(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLog records) like TF
        Serving does at load time, so XLA clusters compile before traffic arrives. Without
        records, runs `synthetic_warmup_requests` (every configured bucket). A failing
        record fails the load (as in TF Serving). Returns the number of requests run."""
        path = os.path.join(self.path, WARMUP_FILE)
        records = []
        if os.path.exists(path):
            for raw in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
                plog = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
                if plog.WhichOneof("log_type") != "predict_log":
                    continue
                req = plog.predict_log.request
                records.append((req.model_spec.signature_name,
                                {k: tensor_protos.to_ndarray(v) for k, v in req.inputs.items()}))
        for i, (sig, inputs) in enumerate(records):
            try:
                self.signature(sig).run(inputs)
            except ServingError as e:
                raise VersionLoadError(f"warmup record {i + 1} ({sig!r}) failed: "
                                       f"{e.message}") from None
        # Without records: every configured bucket; with them: the padded candidate counts
        # above the exported buckets (multiples of the largest, up to max_candidates) that
        # the records do not already cover (exports before they wrote those sizes).
        covered = {(sig, np.shape(inputs.get(validation.CANDIDATE_INPUTS[0])))
                   for sig, inputs in records}
        synthetic = [(sig, inputs) for sig, inputs
                     in synthetic_warmup_requests(self, only_beyond_buckets=bool(records))
                     if (sig, np.shape(inputs.get(validation.CANDIDATE_INPUTS[0]))) not in covered]
        for sig, inputs in synthetic:
            try:
                self.signature(sig).run(inputs)
            except ServingError as e:  # zeros may not suit every model: compile-only aid
                log.warning("model %s version %d: synthetic warmup of %r failed: %s",
                            self.name, self.version, sig, e.message)
        return len(records) + len(synthetic)

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


class VersionLoadError(Exception):
    """A version directory that cannot serve; the message is the cause users see."""


def _spec_array(spec: tf.TensorSpec, batch: int, cands: int) -> Optional[np.ndarray]:
    """Zeros (padding ids, time 0) of a TensorSpec's shape: dimension 0 = batch, the
    other unknown dimensions = cands. None for string inputs."""
    if spec.dtype == tf.string or spec.shape.rank is None:
        return None
    dims = spec.shape.as_list()
    shape = [batch if i == 0 and d is None else (cands if d is None else d)
             for i, d in enumerate(dims)]
    return np.zeros(shape, spec.dtype.as_numpy_dtype)


def synthetic_warmup_requests(servable: "Servable", only_beyond_buckets: bool = False):
    """(signature, inputs) pairs covering the shapes the export's contract allows.

    Signatures with candidates `[U, N]` (rank, score): U = 1 and every padded N
    (`Contract.warm_candidate_sizes`); the others: every batch bucket. Inputs are zeros
    (all-padding histories): warmup compiles shapes, its answers are thrown away.
    `serving_default` gets tf.Examples with an unknown item (OOV). Nothing without an
    export contract (no buckets known). With `only_beyond_buckets`, only candidate
    sizes above the largest bucket (what exported records do not cover).
    """
    c = servable.contract
    cand_sizes = c.warm_candidate_sizes()
    if only_beyond_buckets:
        cand_sizes = tuple(n for n in cand_sizes if c.candidate_buckets and n > max(c.candidate_buckets))
    out = []
    for name, runner in sorted(servable.signatures.items()):
        has_cands = any(k in runner.inputs and runner.inputs[k].shape.rank == 2
                        for k in validation.CANDIDATE_INPUTS)
        if has_cands:
            shapes = [(1, n) for n in cand_sizes]
        elif only_beyond_buckets:
            continue
        else:
            shapes = [(b, 1) for b in c.batch_buckets]
        for batch, cands in shapes:
            if set(runner.inputs) == {validation.EXAMPLES}:
                from dmgin_tf.export.example_parsing import make_serving_example
                ex = make_serving_example("<warmup>", 0)
                out.append((name, {validation.EXAMPLES: np.array([ex] * batch, dtype=object)}))
                continue
            arrays = {k: _spec_array(s, batch, cands) for k, s in runner.inputs.items()}
            if any(a is None for a in arrays.values()):
                continue
            if validation.STATE_VERSION in arrays and c.state_version is not None:
                arrays[validation.STATE_VERSION][:] = c.state_version  # else refused
            out.append((name, arrays))
    return out


def _read_signature_defs(path: str):
    pb = os.path.join(path, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as f:
            sm.ParseFromString(f.read())
    except Exception as e:  # DecodeError on truncated or foreign bytes
        raise VersionLoadError(f"saved_model.pb is not a SavedModel protobuf (truncated or "
                               f"corrupt file): {e}") from None
    if not sm.meta_graphs:
        raise VersionLoadError("saved_model.pb holds no MetaGraph (truncated or corrupt file)")
    served = [mg for mg in sm.meta_graphs if "serve" in mg.meta_info_def.tags]
    if not served:
        raise VersionLoadError("saved_model.pb has no MetaGraph tagged 'serve'")
    # All of them, `__saved_model_init_op` included: GetModelMetadata lists what TF
    # Serving lists.
    return dict(served[0].signature_def)


_INT64_MAX = 2 ** 63 - 1


def version_dirs(base_path: str) -> Dict[int, str]:
    """{version: folder path} of the version dirs under `base_path` that hold
    `saved_model.pb`. Like TF Serving, a folder counts when its whole name is an int64
    written in ASCII digits ("0003" is version 3, served from that folder); other names
    ("²", a number past int64) are ignored, so one stray folder never stops the scan.
    When two folders name one version, the one spelled without leading zeros wins."""
    try:
        names = os.listdir(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out: Dict[int, str] = {}
    for n in sorted(names, key=lambda n: (len(n), n), reverse=True):
        if not (n.isascii() and n.isdigit()) or int(n) > _INT64_MAX:
            continue
        if os.path.isfile(os.path.join(base_path, n, "saved_model.pb")):
            out[int(n)] = os.path.join(base_path, n)
    return out


def list_versions(base_path: str) -> List[int]:
    """Integer versions under `base_path` that hold `saved_model.pb` (`version_dirs`)."""
    return sorted(version_dirs(base_path))


def missing_files(path: str) -> List[str]:
    """Files a complete SavedModel version needs that are not there (yet)."""
    missing = [f for f in ("saved_model.pb", os.path.join("variables", "variables.index"))
               if not os.path.isfile(os.path.join(path, f))]
    var_dir = os.path.join(path, "variables")
    shards = sorted(n for n in (os.listdir(var_dir) if os.path.isdir(var_dir) else [])
                    if n.startswith("variables.data-"))
    if not shards:
        missing.append(os.path.join("variables", "variables.data-*"))
    else:
        total = int(shards[0].rsplit("-of-", 1)[-1] or 1) if "-of-" in shards[0] else 1
        for i in range(total):
            name = f"variables.data-{i:05d}-of-{total:05d}"
            if name not in shards:
                missing.append(os.path.join("variables", name))
    return missing


def fingerprint(path: str) -> tuple:
    """(relative path, size, mtime_ns) of every file: changes while a copy is running."""
    out = []
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


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


@dataclasses.dataclass
class _Failure:
    fingerprint: tuple
    retry_at: float
    delay_s: float


class ModelRegistry:
    """Loads/unloads versions per a ModelServerConfig; thread-safe lookup for requests.

    Args:
      model_config: a `ModelServerConfig` with a `model_config_list`.
      poll_interval_s: how often `start()`'s thread rescans base paths (TF Serving's
        `--file_system_poll_wait_seconds`).
      warmup: replay each version's warmup records before making it available.
      unload_grace_s: how long an unloaded version waits for in-flight requests.
      settle_s: a version directory must stay unchanged this long before it loads.
      max_candidates: candidate cap for every model (None: each export's own).
      on_change: called with (model, version, state) after each state change (metrics).
    """

    def __init__(self, model_config, poll_interval_s: float = 1.0, warmup: bool = True,
                 unload_grace_s: float = 30.0, settle_s: float = 1.0,
                 max_candidates: Optional[int] = None,
                 on_change: Optional[Callable[[str, int, int], None]] = None):
        self._configs = {mc.name: mc for mc in model_config.model_config_list.config}
        self.poll_interval_s = poll_interval_s
        self.warmup = warmup
        self.unload_grace_s = unload_grace_s
        self.settle_s = settle_s
        self.max_candidates = max_candidates
        self._on_change = on_change or (lambda *a: None)
        self._lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._available: Dict[str, Dict[int, Servable]] = {n: {} for n in self._configs}
        self._status: Dict[str, Dict[int, VersionStatus]] = {n: {} for n in self._configs}
        self._failed: Dict[Tuple[str, int], _Failure] = {}
        self._dirs: Dict[str, Dict[int, str]] = {}     # model -> {version: folder}, last scan
        self._seen: Dict[Tuple[str, int], Tuple[tuple, float]] = {}  # fingerprint, since
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Loads what is on disk now (waiting for versions still being written), then
        polls in a background thread."""
        self.refresh(initial=True)
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

    def _ready(self, name: str, version: int, path: str, now: float) -> bool:
        """Complete (required files) and unchanged for settle_s since first seen so."""
        if missing_files(path):
            self._seen.pop((name, version), None)
            return False
        fp = fingerprint(path)
        seen = self._seen.get((name, version))
        if seen is None or seen[0] != fp:
            self._seen[(name, version)] = (fp, now)
            return self.settle_s <= 0
        return now - seen[1] >= self.settle_s

    def _loadable(self, name: str, base_path: str, now: float) -> List[int]:
        """Ready versions, minus failed ones whose retry is not due (files unchanged).
        For a `latest {n}` policy only the newest n such versions (older ones are not
        checked: a poll stays cheap with many versions on disk)."""
        policy = self._configs[name].model_version_policy
        which = policy.WhichOneof("policy_choice")
        limit = None
        if which in (None, "latest"):
            limit = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
        out = []
        dirs = version_dirs(base_path)
        self._dirs[name] = dirs
        for v in sorted(dirs, reverse=True):
            if limit is not None and len(out) >= limit:
                break
            path = dirs[v]
            if v in self._available[name]:
                out.append(v)
                continue
            if not self._ready(name, v, path, now):
                continue
            failure = self._failed.get((name, v))
            if failure is not None and failure.fingerprint == self._seen[(name, v)][0] \
                    and now < failure.retry_at:
                continue
            out.append(v)
        return sorted(out)

    def refresh(self, initial: bool = False) -> None:
        """One scan: load aspired versions that are new (skipping ones that fail, so the
        policy falls back to the newest good version), then unload the rest.

        With `initial`, waits (up to 10 x settle_s) for versions still being written,
        so a server started during a copy serves the copy's previous version at once
        and the new one as soon as it is complete."""
        with self._refresh_lock:
            for name, mc in list(self._configs.items()):
                if initial and self.settle_s > 0:
                    self._loadable(name, mc.base_path, time.monotonic())  # first look
                    time.sleep(self.settle_s)
                for _ in range(64):  # each failed load removes one candidate
                    aspired = aspired_versions(mc, self._loadable(name, mc.base_path,
                                                                  time.monotonic()))
                    failed_now = False
                    for v in aspired:
                        if v not in self._available[name]:
                            # aspired versions come from the scan `_loadable` just made
                            failed_now |= not self._load(name, v, self._dirs[name][v])
                    if not failed_now:
                        break
                # Only unload once every aspired version is serving, so a model never
                # drops below its policy's versions during a swap.
                if all(v in self._available[name] for v in aspired):
                    for v in sorted(set(self._available[name]) - set(aspired)):
                        self._unload(name, v)

    def _set_status(self, name, version, state, code=0, msg=""):
        with self._lock:
            self._status[name][version] = VersionStatus(state, code, msg)
        self._on_change(name, version, state)

    def _load(self, name: str, version: int, path: str) -> bool:
        self._set_status(name, version, LOADING)
        # A load with warmup takes from seconds to a minute (XLA compiles each warmup
        # shape); the other versions keep serving meanwhile, and the log says why it is busy.
        log.info("model %s version %d: loading from %s%s", name, version, path,
                 " (then warmup requests)" if self.warmup else "")
        fp = self._seen.get((name, version), (fingerprint(path), 0))[0]
        try:
            servable = Servable(name, version, path, self.max_candidates)
            if self.warmup:
                n = servable.warmup()
                log.info("model %s version %d: %d warmup requests run", name, version, n)
        except Exception as e:  # a broken version must not take the server down
            cause = str(e) if isinstance(e, VersionLoadError) else f"{type(e).__name__}: {e}"
            prev = self._failed.get((name, version))
            delay = RETRY_FIRST_S if prev is None or prev.fingerprint != fp \
                else min(prev.delay_s * 2, RETRY_MAX_S)
            self._failed[(name, version)] = _Failure(fp, time.monotonic() + delay, delay)
            log.warning("model %s version %d not loaded (%s); serving the newest good "
                        "version, retry in %.0f s", name, version, cause, delay)
            self._set_status(name, version, END, 13,  # INTERNAL
                             f"version {version} at {path} failed to load: {cause}; "
                             f"skipped, retried in {delay:.0f} s or when its files change")
            return False
        self._failed.pop((name, version), None)
        with self._lock:
            self._available[name][version] = servable
        self._set_status(name, version, AVAILABLE)
        log.info("model %s version %d available", name, version)
        return True

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
    def known_signature(self, name: str, signature: str) -> bool:
        """Whether `signature` is a signature of a loaded version of model `name`."""
        with self._lock:
            return any(signature in sv.signature_defs
                       for sv in self._available.get(name, {}).values())

    @property
    def model_names(self) -> List[str]:
        return sorted(self._configs)

    @property
    def configs(self) -> list:
        return [self._configs[n] for n in self.model_names]

    def config(self, name: str):
        return self._configs[name]

    def why_unavailable(self, name: str) -> str:
        """A line saying what is on disk and why nothing of it serves."""
        base = self._configs[name].base_path
        versions = list_versions(base)
        if not versions:
            return f"no integer version directory with saved_model.pb in {base}"
        with self._lock:
            failed = {v: st.error_message for v, st in self._status[name].items()
                      if st.error_code}
        if failed:
            return "; ".join(msg for _, msg in sorted(failed.items()))
        return f"versions {versions} are not complete yet"

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
                    # TF Serving: INVALID_ARGUMENT "Unrecognized servable version label"
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Unrecognized servable version label: {label!r} "
                                       f"(model {name!r}; labels: {sorted(labels)})")
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
            known = [v for v, _ in items]
            items = [(v, s) for v, s in items if v == version]
            if not items:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} version {version} not found; versions "
                                   f"with a status: {known}")
        return items

    def available_versions(self, name: str) -> List[int]:
        with self._lock:
            return sorted(self._available.get(name, {}))
