"""Training-curve PNG: written quietly also for runs without validation metrics."""
from __future__ import annotations

import warnings

import pytest

from dmgin_tf.training.plots import plot_history

pytest.importorskip("matplotlib")


@pytest.mark.parametrize("rows", [
    [{"epoch": 1, "loss": 0.6, "val_logloss": 0.5, "val_auc": 0.7, "val_gauc": 0.6}],
    [{"epoch": 1, "loss": 0.6}, {"epoch": 2, "loss": 0.5}],          # no validation split
])
def test_curve_is_written_without_warnings(tmp_path, rows):
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # e.g. matplotlib's "No artists with labels found"
        path = plot_history(rows, str(tmp_path / "curve.png"), title="run")
    assert path and (tmp_path / "curve.png").stat().st_size > 1000
