"""User-state stores: where the per-user state of `user_state` waits between requests.

A state is one user's `user_state` outputs without the user dimension (numpy arrays by
name, `dmgin_tf.models.cached_state`), kept under (user id, model version): a new model
version never reads a state of an old one. Two backends with one interface:

- `RedisStateStore`: Redis (the `redis` client; the server is Debian's `redis-server`),
  shared by every serving client; `RedisServer` starts a private one for tests, the
  benchmark and demos. A Redis that is down or slow raises `StoreUnavailable` within
  its socket timeout, and the store then skips Redis for `cooldown_s` (the caller falls
  back to `rank` meanwhile instead of paying the timeout on every request).
- `InMemoryStateStore`: an in-process LRU for tests and development.

    store = RedisStateStore("redis://127.0.0.1:6379/0")
    store.put("user-42", 3, state)           # version 3 of the served model
    state = store.get("user-42", 3)          # None on a miss

Values are `encode_state`'s compact binary (a JSON header of names, dtypes and shapes,
then the raw arrays): about `user_state_bytes` of the export info per user, plus the
key.
"""
from __future__ import annotations

import abc

import collections
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Dict, Mapping, Optional

import numpy as np

from dmgin_tf.errors import DmginError

MAGIC = b"DMUS1"
_HEADER_LEN = struct.Struct("<I")


class StoreUnavailable(DmginError):
    """The store cannot be reached (Redis down, timed out, refused)."""


def encode_state(state: Mapping[str, np.ndarray]) -> bytes:
    """One user's state → bytes: MAGIC, header length, JSON header, raw arrays."""
    # np.asarray + copy, not np.ascontiguousarray: that one turns 0-d values into [1].
    arrays = {k: np.asarray(v) for k, v in sorted(state.items())}
    arrays = {k: a if a.flags.c_contiguous else a.copy(order="C") for k, a in arrays.items()}
    header = json.dumps([[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()],
                        separators=(",", ":")).encode()
    return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header]
                    + [a.tobytes() for a in arrays.values()])


def _header_entries(header) -> list:
    """The parsed JSON header → [(name, dtype, shape)]; ValueError unless it is a list
    of [str, numeric dtype string, list of ints >= 0] (a damaged header must not reach
    np.dtype, which raises TypeError / SyntaxError on garbage)."""
    if not isinstance(header, list):
        raise ValueError(f"user state: header is {type(header).__name__}, not a list")
    out = []
    for entry in header:
        ok = (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
              and isinstance(entry[1], str) and isinstance(entry[2], list)
              and all(type(d) is int and d >= 0 for d in entry[2]))
        if not ok:
            raise ValueError(f"user state: malformed header entry {str(entry)[:80]}")
        try:
            dt = np.dtype(entry[1])
        except (TypeError, ValueError, SyntaxError):
            dt = None
        if dt is None or dt.kind not in "biuf":
            raise ValueError(f"user state: {entry[0]!r} has dtype {entry[1][:20]!r}, not a "
                             f"numeric one")
        out.append((entry[0], dt, tuple(entry[2])))
    return out


