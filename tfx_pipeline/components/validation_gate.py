"""ValidationGate: stops the run when ExampleValidator found anomalies.

ExampleValidator only *records* anomalies (missing feature, wrong type, out-of-domain
values ...) in its `ExampleAnomalies` artifact; the run would go on and might push a
model trained on broken data. This gate reads each split's `SchemaDiff.pb`
(`tensorflow_metadata` Anomalies), writes a readable ``anomalies.md`` into its
`ValidationReport` artifact, and raises `DataValidationError` with the same text when
any split has anomalies (the report is then kept at
``<pipeline root>/ValidationGate/anomalies-<execution id>.md``, as TFX removes a failed
execution's outputs) — so Transform, Trainer, Evaluator and Pusher (all downstream of
the gate) never run and nothing is pushed.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter

from dmgin_tf.errors import DataError

REPORT_FILE = "anomalies.md"


class ValidationReport(Artifact):
    """Readable anomalies report of one validation (`anomalies.md`)."""
    TYPE_NAME = "dmgin.ValidationReport"


class DataValidationError(DataError):
    """The examples do not match the curated schema (message = the report)."""


class ValidationGateSpec(types.ComponentSpec):
    PARAMETERS = {}
    INPUTS = {"anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies)}
    OUTPUTS = {"report": ChannelParameter(type=ValidationReport)}


def read_anomalies(uri: str) -> Dict[str, list]:
    """{split: [(feature, short description, description)]} from an ExampleAnomalies uri."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    found: Dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(uri, "Split-*", "SchemaDiff.pb"))):
        split = os.path.basename(os.path.dirname(path))[len("Split-"):]
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        rows = []
        for feature, info in sorted(anomalies.anomaly_info.items()):
            rows.append((feature, info.short_description, info.description))
        if anomalies.HasField("dataset_anomaly_info"):
            d = anomalies.dataset_anomaly_info
            rows.append(("<dataset>", d.short_description, d.description))
        found[split] = rows
    return found


def format_report(found: Dict[str, list]) -> str:
    """Markdown report; one line per anomaly, naming the split and the feature."""
    lines = ["# Example validation", ""]
    bad = {s: rows for s, rows in found.items() if rows}
    if not bad:
        lines.append(f"No anomalies in splits {sorted(found)}.")
    for split, rows in sorted(bad.items()):
        lines.append(f"## split `{split}`: {len(rows)} anomalies")
        lines += [f"- feature `{f}`: {short} — {desc}" for f, short, desc in rows]
    return "\n".join(lines) + "\n"


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        found = read_anomalies(input_dict["anomalies"][0].uri)
        if not found:
            raise DataValidationError(
                f"ValidationGate: no SchemaDiff.pb under {input_dict['anomalies'][0].uri}")
        text = format_report(found)
        out = output_dict["report"][0]
        os.makedirs(out.uri, exist_ok=True)
        with open(os.path.join(out.uri, REPORT_FILE), "w", encoding="utf-8") as f:
            f.write(text)
        n = sum(len(r) for r in found.values())
        out.set_int_custom_property("anomalies", n)
        if n:
            # TFX deletes a failed execution's output dirs: keep the report next to them,
            # <pipeline root>/ValidationGate/anomalies-<execution id>.md.
            kept = os.path.join(os.path.dirname(os.path.dirname(out.uri)),
                                f"anomalies-{os.path.basename(out.uri)}.md")
            with open(kept, "w", encoding="utf-8") as f:
                f.write(text)
            raise DataValidationError(
                f"data validation failed, the run stops before Transform (nothing is trained "
                f"or pushed); report {kept}:\n{text}")


class ValidationGate(base_component.BaseComponent):
    """TFX component: fail on ExampleValidator anomalies (module docstring)."""

    SPEC_CLASS = ValidationGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, anomalies: types.BaseChannel):
        super().__init__(spec=ValidationGateSpec(anomalies=anomalies,
                                                 report=types.Channel(type=ValidationReport)))
