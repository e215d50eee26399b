"""SavedModel export: layout, signatures vs the in-process Keras model, XLA, warmup."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from dmgin_tf import features as F
from dmgin_tf.export.example_parsing import examples_from_dense, make_serving_example
from dmgin_tf.export.saved_model import read_export_info, verify_export
from dmgin_tf.export.warmup import inputs_of, read_warmup_file
from export.conftest import BEHAVIORS, L, SERVING, tiny_inputs


def test_layout_and_saved_model_cli(standin_export):
    base, paths, *_ = standin_export
    assert paths == {"xla": os.path.join(base, "ranker", "1"),
                     "noxla": os.path.join(base, "ranker_noxla", "1")}
    assert not [n for n in os.listdir(os.path.join(base, "ranker")) if n.startswith(".tmp")]
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    # --tag_set/--signature_def reads the protos only (--all would also load the model).
    out = subprocess.run([cli, "show", "--dir", paths["xla"], "--tag_set", "serve",
                          "--signature_def", "rank"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "inputs['hist_item']" in out.stdout and "outputs['ctr']" in out.stdout, out.stdout
    loaded = tf.saved_model.load(paths["xla"])
    assert set(loaded.signatures) == {"serving_default", "tensorize", "predict_raw", "rank",
                                      "user_state", "score"}
    info = read_export_info(paths["xla"])
    assert info["jit_compile"] and not read_export_info(paths["noxla"])["jit_compile"]


@pytest.mark.parametrize("variant", ["xla", "noxla"])
def test_every_signature_equals_keras_model(standin_export, variant):
    _, paths, model, index, inputs = standin_export
    # 9 rows: beyond the largest batch bucket (4) -> padded to 12 inside the signature.
    inputs = tiny_inputs(9, seed=3)
    examples = examples_from_dense(inputs, index.item_ids, BEHAVIORS)
    diffs = verify_export(paths[variant], model, inputs, examples, atol=1e-5)
    assert set(diffs) == {"predict_raw", "serving_default", "rank", "score"}


@pytest.mark.parametrize("variant", ["xla", "noxla"])
def test_predict_raw_refuses_rows_that_disagree(standin_export, variant):
    """3 histories with 2 candidates: refused, not padded into a third empty example."""
    _, paths, _, _, _ = standin_export
    fn = tf.saved_model.load(paths[variant]).signatures["predict_raw"]
    x = {k: tf.constant(v) for k, v in tiny_inputs(3, seed=4).items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match="request inputs disagree") as info:
        fn(**dict(x, cand_item=x[F.CAND_ITEM][:2], cand_group=x[F.CAND_GROUP][:2]))
    assert "cand_item" in info.value.message and "hist_item" in info.value.message
    assert fn(**x)["ctr"].shape == (3,)


def test_rank_scores_many_candidates_per_user(standin_export):
    _, paths, model, _, _ = standin_export
    loaded = tf.saved_model.load(paths["xla"])
    users = tiny_inputs(2, seed=5)
    n = 11  # > largest candidate bucket (8) -> padded to 16 inside the signature
    cands = np.stack([np.arange(2, 2 + n), np.arange(20, 20 + n)]).astype(np.int32)
    groups = (cands % 5 + 2).astype(np.int32)
    req = {k: tf.constant(v) for k, v in users.items() if k not in (F.CAND_ITEM, F.CAND_GROUP)}
    out = loaded.signatures["rank"](**req, cand_item=tf.constant(cands),
                                    cand_group=tf.constant(groups))["ctr"].numpy()
    assert out.shape == (2, n)
    for u in range(2):  # reference: the Keras model on one row per (user, candidate)
        rows = {k: np.repeat(v[u:u + 1], n, axis=0) for k, v in users.items()}
        rows[F.CAND_ITEM], rows[F.CAND_GROUP] = cands[u], groups[u]
        np.testing.assert_allclose(out[u], np.asarray(model(rows)), atol=1e-5)


def _xla_flags(path):
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(open(os.path.join(path, "saved_model.pb"), "rb").read())
    flags = []
    for fn in sm.meta_graphs[0].graph_def.library.function:
        if "_XlaMustCompile" in fn.attr:
            flags.append(fn.attr["_XlaMustCompile"].b)
        for node in fn.node_def:
            if "_XlaMustCompile" in node.attr:
                flags.append(node.attr["_XlaMustCompile"].b)
    return flags


def _xla_calls_under_signature(path, signature):
    """Names of the XLA-compiled functions called (transitively) by `signature`, each once
    per call site directly under the first function that calls a compiled one."""
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(open(os.path.join(path, "saved_model.pb"), "rb").read())
    graph = sm.meta_graphs[0].graph_def
    library = {fn.signature.name: fn for fn in graph.library.function}
    out_tensor = next(iter(sm.meta_graphs[0].signature_def[signature].outputs.values())).name
    entry = next(n for n in graph.node if n.name == out_tensor.split(":")[0])
    todo, seen = [entry.attr["f"].func.name], set()
    while todo:
        fn = library[todo.pop()]
        calls = [n for n in fn.node_def if "f" in n.attr and n.attr["f"].func.name in library]
        compiled = [n.attr["f"].func.name for n in calls
                    if n.attr["_XlaMustCompile"].b or
                    library[n.attr["f"].func.name].attr["_XlaMustCompile"].b]
        if compiled:
            return compiled
        todo += [n.attr["f"].func.name for n in calls if n.attr["f"].func.name not in seen]
        seen.update(todo)
    return []


def test_xla_attribute_only_in_xla_variant(standin_export):
    _, paths, *_ = standin_export
    assert any(_xla_flags(paths["xla"]))
    assert not any(_xla_flags(paths["noxla"]))


def test_warmup_records_cover_every_bucket_and_replay(standin_export):
    _, paths, *_ = standin_export
    logs = read_warmup_file(paths["xla"])
    seen = set()
    loaded = tf.saved_model.load(paths["xla"])
    for plog in logs:
        req = plog.predict_log.request
        assert req.model_spec.name == "ranker"
        arrays = inputs_of(plog)
        sig = req.model_spec.signature_name
        if sig in ("rank", "score"):
            size = arrays[F.CAND_ITEM].shape[1]
        else:
            size = len(next(iter(arrays.values())))
        seen.add((sig, size))
        loaded.signatures[sig](**{k: tf.constant(v) for k, v in arrays.items()})
    expected = {(s, b) for s in ("serving_default", "predict_raw", "user_state")
                for b in SERVING.batch_buckets}
    # Every padded count under the cap: the buckets 2, 8 and 16 (= 2 × the largest, what
    # 9..16 candidates pad to), which TF Serving compiles only from these records.
    expected |= {(s, c) for s in ("rank", "score") for c in (2, 8, 16)}
    assert seen == expected and len(logs) == len(expected) <= 1000


def test_more_warmup_records_than_tf_serving_reads_is_a_config_error_naming_the_fields():
    """Buckets (1,) with the default cap of 1000 pad to 1000 distinct candidate counts:
    more records than TF Serving replays, refused at export with the fields to change."""
    from dmgin_tf.config import ConfigError
    from dmgin_tf.export.warmup import build_warmup_logs
    from dmgin_tf.serving.validation import Contract
    sizes = Contract(max_candidates=1000, candidate_buckets=(1,)).warm_candidate_sizes()
    assert len(sizes) == 1000
    with pytest.raises(ConfigError, match=r"TF Serving reads at most 1000: add a larger "
                                          r"serving.candidate_buckets entry or lower "
                                          r"serving.max_candidates"):
        build_warmup_logs("ranker", {"rank": None, "predict_raw": None}, tiny_inputs(2), None,
                          (1,), sizes)   # 1000 rank records + 1 predict_raw


def _serving_default(standin_export):
    _, paths, *_ = standin_export
    return tf.saved_model.load(paths["noxla"]).signatures["serving_default"]


def test_examples_truncate_to_newest_history_and_map_oov(standin_export):
    """Unknown items map to OOV; events of an unknown behavior are dropped before the
    newest-L cut (they used to stay as real items with behavior 0, and enough of them
    pushed every known event out of the window)."""
    _, _, model, index, _ = standin_export
    fn = _serving_default(standin_export)
    n = L + 5  # longer than L: the newest L behaviors are kept
    hist = [f"item{k % 40}" for k in range(n - 2)] + ["never-seen", "item3"]
    times = list(range(1000, 1000 + n))
    ex = make_serving_example("item7", 5000, hist, ["pv"] * (n - 1) + ["unknown-type"], times)
    got = fn(examples=tf.constant([ex]))["ctr"].numpy()
    idx = index.lookup(hist[-L - 1:-1])           # the last event's behavior is unknown
    assert idx[-1] == F.OOV_ID
    dense = {F.HIST_ITEM: idx[None], F.HIST_GROUP: index.groups_of(idx)[None],
             F.HIST_BEHAVIOR_ID: np.ones((1, L), np.int32),
             F.HIST_TIME: np.array([times[-L - 1:-1]], np.int64),
             F.REQUEST_TIME: np.array([5000], np.int64),
             F.CAND_ITEM: index.lookup(["item7"]), F.CAND_GROUP: index.lookup_groups(["item7"])}
    np.testing.assert_allclose(got, np.asarray(model(dense)), atol=1e-5)
    # `tensorize` gives a client exactly those id inputs (for rank / user_state).
    _, paths, *_ = standin_export
    ids = tf.saved_model.load(paths["noxla"]).signatures["tensorize"](examples=tf.constant([ex]))
    assert set(ids) == set(dense)
    for k, v in dense.items():
        np.testing.assert_array_equal(ids[k].numpy(), v, err_msg=k)
    # ... and checks them as serving_default does (TF Serving runs no checks of its own).
    ms = make_serving_example("item7", 1_700_000_000_000, hist, ["pv"] * n, times)
    with pytest.raises(tf.errors.InvalidArgumentError, match="request_time"):
        tf.saved_model.load(paths["noxla"]).signatures["tensorize"](examples=tf.constant([ms]))


@pytest.mark.parametrize("bad,words", [
    ("missing", ["item_id", "required"]),
    ("dtype", ["timestamp", "type"]),
    ("lengths", ["hist_item_id", "hist_behavior", "same number"]),
    # Out of order among the older events the newest-L cut drops (L = 8 here): still
    # refused, as `dmgin serve` refuses it.
    ("order", ["hist_timestamp must be oldest first"]),
])
def test_bad_examples_name_the_feature(standin_export, bad, words):
    fn = _serving_default(standin_export)
    good = tf.train.Example.FromString(make_serving_example("item1", 10, ["item2"], ["pv"], [5]))
    if bad == "missing":
        del good.features.feature[F.ITEM_ID]
    elif bad == "dtype":
        good.features.feature[F.TIMESTAMP].Clear()
        good.features.feature[F.TIMESTAMP].bytes_list.value.append(b"10")
    elif bad == "lengths":
        good.features.feature[F.HIST_BEHAVIOR].bytes_list.value.append(b"pv")
    elif bad == "order":
        times = [5, 3] + list(range(6, 6 + L))
        good = tf.train.Example.FromString(make_serving_example(
            "item1", 100, ["item2"] * len(times), ["pv"] * len(times), times))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        fn(examples=tf.constant([good.SerializeToString()]))
    for w in words:
        assert w in info.value.message


@pytest.mark.slow
def test_real_dmgin_model_exports_and_matches(tmp_path):
    """The real DMGIN (grouping op, both Transformer levels) through both variants.
    Slow on CPU: XLA compiles the grouping for every padded shape."""
    pytest.importorskip("dmgin_tf.ops.grouping", reason="grouping op not built yet")
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.export.saved_model import export_model
    from dmgin_tf.models import build_model
    from export.conftest import tiny_item_index
    cfg = ModelConfig(item_vocab_size=42, group_vocab_size=7, num_behavior_types=4,
                      history_length=L, max_groups=3, max_per_group=3, embedding_dim=8,
                      mlp_units=(8,), inter_layers=1, dropout=0.0)
    model = build_model(cfg)
    # Context statistics tables travel with the SavedModel: non-zero tables must give the
    # same outputs there as in Keras (zeros would hide a table left behind).
    rng = np.random.default_rng(3)
    k = cfg.context_folds + 1
    model.set_context_tables(rng.random((k, 42, 4)).astype("float32"),
                             rng.random((k, 7, 4)).astype("float32"))
    inputs = tiny_inputs(3, seed=7)
    index = tiny_item_index()
    paths = export_model(model, str(tmp_path), "dmgin", history_length=L, item_index=index,
                         behavior_types=BEHAVIORS, serving_cfg=SERVING)
    examples = examples_from_dense(inputs, index.item_ids, BEHAVIORS)
    for variant in ("xla", "noxla"):
        verify_export(paths[variant], model, inputs, examples, atol=1e-5)
    assert any(_xla_flags(paths["xla"]))
    # rank: user side, candidate lookups and scoring are three compiled clusters called
    # side by side (so the first two can run on different cores), not one.
    assert len(_xla_calls_under_signature(paths["xla"], "rank")) == 3


def test_a_version_that_fails_its_check_is_never_published(tmp_path):
    """`dmgin export` verifies the SavedModel against the Keras model before the version
    folder gets its number: a server polling the base path (TF Serving loads numeric
    folders) never sees a version that failed, and nothing is left behind."""
    from dmgin_tf.export.saved_model import export_model
    from export.conftest import NUM_ITEMS, tiny_item_index
    from export.keras_standin import StandInRanker
    model = StandInRanker(item_vocab=NUM_ITEMS + 2, group_vocab=7)
    inputs = tiny_inputs(3)
    model(inputs)
    index = tiny_item_index()
    seen = []

    def failing_check(path):
        seen.append((path, sorted(os.listdir(os.path.dirname(path)))))
        raise RuntimeError("scores differ")

    kwargs = dict(history_length=L, item_index=index, behavior_types=BEHAVIORS,
                  warmup_inputs=inputs, serving_cfg=SERVING, variants=("noxla",))
    with pytest.raises(RuntimeError, match="scores differ"):
        export_model(model, str(tmp_path), "ranker", check=failing_check, **kwargs)
    staged, listing = seen[0]
    assert os.path.basename(staged).startswith(".tmp") and not any(n.isdigit() for n in listing)
    assert os.listdir(tmp_path / "ranker_noxla") == []
    # The same export with a passing check is published under its number.
    examples = examples_from_dense(inputs, index.item_ids, BEHAVIORS)
    paths = export_model(model, str(tmp_path), "ranker", check=lambda p: verify_export(
        p, model, inputs, examples, atol=1e-5), **kwargs)
    assert paths == {"noxla": str(tmp_path / "ranker_noxla" / "1")}
    assert os.listdir(tmp_path / "ranker_noxla") == ["1"]


def test_a_version_appears_in_every_variant_or_in_none(tmp_path):
    """An export stopped while tracing its second variant (SIGTERM, a failed check) left
    the first published alone: a CPU server got version 1, the GPU one never did, and a
    rerun wrote version 2. Both variants are now published together, after both passed."""
    from dmgin_tf.export.saved_model import export_model
    from export.conftest import NUM_ITEMS, tiny_item_index
    from export.keras_standin import StandInRanker
    model = StandInRanker(item_vocab=NUM_ITEMS + 2, group_vocab=7)
    model(tiny_inputs(3))
    checked = []

    def second_fails(path):
        checked.append(path)
        if len(checked) == 2:
            raise KeyboardInterrupt          # what the CLI's SIGTERM handler raises

    kwargs = dict(history_length=L, item_index=tiny_item_index(), behavior_types=BEHAVIORS,
                  serving_cfg=SERVING, variants=("xla", "noxla", "xla"))
    with pytest.raises(KeyboardInterrupt):
        export_model(model, str(tmp_path), "ranker", check=second_fails, **kwargs)
    assert len(checked) == 2                 # the repeated "xla" is traced once
    for base in ("ranker", "ranker_noxla"):
        assert os.listdir(tmp_path / base) == [], os.listdir(tmp_path / base)
    paths = export_model(model, str(tmp_path), "ranker", **kwargs)
    assert paths == {"xla": str(tmp_path / "ranker" / "1"),
                     "noxla": str(tmp_path / "ranker_noxla" / "1")}


def test_a_taken_version_is_refused_before_any_variant_is_traced(tmp_path):
    """`--version N` where N exists (for either variant) fails before tracing: no
    progress line claims an export, and the other variant is not written under N."""
    from dmgin_tf.errors import DmginError
    from dmgin_tf.export.saved_model import export_model
    from export.conftest import NUM_ITEMS, tiny_item_index
    from export.keras_standin import StandInRanker
    model = StandInRanker(item_vocab=NUM_ITEMS + 2, group_vocab=7)
    model(tiny_inputs(3))
    os.makedirs(tmp_path / "ranker_noxla" / "2")
    lines = []
    with pytest.raises(DmginError, match=r"ranker_noxla/2 already exists; pick another --version"):
        export_model(model, str(tmp_path), "ranker", history_length=L,
                     item_index=tiny_item_index(), behavior_types=BEHAVIORS,
                     serving_cfg=SERVING, variants=("xla", "noxla"), version=2,
                     log=lines.append)
    assert lines == [] and not (tmp_path / "ranker").exists()


def test_the_default_version_is_free_in_every_variant_and_dead_staging_is_removed(tmp_path):
    """A second noxla-only export without --version took version 1 of the (empty) XLA
    folder and failed on ranker_noxla/1; a killed export's staging folder stayed."""
    from dmgin_tf.export.saved_model import export_model
    from export.conftest import NUM_ITEMS, tiny_item_index
    from export.keras_standin import StandInRanker
    model = StandInRanker(item_vocab=NUM_ITEMS + 2, group_vocab=7)
    model(tiny_inputs(3))
    kwargs = dict(history_length=L, item_index=tiny_item_index(), behavior_types=BEHAVIORS,
                  serving_cfg=SERVING, variants=("noxla",))
    os.makedirs(tmp_path / "ranker_noxla" / "1")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                    # a pid that no longer runs
    stale = tmp_path / "ranker_noxla" / f".tmp-2-{dead.pid}"
    live = tmp_path / "ranker_noxla" / f".tmp-2-{os.getppid()}"
    stale.mkdir()
    live.mkdir()
    paths = export_model(model, str(tmp_path), "ranker", **kwargs)
    assert paths == {"noxla": str(tmp_path / "ranker_noxla" / "2")}
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("variant", ["xla", "noxla"])
def test_raw_signatures_refuse_an_item_paired_with_another_group(standin_export, variant):
    """With the item table in the export, a known item sent with a group other than its
    own is refused (it was scored as if it belonged there); padding and the OOV item,
    whose group only the client knows, pass with any group."""
    _, paths, _, _, inputs = standin_export
    sigs = tf.saved_model.load(paths[variant]).signatures
    x = {k: v[:2] for k, v in inputs.items()}
    call = lambda d: sigs["predict_raw"](**{k: tf.constant(v) for k, v in d.items()})  # noqa: E731
    assert call(x)["ctr"].shape == (2,)
    wrong = x[F.CAND_GROUP].copy()
    wrong[1] = (wrong[1] - 2 + 1) % 5 + 2                     # another valid group
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="cand_group: the group of a known item must be the one of "
                             "the item table"):
        call(dict(x, **{F.CAND_GROUP: wrong}))
    real = np.argwhere(x[F.HIST_ITEM] >= 2)[0]
    hist_wrong = x[F.HIST_GROUP].copy()
    hist_wrong[tuple(real)] = (hist_wrong[tuple(real)] - 2 + 1) % 5 + 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_group: the group of a known item"):
        sigs["rank"](**{k: tf.constant(v) for k, v in dict(
            x, **{F.HIST_GROUP: hist_wrong, F.CAND_ITEM: x[F.CAND_ITEM][:, None],
                  F.CAND_GROUP: x[F.CAND_GROUP][:, None]}).items()})
    # The OOV item may carry any group (a new item of a known category).
    oov = dict(x, **{F.CAND_ITEM: np.array([1, 1], np.int32), F.CAND_GROUP: wrong})
    assert call(oov)["ctr"].shape == (2,)
