"""`dmgin pipeline run` refuses bad arguments before any component runs."""
from __future__ import annotations

import pytest

from dmgin_tf.cli.main import main


@pytest.mark.parametrize("args, words", [
    # Was accepted: a span--1 folder, a full run and a push.
    (["--span", "-1"], ["--span -1", "numbered from 0"]),
    # Was reported after an unrelated grouping error (Taobao + cluster defaults).
    (["--data", "/nonexistent/dmgin-data"], ["--data /nonexistent/dmgin-data",
                                              "no such file"]),
    # Failed mid-pipeline with a ValueError from the encoder component.
    (["--encoder", "external", "--set", "grouping.key=category"],
     ["--encoder external", "grouping.external_embeddings"]),
    # A '/' would nest the Pusher's <serving_base>/<model_name>/ folder.
    (["--model-name", "team/ranker"], ["--model-name 'team/ranker'", "letters, digits"]),
    (["--set", "pipeline.name=a b"], ["pipeline.name='a b'"]),
    # Was reported as Taobao lacking item text (the default grouping), then as a missing
    # UserBehavior.csv.
    (["--data", "{empty}"], ["the folder is empty", "dmgin data convert"]),
    # Failed in the Trainer, after the data steps had run.
    (["--set", "model.item_content_dim=8"], ["model.item_content_dim=8", "does not read"]),
    # Beam's FlinkRunner started an embedded cluster in the first Beam step and failed
    # downloading its job-server jar, after the span was written.
    (["--beam-runner", "flink", "--set", "grouping.key=category"],
     ["beam.runner='flink'", "beam.job_endpoint", "beam.flink_master"]),
    # Failed in the first Beam step, after the span was written.
    (["--beam-runner", "dask"], ["dask needs beam.dask_address", "beam.dask_local_workers"]),
    # A raw "Couldn't resolve host" from the metadata set-up; the served-version check
    # reads the serving folder locally.
    (["--serving-dir", "gs://bucket/models"], ["--serving-dir gs://bucket/models: a URL",
                                               "mounted path"]),
])
def test_bad_arguments_stop_before_the_pipeline(tmp_path, capsys, args, words):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    rc = main(["pipeline", "run", "--pipeline-root", str(tmp_path / "root")] + args)
    err = capsys.readouterr().err
    assert rc == 2, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "root").exists()


def test_the_pusher_base_comes_from_the_config_unless_given(tmp_path):
    """pipeline.serving_dir is the default of --serving-dir (the config key used to be
    accepted and ignored)."""
    from dmgin_tf.cli.main import build_parser
    from dmgin_tf.cli.pipeline import _setup
    common = ["pipeline", "run", "--pipeline-root", str(tmp_path / "root")]
    args = build_parser().parse_args(common + ["--set", "pipeline.serving_dir=/srv/models"])
    assert _setup(args)[3] == "/srv/models"
    args = build_parser().parse_args(common + ["--set", "pipeline.serving_dir=/srv/models",
                                               "--serving-dir", str(tmp_path / "s")])
    assert _setup(args)[3] == str(tmp_path / "s")


def test_generic_data_gives_the_trainer_its_behavior_types(tmp_path):
    """`dmgin pipeline run --dataset generic` without data.behavior_types handed the
    Trainer an empty vocabulary ("model.num_behavior_types=0") after every other
    component had run; the span's converted vocabulary is what the ExampleBuilder used."""
    from dmgin_tf.config import Config, ConfigError
    from dmgin_tf.data.converters import convert
    from tfx_pipeline.components.common import span_dir
    from tfx_pipeline.pipeline import pipeline_behavior_types
    raw = tmp_path / "b.csv"
    raw.write_text("user_id,item_id,behavior,timestamp\nu1,i1,view,1600000000\n"
                   "u1,i2,buy,1600000010\n")
    cfg = Config.from_dict({"data": {"dataset": "generic", "positive_behaviors": ["buy"]}})
    root = tmp_path / "data"
    with pytest.raises(ConfigError, match=r"data.behavior_types.*span-3"):
        pipeline_behavior_types(cfg, str(root), 3)
    convert("generic", str(raw), span_dir(str(root), 3), cfg.data, show_progress=False)
    assert pipeline_behavior_types(cfg, str(root), 3) == ["buy", "view"]
    given = cfg.apply_overrides({"data.behavior_types": ["view", "cart", "buy"]})
    assert pipeline_behavior_types(given, str(root), 3) == ["view", "cart", "buy"]
    assert pipeline_behavior_types(Config(), str(root), 3) == ["pv", "cart", "fav", "buy"]


def test_converted_data_of_another_dataset_stops_before_the_pipeline(tmp_path, capsys):
    """Generic data run with the default dataset (taobao) failed in the ExampleBuilder,
    after the encoder and grouping components had run."""
    from dmgin_tf.cli.main import main
    from dmgin_tf.config import DataConfig
    from dmgin_tf.data.converters import convert
    raw = tmp_path / "b.csv"
    raw.write_text("user_id,item_id,behavior,timestamp\nu1,i1,view,1600000000\n")
    convert("generic", str(raw), str(tmp_path / "mine"), DataConfig(dataset="generic"),
            show_progress=False)
    rc = main(["pipeline", "run", "--data", str(tmp_path / "mine"), "--pipeline-root",
               str(tmp_path / "root"), "--data-root", str(tmp_path / "spans"),
               "--set", "grouping.key=category"])
    err = capsys.readouterr().err
    assert rc == 2 and "converted as dataset 'generic'" in err and "--dataset generic" in err, err
    assert not (tmp_path / "root").exists()


