"""ExampleBuilder: our ExampleGen — behaviors of a span + ItemGroups -> `Examples`.

Why not a standard ExampleGen: the evaluation protocol (docs/design.md: Evaluation protocol) splits *per user by
time* (last 20% of each user's labelled events = eval, the last 10% of the rest = val;
users with < 5 events train only) and builds each example's history from everything
the user did strictly before it, with seeded negatives. ExampleGen's `output_config`
only hashes or buckets whole records into splits, and it cannot join a user's events
into histories, so the examples come from the Beam builder of `transform.examples`
(the single implementation of the protocol) and this component publishes its output
as a standard `Examples` artifact that every downstream TFX component reads as usual.

Output splits (`Split-<name>/*.tfrecord`, uncompressed tf.Examples):
  train — protocol train;  val — protocol validation (early stopping);
  eval  — protocol test (the Evaluator's split).
Artifact properties: `span`, `split_names`; custom property `counts` (JSON).

Features: those of `transform.examples.feature_spec(with_groups=True)` — string ids,
history lists, plus the ItemGroups' `group_id` / `hist_group_id`.

`label_noise` (0 in production) replaces that fraction of labels with seeded coin flips:
a fault-injection drill proving that a model trained on broken labels is not blessed.
"""
from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from dmgin_tf import features as F
from dmgin_tf.config import DataConfig
from dmgin_tf.errors import DataError
from tfx_pipeline.artifacts import GROUPS_FILE, ItemGroups
from tfx_pipeline.components.common import beam_config, require_span_dir

# protocol split (transform.examples / dmgin_tf.data.examples) -> TFX split name
SPLITS = {"train": "train", "val": "val", "test": "eval"}
_LOG = logging.getLogger(__name__)


class ExampleBuilderSpec(types.ComponentSpec):
    PARAMETERS = {
        "data_root": ExecutionParameter(type=str),
        "span": ExecutionParameter(type=int),
        "data_config": ExecutionParameter(type=str),
        "label_noise": ExecutionParameter(type=float, optional=True),
        "beam_config": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {"item_groups": ChannelParameter(type=ItemGroups)}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


def _corrupt_labels(path: str, fraction: float, seed: int) -> int:
    """Rewrites the TFRecord file at `path` with `fraction` of labels replaced by coin flips."""
    import tensorflow as tf
    rng = random.Random(seed)
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    changed = 0
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            ex = tf.train.Example.FromString(r)
            if rng.random() < fraction:
                ex.features.feature[F.LABEL].int64_list.value[:] = [rng.randint(0, 1)]
                changed += 1
            w.write(ex.SerializeToString())
    return changed


class Executor(base_beam_executor.BaseBeamExecutor):
    """Builds the span's examples with `transform.examples.build_examples`."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        import pandas as pd
        from transform import beam_io
        from transform.examples import build_examples
        span = int(exec_properties["span"])
        data_dir = require_span_dir(exec_properties["data_root"], span)
        data_cfg = DataConfig.from_dict(json.loads(exec_properties["data_config"]))
        groups_uri = artifact_utils.get_single_uri(input_dict["item_groups"])
        table = pd.read_parquet(os.path.join(groups_uri, GROUPS_FILE))
        item_groups = dict(zip(table[F.ITEM_ID].astype(str), table["group_id"].astype(int)))
        out = output_dict["examples"][0]
        staging = os.path.join(out.uri, ".staging")
        counts = build_examples(data_dir, staging, data_cfg,
                                beam_config(exec_properties, self._beam_pipeline_args),
                                item_groups=item_groups)
        noise = float(exec_properties.get("label_noise") or 0.0)
        for protocol_name, split in SPLITS.items():
            dest = os.path.join(out.uri, f"Split-{split}")
            os.makedirs(dest, exist_ok=True)
            # Only the data shards move: the sink's _SUCCESS.json would be read as a record.
            for shard in beam_io.output_files(os.path.join(staging, protocol_name)):
                target = os.path.join(dest, os.path.basename(shard))
                os.rename(shard, target)
                if noise > 0:
                    _corrupt_labels(target, noise, data_cfg.seed + span)
        import shutil
        shutil.rmtree(staging, ignore_errors=True)
        renamed = {SPLITS[k]: int(v) for k, v in counts.items()}
        if not renamed.get("train"):
            raise DataError(f"span {span}: no training examples built from {data_dir}")
        out.split_names = artifact_utils.encode_split_names(list(SPLITS.values()))
        out.span = span
        out.set_string_custom_property("counts", json.dumps(renamed, sort_keys=True))
        out.set_string_custom_property("label_noise", str(noise))
        _LOG.info("ExampleBuilder: span %d examples %s (label_noise %s)", span, renamed, noise)


class ExampleBuilder(base_beam_component.BaseBeamComponent):
    """TFX component: per-user time-split tf.Examples of one span (module docstring)."""

    SPEC_CLASS = ExampleBuilderSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, data_root: str, span: int, data_config: dict,
                 item_groups: types.BaseChannel, label_noise: float = 0.0,
                 beam_config_json: str = ""):
        spec = ExampleBuilderSpec(
            data_root=data_root, span=int(span), data_config=json.dumps(data_config, sort_keys=True),
            label_noise=float(label_noise), beam_config=beam_config_json, item_groups=item_groups,
            examples=types.Channel(type=standard_artifacts.Examples))
        super().__init__(spec=spec)
