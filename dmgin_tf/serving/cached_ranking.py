"""Two-stage ranking: a cached user state, then candidates scored against it.

`CachedRanker.rank_user(user_id, cand_item, cand_group)` reads the user's state from a
`UserStateStore` (keyed by user id + the served model version) and calls `score_cached`
— the request carries the state and the candidates, not the history. Whenever that
path cannot answer, the request falls back to `rank` with the user's history (from the
`histories` source, the feature store) and the cause is counted; nothing is raised
for a cache problem. Two failures are not the cache's and are raised as they are,
without a second call to `rank` that would fail the same way: candidates the server
refuses, and a server that did not answer within the client's deadline (the `Client`
retries UNAVAILABLE until then):

| cause | counter | then |
|---|---|---|
| no state for (user, version) | `misses` | `rank`; the state is computed and written (`write_on_miss`) |
| store down / timing out | `cache_errors` | `rank` (the store skips Redis for its cooldown) |
| unreadable value, wrong keys / shapes / dtypes for this version | `bad_states` | `rank`; the value is replaced |
| state of another model version (server refuses it, or the version is gone) | `stale` | `rank`; the state is recomputed |
| `score_cached` refuses the candidates (ids outside the vocabularies, an item's group, more than `max_candidates`) | `invalid_requests` | the INVALID_ARGUMENT is raised; the state is kept |
| the server does not answer `score_cached` within the deadline (UNAVAILABLE, DEADLINE_EXCEEDED) | `server_errors` | raised; the state is kept |
| `score_cached` fails otherwise | `score_cached_errors` | `rank` |
| the user's last `update_user` could not write the new state | `pending_updates` | `rank`; the state is rewritten |

A newer model version in the answers (hot swap) invalidates the old version's states
(`invalidations`, `invalidated_states`) in a background thread, once per old version.
`update_user(user_id, new_behaviors)` appends behaviors to the history source and
rewrites the state. A state computed on a fallback is written only where no state is
stored (an update racing the request keeps its newer state); an unusable stored value is
deleted first.

    ranker = CachedRanker(Client("localhost:8500", "dmgin"), RedisStateStore(url), histories)
    ctr = ranker.rank_user("user-42", cand_item, cand_group)
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
from typing import Dict, Mapping, Optional

import grpc
import numpy as np

from dmgin_tf import features as F
from dmgin_tf.serving.user_state_store import StoreUnavailable, UserStateStore

log = logging.getLogger(__name__)

COUNTERS = ("requests", "hits", "misses", "cache_errors", "bad_states", "stale",
            "invalid_requests", "server_errors", "score_cached_errors", "pending_updates",
            "fallbacks", "writes", "write_errors", "updates", "invalidations",
            "invalidated_states")
INVALIDATION_ATTEMPTS = 5
TRACKED_UPDATES = 100_000
STALE_MARKER = "another model version"
_DTYPES = {1: "float32", 3: "int32", 9: "int64", 10: "bool"}  # tensorflow DataType enum   # in the server's INVALID_ARGUMENT message


# The server's INVALID_ARGUMENT names the input it refuses: "input 'cand_item': ..." (the
# dev server's checks) or "input cand_item: ..." (the signature's own, e.g. on TF Serving).
# `request_time` is not among them: a request time before the state's `state_time` (an
# update stamped later than the request, clocks of two hosts) is the state's problem,
# and `rank` on the history answers it.
_CANDIDATE_INPUT = re.compile(r"input '?(%s)'?[: ]" % "|".join((F.CAND_ITEM, F.CAND_GROUP)))
_UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def refuses_candidates(error: grpc.RpcError) -> bool:
    """Whether `score_cached` refused the request's candidates (which `rank` refuses
    too), not the user state."""
    return (error.code() == grpc.StatusCode.INVALID_ARGUMENT
            and _CANDIDATE_INPUT.search(error.details() or "") is not None)


class InMemoryHistories:
    """A minimal history source: each user's last L behaviors, oldest first.

    `get(user_id)` → history dict (`hist_*` `[L]`, `request_time` scalar) or None;
    `append(user_id, behaviors)` adds `hist_item`, `hist_group`, `hist_behavior_id`,
    `hist_time` arrays `[n]` (keeps the newest L).
    """

    def __init__(self, length: int):
        self.length = int(length)
        self._data: Dict[str, Dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def append(self, user_id, behaviors: Mapping[str, np.ndarray]) -> None:
        new = {k: np.asarray(behaviors[k]).reshape(-1) for k in F.HISTORY_INPUT_KEYS}
        sizes = {k: len(v) for k, v in new.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"update for user {user_id!r}: behavior arrays differ in length "
                             f"{sizes}")
        with self._lock:
            old = self._data.get(str(user_id))
            merged = {}
            for k, v in new.items():
                prev = old[k][old[F.HIST_ITEM] != 0] if old is not None else v[:0]
                merged[k] = np.concatenate([prev, v[new[F.HIST_ITEM] != 0]])
            # Oldest first, as every model input (a late-arriving event goes in its place;
            # stable, so events of equal time keep their arrival order); then the newest L.
            order = np.argsort(merged[F.HIST_TIME], kind="stable")[-self.length:]
            merged = {k: v[order] for k, v in merged.items()}
            n = len(merged[F.HIST_ITEM])
            dtypes = {F.HIST_TIME: np.int64}
            self._data[str(user_id)] = {
                k: np.pad(v.astype(dtypes.get(k, np.int32)), (0, self.length - n))
                for k, v in merged.items()}

    def get(self, user_id) -> Optional[Dict[str, np.ndarray]]:
        with self._lock:
            h = self._data.get(str(user_id))
        if h is None:
            return None
        last = int(h[F.HIST_TIME].max()) if h[F.HIST_TIME].size else 0
        return dict(h, **{F.REQUEST_TIME: np.int64(max(last, 0))})


def user_key(user_id) -> str:
    """The store key of a user: `str(user_id)` (so 1, np.int64(1) and "1" are one user),
    which must encode as UTF-8."""
    key = str(user_id)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"user_id {user_id!r}: not encodable as UTF-8 ({e.reason})") from None
    return key


class CachedRanker:
    """`rank_user`: cache → `score_cached`, falling back to `rank` (see module doc).

    Args:
      client: `dmgin_tf.serving.Client` of the served model.
      store: a `UserStateStore` (Redis or in-process).
      histories: `get(user_id)` → one user's history dict (as `Client.rank` takes it),
        and for `update_user` also `append(user_id, behaviors)`.
      write_on_miss: compute and store the state after a fallback.
    """

    def __init__(self, client, store: UserStateStore, histories, write_on_miss: bool = True):
        self.client, self.store, self.histories = client, store, histories
        self.write_on_miss = bool(write_on_miss)
        self.counters = collections.Counter({k: 0 for k in COUNTERS})
        self._lock = threading.Lock()
        self._version: Optional[int] = client.version
        self._layouts: Dict[int, Dict[str, tuple]] = {}
        self._pending: set = set()          # users whose last update_user wrote no state
        # The sequence number of each user's latest update_user (one counter for all
        # users; the most recent users only): a state computed from a history read
        # before the user's latest update is not written. An evicted user reads the
        # largest evicted number, so an eviction can only skip a write, never allow one.
        self._updates: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self._last_seq = self._evicted_floor = 0
        # Per-user (striped) locks: the sequence check and the store write are one step.
        self._stripes = [threading.Lock() for _ in range(64)]
        self._invalidated: set = set()      # old versions whose states were dropped
        self._invalidators: list = []
        self._put_flag = True      # False after a store of the earlier interface refused it

    # ---- bookkeeping -----------------------------------------------------------------
    def _stripe(self, key: str) -> threading.Lock:
        return self._stripes[hash(key) % len(self._stripes)]

    def _seq(self, key: str) -> int:
        """The sequence number of the user's latest update (call under `self._lock`)."""
        return self._updates.get(key, self._evicted_floor)

    def _next_seq(self, key: str) -> int:
        with self._lock:
            self._last_seq += 1
            self._updates[key] = self._last_seq
            self._updates.move_to_end(key)
            while len(self._updates) > TRACKED_UPDATES:
                _, evicted = self._updates.popitem(last=False)
                self._evicted_floor = max(self._evicted_floor, evicted)
            return self._last_seq

    def _put(self, key, version, state, only_if_absent: bool):
        if self._put_flag:
            try:
                return self.store.put(key, version, state, only_if_absent=only_if_absent)
            except TypeError as e:
                if "only_if_absent" not in str(e):
                    raise
                self._put_flag = False   # a store of the interface before only_if_absent
                log.warning("%s.put takes no only_if_absent: a request's fallback may "
                            "replace a state an update wrote meanwhile",
                            type(self.store).__name__)
        return self.store.put(key, version, state)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    @property
    def version(self) -> int:
        """The served model version states are read and written under."""
        if self._version is None:
            self._version = self.client.wait_until_available(timeout_s=self.client.timeout_s)
        return self._version

    def _saw_version(self, answered: Optional[int]) -> None:
        """A Predict answer came from `answered`: states are read and written under it
        from now on. A newer version (hot swap) also drops the old one's states, once per
        old version and in the background (a scan over every key; a request must not
        wait for it). An older one answering (a rollback, or replicas mid-rollout) drops
        nothing: flip-flopping versions must not scan the store on every request."""
        if answered is None or answered == self._version:
            return
        old, self._version = self._version, answered
        if old is None or self.client.version is not None or answered < old:
            return
        with self._lock:
            if old in self._invalidated:
                return
            self._invalidated.add(old)
            self.counters["invalidations"] += 1
        t = threading.Thread(target=self._invalidate, args=(old,), daemon=True,
                             name=f"dmgin-invalidate-v{old}")
        self._invalidators.append(t)
        t.start()

    def _invalidate(self, version: int) -> None:
        """Drops `version`'s states; a store failure midway is retried (a partial scan
        would otherwise leave the rest until their TTL or eviction)."""
        for attempt in range(INVALIDATION_ATTEMPTS):
            try:
                self._count("invalidated_states", self.store.invalidate_version(version))
                return
            except StoreUnavailable as e:
                self._count("cache_errors")
                if attempt + 1 == INVALIDATION_ATTEMPTS:
                    log.error("gave up invalidating version %s states after %d attempts "
                              "(they stay until their TTL or eviction): %s", version,
                              INVALIDATION_ATTEMPTS, e)
                    return
                log.warning("could not invalidate version %s states (attempt %d of %d): %s",
                            version, attempt + 1, INVALIDATION_ATTEMPTS, e)
                time.sleep(max(getattr(self.store, "cooldown_s", 1.0), 0.1) * (attempt + 1))

    def wait_invalidations(self, timeout_s: Optional[float] = None) -> bool:
        """Waits for the background invalidations started so far; True when all ended
        (tests, shutdown)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in list(self._invalidators):
            t.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        return not any(t.is_alive() for t in self._invalidators)

    def _layout(self, version: int) -> Dict[str, tuple]:
        """{input: (dtype, per-user shape)} of `score_cached` for `version` (metadata)."""
        if version not in self._layouts:
            sig = self.client.metadata(version=version)["score_cached"]
            layout = {}
            for name, info in sig.inputs.items():
                if name in (F.CAND_ITEM, F.CAND_GROUP, F.REQUEST_TIME):
                    continue
                dims = tuple(d.size for d in info.tensor_shape.dim)[1:]
                dtype = np.dtype(_DTYPES.get(info.dtype, "V"))
                layout[name] = (dtype, dims)
            self._layouts[version] = layout
        return self._layouts[version]

    def check_state(self, state: Mapping[str, np.ndarray], version: int) -> Optional[str]:
        """Why `state` does not fit `version`'s `score_cached` (None when it does)."""
        layout = self._layout(version)
        missing = sorted(set(layout) - set(state))
        extra = sorted(set(state) - set(layout))
        if missing or extra:
            return f"keys: missing {missing}, unknown {extra}"
        for k, (dtype, dims) in layout.items():
            a = np.asarray(state[k])
            if a.dtype != dtype or tuple(a.shape) != dims:
                return (f"{k!r} is {a.dtype}{list(a.shape)}, this version takes "
                        f"{dtype}{list(dims)}")
        return None

    # ---- the two paths ------------------------------------------------------------------
    def rank_user(self, user_id, cand_item, cand_group,
                  request_time: Optional[int] = None) -> np.ndarray:
        """ctr [N] for one user's N candidates (cached state when possible).

        `request_time` (Unix seconds) is when recency is measured; default: the state's
        `state_time` on a hit, the history's `request_time` on a fallback — pass the
        request's own time in production so both paths agree. Raises KeyError only when
        the user has neither a usable state nor a history."""
        key = user_key(user_id)          # stores and bookkeeping; `histories` gets user_id
        self._count("requests")
        version = self.version
        state, cause, unusable = None, "misses", False
        if key in self._pending:         # the stored state predates the user's update
            cause = "pending_updates"
        else:
            try:
                state = self.store.get(key, version)
            except StoreUnavailable:
                cause = "cache_errors"
            except ValueError as e:      # an unreadable value
                cause, unusable = "bad_states", True
                log.warning("user %s: %s", user_id, e)
        if state is not None:
            try:
                why = self.check_state(state, version)
            except grpc.RpcError as e:   # metadata: NOT_FOUND = the version was swapped out
                why = f"no layout for version {version}: {e.code().name}"
                cause = "stale" if e.code() == grpc.StatusCode.NOT_FOUND else "score_cached_errors"
            else:
                cause = "bad_states"
            if why is not None:
                log.warning("user %s: cached state does not fit version %s: %s", user_id,
                            version, why)
                state, unusable = None, cause in ("bad_states", "stale")
            else:
                cause = "misses"
        if state is not None:
            try:
                ctr = self.client.score_cached(state, cand_item, cand_group, request_time)
                self._count("hits")
                self._saw_version(self.client.last_version)
                return ctr
            except grpc.RpcError as e:
                if refuses_candidates(e):        # not the state: rank would refuse it too
                    self._count("invalid_requests")
                    raise
                if e.code() in _UNANSWERED:      # the deadline is spent: rank would wait again
                    self._count("server_errors")
                    raise
                stale = (e.code() == grpc.StatusCode.INVALID_ARGUMENT
                         and STALE_MARKER in (e.details() or ""))
                cause = "stale" if stale else "score_cached_errors"
                unusable = e.code() == grpc.StatusCode.INVALID_ARGUMENT
                if not stale:
                    log.warning("user %s: score_cached failed (%s): %s", user_id,
                                e.code().name, e.details())
        self._count(cause)
        return self._fallback(user_id, key, cand_item, cand_group, request_time,
                              version if unusable else None)

    def _fallback(self, user_id, key, cand_item, cand_group, request_time,
                  unusable_version=None):
        """`rank` on the user's history; then its state is written. `unusable_version`:
        the stored value read under that version could not be used — deleted once `rank`
        accepted the same candidates (a request that `score_cached` refused for its
        candidates keeps the user's state)."""
        with self._lock:
            seq = self._seq(key)                 # before the history is read
        history = self.histories.get(user_id)
        if history is None:
            raise KeyError(f"user {user_id!r}: no cached state and no history to rank with")
        history = dict(history)
        if request_time is not None:
            history[F.REQUEST_TIME] = np.int64(request_time)
        self._count("fallbacks")
        ctr = self.client.rank(history, cand_item, cand_group)
        self._saw_version(self.client.last_version)
        if unusable_version is not None:  # so that the only-if-absent write below lands
            try:
                self.store.delete(key, unusable_version)
            except StoreUnavailable:
                pass
        pending = key in self._pending
        if self.write_on_miss or pending:
            # A pending user's stored state is older than its history: replace it. Any
            # other: only where none is stored (an update may have written a newer one
            # while this request computed from the history it read first).
            self._write(user_id, key, history, seq, only_if_absent=not pending)
        return ctr

    def _write(self, user_id, key, history, seq: int, only_if_absent: bool) -> bool:
        """Computes the state of `history` and stores it; False when it could not (counted)
        or when an `update_user` started after `history` was read (`seq`: the user's
        update count then): that update writes the newer state. While the store is
        cooling down after a failure the state is not even computed (one RPC less per
        request during an outage)."""
        available = getattr(self.store, "available", None)   # stores of the old interface
        if available is not None and not available():
            self._count("write_errors")
            return False
        try:
            state = self.client.user_state(history)
            answered = self.client.last_version
            self._saw_version(answered)
            version = answered if answered is not None else self.version
            with self._stripe(key):
                with self._lock:
                    if self._seq(key) != seq:
                        return False
                written = self._put(key, version, state, only_if_absent)
                if written is not False:         # None: a store of the old interface
                    with self._lock:
                        if self._seq(key) == seq:
                            self._pending.discard(key)
        except StoreUnavailable:
            self._count("write_errors")
            return False
        except grpc.RpcError as e:
            self._count("write_errors")
            log.warning("user %s: user_state failed (%s): %s", user_id, e.code().name,
                        e.details())
            return False
        if written is not False:
            self._count("writes")
        return True

    def update_user(self, user_id, new_behaviors: Mapping[str, np.ndarray],
                    request_time: Optional[int] = None) -> bool:
        """New behaviors of a user: appended to the history source, the state recomputed
        (`user_state`) and written. Returns whether the state was written; when not (the
        store or the server failed), this ranker stops reading the user's stored state
        (counted as `pending_updates`) until a request's fallback writes a new one."""
        key = user_key(user_id)
        with self._stripe(key):
            seq = self._next_seq(key)
        self.histories.append(user_id, new_behaviors)
        history = dict(self.histories.get(user_id))
        if request_time is not None:
            history[F.REQUEST_TIME] = np.int64(request_time)
        else:
            history[F.REQUEST_TIME] = np.int64(max(int(history[F.REQUEST_TIME]),
                                                   int(time.time())))
        self._count("updates")
        if self._write(user_id, key, history, seq, only_if_absent=False):
            return True
        with self._lock:
            if self._seq(key) != seq:
                return False             # a newer update of this user writes its state
            self._pending.add(key)
        try:                             # other rankers must not read the old one either
            self.store.delete(key, self.version)
        except StoreUnavailable:
            pass
        return False
