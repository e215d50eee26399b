"""Evaluator configuration: AUC, logloss, calibration, example count and GAUC (TFMA).

GAUC (docs/design.md: Evaluation protocol) = Σ_u n_u·AUC_u / Σ_u n_u over users whose examples have both labels.
It is a custom TFMA metric (`GAUC` below): its combiner collects (user, label,
prediction) per slice — users come from the raw examples' `user_id` feature — and the
result is computed by `dmgin_tf.evaluation.gauc`, the project's one implementation.

Blessing (`eval_config`): AUC ≥ `min_auc` (absolute), AUC ≥ baseline AUC −
`max_auc_drop` and GAUC ≥ baseline GAUC − `max_gauc_drop` (change thresholds vs the latest
blessed model, resolved from MLMD by the pipeline, scored on the same eval examples);
with no blessed model yet only the absolute threshold applies.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util

from dmgin_tf import features as F

GAUC_NAME = "gauc"


class GAUC(metric_types.Metric):
    """Group (per-user) AUC weighted by each user's example count."""

    def __init__(self, name: str = GAUC_NAME, user_key: str = F.USER_ID):
        super().__init__(metric_util.merge_per_key_computations(_gauc), name=name,
                         user_key=user_key)


def _gauc(name: str = GAUC_NAME, user_key: str = F.USER_ID, eval_config=None,
          model_name: str = "", output_name: str = "", sub_key=None, aggregation_type=None,
          class_weights=None, example_weighted: bool = False):
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                 sub_key=sub_key, example_weighted=example_weighted)
    pre = metric_types.StandardMetricInputsPreprocessor(
        include_filter={"features": {user_key: {}}}, include_default_inputs=True)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=[pre],
        combiner=_GAUCCombiner(key, eval_config, user_key, aggregation_type, class_weights))]


class _GAUCCombiner(beam.CombineFn):
    """Accumulates [users], [labels], [predictions]; GAUC at extract time (exact)."""

    def __init__(self, key, eval_config, user_key, aggregation_type, class_weights):
        self._key, self._eval_config, self._user_key = key, eval_config, user_key
        self._aggregation_type, self._class_weights = aggregation_type, class_weights

    def create_accumulator(self):
        return ([], [], [])

    def add_input(self, acc, element):
        users = np.asarray(element.features[self._user_key]).reshape(-1)
        user = users[0] if len(users) else b""
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, aggregation_type=self._aggregation_type,
                class_weights=self._class_weights, example_weighted=False):
            acc[0].append(user.decode() if isinstance(user, bytes) else str(user))
            acc[1].append(float(label))
            acc[2].append(float(prediction))
        return acc

    def merge_accumulators(self, accs: Iterable):
        out = ([], [], [])
        for a in accs:
            for i in range(3):
                out[i].extend(a[i])
        return out

    def extract_output(self, acc) -> Dict[Any, float]:
        from dmgin_tf.evaluation import gauc
        if not acc[0]:
            return {self._key: float("nan")}
        value = gauc(np.asarray(acc[1]), np.asarray(acc[2]), np.asarray(acc[0], dtype=object))
        return {self._key: float("nan") if value is None else float(value)}


def _no_worse(max_drop: float) -> tfma.GenericChangeThreshold:
    return tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                       absolute={"value": -float(max_drop)})


def eval_config(min_auc: float = 0.5, max_auc_drop: float = 0.0, max_gauc_drop: float = 0.0,
                label_key: str = F.LABEL) -> tfma.EvalConfig:
    """EvalConfig on the `serving_default` signature (raw tf.Examples in, `ctr` out)."""
    thresholds = {"AUC": tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": float(min_auc)}),
        change_threshold=_no_worse(max_auc_drop)),
        "GAUC": tfma.MetricThreshold(change_threshold=_no_worse(max_gauc_drop))}
    metrics = [tfma.MetricConfig(class_name="ExampleCount"),
               tfma.MetricConfig(class_name="AUC", threshold=thresholds["AUC"]),
               tfma.MetricConfig(class_name="BinaryCrossentropy", config='{"name": "logloss"}'),
               tfma.MetricConfig(class_name="Calibration"),
               tfma.MetricConfig(class_name="MeanLabel"),
               tfma.MetricConfig(class_name="MeanPrediction"),
               tfma.MetricConfig(class_name="CalibrationPlot"),
               tfma.MetricConfig(class_name="GAUC", module=__name__,
                                 threshold=thresholds["GAUC"])]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=label_key,
                                    prediction_key=F.PREDICTION, preprocessing_function_names=[])],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])


def blessing_failures(evaluation_uri: str) -> List[str]:
    """Why an evaluation was not blessed: one line per failed threshold, e.g.
    "auc 0.5421, under the threshold 0.6000 (pipeline.min_auc)" or "gauc -0.0356 against
    the last blessed model (allowed drop 0.0200, pipeline.max_gauc_drop)"; empty when
    every threshold held."""
    result = tfma.load_validation_result(evaluation_uri)
    out = []
    for per_slice in result.metric_validations_per_slice:
        for f in per_slice.failures:
            name, value = f.metric_key.name, f.metric_value.double_value.value
            t = f.metric_threshold
            if t.HasField("change_threshold"):
                bound = t.change_threshold.absolute.value
                out.append(f"{name} {value:+.4f} against the last blessed model (allowed "
                           f"drop {-bound:.4f}, pipeline.max_{name}_drop)")
            elif t.value_threshold.HasField("lower_bound"):
                out.append(f"{name} {value:.4f}, under the threshold "
                           f"{t.value_threshold.lower_bound.value:.4f} (pipeline.min_auc)")
            else:
                out.append(f"{name} {value:.4f}: {f.message or 'threshold not met'}")
    return out


def read_metrics(evaluation_uri: str) -> Dict[str, float]:
    """{metric name: value} of the overall slice of a TFMA evaluation output."""
    result = tfma.load_metrics(evaluation_uri)
    out: Dict[str, float] = {}
    for slice_metrics in result:
        if slice_metrics.slice_key.single_slice_keys:
            continue
        for kv in slice_metrics.metric_keys_and_values:
            v = kv.value
            if v.HasField("double_value"):
                name = kv.key.name + ("_diff" if kv.key.is_diff else "")
                if not kv.key.model_name or kv.key.model_name == "candidate":
                    out[name] = v.double_value.value
    return out
