"""Helpers shared by the custom components' executors."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from dmgin_tf.config import BeamConfig
from dmgin_tf.errors import DataError

SPAN_DIR_FORMAT = "span-{span}"


def span_dir(data_root: str, span: int) -> str:
    """``<data_root>/span-<span>``: one converted (canonical) directory per span."""
    return os.path.join(data_root, SPAN_DIR_FORMAT.format(span=int(span)))


def require_span_dir(data_root: str, span: int, files=("behaviors.parquet", "items.parquet")) -> str:
    """The span's directory, checked to hold the canonical tables."""
    path = span_dir(data_root, span)
    missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
    if missing:
        raise DataError(f"span {span}: {path} lacks {missing}; convert the raw data of this "
                        f"span first (`dmgin data convert ... --output {path}`)")
    return path


def beam_config(exec_properties: Dict[str, Any], beam_pipeline_args: List[str]) -> BeamConfig:
    """Our Beam stages' runner: the `beam_config` JSON exec property when given, else a
    DirectRunner config carrying the pipeline's Beam args through `extra_args`."""
    raw = exec_properties.get("beam_config")
    if raw:
        return BeamConfig.from_dict(json.loads(raw))
    return BeamConfig(extra_args=tuple(beam_pipeline_args or ()))
