"""Two-stage ranking: a cached user state, then candidates scored against it.

`CachedRanker.rank_user(user_id, cand_item, cand_group)` reads the user's state from a
`UserStateStore` (keyed by user id + the served model version) and calls `score_cached`
— the request carries the state and the candidates, not the history. Whenever that
path cannot answer, the request falls back to `rank` with the user's history (from the
`histories` source, the feature store) and the cause is counted; nothing is raised
for a cache problem:

| cause | counter | then |
|---|---|---|
| no state for (user, version) | `misses` | `rank`; the state is computed and written (`write_on_miss`) |
| store down / timing out | `cache_errors` | `rank` (the store skips Redis for its cooldown) |
| unreadable value, wrong keys / shapes / dtypes for this version | `bad_states` | `rank`; the value is replaced |
| state of another model version (server refuses it, or the version is gone) | `stale` | `rank`; the state is recomputed |
| `score_cached` fails otherwise | `score_cached_errors` | `rank` |

A new model version in the answers (hot swap) invalidates the old version's states
(`invalidations`, `invalidated_states`). `update_user(user_id, new_behaviors)` appends
behaviors to the history source and rewrites the state.

    ranker = CachedRanker(Client("localhost:8500", "dmgin"), RedisStateStore(url), histories)
    ctr = ranker.rank_user("user-42", cand_item, cand_group)
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Dict, Mapping, Optional

import grpc
import numpy as np

from dmgin_tf import features as F
from dmgin_tf.serving.user_state_store import StoreUnavailable, UserStateStore

log = logging.getLogger(__name__)

COUNTERS = ("requests", "hits", "misses", "cache_errors", "bad_states", "stale",
            "score_cached_errors", "fallbacks", "writes", "write_errors", "updates",
            "invalidations", "invalidated_states")
STALE_MARKER = "another model version"
_DTYPES = {1: "float32", 3: "int32", 9: "int64", 10: "bool"}  # tensorflow DataType enum   # in the server's INVALID_ARGUMENT message


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

    # ---- bookkeeping -----------------------------------------------------------------
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
        """A Predict answer came from `answered`: a new version invalidates the old one's
        states (the old keys are never read again; this frees them)."""
        if answered is None or answered == self._version:
            return
        old, self._version = self._version, answered
        if old is not None and self.client.version is None:
            self._count("invalidations")
            try:
                self._count("invalidated_states", self.store.invalidate_version(old))
            except StoreUnavailable as e:
                self._count("cache_errors")
                log.warning("could not invalidate version %s states: %s", old, e)

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
        self._count("requests")
        version = self.version
        state, cause = None, "misses"
        try:
            state = self.store.get(user_id, version)
        except StoreUnavailable:
            cause = "cache_errors"
        except ValueError as e:          # an unreadable value
            cause = "bad_states"
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
                state = None
            else:
                cause = "misses"
        if state is not None:
            try:
                ctr = self.client.score_cached(state, cand_item, cand_group, request_time)
                self._count("hits")
                self._saw_version(self.client.last_version)
                return ctr
            except grpc.RpcError as e:
                stale = (e.code() == grpc.StatusCode.INVALID_ARGUMENT
                         and STALE_MARKER in (e.details() or ""))
                cause = "stale" if stale else "score_cached_errors"
                if not stale:
                    log.warning("user %s: score_cached failed (%s): %s", user_id,
                                e.code().name, e.details())
        self._count(cause)
        return self._fallback(user_id, cand_item, cand_group, request_time)

    def _fallback(self, user_id, cand_item, cand_group, request_time):
        history = self.histories.get(user_id)
        if history is None:
            raise KeyError(f"user {user_id!r}: no cached state and no history to rank with")
        history = dict(history)
        if request_time is not None:
            history[F.REQUEST_TIME] = np.int64(request_time)
        self._count("fallbacks")
        ctr = self.client.rank(history, cand_item, cand_group)
        self._saw_version(self.client.last_version)
        if self.write_on_miss:
            self._write(user_id, history)
        return ctr

    def _write(self, user_id, history) -> bool:
        try:
            state = self.client.user_state(history)
            answered = self.client.last_version
            self._saw_version(answered)
            self.store.put(user_id, answered if answered is not None else self.version, state)
            self._count("writes")
            return True
        except StoreUnavailable:
            self._count("write_errors")
        except grpc.RpcError as e:
            self._count("write_errors")
            log.warning("user %s: user_state failed (%s): %s", user_id, e.code().name,
                        e.details())
        return False

    def update_user(self, user_id, new_behaviors: Mapping[str, np.ndarray],
                    request_time: Optional[int] = None) -> bool:
        """New behaviors of a user: appended to the history source, the state recomputed
        (`user_state`) and written. Returns whether the state was written."""
        self.histories.append(user_id, new_behaviors)
        history = dict(self.histories.get(user_id))
        if request_time is not None:
            history[F.REQUEST_TIME] = np.int64(request_time)
        else:
            history[F.REQUEST_TIME] = np.int64(max(int(history[F.REQUEST_TIME]),
                                                   int(time.time())))
        self._count("updates")
        return self._write(user_id, history)