def decode_state(blob: bytes) -> Dict[str, np.ndarray]:
    """`encode_state`'s bytes → arrays. Raises ValueError on anything else (a foreign,
    truncated or damaged value)."""
    if not isinstance(blob, bytes) or not blob.startswith(MAGIC) or (
            len(blob) < len(MAGIC) + _HEADER_LEN.size):
        raise ValueError("user state: not an encoded user state (bad magic)")
    start = len(MAGIC) + _HEADER_LEN.size
    (n,) = _HEADER_LEN.unpack_from(blob, len(MAGIC))
    try:
        header = json.loads(blob[start:start + n])
    except ValueError:
        raise ValueError("user state: unreadable header") from None
    offset, out = start + n, {}
    for key, dt, shape in _header_entries(header):
        size = math.prod(shape) * dt.itemsize       # Python ints: no overflow
        if offset + size > len(blob):
            raise ValueError(f"user state: truncated at {key!r}")
        out[key] = np.frombuffer(blob, dt, count=size // dt.itemsize, offset=offset).reshape(shape)
        offset += size
    if offset != len(blob):
        raise ValueError("user state: trailing bytes after the last array")
    return out


class UserStateStore(abc.ABC):
    """Interface: per-(user, model version) states. Every method may raise
    `StoreUnavailable`; `get` raises ValueError for a stored value it cannot read."""

    @abc.abstractmethod
    def get(self, user_id: str, version: int) -> Optional[Dict[str, np.ndarray]]:
        """The stored state, or None."""

    @abc.abstractmethod
    def put(self, user_id: str, version: int, state: Mapping[str, np.ndarray],
            only_if_absent: bool = False) -> bool:
        """Stores a state; returns whether it was written. `only_if_absent`: only when
        no state is stored under (user, version) — a state computed on a request's
        fallback must not replace one an update wrote meanwhile."""

    @abc.abstractmethod
    def delete(self, user_id: str, version: int) -> None:
        """Drops one state (no error when absent)."""

    @abc.abstractmethod
    def invalidate_version(self, version: int) -> int:
        """Drops every state of a model version (after a hot swap); returns how many."""

    def available(self) -> bool:
        """False while calls would fail at once (e.g. Redis' cooldown after a failure):
        callers skip work whose result could not be stored."""
        return True


class InMemoryStateStore(UserStateStore):
    """In-process LRU of encoded states (the same bytes Redis would hold).

    Args:
      max_entries: states kept; the least recently used goes first.
    """

    def __init__(self, max_entries: int = 100_000):
        if max_entries < 1:
            raise ValueError(f"InMemoryStateStore: max_entries={max_entries} must be >= 1")
        self.max_entries = int(max_entries)
        self._data: "collections.OrderedDict[tuple, bytes]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id, version):
        with self._lock:
            blob = self._data.get((str(user_id), int(version)))
            if blob is None:
                return None
            self._data.move_to_end((str(user_id), int(version)))
        return decode_state(blob)

    def put(self, user_id, version, state, only_if_absent=False):
        blob = encode_state(state)
        key = (str(user_id), int(version))
        with self._lock:
            if only_if_absent and key in self._data:
                return False
            self._data[key] = blob
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return True

    def delete(self, user_id, version):
        with self._lock:
            self._data.pop((str(user_id), int(version)), None)

    def invalidate_version(self, version):
        with self._lock:
            old = [k for k in self._data if k[1] == int(version)]
            for k in old:
                del self._data[k]
        return len(old)

    def __len__(self):
        return len(self._data)


class RedisStateStore(UserStateStore):
    """States in Redis under `<prefix>:<version>:<user id>`.

    Args:
      url: `redis://host:port/db`.
      prefix: key namespace (one per served model).
      ttl_s: expiry of each state (None: until evicted; run Redis with
        `maxmemory-policy allkeys-lru` so the least recently used users go first).
      timeout_s: socket connect/read timeout: a down or stuck Redis costs at most this.
      cooldown_s: after a failure, calls raise `StoreUnavailable` at once for this long
        instead of trying Redis again.
    """

    def __init__(self, url: str, prefix: str = "dmgin:user_state", ttl_s: Optional[float] = None,
                 timeout_s: float = 0.05, cooldown_s: float = 1.0):
        try:
            import redis
        except ImportError:
            raise DmginError("RedisStateStore needs the redis client: pip install "
                             "'dmgin-tf[cache]' (redis==5.2.1)") from None
        # Unreachable (start the cooldown) vs. an error reply of a reachable server
        # (OOM under `maxmemory`, READONLY replica, WRONGTYPE key): both are store
        # failures to the caller, only the first is worth not retrying for a while.
        self._down_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                             redis.exceptions.BusyLoadingError, OSError)
        self._reply_errors = (redis.exceptions.RedisError,)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                            socket_connect_timeout=timeout_s)
        self.url, self.prefix = url, prefix
        self.ttl_ms = None if ttl_s is None else int(ttl_s * 1000)
        self.cooldown_s = float(cooldown_s)
        self._down_until = 0.0

    def key(self, user_id, version) -> str:
        return f"{self.prefix}:{int(version)}:{user_id}"

    def _run(self, what, fn):
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"Redis at {self.url}: skipped after a recent failure "
                                   f"(retrying in < {self.cooldown_s:.1f} s)")
        try:
            return fn()
        except self._down_errors as e:
            self._down_until = time.monotonic() + self.cooldown_s
            raise StoreUnavailable(f"Redis at {self.url}: {what} failed: {e}") from None
        except self._reply_errors as e:
            if str(e).startswith("WRONGTYPE"):  # a key of another writer: an unusable value
                raise ValueError(f"user state: Redis {what} found no string value: {e}") from None
            raise StoreUnavailable(f"Redis at {self.url}: {what} refused: {e}") from None

    def available(self):
        return time.monotonic() >= self._down_until

    def get(self, user_id, version):
        blob = self._run("GET", lambda: self._client.get(self.key(user_id, version)))
        return None if blob is None else decode_state(blob)

    def put(self, user_id, version, state, only_if_absent=False):
        blob = encode_state(state)
        return bool(self._run("SET", lambda: self._client.set(
            self.key(user_id, version), blob, px=self.ttl_ms, nx=bool(only_if_absent))))

    def delete(self, user_id, version):
        self._run("DEL", lambda: self._client.delete(self.key(user_id, version)))

    def invalidate_version(self, version):
        def scan_delete():
            n = 0
            keys = []
            pattern = f"{_glob_escape(self.prefix)}:{int(version)}:*"
            for key in self._client.scan_iter(match=pattern, count=1000):
                keys.append(key)
                if len(keys) == 1000:
                    n += self._client.unlink(*keys)
                    keys = []
            if keys:
                n += self._client.unlink(*keys)
            return n
        return self._run("invalidate", scan_delete)

    def ping_ms(self) -> float:
        """One PING round trip in milliseconds."""
        t0 = time.perf_counter()
        self._run("PING", self._client.ping)
        return (time.perf_counter() - t0) * 1000


def _glob_escape(text: str) -> str:
    """`text` matched literally in a Redis SCAN pattern (a prefix with `*`, `?` or `[`)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def redis_server_binary() -> Optional[str]:
    """Path of `redis-server` (Debian: apt-get install redis-server), or None."""
    return shutil.which("redis-server")


class RedisServer:
    """A private `redis-server` on 127.0.0.1 (no persistence), for tests, benchmarks and
    demos: `with RedisServer() as r: store = RedisStateStore(r.url)`.

    Args:
      port: TCP port (0 = a free one). maxmemory: e.g. "256mb", with LRU eviction.
    """

    def __init__(self, port: int = 0, maxmemory: str = "256mb"):
        binary = redis_server_binary()
        if binary is None:
            raise DmginError("redis-server not found on PATH; install it "
                             "(Debian/Ubuntu: apt-get install redis-server)")
        self.port = port or _free_port()
        self._dir = tempfile.mkdtemp(prefix="dmgin-redis-")
        self._cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", self._dir, "--maxmemory", maxmemory,
                     "--maxmemory-policy", "allkeys-lru", "--daemonize", "no",
                     "--loglevel", "warning"]
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        log = open(os.path.join(self._dir, "redis.log"), "w")
        self.process = subprocess.Popen(self._cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DmginError(f"redis-server exited with {self.process.returncode}; "
                                 f"log: {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise DmginError(f"redis-server did not answer on port {self.port} in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
