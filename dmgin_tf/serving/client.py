"""`Client`: TF Serving PredictionService client (official stubs) for DMGIN models.

Works against the official `tensorflow/serving` image and `dmgin serve` alike.

    with Client("localhost:8500", "dmgin") as c:
        ctr = c.predict({"examples": serialized})["ctr"]           # serving_default
        ctr = c.rank(history, cand_item, cand_group)                # one user, N candidates
        state = c.user_state(history)                               # cache it per user ...
        ctr = c.score_cached(state, cand_item, cand_group)          # ... score without history

Retries: UNAVAILABLE (server starting or restarting, batch queue full, connection reset)
is retried with exponential backoff and jitter until the call's overall deadline; every
other status is raised at once as `grpc.RpcError`.

Threads: one `Client` may be shared (gRPC channels are thread-safe); `last_version` is
kept per thread, so each thread reads the version that answered its own last call.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Dict, Mapping, Optional, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from dmgin_tf import features as F
from dmgin_tf.config import ServingConfig
from dmgin_tf.serving import tensor_protos

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
# Candidate chunks are padded to one of these sizes so XLA-compiled `rank` signatures
# see a few fixed shapes (and TF Serving's batching can merge equal-shaped requests).
DEFAULT_CANDIDATE_BUCKETS = ServingConfig().candidate_buckets  # = the export's


class Client:
    """PredictionService/ModelService client.

    Args:
      target: "host:port" of TF Serving's gRPC port (or the dev server).
      model_name: model name of models.config.
      signature: default signature name.
      version / version_label: pin a version (default: latest available).
      timeout_s: per-call deadline, retries included.
      max_retries: extra attempts on UNAVAILABLE; None (default): as many as the
        deadline allows, so a server restart shorter than the deadline fails no call.
      backoff_s: first retry delay; doubles each attempt up to `max_backoff_s` (±50%
        jitter; at least the server's `grpc-retry-pushback-ms` hint).
      max_message_bytes: gRPC channel send/receive limit.
      candidate_buckets: candidate chunk sizes for `rank` (last = the chunk size).
    """

    def __init__(self, target: str, model_name: str, *, signature: str = "serving_default",
                 version: Optional[int] = None, version_label: Optional[str] = None,
                 timeout_s: float = 10.0, max_retries: Optional[int] = None,
                 backoff_s: float = 0.05, max_backoff_s: float = 1.0,
                 max_message_bytes: int = 64 * 1024 * 1024,
                 candidate_buckets: Sequence[int] = DEFAULT_CANDIDATE_BUCKETS,
                 channel: Optional[grpc.Channel] = None):
        if not candidate_buckets or min(candidate_buckets) < 1:
            raise ValueError(f"candidate_buckets={tuple(candidate_buckets)!r}: need at least "
                             f"one size >= 1 (the served export's serving.candidate_buckets)")
        if timeout_s is None or not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r}: a per-call deadline in seconds > 0")
        self.target, self.model_name = target, model_name
        self.signature, self.version, self.version_label = signature, version, version_label
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r}: >= 0, or None (until the deadline)")
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max(backoff_s, max_backoff_s)
        self.candidate_buckets = tuple(sorted(int(b) for b in candidate_buckets))
        self._owns_channel = channel is None     # a caller's channel is the caller's to close
        self._local = threading.local()
        self._channel = channel or grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect to a restarted server within ~1 s (gRPC's own reconnect backoff
            # starts at 1 s and grows to 2 min, longer than any retry deadline).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @property
    def last_version(self) -> Optional[int]:
        """The model version that answered this thread's last Predict call (None before
        one); a hot swap shows here first (`CachedRanker` reads it)."""
        return getattr(self._local, "version", None)

    @last_version.setter
    def last_version(self, version: Optional[int]) -> None:
        self._local.version = version

    # ---- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        """Closes the channel this client created (not one passed in); calls in flight
        end with CANCELLED."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, spec, signature=None, version=None, version_label=None):
        spec.name = self.model_name
        version = self.version if version is None else version
        label = self.version_label if version_label is None else version_label
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        if signature is not None:
            spec.signature_name = signature

    def _call(self, method, request, timeout_s: Optional[float]):
        """Calls with an overall deadline; retries UNAVAILABLE with jittered backoff (at
        least the server's `grpc-retry-pushback-ms` hint when it sends one)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        delay, attempt = self.backoff_s, 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 1e-3))
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt == self.max_retries:
                    raise
                sleep = max(delay * random.uniform(0.5, 1.5), _pushback_s(e))
                if time.monotonic() + sleep >= deadline:
                    raise
                time.sleep(sleep)
                delay, attempt = min(delay * 2, self.max_backoff_s), attempt + 1

    # ---- API ------------------------------------------------------------------------------
    def predict(self, inputs: Mapping[str, np.ndarray], *, signature: Optional[str] = None,
                version: Optional[int] = None, output_filter: Sequence[str] = (),
                timeout_s: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One Predict call: numpy inputs by tensor name → numpy outputs by name.

        Arrays are sent with their own dtypes; they must match the signature's
        (e.g. ids int32, times int64, serialized examples bytes).
        """
        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, signature or self.signature, version)
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(tensor_protos.from_ndarray(np.asarray(v) if not isinstance(v, list) else v))
        req.output_filter.extend(output_filter)
        resp = self._call(self._predict.Predict, req, timeout_s)
        self.last_version = resp.model_spec.version.value
        return {k: tensor_protos.to_ndarray(v) for k, v in resp.outputs.items()}

    def predict_examples(self, serialized: Sequence[bytes], *, batch_size: int = 128,
                         timeout_s: Optional[float] = None) -> np.ndarray:
        """`serving_default` on serialized tf.Examples, `batch_size` per request → ctr [N]."""
        out = self._example_batches(serialized, "serving_default", batch_size, timeout_s)
        return (np.concatenate([o[F.PREDICTION] for o in out]) if out
                else np.zeros([0], np.float32))

    def tensorize(self, serialized: Sequence[bytes], *, batch_size: int = 128,
                  timeout_s: Optional[float] = None) -> Dict[str, np.ndarray]:
        """`tensorize` on serialized tf.Examples (as `serving_default` takes them) → the
        model's id inputs per example, mapped with the served version's vocabularies:
        history keys `[B, L]`, `request_time [B]`, `cand_item`, `cand_group` `[B]` —
        what `rank`, `user_state` and `score_cached` take (one row = one user).
        `batch_size` examples per request, as `predict_examples`."""
        # An empty list still asks the server once: the outputs' keys and shapes ([0, L]).
        out = self._example_batches(serialized, "tensorize", batch_size, timeout_s,
                                    at_least_one=True)
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

    def _example_batches(self, serialized, signature, batch_size, timeout_s,
                         at_least_one=False):
        """One Predict per `batch_size` examples → their outputs. An INVALID_ARGUMENT
        names the batch's place in the caller's list ("example k" counts within it)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1")
        out = []
        for i in range(0, max(len(serialized), int(at_least_one)), batch_size):
            chunk = np.array(list(serialized[i:i + batch_size]), dtype=object)
            try:
                out.append(self.predict({"examples": chunk}, signature=signature,
                                        timeout_s=timeout_s))
            except grpc.RpcError as e:
                raise _placed(e, "examples", i, len(chunk)) from None
        return out

    def rank(self, history: Mapping[str, np.ndarray], cand_item: np.ndarray,
             cand_group: np.ndarray, *, signature: str = "rank",
             timeout_s: Optional[float] = None) -> np.ndarray:
        """Scores N candidates for one user with the `rank` signature → ctr [N].

        Args:
          history: HIST_ITEM, HIST_GROUP, HIST_BEHAVIOR_ID ([L] or [1, L] int32),
            HIST_TIME ([L] or [1, L] int64) and REQUEST_TIME (scalar or [1] int64).
          cand_item, cand_group: [N] int ids.
        Long lists are split into chunks of the largest candidate bucket; each chunk is
        padded with id 0 to a bucket size (fixed shapes for XLA) and the padding's
        scores are dropped. Every chunk is scored by the version that answered the first
        (a hot swap between chunks does not mix two models in one list), within one
        deadline (`timeout_s`) for the whole list.
        """
        return self._score_lists(history_request(history), cand_item, cand_group, signature,
                                 timeout_s)

    def user_state(self, history: Mapping[str, np.ndarray], *,
                   timeout_s: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One user's complete state (`user_state` signature) → arrays by name without
        the user dimension: what a `UserStateStore` keeps. `history` as in `rank`."""
        out = self.predict(history_request(history), signature="user_state",
                           timeout_s=timeout_s)
        return {k: v[0] for k, v in out.items()}

    def score_cached(self, state: Mapping[str, np.ndarray], cand_item: np.ndarray,
                     cand_group: np.ndarray, request_time: Optional[int] = None, *,
                     timeout_s: Optional[float] = None) -> np.ndarray:
        """Scores N candidates for one user from the user's cached state (`score_cached`
        signature; no history is sent) → ctr [N].

        Args:
          state: `user_state`'s arrays without the user dimension.
          request_time: Unix seconds recency is measured at (default: the state's own
            `state_time`).
        Chunked and padded like `rank`.
        """
        base = {k: np.asarray(v)[None] for k, v in state.items()}
        rt = state["state_time"] if request_time is None else request_time
        base[F.REQUEST_TIME] = one_value(F.REQUEST_TIME, rt)
        return self._score_lists(base, cand_item, cand_group, "score_cached", timeout_s)

    def _score_lists(self, base, cand_item, cand_group, signature, timeout_s):
        """One user's candidate list in padded chunks of `base` + `cand_* [1, n]` → [N]."""
        cand_item = candidate_list(F.CAND_ITEM, cand_item)
        cand_group = candidate_list(F.CAND_GROUP, cand_group)
        if cand_item.shape != cand_group.shape:
            raise ValueError(f"cand_item {cand_item.shape} and cand_group {cand_group.shape} differ")
        self.last_version = None          # N = 0 makes no call: no version answered it
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        for attempt in range(2):
            try:
                return self._chunks(base, cand_item, cand_group, signature, deadline)
            except _VersionGone:
                if attempt:                   # swapped twice within one list
                    raise _ListError(grpc.StatusCode.NOT_FOUND,
                                     f"{signature}: the served version changed twice while "
                                     f"one candidate list was scored") from None

    def _chunks(self, base, cand_item, cand_group, signature, deadline):
        chunk = self.candidate_buckets[-1]
        scores, pinned = [], self.version
        for i in range(0, len(cand_item), chunk):
            items, groups = cand_item[i:i + chunk], cand_group[i:i + chunk]
            n = len(items)
            size = next(b for b in self.candidate_buckets if b >= n)
            req = dict(base)
            req[F.CAND_ITEM] = np.pad(items, (0, size - n)).reshape(1, size)
            req[F.CAND_GROUP] = np.pad(groups, (0, size - n)).reshape(1, size)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _ListError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"{signature}: the deadline ran out after {i} of "
                                 f"{len(cand_item)} candidates")
            try:
                out = self.predict(req, signature=signature, version=pinned,
                                   timeout_s=remaining)[F.PREDICTION]
            except grpc.RpcError as e:
                if i and pinned != self.version and e.code() == grpc.StatusCode.NOT_FOUND:
                    raise _VersionGone() from None       # unloaded mid-list: start over
                raise _placed(e, "candidates", i, n) from None
            pinned = self.last_version if pinned is None else pinned
            scores.append(out.reshape(-1)[:n])
        return np.concatenate(scores) if scores else np.zeros([0], np.float32)

    def metadata(self, *, version: Optional[int] = None, timeout_s: Optional[float] = None):
        """GetModelMetadata → {signature name: SignatureDef proto}."""
        req = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(req.model_spec, None, version)
        req.metadata_field.append("signature_def")
        resp = self._call(self._predict.GetModelMetadata, req, timeout_s)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sig_map)
        return dict(sig_map.signature_def)

    def status(self, *, version: Optional[int] = None, timeout_s: Optional[float] = None):
        """GetModelStatus → [(version, state name, error message)]."""
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = self.model_name
        if version is not None:
            req.model_spec.version.value = int(version)
        resp = self._call(self._models.GetModelStatus, req, timeout_s)
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return [(s.version, names(s.state), s.status.error_message) for s in resp.model_version_status]

    def wait_until_available(self, timeout_s: float = 30.0, version: Optional[int] = None) -> int:
        """Polls GetModelStatus until a version is AVAILABLE; returns the newest one (the
        one an unpinned Predict gets), or `version` (default: this client's pinned
        `version`) once that one is.

        Keeps polling while the server is down (UNAVAILABLE), does not know the model
        yet (NOT_FOUND) or does not answer within a poll (DEADLINE_EXCEEDED: e.g. a port
        that accepts connections while the server is still starting); raises
        TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        waiting = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                   grpc.StatusCode.DEADLINE_EXCEEDED)
        version = self.version if version is None else version
        while True:
            poll_s = min(2.0, max(0.1, deadline - time.monotonic()))
            try:
                available = [v for v, state, _ in self.status(version=version, timeout_s=poll_s)
                             if state == "AVAILABLE"]
                if available:
                    return max(available)
            except grpc.RpcError as e:
                if e.code() not in waiting:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {self.model_name!r} not AVAILABLE at {self.target} "
                                   f"after {timeout_s:.0f}s")
            time.sleep(0.1)


class _ListError(grpc.RpcError):
    """A status raised for a whole candidate list (its deadline, or a chunk's error with
    the chunk's offset named): `code()` and `details()` as a gRPC error's."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def _placed(error, what: str, start: int, size: int):
    """A request's error, with where its part of the caller's list starts when that is
    not 0 and the error is about the inputs (positions in it count within the part)."""
    if not start or error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return error
    return _ListError(error.code(), f"{error.details()} (in {what} {start}..{start + size - 1} "
                                    f"of the list: positions in the message count from "
                                    f"{start})")


class _VersionGone(Exception):
    """The version that answered a list's first chunk was unloaded before its last."""


def history_request(history: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One user's history keys ([L] or [1, L]) and request_time (scalar or [1]) as the
    `[1, L]` / `[1]` arrays of a request, in the signatures' dtypes. Another shape
    (several users' rows) is refused naming the input: these calls score one user."""
    base = {}
    for k in F.HISTORY_INPUT_KEYS:
        arr = request_array(k, history[k], np.int64 if k == F.HIST_TIME else np.int32)
        if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[0] != 1):
            raise ValueError(f"input {k!r}: shape {list(arr.shape)}; one user's history is "
                             f"[L] or [1, L] (score several users with one call per user)")
        base[k] = arr.reshape(1, -1)
    base[F.REQUEST_TIME] = one_value(F.REQUEST_TIME, history[F.REQUEST_TIME])
    return base


def one_value(name: str, value) -> np.ndarray:
    """One user's `request_time` (scalar or [1]) as the int64 `[1]` of a request."""
    arr = request_array(name, value, np.int64)
    if arr.size != 1:
        raise ValueError(f"input {name!r}: shape {list(arr.shape)}; one user's request "
                         f"time is a scalar or [1]")
    return arr.reshape(1)


def candidate_list(name: str, values) -> np.ndarray:
    """One user's candidates `[N]` (or `[1, N]`) as int32 `[N]`; a batch-shaped array
    (several users' lists) is refused naming the input."""
    arr = request_array(name, values, np.int32)
    if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
        raise ValueError(f"input {name!r}: shape {list(arr.shape)}; one user's candidates "
                         f"are [N] (score several users with one call per user)")
    return arr.reshape(-1)


def request_array(name: str, values, dtype) -> np.ndarray:
    """`values` as the signature's integer `dtype`, refusing what a cast would change:
    a value outside the dtype's range (numpy wraps 2**32 + 5 to 5, a valid id) or a
    fractional number (a float time would be truncated). Raises ValueError naming the
    input and the first offending value."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        raise ValueError(f"input {name!r}: integer values expected, got booleans")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(f"input {name!r}: integer values expected, got "
                             f"{arr[bad].flat[0]!r}")
    elif arr.dtype.kind not in "iu" and arr.size:
        raise ValueError(f"input {name!r}: integer values expected, got dtype {arr.dtype}")
    if arr.size:
        info = np.iinfo(dtype)
        # Floats compare as floats: 2**63 as a float64 equals info.max + 1, so `>=` it.
        wide = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
        out = ((wide < info.min) | (wide >= float(info.max) + 1) if arr.dtype.kind == "f"
               else (wide < info.min) | (wide > info.max))
        if np.any(out):
            raise ValueError(f"input {name!r}: {wide[out].flat[0]} does not fit the "
                             f"signature's {np.dtype(dtype).name}")
    return arr.astype(dtype)


def _pushback_s(error) -> float:
    """The server's retry hint (gRPC's `grpc-retry-pushback-ms` trailer), in seconds."""
    try:
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-retry-pushback-ms":
                return max(0.0, int(value) / 1000.0)
    except (AttributeError, TypeError, ValueError):
        pass
    return 0.0
