"""`user_state` + `score_cached` through the SavedModel (XLA and non-XLA): equal to
`rank` on real Taobao histories, no history input, stale states refused."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.config import ServingConfig

L = 48
SERVING = ServingConfig(batch_buckets=(1, 4), candidate_buckets=(8, 16), max_candidates=64)
HISTORY = F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)


@pytest.fixture(scope="module")
def dmgin_export(tmp_path_factory):
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.export.saved_model import export_model
    from dmgin_tf.models import build_model
    from serving.real_histories import taobao_examples
    x, items, groups = taobao_examples(5, L)
    model = build_model(ModelConfig(item_vocab_size=items, group_vocab_size=groups,
                                    history_length=L, max_groups=8, max_per_group=4,
                                    embedding_dim=8, mlp_units=(16,), attention_units=(8,),
                                    inter_layers=1, dropout=0.0))
    model(x)
    rng = np.random.default_rng(0)
    k = model.model_cfg.context_folds + 1
    model.set_context_tables(rng.normal(size=(k, items, 4)).astype("float32"),
                             rng.normal(size=(k, groups, 4)).astype("float32"))
    base = str(tmp_path_factory.mktemp("cached"))
    paths = export_model(model, base, "dmgin", history_length=L, serving_cfg=SERVING,
                         warmup_inputs=x, state_groups=L, state_items=L)
    return paths, model, x


@pytest.mark.parametrize("variant", ["xla", "noxla"])
def test_score_cached_signature_equals_rank(dmgin_export, variant):
    from serving.real_histories import candidate_lists
    paths, model, x = dmgin_export
    sigs = tf.saved_model.load(paths[variant]).signatures
    assert {"user_state", "score_cached", "rank", "score"} <= set(sigs)
    spec = sigs["score_cached"].structured_input_signature[1]
    assert not set(F.HISTORY_INPUT_KEYS) & set(spec)          # no history input
    ci, cg = candidate_lists(x, 11)                             # 11 → padded to 16
    hist = {k: tf.constant(x[k]) for k in HISTORY}
    rank = sigs["rank"](**hist, cand_item=tf.constant(ci), cand_group=tf.constant(cg))
    state = sigs["user_state"](**hist)
    assert state["state_version"].numpy().tolist() == [model.state_version()] * len(ci)
    got = sigs["score_cached"](**state, request_time=hist[F.REQUEST_TIME],
                               cand_item=tf.constant(ci), cand_group=tf.constant(cg))
    assert got["ctr"].shape == (len(ci), 11)
    assert float(np.std(rank["ctr"].numpy())) > 1e-3
    np.testing.assert_allclose(got["ctr"].numpy(), rank["ctr"].numpy(), atol=1e-5)
    # One user at a time, as a client sends it (batch bucket 1).
    one = sigs["score_cached"](**{k: v[:1] for k, v in state.items()},
                               request_time=hist[F.REQUEST_TIME][:1],
                               cand_item=tf.constant(ci[:1]), cand_group=tf.constant(cg[:1]))
    np.testing.assert_allclose(one["ctr"].numpy(), rank["ctr"].numpy()[:1], atol=1e-5)


def test_stale_state_refused_with_a_clear_error(dmgin_export):
    paths, _, x = dmgin_export
    sigs = tf.saved_model.load(paths["noxla"]).signatures
    state = dict(sigs["user_state"](**{k: tf.constant(x[k][:1]) for k in HISTORY}))
    state["state_version"] = state["state_version"] + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="another model version"):
        sigs["score_cached"](**state, request_time=tf.constant(x[F.REQUEST_TIME][:1]),
                             cand_item=tf.constant([[2, 3]], tf.int32),
                             cand_group=tf.constant([[2, 3]], tf.int32))


@pytest.mark.parametrize("variant", ["xla", "noxla"])
def test_inputs_of_different_users_are_refused(dmgin_export, variant):
    """Candidates for two users with one user's state (or history) used to be padded
    until they agreed and the second user scored against an empty state, silently."""
    paths, _, x = dmgin_export
    sigs = tf.saved_model.load(paths[variant]).signatures
    hist = {k: tf.constant(x[k][:1]) for k in HISTORY}
    state = dict(sigs["user_state"](**hist))
    two = dict(cand_item=tf.constant([[2, 3], [4, 5]], tf.int32),
               cand_group=tf.constant([[2, 3], [2, 3]], tf.int32))
    one = dict(cand_item=two["cand_item"][:1], cand_group=two["cand_group"][:1])
    words = r"request inputs disagree: every input must have the same dimension 0.*cand_item"
    with pytest.raises(tf.errors.InvalidArgumentError, match=words):
        sigs["score_cached"](**state, request_time=hist[F.REQUEST_TIME], **two)
    with pytest.raises(tf.errors.InvalidArgumentError, match=words):
        sigs["rank"](**hist, **two)
    with pytest.raises(tf.errors.InvalidArgumentError, match=words):
        sigs["user_state"](**dict(hist, hist_time=tf.constant(x[F.HIST_TIME][:2])))
    # cand_item and cand_group of different lengths
    with pytest.raises(tf.errors.InvalidArgumentError, match="cand_group shape"):
        sigs["score_cached"](**state, request_time=hist[F.REQUEST_TIME],
                             cand_item=one["cand_item"], cand_group=one["cand_group"][:, :1])
    # The same request with matching inputs is scored.
    ok = sigs["score_cached"](**state, request_time=hist[F.REQUEST_TIME], **one)
    assert ok["ctr"].shape == (1, 2)


@pytest.mark.parametrize("variant", ["xla", "noxla"])
def test_signatures_refuse_values_outside_the_contract(dmgin_export, variant):
    """What TF Serving does not check: the signatures themselves refuse ids outside the
    vocabularies (the XLA variant used to clamp them into a plausible CTR), millisecond
    times and NaN state vectors, naming the input, the rule and the values seen."""
    paths, model, x = dmgin_export
    sigs = tf.saved_model.load(paths[variant]).signatures
    items, groups = model.model_cfg.item_vocab_size, model.model_cfg.group_vocab_size
    hist = {k: tf.constant(x[k][:1]) for k in HISTORY}
    state = {k: v.numpy() for k, v in sigs["user_state"](**hist).items()}
    cands = {F.CAND_ITEM: np.array([[2, 3]], np.int32), F.CAND_GROUP: np.array([[2, 3]], np.int32)}

    def cached(**change):
        inputs = dict(state, request_time=x[F.REQUEST_TIME][:1], **cands)
        inputs.update(change)
        return sigs["score_cached"](**{k: tf.constant(v) for k, v in inputs.items()})

    assert cached()["ctr"].shape == (1, 2)
    cases = [
        (dict(cand_item=np.array([[2, items]], np.int32)),
         [f"cand_item: ids must be in [0, {items - 1}]", f"[max] [{items}]"]),
        (dict(cand_item=np.array([[-3, 2]], np.int32)), ["cand_item", "[got min] [-3]"]),
        (dict(cand_group=np.array([[2, groups + 7]], np.int32)), ["cand_group: ids must be"]),
        (dict(lookup_items=np.where(state["lookup_items"] > 0, items + 1, 0).astype(np.int32)),
         ["lookup_items: ids must be"]),
        (dict(request_time=x[F.REQUEST_TIME][:1] * 1000), ["request_time: times must be Unix "
                                                            "seconds", "milliseconds"]),
        (dict(group_vectors=np.full_like(state["group_vectors"], np.nan)),
         ["group_vectors: values must be finite"]),
        # Scoring before the state's time would read events after the request.
        (dict(request_time=state["state_time"] - 3600),
         ["request_time: before state_time, the time of the user state"]),
        # Negative counts (a tampered or hand-built state): a negative group size made
        # scores NaN, negative counts shifted them, both under status OK.
        (dict(lookup_group_size=np.full_like(state["lookup_group_size"], -1)),
         ["lookup_group_size: counts must be >= 0", "[got min] [-1]"]),
        (dict(item_counts=state["item_counts"] - 1e9), ["item_counts: counts must be >= 0"]),
        # A state's fixed dimensions (K, M) swapped: TF Serving passes any shape of the
        # right rank, and it was scored.
        (dict(lookup_items=np.ascontiguousarray(np.swapaxes(state["lookup_items"], 1, 2))),
         ["must have the signature fixed dimensions", "lookup_items"]),
    ]
    for change, words in cases:
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            cached(**change)
        for w in words:
            assert w in info.value.message, (change.keys(), info.value.message[:300])
    bad_hist = dict(hist, hist_item=tf.constant(np.where(x[F.HIST_ITEM][:1] > 0, items, 0)
                                                .astype(np.int32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_item: ids must be"):
        sigs["rank"](**bad_hist, **{k: tf.constant(v) for k, v in cands.items()})
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_item: ids must be"):
        sigs["user_state"](**bad_hist)
    # More candidates than max_candidates: refused, not compiled at request time for a
    # new padded N (TF Serving passes any N through; `dmgin serve` checks it as well).
    many = {k: tf.constant(np.full((1, SERVING.max_candidates + 1), 2, np.int32))
            for k in (F.CAND_ITEM, F.CAND_GROUP)}
    for sig, args in (("rank", hist), ("score_cached", dict(
            {k: tf.constant(v) for k, v in state.items()},
            request_time=tf.constant(x[F.REQUEST_TIME][:1])))):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"cand_item: more candidates per user than max_candidates="
                                 f"{SERVING.max_candidates}"):
            sigs[sig](**args, **many)
    at_cap = {k: v[:, :SERVING.max_candidates] for k, v in many.items()}
    assert sigs["rank"](**hist, **at_cap)["ctr"].shape == (1, SERVING.max_candidates)
    # A history sent newest first (read backwards by the model) is refused.
    backwards = dict(hist, hist_time=tf.constant(np.where(
        x[F.HIST_ITEM][:1] > 0, x[F.HIST_TIME][:1].max() * 2 - x[F.HIST_TIME][:1], 0)))
    backwards["request_time"] = tf.constant(x[F.HIST_TIME][:1].max(axis=1) * 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_time: history not oldest "
                                                             "first"):
        sigs["rank"](**backwards, **{k: tf.constant(v) for k, v in cands.items()})
    # A history event after the request (a clock or unit bug on the client) is refused.
    late = dict(hist, request_time=tf.constant(np.ones(1, x[F.REQUEST_TIME].dtype)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_time: a history event is "
                                                             "after request_time"):
        sigs["rank"](**late, **{k: tf.constant(v) for k, v in cands.items()})


def test_export_info_describes_the_state(dmgin_export):
    from dmgin_tf.export.saved_model import read_export_info
    from dmgin_tf.export.warmup import read_warmup_file
    paths, model, _ = dmgin_export
    info = read_export_info(paths["xla"])
    assert info["state_version"] == model.state_version()
    keys = info["user_state_keys"]
    assert keys["lookup_items"] == {"shape": [L, 4], "dtype": "int32"}
    assert keys["group_vectors"] == {"shape": [8, 8], "dtype": "float32"}
    expected = sum(int(np.prod(v["shape"])) * tf.as_dtype(v["dtype"]).size
                   for v in keys.values())
    assert info["user_state_bytes"] == expected > 0
    sigs = {p.predict_log.request.model_spec.signature_name for p in read_warmup_file(paths["xla"])}
    assert "score_cached" in sigs


def test_recent_tokens_travel_in_the_state(tmp_path):
    """With `use_recent` the state also holds the newest behaviors as tokens: `score`
    takes them, and `score_cached` still equals `rank`."""
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.export.saved_model import export_model, verify_export
    from dmgin_tf.models import build_model
    from serving.real_histories import candidate_lists, taobao_examples
    x, items, groups = taobao_examples(3, L)
    model = build_model(ModelConfig(item_vocab_size=items, group_vocab_size=groups,
                                    history_length=L, max_groups=8, max_per_group=4,
                                    embedding_dim=8, mlp_units=(16,), attention_units=(8,),
                                    inter_layers=1, dropout=0.0, use_recent=True,
                                    recent_window=6))
    model(x)
    paths = export_model(model, str(tmp_path), "recent", history_length=L,
                         serving_cfg=SERVING, variants=("noxla",), state_groups=L,
                         state_items=L)
    diffs = verify_export(paths["noxla"], model, x)
    assert diffs["score_cached"] < 1e-5 and diffs["score"] < 1e-5
    sigs = tf.saved_model.load(paths["noxla"]).signatures
    assert "recent_tokens" in sigs["score"].structured_input_signature[1]
    ci, cg = candidate_lists(x, 9)
    hist = {k: tf.constant(x[k]) for k in HISTORY}
    rank = sigs["rank"](**hist, cand_item=tf.constant(ci), cand_group=tf.constant(cg))
    got = sigs["score_cached"](**sigs["user_state"](**hist), request_time=hist[F.REQUEST_TIME],
                               cand_item=tf.constant(ci), cand_group=tf.constant(cg))
    np.testing.assert_allclose(got["ctr"].numpy(), rank["ctr"].numpy(), atol=1e-5)
    # The Keras function names the missing recent tokens (not a bare KeyError).
    from dmgin_tf.models.cached_state import StaleUserStateError
    state = dict(model.user_state(x))
    state.pop("recent_tokens")
    with pytest.raises(StaleUserStateError, match="recent_tokens"):
        model.score_cached(state, {F.CAND_ITEM: ci, F.CAND_GROUP: cg,
                                   F.REQUEST_TIME: x[F.REQUEST_TIME]})


def _tf_serving_merge(requests):
    """What TF Serving's batching does with `pad_variable_length_inputs: true`
    (tensorflow_serving/batching/batching_util.cc): each input is padded after its
    elements, in every dimension but 0, to the largest size in the batch, with the
    input's own first value; then concatenated along dimension 0."""
    names = requests[0].keys()
    merged = {}
    for k in names:
        parts = [np.asarray(r[k]) for r in requests]
        top = np.max([p.shape for p in parts], axis=0)
        merged[k] = np.concatenate([np.pad(p, [(0, 0)] + [(0, t - s) for s, t in zip(
            p.shape[1:], top[1:])], constant_values=p.flat[0]) for p in parts])
    return merged


