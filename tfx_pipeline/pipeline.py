"""The DMGIN TFX pipeline (docs/design.md: Architecture and data flow) as a plain function returning a `tfx.dsl.Pipeline`.

    MultimodalEncoder ─► ItemGrouper ◄─ (ItemGroups of the previous span, resolver: stable ids)
                              │
                        ExampleBuilder (our ExampleGen: per-user time split, span)
                              │
        StatisticsGen ─► ExampleValidator ◄─ ImportSchemaGen (curated schema/user_records_v2.pbtxt)
                              │
                        ValidationGate (anomalies stop the run)
                              │
                        Transform ─► Trainer ◄─ (latest blessed model, resolver: warm start)
                                       │
                                   Evaluator (AUC, logloss, calibration, GAUC; vs baseline)
                                       │
                                     Pusher ─► <serving_base>/<model_name>/<version>/

    p = create_pipeline(cfg, data_root="runs/data", span=1, pipeline_root="runs/pipeline",
                        serving_base="runs/serving")
    tfx.orchestration.LocalDagRunner().run(p)
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

from tfx import v1 as tfx

from dmgin_tf.config import NAME_RULE, BeamConfig, Config, ConfigError, is_valid_name
from dmgin_tf.data.datasets import get_spec
from dmgin_tf.data.sequences import RECORD_FORMAT
from tfx_pipeline.artifacts import ItemGroups
from tfx_pipeline.components import ExampleBuilder, ItemGrouper, MultimodalEncoder, ValidationGate
from tfx_pipeline.resolvers import PreviousSpanStrategy
from tfx_pipeline.eval_records import model_window
from tfx_pipeline.evaluation import eval_config as make_eval_config

HERE = os.path.dirname(os.path.abspath(__file__))
# Transform and Trainer import these from the installed package (no module_file: TFX
# would build and pip-install a user-code wheel for each of them on every run).
PREPROCESSING_FN = "tfx_pipeline.module.preprocessing_fn"
RUN_FN = "tfx_pipeline.module.run_fn"
TUNER_FN = "tfx_pipeline.module.tuner_fn"
EVAL_MODULE = "tfx_pipeline.eval_records"   # the Evaluator's UDFs (custom_extractors)
SCHEMA_DIR = os.path.join(HERE, "schema")
# The user records' data contract; its name carries the record layout version, so a
# cached ImportSchemaGen output of an older layout is not reused after an upgrade.
SCHEMA_FILE = os.path.join(SCHEMA_DIR, f"user_records_v{RECORD_FORMAT}.pbtxt")
METADATA_FILE = "metadata.sqlite"


def abs_path(path: str) -> str:
    """Absolute local path; URLs (gs://, s3://, hdfs://) unchanged."""
    return path if "://" in path else os.path.abspath(path)


def tfx_beam_args(beam_cfg: BeamConfig) -> List[str]:
    """Beam args of TFX's own components (StatisticsGen, Transform, Evaluator ...).

    They stay on DirectRunner here (docs/design.md: Architecture and data flow); `extra_args` pass through. Our own
    components get the full `beam_cfg` (any runner) through their `beam_config`."""
    from transform.beam_runner import pipeline_args
    # 0 stays 0: Beam takes it as one worker per core of the machine the component runs
    # on — a compiled pipeline must not carry the compiling machine's core count.
    workers = beam_cfg.direct_num_workers
    mode = "in_memory" if workers == 1 else beam_cfg.direct_running_mode
    direct = BeamConfig(runner="direct", direct_num_workers=workers, direct_running_mode=mode,
                        extra_args=beam_cfg.extra_args if beam_cfg.runner == "direct" else ())
    return pipeline_args(direct)


def encoder_mode(cfg: Config, requested: str = "auto") -> str:
    """auto: skip for grouping keys that need no embeddings, external when configured."""
    if requested != "auto":
        return requested
    if cfg.grouping.key != "cluster":
        return "skip"
    return "external" if cfg.grouping.embedding_source == "external" else "train"


def pipeline_behavior_types(cfg: Config, data_root: str, span: int) -> List[str]:
    """The behavior vocabulary the Trainer and the exported model use (id `i + 1` for
    entry i): the dataset's, `data.behavior_types`, or for generic data without it, the
    span's (`dmgin_tf.data.datasets.data_behavior_types`) — what the ExampleBuilder labels
    the same span with.

    Raises:
      ConfigError: generic data, no `data.behavior_types`, and no converted span to read
        them from (e.g. compiling for an orchestrator before the data exists).
    """
    from dmgin_tf.data.datasets import data_behavior_types
    from dmgin_tf.errors import DataError
    from tfx_pipeline.components.common import span_dir
    if cfg.data.dataset != "generic" or cfg.data.behavior_types:
        return list(get_spec(cfg.data.dataset, cfg.data).behavior_types)
    try:
        return list(data_behavior_types(span_dir(data_root, span)))
    except DataError as e:
        raise ConfigError(f"dataset 'generic' without data.behavior_types: {e} (e.g. --set "
                          f"data.behavior_types=click,cart,order)") from None


def create_pipeline(cfg: Config, *, data_root: str, span: int, pipeline_root: str,
                    serving_base: str, model_name: Optional[str] = None,
                    encoder: str = "auto", refit_groups: bool = True, label_noise: float = 0.0,
                    enable_cache: bool = True, export_jit_compile: bool = True,
                    encoder_config: Optional[dict] = None,
                    metadata_path: Optional[str] = None,
                    import_examples: Optional[str] = None,
                    export_signatures: str = "all",
                    groups_resolver: str = "previous_span",
                    tune_trials: int = 0) -> tfx.dsl.Pipeline:
    """Builds the pipeline for one span.

    Args:
      cfg: the project config (data, grouping, model, train, beam, pipeline, serving).
      data_root: holds ``span-<N>/{behaviors,items}.parquet`` (converter output per span).
      span: the span this run trains on.
      pipeline_root: artifacts and ML Metadata (``metadata.sqlite``) live here.
      serving_base: Pusher target; versions land in ``<serving_base>/<model_name>/<v>/``.
      model_name: default ``cfg.serving.model_name``.
      encoder: MultimodalEncoder mode (train | external | skip | auto).
      refit_groups: k-means refit with stable ids (True) or assign new items only.
      label_noise: ExampleBuilder fault injection (tests/drills only; 0 in production).
      enable_cache: reuse outputs of components whose inputs did not change.
      export_jit_compile: XLA-compile the pushed model's math.
      export_signatures: "all" signatures of dmgin_tf.export, or "default"
        (serving_default + predict_raw; faster to export, for tests).
      groups_resolver: which ItemGroups keep ids stable: "previous_span" (newest of an
        earlier span; a re-run of a span stays cacheable) or "latest" (TFX's
        LatestArtifactStrategy — the only kind the Kubeflow V2 compiler accepts).
      import_examples: bring-your-own user records instead of the ExampleBuilder: a
        directory with ``Split-train/``, ``Split-val/``, ``Split-eval/`` TFRecord files of
        `tf.train.SequenceExample`s (the ExampleBuilder's format; an ImportExampleGen).
        They pass the same validation gate.
      tune_trials: > 0 adds TFX's standard `Tuner` component (`tuner_fn` of the module:
        KerasTuner random search over the model's search space, that many trials, best by
        validation GAUC) and the Trainer trains with its best hyperparameters.
    """
    model_name = model_name or cfg.serving.model_name
    if not is_valid_name(model_name):
        raise ConfigError(f"model name {model_name!r}: {NAME_RULE}")
    data_root = abs_path(data_root)
    beam_json = json.dumps(cfg.beam.to_dict(), sort_keys=True)
    mode = encoder_mode(cfg, encoder)

    enc = MultimodalEncoder(data_root=data_root, span=span, mode=mode,
                            external_embeddings=cfg.grouping.external_embeddings,
                            encoder_config=encoder_config, beam_config_json=beam_json)
    if groups_resolver == "latest":
        strategy = dict(strategy_class=tfx.dsl.experimental.LatestArtifactStrategy)
    else:
        strategy = dict(strategy_class=PreviousSpanStrategy, config={"span": int(span)})
    latest_groups = tfx.dsl.Resolver(
        **strategy,
        previous_groups=tfx.dsl.Channel(type=ItemGroups)).with_id("latest_item_groups_resolver")
    grouper = ItemGrouper(data_root=data_root, span=span, grouping_config=cfg.grouping.to_dict(),
                          item_embeddings=enc.outputs["item_embeddings"],
                          previous_groups=latest_groups.outputs["previous_groups"],
                          refit=refit_groups, beam_config_json=beam_json)
    if import_examples:
        from tfx.proto import example_gen_pb2
        splits = [tfx.proto.Input.Split(name=n, pattern=f"Split-{n}/*")
                  for n in ("train", "val", "eval")]
        examples = tfx.components.ImportExampleGen(
            input_base=abs_path(import_examples), input_config=tfx.proto.Input(splits=splits),
            payload_format=example_gen_pb2.FORMAT_TF_SEQUENCE_EXAMPLE)
    else:
        examples = ExampleBuilder(data_root=data_root, span=span, data_config=cfg.data.to_dict(),
                                  item_groups=grouper.outputs["item_groups"],
                                  history_window=model_window(cfg),
                                  label_noise=label_noise, beam_config_json=beam_json)
    stats = tfx.components.StatisticsGen(examples=examples.outputs["examples"])
    schema = tfx.components.ImportSchemaGen(schema_file=SCHEMA_FILE)
    validator = tfx.components.ExampleValidator(statistics=stats.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    gate = ValidationGate(anomalies=validator.outputs["anomalies"])

    behavior_types = pipeline_behavior_types(cfg, data_root, span)
    # Analyze only: the vocabularies; the Trainer reads the user records itself. No
    # statistics (StatisticsGen's of the same records are the pre-transform ones, and
    # nothing is materialised to describe after) and no analyzer cache (nothing feeds it
    # back: every run analyzes its span afresh) — both were write-only artifacts, the
    # cache O(items).
    transform = tfx.components.Transform(
        examples=examples.outputs["examples"], schema=schema.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, materialize=False, disable_statistics=True,
        disable_analyzer_cache=True)
    transform.add_upstream_node(gate)   # no Transform (and nothing after it) on anomalies

    latest_blessed = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    custom_config = {"config": cfg.to_dict(), "behavior_types": behavior_types,
                     "export_jit_compile": export_jit_compile,
                     "export_signatures": export_signatures}
    tuner = None
    if tune_trials > 0:
        tuner = tfx.components.Tuner(
            tuner_fn=TUNER_FN, examples=examples.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema.outputs["schema"],
            train_args=tfx.proto.TrainArgs(splits=["train"]),
            eval_args=tfx.proto.EvalArgs(splits=["val"]),
            custom_config=dict(custom_config, tune_trials=int(tune_trials)))
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN, examples=examples.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"], schema=schema.outputs["schema"],
        base_model=latest_blessed.outputs["model"],
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["val"]),
        custom_config=custom_config)
    # TFMA reads the eval user records; our extractor expands them into flat tf.Examples
    # for `serving_default` (tfx_pipeline/eval_records.py). TFXIO needs the records' schema.
    evaluator = tfx.components.Evaluator(
        examples=examples.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=latest_blessed.outputs["model"], schema=schema.outputs["schema"],
        example_splits=["eval"], module_path=EVAL_MODULE,
        eval_config=make_eval_config(cfg.pipeline.min_auc, cfg.pipeline.max_auc_drop,
                                     cfg.pipeline.max_gauc_drop))
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(abs_path(serving_base), model_name))))

    front = [] if import_examples else [enc, latest_groups, grouper]
    components = front + [examples, stats, schema, validator, gate, transform, latest_blessed] \
        + ([tuner] if tuner else []) + [trainer, evaluator, pusher]
    metadata_path = metadata_path or os.path.join(pipeline_root, METADATA_FILE)
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline.name, pipeline_root=abs_path(pipeline_root),
        components=components, enable_cache=enable_cache,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            abs_path(metadata_path)),
        beam_pipeline_args=tfx_beam_args(cfg.beam))
