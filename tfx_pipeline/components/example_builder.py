"""ExampleBuilder: our ExampleGen — behaviors of a span + ItemGroups -> `Examples`.

Why not a standard ExampleGen: the evaluation protocol (docs/design.md: Evaluation protocol) splits *per user by
time* (last 20% of each user's labelled events = eval, the last 10% of the rest = val;
users with < 5 events train only) and builds each example's history from everything
the user did strictly before it, with seeded negatives. ExampleGen's `output_config`
only hashes or buckets whole records into splits, and it cannot join a user's events
into histories, so the records come from the Beam builder of `transform.examples`
(the single implementation of the protocol) and this component publishes them as
standard `Examples` artifacts that the downstream TFX components read as usual.

Outputs (gzip TFRecords, ``Split-<name>/*.tfrecord.gz``):
  examples       one `tf.train.SequenceExample` per (user, split) — context `user_id`,
                 feature lists = the user's behaviors in time order and the split's
                 labelled positions (`transform.examples`, `dmgin_tf.data.sequences`);
                 payload format FORMAT_TF_SEQUENCE_EXAMPLE; splits train / val / eval
                 (protocol train / validation / test). Storage O(behaviors).
The Evaluator reads the `eval` split of these records and expands them into flat
tf.Examples inside TFMA (`tfx_pipeline.eval_records`): no per-example copy is stored.
Artifact properties: `span`, `split_names`; custom property `counts` (JSON).

`history_window` = min(data.max_history, model.history_length): a val / eval record keeps
only the behaviors its examples' histories can reach.

`label_noise` (0 in production) replaces that fraction of labels with seeded coin flips:
a fault-injection drill proving that a model trained on broken labels is not blessed.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from dmgin_tf import features as F
from dmgin_tf.config import DataConfig
from dmgin_tf.data.sequences import RECORD_FORMAT
from dmgin_tf.errors import DataError
from tfx_pipeline.artifacts import GROUPS_FILE, SPAN, ItemGroups
from tfx_pipeline.components.common import beam_config, check_parameters, require_span_dir

# protocol split (transform.examples / dmgin_tf.data.examples) -> TFX split name
SPLITS = {"train": "train", "val": "val", "test": "eval"}
_LOG = logging.getLogger(__name__)


class ExampleBuilderSpec(types.ComponentSpec):
    PARAMETERS = {
        "data_root": ExecutionParameter(type=str),
        "span": ExecutionParameter(type=int),
        "data_config": ExecutionParameter(type=str),
        "label_noise": ExecutionParameter(type=float, optional=True),
        "history_window": ExecutionParameter(type=int),
        "beam_config": ExecutionParameter(type=str, optional=True),
        # The record layout this run writes (`dmgin_tf.data.sequences.RECORD_FORMAT`): part
        # of the cache key, so records of an older layout are never reused after an upgrade.
        "record_format": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {"item_groups": ChannelParameter(type=ItemGroups)}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class Executor(base_beam_executor.BaseBeamExecutor):
    """Builds the span's user records with `transform.examples.build_user_records`."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        import shutil
        import pandas as pd
        from tfx.components.util import examples_utils
        from tfx.proto import example_gen_pb2
        from transform import beam_io
        from transform.examples import build_user_records
        span = int(exec_properties["span"])
        wanted = exec_properties.get("record_format")
        if wanted is not None and int(wanted) != RECORD_FORMAT:
            raise DataError(f"ExampleBuilder: the pipeline asks for user records of layout "
                            f"{wanted}; this installation writes layout {RECORD_FORMAT} "
                            f"(recompile the pipeline with the installed package)")
        groups = artifact_utils.get_single_instance(input_dict["item_groups"])
        groups_span = groups.get_int_custom_property(SPAN) \
            if groups.has_custom_property(SPAN) else span
        if groups_span != span:
            # An orchestrator that builds each task's pipeline anew (Airflow re-reads the
            # DAG file per task) can pick a newer span between two tasks of one run.
            raise DataError(f"ExampleBuilder: span {span}, but the ItemGrouper of this run "
                            f"grouped span {groups_span}: the newest span changed during the "
                            f"run. Land a new span only between runs (or pin --span); rerun.")
        data_dir = require_span_dir(exec_properties["data_root"], span)
        data_cfg = DataConfig.from_dict(json.loads(exec_properties["data_config"]))
        groups_uri = groups.uri
        table = pd.read_parquet(os.path.join(groups_uri, GROUPS_FILE))
        item_groups = dict(zip(table[F.ITEM_ID].astype(str), table["group_id"].astype(int)))
        out = output_dict["examples"][0]
        staging = os.path.join(out.uri, ".staging")
        noise = float(exec_properties.get("label_noise") or 0.0)
        counts = build_user_records(data_dir, staging, data_cfg,
                                    beam_config(exec_properties, self._beam_pipeline_args),
                                    item_groups=item_groups, label_noise=noise,
                                    window=int(exec_properties["history_window"]))
        for name, split in SPLITS.items():
            dest = os.path.join(out.uri, f"Split-{split}")
            os.makedirs(dest, exist_ok=True)
            # Only the data shards move: the sink's _SUCCESS.json would be read as a record.
            for shard in beam_io.output_files(os.path.join(staging, name)):
                os.rename(shard, os.path.join(dest, os.path.basename(shard)))
        shutil.rmtree(staging, ignore_errors=True)
        renamed = {SPLITS[k]: int(counts[k]) for k in SPLITS}
        check_split_counts(span, data_dir, renamed, data_cfg)
        out.split_names = artifact_utils.encode_split_names(list(SPLITS.values()))
        examples_utils.set_payload_format(out, example_gen_pb2.FORMAT_TF_SEQUENCE_EXAMPLE)
        out.span = span
        out.set_string_custom_property("label_noise", str(noise))
        out.set_string_custom_property("counts", json.dumps(renamed, sort_keys=True))
        _LOG.info("ExampleBuilder: span %d user records %s (label_noise %s)", span, renamed,
                  noise)


