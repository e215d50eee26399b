"""Where the embedded real sample lives (dmgin_tf/sample_data/, see its README.md).

    >>> sample_path("movielens").name
    'movielens'

`sample_path(dataset)` is what the converters take as `input_path`: the Taobao
directory holds `UserBehavior.csv`; the MovieLens directory holds `ratings.csv`,
`tags.csv`, `movies.csv` and `README.txt` (the dataset's license).
"""
from __future__ import annotations

import pathlib

from dmgin_tf.errors import DataError

SAMPLE_ROOT = pathlib.Path(__file__).resolve().parents[1] / "sample_data"
SAMPLE_DATASETS = ("taobao", "movielens")


def sample_path(dataset: str) -> pathlib.Path:
    """Directory of the embedded raw sample of `dataset` (taobao | movielens).

    Raises:
      DataError: unknown dataset, or the sample is missing from this installation.
    """
    if dataset not in SAMPLE_DATASETS:
        raise DataError(f"no embedded sample for dataset {dataset!r}; have {list(SAMPLE_DATASETS)}")
    path = SAMPLE_ROOT / dataset
    if not path.is_dir():
        raise DataError(f"embedded sample {path} is missing from this installation "
                        "(package_data not installed?)")
    return path
