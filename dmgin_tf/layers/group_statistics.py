"""Group statistics → embedding (counts per behavior type, times)."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.dense import Dense
from dmgin_tf.layers.precision import KeepsInputDtypes


@keras.saving.register_keras_serializable(package="dmgin_tf")
class GroupStatistics(KeepsInputDtypes, keras.layers.Layer):
    """Embeds per-group statistics: `log1p(counts)` per behavior type + normalised stats.

    The grouping op counts behaviors per type over the group's *whole* history and
    gives normalised time statistics (recency, span, mean gap, ...). Counts are
    heavy-tailed, so they enter as `log1p`; a two-layer MLP maps the features to `units`.
    The same layer (same weights) embeds the candidate's own group statistics, so the
    candidate's group and the user's groups live in one space.

    Args:
        units: int, output size.
        activation: hidden activation.

    Call arguments:
        counts: float `[..., T]`, behaviors per type (raw counts, >= 0).
        stats: float `[..., S]`, normalised statistics (may be None).
        group_mask: optional bool `[...]`; outputs are zero where False.

    Returns:
        float `[..., units]`.

    Example:

    ```python
    layer = GroupStatistics(units=8)
    counts = np.array([[[3., 0.], [0., 0.]]], "float32")     # [B=1, G=2, T=2]
    stats = np.zeros((1, 2, 4), "float32")
    out = layer(counts, stats, group_mask=np.array([[True, False]]))  # [1, 2, 8]
    ```
    """

    def __init__(self, units, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self._keep_input_dtypes()   # float32 times / counts under mixed float16
        self.units = A.count("GroupStatistics", "units", units)
        self.activation = activation

    def build(self, counts_shape, stats_shape=None, group_mask_shape=None):
        width = counts_shape[-1] + (stats_shape[-1] if stats_shape is not None else 0)
        self.hidden = Dense(self.units, activation=self.activation,
                            name="hidden", dtype=self.dtype_policy)
        self.proj = Dense(self.units, name="projection", dtype=self.dtype_policy)
        self.hidden.build((None, width))
        self.proj.build((None, self.units))
        self.built = True

    @staticmethod
    def features(counts, stats=None):
        """The raw feature vector `[log1p(counts), stats]`: float `[..., T (+ S)]`."""
        parts = [ops.log1p(ops.maximum(ops.cast(counts, "float32"), 0.0))]
        if stats is not None:
            parts.append(ops.cast(stats, "float32"))
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def call(self, counts, stats=None, group_mask=None):
        mask = group_mask
        feats = ops.cast(self.features(counts, stats), self.compute_dtype)
        out = self.proj(self.hidden(feats))
        if mask is not None:
            out = out * ops.cast(mask, out.dtype)[..., None]
        return out

    def compute_output_shape(self, counts_shape, stats_shape=None, group_mask_shape=None):
        return tuple(counts_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=self.activation)
        return config