def min_labelled_events(split: str, cfg: DataConfig) -> int:
    """The fewest labelled events a user needs for one example of `split` ("val" /
    "eval") under the time split of `cfg` (`dmgin_tf.data.examples.split_sizes`)."""
    from dmgin_tf.data.examples import split_sizes
    column = {"val": 1, "eval": 2}[split]
    for n in range(1, 100_000):
        if split_sizes(n, cfg)[column]:
            return n
    return 100_000


def check_split_counts(span: int, data_dir: str, counts: Dict[str, int],
                       cfg: DataConfig) -> None:
    """Every split must hold records: StatisticsGen, the Transform and the Evaluator read
    each one, and TFX's readers fail on an empty split with only "No files found"."""
    if not counts.get("train"):
        raise DataError(f"span {span}: no training records built from {data_dir}")
    if not counts.get("val") and cfg.val_fraction == 0:
        raise DataError(f"span {span}: data.val_fraction=0 leaves no val split; the "
                        f"pipeline needs one (early stopping, statistics)")
    for split in ("val", "eval"):
        if not counts.get(split):
            raise DataError(
                f"span {span}: no {split} records built from {data_dir}: with "
                f"data.min_events_for_test={cfg.min_events_for_test}, "
                f"test_fraction={cfg.test_fraction} and val_fraction={cfg.val_fraction} a "
                f"user needs at least {min_labelled_events(split, cfg)} labelled events "
                f"for a {split} example, and no user has that many (records per split: "
                f"{counts}). Use more data, or change those settings (--set data.KEY=VALUE)")


class ExampleBuilder(base_beam_component.BaseBeamComponent):
    """TFX component: per-user time-split records of one span (module docstring)."""

    SPEC_CLASS = ExampleBuilderSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, data_root: str, span: int, data_config: dict,
                 item_groups: types.BaseChannel, history_window: int,
                 label_noise: float = 0.0, beam_config_json: str = ""):
        """
        Args:
          data_root: holds ``span-<N>/`` (`tfx_pipeline.runner.prepare_span`).
          span: the span to build.
          data_config: `DataConfig` fields as a dict (`cfg.data.to_dict()`).
          item_groups: the ItemGrouper's output channel (the item -> group table).
          history_window: L, the newest behaviors the eval split's flat examples keep.
          label_noise: share of labels flipped (fault drills and tests only; 0 otherwise).
          beam_config_json: `BeamConfig` fields as JSON; "" runs our Beam stage with the
            pipeline's Beam args.

        Raises:
          ConfigError: a config parameter that does not parse (checked here, when the
            pipeline is built).
        """
        check_parameters("ExampleBuilder", data_config=data_config,
                         beam_config_json=beam_config_json)
        spec = ExampleBuilderSpec(
            data_root=data_root, span=int(span), data_config=json.dumps(data_config, sort_keys=True),
            label_noise=float(label_noise), beam_config=beam_config_json, item_groups=item_groups,
            history_window=int(history_window), record_format=RECORD_FORMAT,
            examples=types.Channel(type=standard_artifacts.Examples))
        super().__init__(spec=spec)