@pytest.mark.parametrize("signature", ["rank", "score_cached"])
def test_tf_serving_padded_batching_keeps_each_requests_scores(dmgin_export, signature):
    """Requests of two users with different candidate counts, merged the way TF Serving
    merges them under the shipped batching file (candidates padded with the request's
    first candidate): each user's scores for its own candidates are those of its request
    alone — what `Client` reads back (its first N columns)."""
    paths, _, x = dmgin_export
    sigs = tf.saved_model.load(paths["noxla"]).signatures
    hist = {k: x[k][:2] for k in HISTORY}
    if signature == "score_cached":
        state = {k: v.numpy() for k, v in sigs["user_state"](
            **{k: tf.constant(v) for k, v in hist.items()}).items()}
        base = dict(state, request_time=hist[F.REQUEST_TIME])
    else:
        base = hist
    sizes = (3, 16)
    requests = []
    for u, n in enumerate(sizes):
        r = {k: v[u:u + 1] for k, v in base.items()}
        r[F.CAND_ITEM] = np.arange(2, 2 + n, dtype=np.int32)[None] + u
        r[F.CAND_GROUP] = np.full((1, n), 2, np.int32)
        requests.append(r)
    alone = [sigs[signature](**{k: tf.constant(v) for k, v in r.items()})["ctr"].numpy()
             for r in requests]
    merged = _tf_serving_merge(requests)
    assert merged[F.CAND_ITEM].shape == (2, max(sizes))
    out = sigs[signature](**{k: tf.constant(v) for k, v in merged.items()})["ctr"].numpy()
    for u, n in enumerate(sizes):
        np.testing.assert_allclose(out[u, :n], alone[u][0], atol=1e-5)


def test_non_finite_scores_are_refused():
    """score / score_cached end in this check: finite state vectors no model makes (e.g.
    3e38) overflowed to NaN scores under XLA (not on every run, so the check is tested
    on the scores themselves)."""
    from dmgin_tf.export.signatures import finite_scores
    ok = tf.constant([[0.2, 0.7]])
    np.testing.assert_array_equal(finite_scores(ok, "score_cached").numpy(), ok.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="score_cached: the scores are not finite for these inputs"):
        finite_scores(tf.constant([[0.2, float("nan")]]), "score_cached")