def test_run_summary_shows_the_candidate_against_the_last_blessed_model():
    """A retrain may drop up to pipeline.max_<metric>_drop below the last blessed model;
    the summary showed no baseline, so drops that add up over pushes went unseen."""
    from dmgin_tf.config import PipelineConfig
    from tfx_pipeline.runner import baseline_lines
    cfg = PipelineConfig(max_auc_drop=0.02, max_gauc_drop=0.02)
    metrics = {"auc": 0.9020, "gauc": 0.9004, "auc_diff": -0.0019, "gauc_diff": -0.0005}
    lines = baseline_lines(metrics, cfg, pushed=True)
    assert "auc 0.9039 -> 0.9020 (-0.0019)" in lines[0]
    assert "gauc 0.9009 -> 0.9004 (-0.0005)" in lines[0]
    assert "note: pushed" in lines[1] and "pipeline.max_gauc_drop=0.02" in lines[1]
    assert len(baseline_lines(metrics, cfg, pushed=False)) == 1
    better = dict(metrics, auc_diff=0.001, gauc_diff=0.002)
    assert len(baseline_lines(better, cfg, pushed=True)) == 1
    assert baseline_lines({"auc": 0.9, "gauc": 0.9}, cfg, pushed=True) == []   # first run


def _fn_args(**kw):
    import types
    base = dict(custom_config={"config": {}, "behavior_types": ["pv", "buy"]},
                train_files=["/r/ExampleBuilder/examples/3/Split-train/*"],
                eval_files=["/r/ExampleBuilder/examples/3/Split-val/*"],
                train_steps=None, eval_steps=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize("changes, words", [
    ({"custom_config": None}, ["custom_config must be a dict"]),
    ({"custom_config": {"behavior_types": ["pv"]}}, ["custom_config['config'] is missing"]),
    ({"custom_config": {"config": {}}}, ["custom_config['behavior_types'] is missing"]),
    ({"custom_config": {"config": {}, "behavior_types": "pv,buy"}}, ["'pv,buy'", "list of strings"]),
    ({"custom_config": {"config": {}, "behavior_types": ["pv"], "export_signature": "x"}},
     ["unknown key(s) ['export_signature']", "export_signatures"]),
    ({"eval_files": ["/r/ExampleBuilder/examples/3/Split-eval/*"]},
     ["Split-eval", "EvalArgs(splits=['val'])"]),
    ({"train_steps": 1}, ["TrainArgs.num_steps", "train.epochs"]),
])
def test_trainer_inputs_are_checked_before_any_work(changes, words):
    """A TFX user wiring the module file into their own Trainer: a missing key was a bare
    KeyError, a missing config trained with library defaults, early stopping on the eval
    split chose the model on the data that blesses it, num_steps was ignored."""
    from tfx_pipeline.module import check_trainer_inputs
    with pytest.raises(ValueError) as e:
        check_trainer_inputs(_fn_args(**changes))
    for w in words:
        assert w in str(e.value), e.value
    assert check_trainer_inputs(_fn_args())["behavior_types"] == ["pv", "buy"]


def test_behavior_types_that_miss_the_records_are_refused():
    import numpy as np
    from tfx_pipeline.module import check_known_behaviors
    check_known_behaviors(np.array([1, 2, 0, 1]), ["pv", "buy"])
    with pytest.raises(ValueError, match="75% of the train records' behaviors"):
        check_known_behaviors(np.array([0, 0, 0, 1]), ["click", "order"])


def test_component_parameters_are_checked_when_the_pipeline_is_built():
    """A typo in a component's config failed only when the component ran, minutes in."""
    from tfx.types import Channel
    from dmgin_tf.config import ConfigError, DataConfig, GroupingConfig
    from tfx_pipeline.artifacts import ItemGroups
    from tfx_pipeline.components.example_builder import ExampleBuilder
    from tfx_pipeline.components.item_grouper import ItemGrouper
    from tfx_pipeline.components.multimodal_encoder import MultimodalEncoder
    groups = Channel(type=ItemGroups)
    ExampleBuilder("d", 1, DataConfig().to_dict(), groups, 64)
    ItemGrouper("d", 1, GroupingConfig().to_dict())
    with pytest.raises(ConfigError, match=r"ExampleBuilder: data_config: .*datset"):
        ExampleBuilder("d", 1, {"datset": "taobao"}, groups, 64)
    with pytest.raises(ConfigError, match=r"ItemGrouper: grouping_config: .*key"):
        ItemGrouper("d", 1, {"key": "categroy"})
    with pytest.raises(ConfigError, match=r"ItemGrouper: beam_config_json is not JSON"):
        ItemGrouper("d", 1, GroupingConfig().to_dict(), beam_config_json="{runner: direct")
    with pytest.raises(ConfigError, match=r"MultimodalEncoder: encoder_config: .*epoch"):
        MultimodalEncoder("d", 1, encoder_config={"epoch": 3})
