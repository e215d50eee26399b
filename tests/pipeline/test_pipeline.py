"""End-to-end TFX pipeline on a tiny real slice (LocalDagRunner + SQLite MLMD).

One pipeline root for the module; the tests run in order and build on each other:
span 1 end to end -> span 2 retrain (warm start, stable groups, blessed, pushed) ->
span 2 again with random labels (not blessed, served version unchanged) -> anomalous
imported examples (stopped by the validation gate, nothing pushed).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from dmgin_tf import features as F
from tests.pipeline.conftest import served_versions, tiny_config

pytestmark = pytest.mark.slow

_STATE: dict = {}


def _run(spans, roots, span, **kwargs):
    from tfx_pipeline.runner import run_pipeline
    return run_pipeline(tiny_config(), data_root=spans, span=span,
                        export_jit_compile=False, export_signatures="default", **roots, **kwargs)


def test_end_to_end_span1(spans, roots):
    s = _run(spans, roots, 1)
    _STATE["span1"] = s
    # Every artifact the issue names is recorded in ML Metadata, with its type.
    expected = {"ExampleBuilder.examples": "Examples",
                "StatisticsGen.statistics": "ExampleStatistics",
                "ImportSchemaGen.schema": "Schema", "ExampleValidator.anomalies": "ExampleAnomalies",
                "Transform.transform_graph": "TransformGraph", "Trainer.model": "Model",
                "Trainer.model_run": "ModelRun", "Evaluator.evaluation": "ModelEvaluation",
                "Evaluator.blessing": "ModelBlessing", "Pusher.pushed_model": "PushedModel",
                "ItemGrouper.item_groups": "dmgin.ItemGroups",
                "ValidationGate.report": "dmgin.ValidationReport"}
    for key, type_name in expected.items():
        assert s.types.get(key) == type_name, (key, s.types.get(key))
    assert s.blessed and s.pushed
    assert served_versions(roots["serving_base"]) == [int(os.path.basename(s.pushed_dir))]
    # Splits of our ExampleGen: one SequenceExample per (user, split), O(behaviors).
    ex = s.artifacts["ExampleBuilder.examples"]
    assert sorted(os.listdir(ex)) == ["Split-eval", "Split-train", "Split-val"]
    _check_user_records(ex)
    # The Transform writes one vocabulary: every item once, with its group.
    from tfx_pipeline.module import read_item_vocab
    assets = os.path.join(s.artifacts["Transform.transform_graph"], "transform_fn", "assets")
    assert sorted(os.listdir(assets)) == ["item_group_vocab"], os.listdir(assets)
    items = read_item_vocab(os.path.join(assets, "item_group_vocab"))
    assert len(items) > 2 and len(items) == len(set(items))
    # Memory and storage per component are in the summary (also for a component that
    # finishes within one poll of the store, as the ItemGrouper often does).
    for name in ("ItemGrouper", "ExampleBuilder", "StatisticsGen", "Transform", "Trainer",
                 "Evaluator"):
        row = s.components[name]
        assert row["peak_rss_bytes"] > 50e6 and row["seconds"] > 0, (name, row)
    assert s.components["ExampleBuilder"]["artifact_bytes"] > 0
    # The Evaluator's metrics include GAUC; it agrees with a pandas/numpy reference on the
    # pushed model's predictions.
    for k in ("auc", "gauc", "logloss", "example_count", "calibration"):
        assert k in s.metrics, (k, sorted(s.metrics))
    assert 0.6 <= s.metrics["auc"] <= 1.0
    _check_gauc_against_reference(s)


def _check_user_records(uri):
    import tensorflow as tf
    from transform import examples as X
    files = tf.io.gfile.glob(os.path.join(uri, "Split-train", "*"))
    assert files and all(f.endswith(".tfrecord.gz") for f in files)
    users = []
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        user, lists = X.from_sequence_example(rec)
        users.append(user)
        assert lists[X.SEQ_TIME] == sorted(lists[X.SEQ_TIME])
        assert len(lists[X.POS_EVENT]) == len(lists[X.POS_HIST_END]) > 0
        assert sum(lists[X.POS_SAMPLED]) == len(lists[X.SAMPLED_ITEM])
    assert len(users) == len(set(users))          # one record per user in a split


def _check_gauc_against_reference(summary):
    import tensorflow as tf
    from dmgin_tf.evaluation import gauc
    from tfx_pipeline.eval_records import expand_records, history_window
    loaded = tf.saved_model.load(summary.pushed_dir)
    # The Evaluator read the eval user records and expanded them itself: the same expansion
    # here, histories cut at the model's window, gives its example count and GAUC.
    files = tf.io.gfile.glob(os.path.join(summary.artifacts["ExampleBuilder.examples"],
                                          "Split-eval", "*"))
    records = expand_records(
        tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator(),
        history_window(summary.pushed_dir))
    ctr = loaded.signatures["serving_default"](examples=tf.constant(records))[F.PREDICTION].numpy()
    rows = [tf.train.Example.FromString(r).features.feature for r in records]
    labels = np.array([r[F.LABEL].int64_list.value[0] for r in rows])
    users = np.array([r[F.USER_ID].bytes_list.value[0].decode() for r in rows], dtype=object)
    assert len(ctr) == len(labels) == summary.metrics["example_count"]
    ref = gauc(labels, ctr, users)
    assert abs(ref - summary.metrics["gauc"]) < 1e-4, (ref, summary.metrics["gauc"])
    # `tensorize` maps the same examples to the id inputs the raw signatures take.
    ids = loaded.signatures["tensorize"](examples=tf.constant(records))
    raw = loaded.signatures["predict_raw"](**ids)[F.PREDICTION].numpy()
    np.testing.assert_allclose(raw, ctr, atol=1e-6)
    # The pushed version is warmed at load and carries the request contract, as an
    # exported one does (dmgin_tf.export.saved_model.save_version).
    from dmgin_tf.export.saved_model import read_export_info
    info = read_export_info(summary.pushed_dir)
    assert info["warmup_records"] > 0 and info["model_config"]["item_vocab_size"] > 2, info
    assert "tensorize" in info["signatures"] and info["serving_example_features"]
    assert os.path.getsize(os.path.join(summary.pushed_dir, "assets.extra",
                                        "tf_serving_warmup_requests")) > 0


def test_a_served_version_from_another_root_is_never_replaced(spans, roots, tmp_path):
    """The Evaluator's baseline is the last model blessed in this root's metadata: a run
    from another pipeline root (or after the metadata was deleted) would bless any model
    over `min_auc` and push it over the served one. Such a run stops before anything runs."""
    from dmgin_tf.errors import DmginError
    from tfx_pipeline.runner import check_served_baseline
    model_dir = os.path.join(roots["serving_base"], "dmgin")
    before = served_versions(roots["serving_base"])
    assert before                                    # span 1 pushed from this root
    check_served_baseline(roots["pipeline_root"], model_dir, tiny_config().pipeline.name)
    # The same root under another pipeline.name: its Evaluator's baseline resolver sees
    # only that pipeline's blessings, so the served version would go unchecked.
    renamed = tiny_config().apply_overrides({"pipeline.name": "renamed"})
    with pytest.raises(DmginError, match=rf"serves version {before[-1]}, which pipeline "
                                         rf"'{tiny_config().pipeline.name}' pushed, not this "
                                         r"run's pipeline 'renamed'"):
        check_served_baseline(roots["pipeline_root"], model_dir, "renamed")
    from tfx_pipeline.runner import run_pipeline
    with pytest.raises(DmginError, match="not this run's pipeline 'renamed'"):
        run_pipeline(renamed, data_root=spans, span=1, export_jit_compile=False,
                     export_signatures="default", **roots)
    assert served_versions(roots["serving_base"]) == before
    other = str(tmp_path / "other_root")
    with pytest.raises(DmginError, match=rf"serves version {before[-1]}, which this pipeline "
                                         r"root \(.*other_root\) did not push"):
        _run(spans, dict(roots, pipeline_root=other), 1)
    assert not os.path.exists(other) and served_versions(roots["serving_base"]) == before
    # Through the CLI too, before the span's data is written under the new root.
    from dmgin_tf.cli.main import main
    assert main(["pipeline", "run", "--pipeline-root", other, "--serving-dir",
                 roots["serving_base"]]) == 2
    assert not os.path.exists(other)


def test_retrain_new_span_warm_starts_and_pushes(spans, roots):
    first = _STATE.get("span1")
    if first is None:
        pytest.skip("needs test_end_to_end_span1")
    s = _run(spans, roots, 2)
    _STATE["span2"] = s
    assert "ImportSchemaGen" in s.cached        # unchanged component reused
    info = json.load(open(os.path.join(s.artifacts["Trainer.model"], "Format-Serving", "assets.extra",
                                       "dmgin_train.json")))
    assert info["warm_start_from"], info          # warm-started from the blessed span-1 model
    assert info["warm_start"]["remapped"] >= 1 and info["warm_start"]["items_kept"] > 0
    # Stable group ids: every category grouped in span 1 keeps its id in span 2.
    g1 = pd.read_parquet(os.path.join(first.artifacts["ItemGrouper.item_groups"], "item_groups.parquet"))
    g2 = pd.read_parquet(os.path.join(s.artifacts["ItemGrouper.item_groups"], "item_groups.parquet"))
    both = g1.merge(g2, on=F.ITEM_ID, suffixes=("_1", "_2"))
    assert len(both) > 0 and (both.group_id_1 == both.group_id_2).all()
    assert s.blessed and s.pushed
    assert served_versions(roots["serving_base"])[-1] == int(os.path.basename(s.pushed_dir))
    assert len(served_versions(roots["serving_base"])) == 2
    # The Evaluator compared it with the span-1 model on the same split; the summary shows it.
    assert {"auc_diff", "gauc_diff"} <= set(s.metrics), s.metrics


def test_corrupted_labels_not_blessed(spans, roots):
    if "span2" not in _STATE:
        pytest.skip("needs test_retrain_new_span_warm_starts_and_pushes")
    before = served_versions(roots["serving_base"])
    s = _run(spans, roots, 2, label_noise=1.0)
    assert s.blessed is False
    # The summary says which threshold failed (random labels: AUC ~0.5 < min_auc 0.6).
    assert any("(pipeline.min_auc)" in f for f in s.blessing_failures), s.blessing_failures
    assert not s.pushed
    assert served_versions(roots["serving_base"]) == before


def _user_record(user: str, k: int) -> bytes:
    """A well-formed user record with k behaviors and one labelled position."""
    from transform import examples as X
    items = [f"i{j}" for j in range(k)] + [f"c{k}"]    # the last one is the labelled event
    return X.to_sequence_example(user, {
        X.SEQ_ITEM: items, X.SEQ_BEHAVIOR: ["pv"] * (k + 1), X.SEQ_TIME: list(range(k)) + [k + 10],
        X.SEQ_GROUP: [2] * (k + 1), X.POS_HIST_END: [k], X.POS_EVENT: [k], X.POS_LABEL: [k % 2],
        X.POS_SAMPLED: [0], X.SAMPLED_ITEM: [], X.SAMPLED_GROUP: []})


def test_anomalous_examples_stop_at_validation(spans, roots, tmp_path):
    import tensorflow as tf
    from tfx_pipeline.components.validation_gate import DataValidationError
    # Imported user records with two defects: pos_event dropped (missing feature list)
    # and pos_sampled written as bytes (wrong type); everything else follows the schema.
    from transform import examples as X
    for split in ("train", "val", "eval"):
        os.makedirs(tmp_path / f"Split-{split}")
        with tf.io.TFRecordWriter(str(tmp_path / f"Split-{split}" / "data.tfrecord")) as w:
            for k in range(20):
                se = tf.train.SequenceExample.FromString(_user_record(f"u{k}", 1 + k % 5))
                lists = se.feature_lists.feature_list
                del lists[X.POS_EVENT]
                for step in lists[X.POS_SAMPLED].feature:
                    v = step.int64_list.value[0]
                    step.ClearField("int64_list")
                    step.bytes_list.value.append(str(v).encode())
                w.write(se.SerializeToString())
    before = served_versions(roots["serving_base"])
    graphs = os.path.join(roots["pipeline_root"], "Transform", "transform_graph")
    graphs_before = sorted(os.listdir(graphs)) if os.path.isdir(graphs) else []
    with pytest.raises(DataValidationError) as err:
        _run(spans, roots, 3, import_examples=str(tmp_path))
    msg = str(err.value)
    assert X.POS_EVENT in msg and X.POS_SAMPLED in msg, msg
    kept = [p for p in os.listdir(os.path.join(roots["pipeline_root"], "ValidationGate"))
            if p.startswith("anomalies-")]
    assert kept, "the anomalies report must survive the failed execution"
    assert served_versions(roots["serving_base"]) == before          # nothing pushed
    now = sorted(os.listdir(graphs)) if os.path.isdir(graphs) else []
    assert now == graphs_before                                       # Transform never ran


def test_tune_runs_the_tfx_tuner_and_the_trainer_uses_its_best(spans, roots):
    """`--tune N`: TFX's standard Tuner component (KerasTuner over the model's search
    space) runs N trials; the Trainer trains with the best trial's hyperparameters. Run
    on span 2 of the shared root, so the components before the Tuner come from the cache
    of the retrain test (one epoch per trial: what is tested is the wiring)."""
    if "span2" not in _STATE:
        pytest.skip("needs test_retrain_new_span_warm_starts_and_pushes")
    from tfx_pipeline.runner import run_pipeline
    cfg = tiny_config().apply_overrides({"train.epochs": 1})
    s = run_pipeline(cfg, data_root=spans, span=2, export_jit_compile=False,
                     export_signatures="default", tune_trials=2, **roots)
    assert {"ExampleBuilder", "Transform"} <= set(s.cached), s.cached
    best_dir = s.artifacts["Tuner.best_hyperparameters"]
    best = json.load(open(os.path.join(best_dir, "best_hyperparameters.txt")))
    values = best["values"]
    assert {"learning_rate", "embedding_dim", "inter_layers"} <= set(values)
    model_dir = os.path.join(s.artifacts["Trainer.model"], "Format-Serving")
    info = json.load(open(os.path.join(model_dir, "assets.extra", "dmgin_train.json")))
    assert info["tuned"]["train.learning_rate"] == values["learning_rate"]
    assert info["tuned"]["model.embedding_dim"] == values["embedding_dim"]
    assert s.pushed_dir or s.blessed is not None
