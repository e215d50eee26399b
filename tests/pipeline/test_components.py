"""Fast checks of the pipeline's pieces (no LocalDagRunner)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from dmgin_tf import features as F


def test_key_groups_keep_previous_ids_and_append_new():
    from tfx_pipeline.components.item_grouper import key_groups
    first = key_groups(pd.DataFrame({F.CATEGORY: ["b", "a", "b", None]}), F.CATEGORY, None)
    assert first == {"b": 2, "a": 3, "": 4}           # ids from 2, first-appearance order
    second = key_groups(pd.DataFrame({F.CATEGORY: ["c", "a", "z"]}), F.CATEGORY, first)
    assert {k: second[k] for k in first} == first      # stable
    assert second["c"] == 5 and second["z"] == 6


def test_a_changed_grouping_key_numbers_the_groups_afresh(tmp_path):
    """Span 1 grouped by category, span 2 by item id: the previous span's category ids
    are not kept (an item whose id equals an old category would land in its group), the
    run says so, and the warm start leaves the group tables fresh."""
    import json
    from tfx_pipeline.artifacts import GROUPING_INFO_FILE, GROUPS_FILE, ItemGroups
    from tfx_pipeline.components.item_grouper import Executor
    from tfx_pipeline.runner import regrouping_note
    span = tmp_path / "data" / "span-2"
    span.mkdir(parents=True)
    items = pd.DataFrame({F.ITEM_ID: ["i1", "i2", "7"], F.CATEGORY: ["7", "8", "8"]})
    items.to_parquet(span / "items.parquet")

    def group(key, previous, name):
        out = ItemGroups()
        out.uri = str(tmp_path / name)
        Executor().Do({"previous_groups": [previous] if previous else []},
                      {"item_groups": [out]},
                      {"grouping_config": json.dumps({"key": key}), "span": 2,
                       "data_root": str(tmp_path / "data"), "refit": 1})
        return out

    by_category = group("category", None, "g1")
    assert regrouping_note(by_category.uri) is None
    same = group("category", by_category, "g2")            # same key: ids kept
    assert json.load(open(os.path.join(same.uri, GROUPING_INFO_FILE)))["kept_ids"] == 2
    by_item = group("item_id", by_category, "g3")
    info = json.load(open(os.path.join(by_item.uri, GROUPING_INFO_FILE)))
    assert info["previous_key"] == "category" and info["kept_ids"] == 0
    table = pd.read_parquet(os.path.join(by_item.uri, GROUPS_FILE))
    assert sorted(table["group_id"]) == [2, 3, 4]          # 3 items, 3 fresh groups
    assert "grouping.key changed from 'category' to 'item_id'" in regrouping_note(by_item.uri)


def test_validation_report_names_split_and_feature(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx_pipeline.components.validation_gate import format_report, read_anomalies
    for split, bad in (("train", True), ("eval", False)):
        a = anomalies_pb2.Anomalies()
        if bad:
            info = a.anomaly_info["timestamp"]
            info.short_description = "Unexpected data type"
            info.description = "Expected data of type: INT but got BYTES"
        os.makedirs(tmp_path / f"Split-{split}")
        (tmp_path / f"Split-{split}" / "SchemaDiff.pb").write_bytes(a.SerializeToString())
    found = read_anomalies(str(tmp_path))
    assert found["eval"] == [] and found["train"][0][0] == "timestamp"
    text = format_report(found)
    assert "split `train`" in text and "`timestamp`" in text and "INT but got BYTES" in text
    assert "eval" not in text.split("## ")[-1]


def test_gauc_metric_matches_reference():
    from tensorflow_model_analysis.metrics import metric_types
    from dmgin_tf.evaluation import gauc
    from tfx_pipeline.evaluation import GAUC
    rng = np.random.default_rng(0)
    users = rng.integers(0, 6, 80)
    labels = rng.integers(0, 2, 80)
    preds = rng.random(80)
    comps = GAUC().computations()
    combiner = comps[0].combiner
    accs = []
    for part in np.array_split(np.arange(80), 3):   # several accumulators, merged
        acc = combiner.create_accumulator()
        for i in part:
            acc = combiner.add_input(acc, metric_types.StandardMetricInputs(
                labels=np.array([labels[i]]), predictions=np.array([preds[i]]),
                example_weights=np.array([1.0]),
                features={F.USER_ID: np.array([f"u{users[i]}".encode()])}))
        accs.append(acc)
    value = list(combiner.extract_output(combiner.merge_accumulators(accs)).values())[0]
    ref = gauc(labels, preds, np.array([f"u{u}" for u in users], dtype=object))
    assert value == pytest.approx(ref, abs=1e-12)


def test_previous_span_strategy_picks_newest_earlier_span():
    from tfx_pipeline.artifacts import SPAN, ItemGroups
    from tfx_pipeline.resolvers import PreviousSpanStrategy
    arts = []
    for i, span in enumerate([1, 2, 2, 3]):
        a = ItemGroups()
        a.id = i + 1
        a.set_int_custom_property(SPAN, span)
        arts.append(a)
    got = PreviousSpanStrategy(3).resolve_artifacts(None, {"g": arts})["g"]
    assert [a.id for a in got] == [3]                  # newest artifact of span 2
    assert PreviousSpanStrategy(1).resolve_artifacts(None, {"g": arts})["g"] == []


def test_split_into_spans_is_cumulative(tmp_path):
    from tfx_pipeline.runner import latest_span, split_into_spans
    src = tmp_path / "src"
    src.mkdir()
    beh = pd.DataFrame({F.USER_ID: ["u1", "u1", "u2", "u2", "u3"],
                        F.ITEM_ID: ["a", "b", "c", "a", "d"],
                        F.BEHAVIOR: ["pv"] * 5, F.TIMESTAMP: [1, 2, 3, 4, 5]})
    beh.to_parquet(src / "behaviors.parquet")
    pd.DataFrame({F.ITEM_ID: list("abcd"), F.CATEGORY: list("xxyy")}).to_parquet(
        src / "items.parquet")
    dirs = split_into_spans(str(src), str(tmp_path / "data"), [0.5, 1.0], max_users=2)
    s1 = pd.read_parquet(os.path.join(dirs[0], "behaviors.parquet"))
    s2 = pd.read_parquet(os.path.join(dirs[1], "behaviors.parquet"))
    assert list(s1[F.TIMESTAMP]) == [1, 2]             # quantile 0.5 of [1..4] = 2.5
    assert list(s2[F.TIMESTAMP]) == [1, 2, 3, 4]       # cumulative, u3 dropped
    assert set(pd.read_parquet(os.path.join(dirs[0], "items.parquet"))[F.ITEM_ID]) == {"a", "b"}
    assert latest_span(str(tmp_path / "data")) == 2


def test_pipeline_compiles_to_ir_with_all_components(tmp_path):
    from dmgin_tf.config import Config
    from tfx_pipeline.compile import compile_pipeline
    out = compile_pipeline(Config.from_dict({"grouping": {"key": "category"}}), "ir",
                           str(tmp_path / "p.pbtxt"), data_root=str(tmp_path / "d"), span=1,
                           pipeline_root=str(tmp_path / "r"), serving_base=str(tmp_path / "s"))
    text = open(out).read()
    for node in ("MultimodalEncoder", "ItemGrouper", "ExampleBuilder", "StatisticsGen",
                 "ImportSchemaGen", "ExampleValidator", "ValidationGate", "Transform", "Trainer",
                 "Evaluator", "Pusher", "latest_blessed_model_resolver"):
        assert f'id: "{node}"' in text, node
    airflow = compile_pipeline(Config(), "airflow", str(tmp_path / "dag.py"),
                               data_root="d", span=1, pipeline_root="r", serving_base="s")
    assert "AirflowDagRunner" in open(airflow).read()


def test_transform_writes_only_what_the_pipeline_reads(tmp_path):
    """Analyze-only Transform: no statistics (StatisticsGen's cover the same records) and
    no analyzer cache (nothing feeds it back) — write-only artifacts cost bytes per item."""
    from dmgin_tf.config import Config
    from tfx_pipeline.pipeline import create_pipeline
    p = create_pipeline(Config.from_dict({"grouping": {"key": "category"}}),
                        data_root=str(tmp_path / "d"), span=1,
                        pipeline_root=str(tmp_path / "r"), serving_base=str(tmp_path / "s"))
    transform = [c for c in p.components if c.id == "Transform"][0]
    # No transformed_examples, pre/post_transform_* statistics or updated_analyzer_cache.
    assert sorted(transform.outputs) == ["transform_graph"], sorted(transform.outputs)



def test_cached_records_and_schema_follow_the_record_layout(tmp_path, monkeypatch):
    """TFX caches on execution properties, not on code or file contents: the record layout
    version is an ExampleBuilder property and in the schema file's name, so an upgrade that
    changes the layout cannot reuse records or a schema of the old one."""
    from dmgin_tf.config import Config
    from dmgin_tf.data import sequences
    from dmgin_tf.errors import DataError
    from tfx_pipeline.components import example_builder
    from tfx_pipeline.pipeline import create_pipeline
    p = create_pipeline(Config.from_dict({"grouping": {"key": "category"}}),
                        data_root=str(tmp_path / "d"), span=1,
                        pipeline_root=str(tmp_path / "r"), serving_base=str(tmp_path / "s"))
    nodes = {c.id: c for c in p.components}
    assert nodes["ExampleBuilder"].exec_properties["record_format"] == sequences.RECORD_FORMAT
    schema_file = nodes["ImportSchemaGen"].exec_properties["schema_file"]
    assert os.path.basename(schema_file) == f"user_records_v{sequences.RECORD_FORMAT}.pbtxt"
    assert os.path.isfile(schema_file)
    # A pipeline compiled for another layout is refused before anything is read.
    now = sequences.RECORD_FORMAT
    monkeypatch.setattr(example_builder, "RECORD_FORMAT", now + 1)
    with pytest.raises(DataError, match=f"layout {now}; this installation writes layout {now + 1}"):
        example_builder.Executor().Do({}, {}, {"span": 1, "record_format": now})


def test_a_span_is_not_silently_rebuilt_from_other_data(tmp_path):
    """Rerunning a span with other --data used to keep the span's first data (and the
    cached components trained on it again) without a word."""
    import time

    from dmgin_tf.errors import DmginError
    from tests.pipeline.conftest import tiny_config
    from tfx_pipeline.runner import SPAN_SOURCE, prepare_span
    cfg = tiny_config()
    sample_span = prepare_span(cfg, str(tmp_path / "a"), 0)              # the sample
    export = tmp_path / "export"
    shutil.copytree(sample_span, export, ignore=shutil.ignore_patterns(SPAN_SOURCE))
    root = str(tmp_path / "spans")
    span = prepare_span(cfg, root, 3, str(export))
    assert prepare_span(cfg, root, 3, str(export)) == span      # a rerun of the same data
    assert prepare_span(cfg, root, 3) == span                   # no --data: the span as is
    with pytest.raises(DmginError, match=r"span 0 already exists .* made from the embedded "
                                         r"sample; --data .* is other data"):
        prepare_span(cfg, str(tmp_path / "a"), 0, str(export))
    time.sleep(0.01)
    (export / "behaviors.parquet").write_bytes((export / "behaviors.parquet").read_bytes())
    with pytest.raises(DmginError, match=r"the same path, whose files changed since.*--span 4"):
        prepare_span(cfg, root, 3, str(export))


def test_a_span_after_the_previous_one_ends_is_refused_as_incremental(tmp_path):
    """A per-day export as the next span restarted every history at the span and drew
    negatives among items touched before it, without a word."""
    from dmgin_tf.errors import DmginError
    from tests.pipeline.conftest import tiny_config
    from tfx_pipeline.runner import prepare_span, span_dir
    cfg = tiny_config()
    root = str(tmp_path / "spans")
    first = prepare_span(cfg, root, 1)                                   # the sample
    beh = pd.read_parquet(os.path.join(first, "behaviors.parquet"))
    for name, shift in (("later", 1 + int(beh.timestamp.max() - beh.timestamp.min())),
                        ("overlapping", 3600)):
        export = tmp_path / name
        export.mkdir()
        beh.assign(timestamp=beh.timestamp + shift).to_parquet(export / "behaviors.parquet")
        shutil.copy(os.path.join(first, "items.parquet"), export / "items.parquet")
    with pytest.raises(DmginError, match=r"span 2 starts after span 1 ends .* cumulative"):
        prepare_span(cfg, root, 2, str(tmp_path / "later"))
    assert not os.path.exists(span_dir(root, 2))                 # nothing left half-made
    assert prepare_span(cfg, root, 2, str(tmp_path / "overlapping")) == span_dir(root, 2)


def test_an_empty_val_or_eval_split_is_refused_with_what_it_needs():
    """TFX's readers failed on an empty split with only "No files found" (StatisticsGen,
    after the ExampleBuilder had reported success)."""
    from dmgin_tf.config import DataConfig
    from dmgin_tf.errors import DataError
    from tfx_pipeline.components.example_builder import check_split_counts
    cfg = DataConfig()
    check_split_counts(1, "d", {"train": 9, "val": 1, "eval": 2}, cfg)
    with pytest.raises(DataError, match=r"no val records .* at least 12 labelled events"):
        check_split_counts(1, "d", {"train": 9, "val": 0, "eval": 2}, cfg)
    with pytest.raises(DataError, match=r"no eval records .* at least 5 labelled events"):
        check_split_counts(1, "d", {"train": 9, "val": 1, "eval": 0}, cfg)
    with pytest.raises(DataError, match=r"val_fraction=0 leaves no val split"):
        check_split_counts(1, "d", {"train": 9, "val": 0, "eval": 2},
                           DataConfig(val_fraction=0.0))
    with pytest.raises(DataError, match="no training records"):
        check_split_counts(1, "d", {"train": 0, "val": 1, "eval": 2}, cfg)


def test_blessing_failures_name_the_threshold_and_the_setting(tmp_path):
    """A run that is not blessed says why (it used to say only 'not blessed')."""
    import tensorflow as tf
    from tensorflow_model_analysis.proto import validation_result_pb2

    from tfx_pipeline.evaluation import blessing_failures
    r = validation_result_pb2.ValidationResult(validation_ok=False)
    per_slice = r.metric_validations_per_slice.add()
    f = per_slice.failures.add()
    f.metric_key.name = "auc"
    f.metric_threshold.value_threshold.lower_bound.value = 0.6
    f.metric_value.double_value.value = 0.5421
    f = per_slice.failures.add()
    f.metric_key.name, f.metric_key.is_diff = "auc", True
    f.metric_threshold.change_threshold.absolute.value = -0.02
    f.metric_value.double_value.value = -0.3656
    f = per_slice.failures.add()
    f.metric_key.name, f.metric_key.is_diff = "gauc", True
    f.metric_threshold.change_threshold.absolute.value = -0.01
    f.metric_value.double_value.value = -0.0356
    with tf.io.TFRecordWriter(str(tmp_path / "validations.tfrecord")) as w:
        w.write(r.SerializeToString())
    assert blessing_failures(str(tmp_path)) == [
        "auc 0.5421, under the threshold 0.6000 (pipeline.min_auc)",
        "auc -0.3656 against the last blessed model (allowed drop 0.0200, "
        "pipeline.max_auc_drop)",
        "gauc -0.0356 against the last blessed model (allowed drop 0.0100, "
        "pipeline.max_gauc_drop)"]


def test_warm_start_leaves_group_tables_fresh_when_the_grouping_key_changed(tmp_path):
    """Group ids of another grouping.key mean other groups: the group-id tables are not
    copied; everything else still is."""
    import json
    import keras
    from dmgin_tf.models import build_model
    from dmgin_tf.training.trainer import CONFIG_FILE, WEIGHTS_FILE, _build_with_dummy
    from tests.pipeline.conftest import tiny_config
    from tfx_pipeline.module import ITEM_VOCAB, warm_start
    cfg = tiny_config().apply_overrides({"model.item_vocab_size": 12,
                                         "model.group_vocab_size": 6})
    keras.utils.set_random_seed(0)
    old = build_model(cfg.model)
    _build_with_dummy(old, cfg)
    base = tmp_path / "base"
    base.mkdir()
    old.save_weights(str(base / WEIGHTS_FILE))
    (base / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
    vocab = [f"i{k}" for k in range(10)]
    (base / ITEM_VOCAB).write_text("".join(v + "\n" for v in vocab))
    group_paths = [v.path for v in old.weights
                   if "group" in v.path and len(v.shape) == 2 and v.shape[0] == 6]
    assert group_paths

    def restored(key):
        keras.utils.set_random_seed(1)
        new = build_model(cfg.model)
        _build_with_dummy(new, cfg)
        stats = warm_start(new, str(base), vocab, key)
        return {v.path: np.asarray(v.numpy()) for v in new.weights}, stats

    old_w = {v.path: np.asarray(v.numpy()) for v in old.weights}
    same, stats = restored(cfg.grouping.key)
    assert stats["groups_reset"] == 0
    assert all(np.array_equal(same[p], old_w[p]) for p in group_paths)
    other = "item_id" if cfg.grouping.key != "item_id" else "category"
    changed, stats = restored(other)
    assert stats["groups_reset"] == len(group_paths)
    assert not any(np.array_equal(changed[p], old_w[p]) for p in group_paths)
    kept = [p for p in old_w if p not in group_paths and old_w[p].size > 1
            and np.array_equal(changed[p], old_w[p])]
    assert kept                                        # the rest still warm-started


def test_tfx_components_beam_workers_are_decided_where_they_run():
    """direct_num_workers 0 (one per core) was resolved on the machine that built the
    pipeline, so a compiled pipeline carried the laptop's core count to every pod."""
    from dmgin_tf.config import BeamConfig
    from tfx_pipeline.pipeline import tfx_beam_args
    args = tfx_beam_args(BeamConfig(direct_num_workers=0))
    assert "--direct_num_workers=0" in args and "--direct_running_mode=multi_processing" in args
    one = tfx_beam_args(BeamConfig(direct_num_workers=1))
    assert "--direct_running_mode=in_memory" in one and "--direct_num_workers=1" in one


