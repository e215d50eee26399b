"""Piecewise-linear encoding of dense statistics for an MLP head.

Statistics (log counts, smoothed rates, shares, recencies) enter a ranking MLP with
very uneven, skewed distributions; an MLP fed the raw values (even batch-normalised)
uses them far worse than a tree model does. Encoding each value by where it falls
between the quantiles of its training distribution — piecewise-linear encoding,
Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep Learning" —
gives the MLP the same "which side of this threshold" view a tree has, while staying
continuous. Measured on our two real sets, an MLP over the statistics alone reaches a
higher test GAUC with it than with batch normalisation (docs/benchmarks.md: Quality).

The quantile edges are data, not weights to learn: `set_edges` fits them on training
rows (the trainer does this once, before fitting, beside the context tables) and they
travel with the model's weights and the SavedModel as a non-trainable variable.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

MIN_BIN_WIDTH = 1e-6     # tied quantiles (flags, zero counts) become steps, not NaNs


def quantile_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Per-feature quantile edges of training rows: `[N, F]` → float32 `[F, num_bins + 1]`.

    Non-finite values are ignored; a feature with no finite value gets edges 0..1.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"quantile_edges: values must be [rows, features], got shape "
                         f"{values.shape}")
    if num_bins < 1:
        raise ValueError(f"quantile_edges: num_bins={num_bins!r} must be >= 1")
    q = np.linspace(0.0, 1.0, num_bins + 1)
    edges = np.empty((values.shape[1], num_bins + 1), dtype=np.float64)
    for f in range(values.shape[1]):
        column = values[:, f][np.isfinite(values[:, f])]
        edges[f] = np.quantile(column, q) if column.size else q
    return edges.astype(np.float32)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class PiecewiseLinearEncoding(keras.layers.Layer):
    """Dense features `[..., F]` → `[..., F * units]`.

    Each feature x with edges e_0 ≤ … ≤ e_K becomes K values
    `clip((x - e_k) / (e_{k+1} - e_k), 0, 1)` (1 for the bins below x, the fraction
    inside its bin, 0 above), then its own linear map to `units` and a ReLU.

    Args:
        num_bins: K, quantile bins per feature.
        units: output width per feature.
    """

    def __init__(self, num_bins=16, units=8, **kwargs):
        super().__init__(**kwargs)
        self.num_bins = int(num_bins)
        self.units = int(units)
        if self.num_bins < 1 or self.units < 1:
            raise ValueError(f"PiecewiseLinearEncoding: num_bins={num_bins!r} and "
                             f"units={units!r} must be >= 1")

    def build(self, input_shape):
        f, k = int(input_shape[-1]), self.num_bins
        self.num_features = f
        # Until `set_edges` runs: bins evenly over [0, 1] (shares and rates live there).
        self.edges = self.add_weight(
            name="edges", shape=(f, k + 1), trainable=False, dtype="float32",
            autocast=False,      # edges compare with float32 values, whatever the policy
            initializer=keras.initializers.Constant(
                np.tile(np.linspace(0.0, 1.0, k + 1, dtype=np.float32), (f, 1))))
        self.kernel = self.add_weight(name="kernel", shape=(f, k, self.units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(f, self.units), initializer="zeros")
        self.built = True

    def set_edges(self, edges) -> None:
        """Loads `[F, num_bins + 1]` edges (`quantile_edges` of training rows)."""
        edges = np.asarray(edges, dtype=np.float32)
        expected = (self.num_features, self.num_bins + 1)
        if edges.shape != expected:
            raise ValueError(f"PiecewiseLinearEncoding.set_edges: edges of shape "
                             f"{edges.shape}, expected {expected} (features, bins + 1)")
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges, axis=1) < 0):
            raise ValueError("PiecewiseLinearEncoding.set_edges: edges must be finite and "
                             "non-decreasing along each row")
        self.edges.assign(edges)

    def call(self, x):
        x = ops.cast(x, "float32")
        lo = self.edges[:, :-1]                                              # [F, K]
        width = ops.maximum(self.edges[:, 1:] - lo, MIN_BIN_WIDTH)
        bins = ops.clip((x[..., None] - lo) / width, 0.0, 1.0)              # [..., F, K]
        lead = ops.shape(x)[:-1]
        f, k = self.num_features, self.num_bins
        # Per-feature maps as one block-diagonal product: [rows, F, K] x [F, K, U].
        rows = ops.reshape(bins, (-1, f, k))
        h = ops.einsum("rfk,fku->rfu", ops.cast(rows, self.compute_dtype),
                       ops.cast(self.kernel, self.compute_dtype))
        h = ops.relu(h + ops.cast(self.bias, self.compute_dtype))
        return ops.reshape(h, tuple(lead) + (f * self.units,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (int(input_shape[-1]) * self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(num_bins=self.num_bins, units=self.units)
        return config
