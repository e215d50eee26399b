"""Converters: raw public formats and the generic layout -> canonical tables.

Each converter streams its input, validates every row and writes into `output_dir`:
`behaviors.parquet`, `items.parquet`, `report.json` and `report.md` (docs/data.md).

    >>> from dmgin_tf.data.converters import convert
    >>> from dmgin_tf.data.sample import sample_path
    >>> result = convert("movielens", sample_path("movielens"), "/tmp/ml")  # doctest: +SKIP
    >>> result.report["info"]["behaviors"]                                  # doctest: +SKIP
    20855
"""
from __future__ import annotations

from dmgin_tf.config import DataConfig
from dmgin_tf.data.converters.common import ConversionResult
from dmgin_tf.data.converters.generic import convert_generic
from dmgin_tf.data.converters.movielens import convert_movielens
from dmgin_tf.data.converters.reader import TIMESTAMP_UNITS
from dmgin_tf.data.converters.taobao import convert_taobao
from dmgin_tf.errors import DataError

CONVERTERS = {"taobao": convert_taobao, "movielens": convert_movielens, "generic": convert_generic}

__all__ = ["CONVERTERS", "ConversionResult", "convert", "convert_generic", "convert_movielens",
           "convert_taobao"]


def convert(dataset: str, input_path, output_dir, config: DataConfig | None = None,
            **kwargs) -> ConversionResult:
    """Runs the converter of `dataset` (taobao | movielens | generic).

    `input_path` None or "" means the embedded sample (taobao, movielens). Keyword
    arguments go to the converter (`show_progress`, `max_samples`, `timestamp_unit`
    "s" | "ms" | "us" | "ns"; generic also `items_path`, `behavior_types`).
    """
    if dataset not in CONVERTERS:
        raise DataError(f"unknown dataset {dataset!r}; known: {sorted(CONVERTERS)}")
    unit = kwargs.get("timestamp_unit", "s")
    if unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp unit {unit!r}: must be one of {sorted(TIMESTAMP_UNITS)}")
    if not input_path:
        if dataset == "generic":
            raise DataError("dataset 'generic' needs an input path (no embedded sample)")
        from dmgin_tf.data.sample import sample_path
        input_path = sample_path(dataset)
    return CONVERTERS[dataset](input_path, output_dir, config, **kwargs)