def test_the_example_builder_refuses_groups_of_another_span(tmp_path):
    """Airflow re-reads the DAG file (and so the newest span) for every task: a span
    landing mid-run made ExampleBuilder build span 3 with span 2's groups, silently."""
    import json
    from dmgin_tf.errors import DataError
    from tfx.types import standard_artifacts
    from tfx_pipeline.artifacts import SPAN, ItemGroups
    from tfx_pipeline.components.example_builder import Executor
    groups = ItemGroups()
    groups.uri = str(tmp_path / "groups")
    groups.set_int_custom_property(SPAN, 2)
    out = standard_artifacts.Examples()
    out.uri = str(tmp_path / "examples")
    with pytest.raises(DataError, match="span 3, but the ItemGrouper of this run grouped "
                                        "span 2"):
        Executor().Do({"item_groups": [groups]}, {"examples": [out]},
                      {"span": 3, "data_root": str(tmp_path / "data"), "data_config": "{}"})


def test_compile_stages_the_span_given_with_data(spans, tmp_path):
    """`dmgin pipeline compile --data DIR` read --data only to pick the config: the
    compiled pipeline then found no span under its data root."""
    from dmgin_tf.cli.main import main
    root = tmp_path / "root"
    assert main(["pipeline", "compile", "--target", "ir", "--dataset", "taobao",
                 "--config", "tfx_pipeline/sample_config.yaml",
                 "--data", os.path.join(spans, "span-1"), "--pipeline-root", str(root),
                 "--output", str(tmp_path / "p.pbtxt")]) == 0
    assert os.path.exists(root / "data" / "span-1" / "behaviors.parquet")
    assert os.path.exists(tmp_path / "p.pbtxt")
