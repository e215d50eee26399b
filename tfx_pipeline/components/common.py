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


def check_parameters(component: str, **sections) -> None:
    """Parses a component's config parameters when the pipeline is built, so a typo fails
    there, naming the component and field, not minutes later when the component runs.

    Args:
      component: the component's name, for the message.
      sections: `data_config` / `grouping_config` (dicts of `DataConfig` /
        `GroupingConfig` fields), `encoder_config` (dict of `EncoderConfig` fields),
        `beam_config_json` (JSON of `BeamConfig` fields, or "" for the pipeline's Beam
        args); None or "" values are skipped.

    Raises:
      ConfigError: naming the component, the parameter and the field.
    """
    from dmgin_tf.config import ConfigError, DataConfig, GroupingConfig
    parsers = {"data_config": DataConfig.from_dict, "grouping_config": GroupingConfig.from_dict,
               "beam_config_json": lambda raw: BeamConfig.from_dict(json.loads(raw))}
    for name, value in sections.items():
        if value is None or value == "":
            continue
        if name == "encoder_config":
            from transform.encoder.config import EncoderConfig
            parse = EncoderConfig.from_dict
        else:
            parse = parsers[name]
        try:
            parse(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{component}: {name} is not JSON ({e.msg} at line {e.lineno} "
                              f"column {e.colno}): {value!r}") from None
        except (ConfigError, TypeError, AttributeError) as e:
            raise ConfigError(f"{component}: {name}: {e}") from None


def beam_config(exec_properties: Dict[str, Any], beam_pipeline_args: List[str]) -> BeamConfig:
    """Our Beam stages' runner: the `beam_config` JSON exec property when given, else a
    DirectRunner config carrying the pipeline's Beam args through `extra_args`."""
    raw = exec_properties.get("beam_config")
    if raw:
        return BeamConfig.from_dict(json.loads(raw))
    return BeamConfig(extra_args=tuple(beam_pipeline_args or ()))
