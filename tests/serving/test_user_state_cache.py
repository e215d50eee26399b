"""The user-state cache: stores (in-process LRU, real Redis), `CachedRanker.rank_user`
(cache → score_cached, fallback to rank), hot-swap invalidation, Redis stopped mid-run."""
import os
import time

import numpy as np
import portpicker
import pytest

from dmgin_tf import features as F
from dmgin_tf.serving.user_state_store import (InMemoryStateStore, RedisServer,
                                               RedisStateStore, StoreUnavailable,
                                               decode_state, encode_state,
                                               redis_server_binary)

L = 32
NAME = "dmgin"
needs_redis = pytest.mark.skipif(redis_server_binary() is None,
                                 reason="redis-server is not installed (Debian/Ubuntu: "
                                        "apt-get install redis-server)")


def _export(base, version, seed):
    from dmgin_tf.config import ModelConfig, ServingConfig
    from dmgin_tf.export.saved_model import export_model
    from dmgin_tf.models import build_model
    from serving.real_histories import taobao_examples
    x, items, groups = taobao_examples(6, L)
    model = build_model(ModelConfig(item_vocab_size=items, group_vocab_size=groups,
                                    history_length=L, max_groups=6, max_per_group=4,
                                    embedding_dim=8, mlp_units=(16,), attention_units=(8,),
                                    inter_layers=1, dropout=0.0))
    model(x)
    rng = np.random.default_rng(seed)
    # Distinct weights per version (moving variances stay positive).
    model.set_weights([w + rng.normal(scale=0.1, size=w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    export_model(model, base, NAME, history_length=L, version=version, variants=("noxla",),
                 serving_cfg=ServingConfig(batch_buckets=(1,), candidate_buckets=(16,),
                                           max_candidates=64),
                 warmup_inputs=x, state_groups=L, state_items=L,
                 model_config=model.model_cfg.to_dict())   # the request checks' vocabularies
    return x


def _serve(tmp_path):
    from dmgin_tf.serving.protos import read_model_server_config
    from dmgin_tf.serving.server import DevServer
    from serving.standin import write_models_config
    cfg = read_model_server_config(write_models_config(
        str(tmp_path / "models.config"), NAME, str(tmp_path / (NAME + "_noxla"))))
    server = DevServer(cfg, port=portpicker.pick_unused_port(), poll_interval_s=0.3,
                       settle_s=0.2)
    return server, server.start()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from dmgin_tf.serving import Client
    from dmgin_tf.serving.cached_ranking import InMemoryHistories
    from serving.real_histories import candidate_lists
    tmp = tmp_path_factory.mktemp("cache")
    x = _export(str(tmp), 1, seed=1)
    server, port = _serve(tmp)
    histories = InMemoryHistories(L)
    for u in range(len(x[F.CAND_ITEM])):
        histories.append(f"user{u}", {k: x[k][u] for k in F.HISTORY_INPUT_KEYS})
    ci, cg = candidate_lists(x, 20)
    client = Client(f"127.0.0.1:{port}", NAME, timeout_s=30)
    client.wait_until_available(60)
    yield client, histories, x, ci, cg, tmp, server
    client.close()
    server.stop(1)


def _ranker(served, store):
    from dmgin_tf.serving.cached_ranking import CachedRanker
    client, histories, *_ = served
    return CachedRanker(client, store, histories)


def _rank(served, u, rt=None):
    client, histories, x, ci, cg, *_ = served
    h = dict(histories.get(f"user{u}"))
    if rt is not None:
        h[F.REQUEST_TIME] = np.int64(rt)
    return client.rank(h, ci[u], cg[u])


def test_encoding_round_trip_and_lru():
    state = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "m": np.array([True, False]),
             "v": np.ones((2, 2), np.float32).T, "s": np.bool_(True), "t": np.int64(7)}
    back = decode_state(encode_state(state))
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == np.asarray(state[k]).dtype
        assert back[k].shape == np.shape(state[k]) and np.array_equal(back[k], state[k])
    with pytest.raises(ValueError, match="bad magic"):
        decode_state(b"garbage")
    with pytest.raises(ValueError, match="truncated"):
        decode_state(encode_state(state)[:-3])
    lru = InMemoryStateStore(max_entries=2)
    lru.put("u1", 1, state)
    lru.put("u2", 1, state)
    lru.get("u1", 1)                       # u1 used last → u2 is evicted first
    lru.put("u3", 2, state)
    assert lru.get("u2", 1) is None and lru.get("u1", 1) is not None
    assert lru.get("u1", 2) is None        # keyed by version too
    assert lru.invalidate_version(1) == 1 and lru.get("u1", 1) is None and len(lru) == 1


@needs_redis
def test_redis_store_against_a_real_redis_server():
    state = {"v": np.arange(4, dtype=np.float32)}
    with RedisServer() as server:
        store = RedisStateStore(server.url, prefix="t")
        assert store.get("u1", 1) is None
        store.put("u1", 1, state)
        store.put("u2", 1, state)
        store.put("u1", 2, state)
        assert np.array_equal(store.get("u1", 1)["v"], state["v"])
        assert store.ping_ms() < 1000
        assert store.invalidate_version(1) == 2
        assert store.get("u1", 1) is None and store.get("u1", 2) is not None
        store.delete("u1", 2)
        assert store.get("u1", 2) is None
        assert store.put("u1", 3, state, only_if_absent=True)
        assert not store.put("u1", 3, {"v": state["v"] + 1}, only_if_absent=True)
        assert np.array_equal(store.get("u1", 3)["v"], state["v"])       # not replaced
        # Prefixes are matched literally by the invalidation scan.
        glob = RedisStateStore(server.url, prefix="t*")
        odd = RedisStateStore(server.url, prefix="b[x]")
        glob.put("u1", 3, state)
        odd.put("u1", 3, state)
        assert glob.invalidate_version(3) == 1 and store.get("u1", 3) is not None
        assert odd.invalidate_version(3) == 1 and odd.get("u1", 3) is None
        # Error replies of a reachable server are store failures (no cooldown), and a
        # key of another type is an unreadable value.
        raw = store._client
        raw.rpush(store.key("u9", 1), b"x")
        with pytest.raises(ValueError, match="no string value"):
            store.get("u9", 1)
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", "1")
        with pytest.raises(StoreUnavailable, match="refused.*OOM|refused.*maxmemory"):
            store.put("u8", 1, state)
        assert store.available()
        raw.config_set("maxmemory", "256mb")
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="Redis at"):
        store.get("u1", 1)                 # server gone: a fast, named error
    with pytest.raises(StoreUnavailable, match="skipped after a recent failure"):
        store.get("u1", 1)                 # cooldown: not even tried
    assert time.perf_counter() - t0 < 2


def test_decode_state_refuses_any_damaged_value_with_value_error():
    """A stored value damaged anywhere (a bad header included) is an unreadable state
    (`bad_states`, rewritten), never another exception out of `rank_user`."""
    import json
    from dmgin_tf.serving.user_state_store import MAGIC, _HEADER_LEN
    blob = encode_state({"a": np.arange(6, dtype=np.int64).reshape(2, 3),
                         "v": np.ones(4, np.float32)})
    start = len(MAGIC) + _HEADER_LEN.size
    (n,) = _HEADER_LEN.unpack_from(blob, len(MAGIC))
    for i in range(start, start + n):
        for b in (0, ord("x"), ord("1"), ord('"'), ord("]"), 0xF4):
            damaged = blob[:i] + bytes([b]) + blob[i + 1:]
            try:
                decode_state(damaged)
            except ValueError:
                pass
    for header in ([1], None, 5, [["a", "O", [1]]], [["a", "<i8", [-1]]], [["a", 3, [1]]],
                   [["a", "<i8", [1.5]]], [["a", "<i8"]]):
        text = json.dumps(header).encode()
        with pytest.raises(ValueError, match="user state"):
            decode_state(MAGIC + _HEADER_LEN.pack(len(text)) + text + b"\0" * 8)


def test_user_ids_must_encode_and_are_keyed_by_their_text():
    from dmgin_tf.serving.cached_ranking import user_key
    assert user_key(1) == user_key(np.int64(1)) == user_key("1") == "1"
    with pytest.raises(ValueError, match="user_id"):
        user_key("bad\ud800id")


class _Client:
    """A stand-in client: only what `_saw_version` reads."""
    version, timeout_s = None, 1.0


def test_only_a_newer_version_invalidates_and_each_old_version_once():
    """Replicas of two versions answering in turn (mid-rollout) or a rollback must not
    scan the store on every request."""
    from dmgin_tf.serving.cached_ranking import CachedRanker
    state = {"v": np.zeros(2, np.float32)}
    store = InMemoryStateStore()
    for v in (1, 2):
        store.put("u", v, state)
    ranker = CachedRanker(_Client(), store, histories=None)
    for answered in (1, 2, 1, 2, 1, 2):
        ranker._saw_version(answered)
    assert ranker.wait_invalidations(10)
    assert ranker.counters["invalidations"] == 1 and ranker.counters["invalidated_states"] == 1
    assert ranker.version == 2 and store.get("u", 1) is None and store.get("u", 2) is not None


def _own_user(served, user, row):
    """A history source of its own (the module's is shared) with `user` = row `row`."""
    from dmgin_tf.serving.cached_ranking import InMemoryHistories
    client, histories, x, ci, cg, *_ = served
    own = InMemoryHistories(L)
    own.append(user, {k: x[k][row] for k in F.HISTORY_INPUT_KEYS})
    return own


def _new_events(own, user, ci, cg):
    last = int(own.get(user)[F.REQUEST_TIME])
    return {F.HIST_ITEM: ci[:3], F.HIST_GROUP: cg[:3],
            F.HIST_BEHAVIOR_ID: np.array([4, 4, 4], np.int32),
            F.HIST_TIME: np.array([last + 10, last + 20, last + 30], np.int64)}, last + 40


class _FailingPuts(InMemoryStateStore):
    fail = False

    def put(self, *args, **kwargs):
        if self.fail:
            raise StoreUnavailable("put refused (test)")
        return super().put(*args, **kwargs)


def test_a_failed_update_never_serves_the_old_state(served):
    from dmgin_tf.serving.cached_ranking import CachedRanker
    client, histories, x, ci, cg, *_ = served
    own = _own_user(served, "u", 4)
    store = _FailingPuts()
    ranker = CachedRanker(client, store, own)
    ranker.rank_user("u", ci[4], cg[4])                       # the state of the old history
    new, rt = _new_events(own, "u", ci[4], cg[4])
    store.fail = True
    assert not ranker.update_user("u", new, request_time=rt)
    store.fail = False
    h = dict(own.get("u"), **{F.REQUEST_TIME: np.int64(rt)})
    ref = client.rank(h, ci[4], cg[4])
    got = ranker.rank_user("u", ci[4], cg[4], request_time=rt)  # not the old state
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ranker.counters["pending_updates"] == 1 and ranker.counters["hits"] == 0
    again = ranker.rank_user("u", ci[4], cg[4], request_time=rt)  # the fallback rewrote it
    assert ranker.counters["hits"] == 1
    np.testing.assert_allclose(again, ref, atol=1e-5)


def test_a_fallback_write_never_replaces_a_state_an_update_wrote_meanwhile(served):
    """rank_user misses, reads the history, and while it computes the state an update
    writes the state of the newer history: the update's state stays."""
    from dmgin_tf.serving.cached_ranking import CachedRanker
    client, histories, x, ci, cg, *_ = served
    own = _own_user(served, "u", 5)
    store = InMemoryStateStore()
    updater = CachedRanker(client, store, own)
    new, rt = _new_events(own, "u", ci[5], cg[5])

    class Racing:
        """The client, with an update landing inside the fallback's user_state call."""
        def __getattr__(self, name):
            return getattr(client, name)

        def user_state(self, history):
            assert updater.update_user("u", new, request_time=rt)
            return client.user_state(history)
    ranker = CachedRanker(Racing(), store, own)
    ranker.rank_user("u", ci[5], cg[5], request_time=rt)      # miss → fallback (old history)
    h = dict(own.get("u"), **{F.REQUEST_TIME: np.int64(rt)})
    ref = client.rank(h, ci[5], cg[5])
    got = updater.rank_user("u", ci[5], cg[5], request_time=rt)
    assert updater.counters["hits"] == 1
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_an_update_failing_during_a_fallback_keeps_the_user_off_the_old_state(served):
    """The fallback read the history before the update; its state must not be written
    (nor clear the update's pending mark) — it would be served as a hit."""
    from dmgin_tf.serving.cached_ranking import CachedRanker
    client, histories, x, ci, cg, *_ = served
    own = _own_user(served, "u", 2)
    store = _FailingPuts()
    new, rt = _new_events(own, "u", ci[2], cg[2])

    class Racing:
        """The client, with a failing update landing inside the fallback's rank call."""
        armed = True

        def __getattr__(self, name):
            return getattr(client, name)

        def rank(self, *args, **kwargs):
            if Racing.armed:
                Racing.armed, store.fail = False, True
                assert not ranker.update_user("u", new, request_time=rt)
                store.fail = False
            return client.rank(*args, **kwargs)
    ranker = CachedRanker(Racing(), store, own)
    ranker.rank_user("u", ci[2], cg[2], request_time=rt)     # miss → fallback (old history)
    assert ranker.counters["writes"] == 0 and store.get("u", ranker.version) is None
    h = dict(own.get("u"), **{F.REQUEST_TIME: np.int64(rt)})
    ref = client.rank(h, ci[2], cg[2])
    for hits in (0, 1):                          # pending → rank + rewrite, then a hit
        np.testing.assert_allclose(ranker.rank_user("u", ci[2], cg[2], request_time=rt),
                                   ref, atol=1e-5)
        assert ranker.counters["hits"] == hits


def test_an_evicted_update_count_never_lets_an_older_state_through(monkeypatch):
    """Update counts are kept for the most recent users only; a fallback that read a
    user's count before a failed update must still skip its write after the user's
    count was evicted (it read 0 again before: the old state was written and served)."""
    from dmgin_tf.serving import cached_ranking as C
    monkeypatch.setattr(C, "TRACKED_UPDATES", 1)

    class Client:
        version, timeout_s, last_version = 1, 1.0, 1

        def user_state(self, history):
            return {"v": np.zeros(2, np.float32)}
    store = _FailingPuts()
    histories = C.InMemoryHistories(4)
    events = {F.HIST_ITEM: np.array([2]), F.HIST_GROUP: np.array([2]),
              F.HIST_BEHAVIOR_ID: np.array([1]), F.HIST_TIME: np.array([100])}
    for user in ("u", "v"):
        histories.append(user, events)
    ranker = C.CachedRanker(Client(), store, histories)
    with ranker._lock:
        read = ranker._seq("u")                  # a fallback reads the count, then the history
    store.fail = True
    assert not ranker.update_user("u", events, request_time=200)     # pending now
    store.fail = False
    assert ranker.update_user("v", events, request_time=200)         # evicts u's count
    assert not ranker._write("u", "u", histories.get("u"), read, only_if_absent=False)
    assert store.get("u", 1) is None and "u" in ranker._pending


def test_stores_and_history_sources_of_the_earlier_interfaces_still_work(served):
    """A store whose put takes no only_if_absent, and a history source keyed by int ids
    (the store key is the id's text; the source gets the caller's id)."""
    from dmgin_tf.serving.cached_ranking import CachedRanker
    client, histories, x, ci, cg, *_ = served
    own = _own_user(served, "7", 1)

    class IntKeyed:
        def get(self, user_id):
            assert isinstance(user_id, int), user_id
            return own.get(str(user_id))

    class OldStore(InMemoryStateStore):
        def put(self, user_id, version, state):
            super().put(user_id, version, state)
    store = OldStore()
    ranker = CachedRanker(client, store, IntKeyed())
    first = ranker.rank_user(7, ci[1], cg[1])
    again = ranker.rank_user(7, ci[1], cg[1])
    assert ranker.counters["writes"] == 1 and ranker.counters["hits"] == 1
    np.testing.assert_allclose(again, first, atol=1e-5)
    assert store.get("7", ranker.version) is not None


def test_no_state_is_computed_while_the_store_cannot_take_it(served):
    from dmgin_tf.serving.cached_ranking import CachedRanker
    client, histories, x, ci, cg, *_ = served
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(client, name)

        def user_state(self, history):
            calls.append(1)
            return client.user_state(history)

    class CoolingDown(InMemoryStateStore):
        def get(self, user_id, version):
            raise StoreUnavailable("down (test)")

        def available(self):
            return False
    ranker = CachedRanker(Counting(), CoolingDown(), _own_user(served, "u", 3))
    ranker.rank_user("u", ci[3], cg[3])
    assert calls == [] and ranker.counters["write_errors"] == 1
    assert ranker.counters["cache_errors"] == 1 and ranker.counters["fallbacks"] == 1


def test_rank_user_hits_equal_rank_and_bad_states_fall_back(served):
    client, histories, x, ci, cg, *_ = served
    store = InMemoryStateStore()
    ranker = _ranker(served, store)
    for u in range(3):
        first = ranker.rank_user(f"user{u}", ci[u], cg[u])      # miss → rank, state written
        second = ranker.rank_user(f"user{u}", ci[u], cg[u])     # hit → score_cached
        ref = _rank(served, u)
        np.testing.assert_allclose(first, ref, atol=1e-5)
        np.testing.assert_allclose(second, ref, atol=1e-5)
        assert np.std(ref) > 1e-4
    c = ranker.counters
    assert (c["misses"], c["hits"], c["fallbacks"], c["writes"]) == (3, 3, 3, 3)
    version = ranker.version
    # A state of the wrong shape (another export's K) is caught before the server.
    state = store.get("user0", version)
    store.put("user0", version, dict(state, lookup_items=state["lookup_items"][:5]))
    np.testing.assert_allclose(ranker.rank_user("user0", ci[0], cg[0]), _rank(served, 0),
                               atol=1e-5)
    assert c["bad_states"] == 1
    # A state of another model version: the server refuses it, rank answers.
    state = store.get("user1", version)
    store.put("user1", version, dict(state, state_version=np.int32(state["state_version"] + 1)))
    np.testing.assert_allclose(ranker.rank_user("user1", ci[1], cg[1]), _rank(served, 1),
                               atol=1e-5)
    assert c["stale"] == 1 and c["fallbacks"] == 5
    assert ranker.rank_user("user1", ci[1], cg[1]) is not None and c["hits"] == 4  # rewritten


def test_update_user_recomputes_the_state(served):
    client, histories, x, ci, cg, *_ = served
    store = InMemoryStateStore()
    ranker = _ranker(served, store)
    before = ranker.rank_user("user2", ci[2], cg[2])
    last = int(histories.get("user2")[F.REQUEST_TIME])
    new = {F.HIST_ITEM: ci[2][:3], F.HIST_GROUP: cg[2][:3],
           F.HIST_BEHAVIOR_ID: np.array([4, 4, 4], np.int32),
           F.HIST_TIME: np.array([last + 10, last + 20, last + 30], np.int64)}
    rt = last + 40
    assert ranker.update_user("user2", new, request_time=rt)
    hits = ranker.counters["hits"]
    after = ranker.rank_user("user2", ci[2], cg[2], request_time=rt)
    assert ranker.counters["hits"] == hits + 1            # from the rewritten state
    np.testing.assert_allclose(after, _rank(served, 2, rt), atol=1e-5)
    assert np.abs(after - before).max() > 1e-4            # the new behaviors count


@needs_redis
def test_redis_stopped_mid_run_falls_back_without_failed_requests(served):
    client, histories, x, ci, cg, *_ = served
    server = RedisServer().start()
    try:
        ranker = _ranker(served, RedisStateStore(server.url, cooldown_s=0.2))
        refs = [_rank(served, u) for u in range(4)]
        for u in range(4):
            ranker.rank_user(f"user{u}", ci[u], cg[u])
        assert ranker.counters["writes"] == 4
        got = [ranker.rank_user(f"user{u}", ci[u], cg[u]) for u in range(4)]
        assert ranker.counters["hits"] == 4
        server.stop()                                        # Redis goes away mid-run
        for _ in range(2):
            for u in range(4):
                got.append(ranker.rank_user(f"user{u}", ci[u], cg[u]))
                time.sleep(0.05)
    finally:
        server.close()
    c = ranker.counters
    assert c["requests"] == 16 and c["cache_errors"] == 8 and c["fallbacks"] == 12
    assert c["write_errors"] == 8            # states cannot be written either, no raise
    for i, ctr in enumerate(got):
        np.testing.assert_allclose(ctr, refs[i % 4], atol=1e-5)


def test_hot_swap_invalidates_old_states(served):
    """Version 2 replaces 1: a state of version 1 is refused (stale), rank answers, the
    version-1 states are dropped and the next request hits a version-2 state."""
    client, histories, x, ci, cg, tmp, server = served
    store = InMemoryStateStore()
    ranker = _ranker(served, store)
    for u in range(3):
        ranker.rank_user(f"user{u}", ci[u], cg[u])
    assert ranker.version == 1 and len(store) == 3
    _export(str(tmp), 2, seed=2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if [v for v, s, _ in client.status() if s == "AVAILABLE"] == [2]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"version 2 not served: {client.status()}")
    got = ranker.rank_user("user0", ci[0], cg[0])            # v1 state → stale → rank (v2)
    assert ranker.wait_invalidations(30)                     # dropped in the background
    c = ranker.counters
    assert c["stale"] == 1 and c["invalidations"] == 1 and c["invalidated_states"] >= 2
    assert ranker.version == 2
    np.testing.assert_allclose(got, _rank(served, 0), atol=1e-5)
    assert store.get("user1", 1) is None and store.get("user0", 2) is not None
    again = ranker.rank_user("user0", ci[0], cg[0])
    assert c["hits"] == 1
    np.testing.assert_allclose(again, _rank(served, 0), atol=1e-5)


def test_state_with_bad_ids_is_refused_by_name_and_rank_answers(served):
    import grpc
    client, histories, x, ci, cg, *_ = served
    store = InMemoryStateStore()
    ranker = _ranker(served, store)
    ranker.rank_user("user3", ci[3], cg[3])                  # writes a good state
    state = store.get("user3", ranker.version)
    bad = dict(state, lookup_items=np.full_like(state["lookup_items"], 10 ** 7))
    with pytest.raises(grpc.RpcError) as info:
        client.score_cached(bad, ci[3], cg[3])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lookup_items" in info.value.details() and "item_vocab_size" in info.value.details()
    store.put("user3", ranker.version, bad)
    np.testing.assert_allclose(ranker.rank_user("user3", ci[3], cg[3]), _rank(served, 3),
                               atol=1e-5)
    assert ranker.counters["score_cached_errors"] == 1


def test_refused_candidates_and_an_unanswered_server_are_raised_once(served):
    """Candidates outside the vocabulary or too many of them: the server refuses the
    request, not the state. `rank_user` raises that INVALID_ARGUMENT at once (it used to
    count a `score_cached` error, send the same request to `rank`, and raise `rank`'s
    refusal after two RPCs) and keeps the state. A server that did not answer within
    the deadline is not asked again through `rank` (a second deadline). A request time
    before the state's time is the state's problem: `rank` answers it."""
    import grpc
    from dmgin_tf.serving.cached_ranking import refuses_candidates
    client, histories, x, ci, cg, *_ = served
    store = InMemoryStateStore()
    ranker = _ranker(served, store)
    ranker.rank_user("user2", ci[2], cg[2])                  # a miss: writes the state
    state = store.get("user2", ranker.version)
    unknown = np.array(ci[2]).copy()
    unknown[0] = 10 ** 7
    too_many = np.full(65, ci[2][0])
    for cand_item, cand_group in ((unknown, cg[2]), (too_many, np.full(65, cg[2][0]))):
        with pytest.raises(grpc.RpcError) as info:
            ranker.rank_user("user2", cand_item, cand_group)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refuses_candidates(info.value), info.value.details()
    c = ranker.counters
    assert c["invalid_requests"] == 2
    assert c["score_cached_errors"] == 0 and c["fallbacks"] == 1  # the first miss only
    assert store.get("user2", ranker.version) is not None
    np.testing.assert_allclose(ranker.rank_user("user2", ci[2], cg[2]), _rank(served, 2),
                               atol=1e-5)
    assert c["hits"] == 1

    # A state stamped later than the request (an update's clock ahead of the caller's).
    rt = int(state["state_time"])
    store.put("user2", ranker.version, dict(state, state_time=np.asarray(rt + 3600)))
    np.testing.assert_allclose(ranker.rank_user("user2", ci[2], cg[2], request_time=rt),
                               _rank(served, 2, rt), atol=1e-5)
    assert c["invalid_requests"] == 2 and c["fallbacks"] == 2

    class Down(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "failed to connect to all addresses"

    class Unanswered:                # the served client, with score_cached timing out
        def __getattr__(self, name):
            return getattr(client, name)

        def score_cached(self, *args, **kwargs):
            raise Down()

    ranker.client = Unanswered()
    with pytest.raises(grpc.RpcError) as info:
        ranker.rank_user("user2", ci[2], cg[2])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert c["server_errors"] == 1 and c["fallbacks"] == 2


def test_in_memory_histories_keep_events_in_time_order():
    """A late-arriving event goes in its place: served histories must be oldest first
    (a newest-first or unsorted history is refused by the signatures)."""
    from dmgin_tf.serving.cached_ranking import InMemoryHistories
    h = InMemoryHistories(4)

    def events(items, times):
        return {F.HIST_ITEM: np.array(items), F.HIST_GROUP: np.array(items) % 3 + 2,
                F.HIST_BEHAVIOR_ID: np.ones(len(items), np.int32), F.HIST_TIME: np.array(times)}
    h.append("u", events([5, 6], [100, 200]))
    h.append("u", events([7], [150]))                       # arrived late
    h.append("u", events([8, 9], [150, 300]))               # equal time: after the earlier one
    got = h.get("u")
    assert got[F.HIST_TIME].tolist() == [150, 150, 200, 300]  # the newest 4, oldest first
    assert got[F.HIST_ITEM].tolist() == [7, 8, 6, 9]
    assert got[F.HIST_GROUP].tolist() == [3, 4, 2, 2]
    assert int(got[F.REQUEST_TIME]) == 300
