"""What every ranking model shares: inputs, the MLP head, config round trip."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dmgin_tf.config import ModelConfig
from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, MODEL_INPUT_KEYS, REQUEST_TIME)
from dmgin_tf.layers.dense import Dense


def time_dtype():
    """Timestamps are int64 on TF; JAX (x64 off) uses int32 (fits until 2038)."""
    return "int64" if keras.backend.backend() == "tensorflow" else "int32"


def input_specs(model_cfg: ModelConfig, batch_size=None):
    """Shapes and dtypes of the model inputs, keyed by `features.MODEL_INPUT_KEYS`.

    Returns:
        dict key -> (shape tuple, dtype str): history keys `[B, L]` with
        L = `model_cfg.history_length`, `request_time`/candidates `[B]`.
    """
    L = model_cfg.history_length
    t = time_dtype()
    return {HIST_ITEM: ((batch_size, L), "int32"), HIST_GROUP: ((batch_size, L), "int32"),
            HIST_BEHAVIOR_ID: ((batch_size, L), "int32"), HIST_TIME: ((batch_size, L), t),
            REQUEST_TIME: ((batch_size,), t), CAND_ITEM: ((batch_size,), "int32"),
            CAND_GROUP: ((batch_size,), "int32")}


def dummy_inputs(model_cfg: ModelConfig, batch_size=1):
    """All-padding numpy inputs (empty histories) of the right shapes, to build models."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype)
            in input_specs(model_cfg, batch_size).items()}


def as_model_config(model_cfg) -> ModelConfig:
    if isinstance(model_cfg, ModelConfig):
        return model_cfg
    return ModelConfig.from_dict(model_cfg)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class MLPHead(keras.layers.Layer):
    """Features `[B, F]` → CTR `[B]`: Dense(relu) + dropout stack, Dense(1), sigmoid.

    Args:
        units: tuple of ints, hidden sizes. dropout: float.
    """

    def __init__(self, units=(128, 64), dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(int(u) for u in units)
        self.dropout = float(dropout)
        self.hidden = [Dense(u, activation="relu", name=f"hidden_{i}")
                       for i, u in enumerate(self.units)]
        self.drop = keras.layers.Dropout(self.dropout)
        self.logit = Dense(1, name="logit")
        self.norm = keras.layers.BatchNormalization(name="input_norm")

    def build(self, input_shape):
        width = input_shape[-1]
        # Matching features (log counts) and learned vectors have different scales.
        self.norm.build((None, width))
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.logit.build((None, width))
        self.built = True

    def call(self, features, training=None):
        h = self.norm(features, training=training)
        for layer in self.hidden:
            h = self.drop(layer(h), training=training)
        logit = ops.squeeze(self.logit(h), axis=-1)
        return ops.cast(ops.sigmoid(ops.cast(logit, "float32")), "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, dropout=self.dropout)
        return config


class RankingModel(keras.Model):
    """Base of DMGIN and the baselines: inputs dict → `ctr` `[B]` float32 in (0, 1).

    Subclasses implement `interest(inputs, training) -> [B, F]`; the head is shared.
    `get_config()` is `{"model_cfg": ModelConfig.to_dict()}`, so `from_config` rebuilds
    the same architecture.
    """

    def __init__(self, model_cfg, **kwargs):
        super().__init__(**kwargs)
        self.model_cfg = as_model_config(model_cfg)
        self.head = MLPHead(self.model_cfg.mlp_units, self.model_cfg.dropout, name="head")

    def interest(self, inputs, training=None):
        raise NotImplementedError

    def call(self, inputs, training=None):
        missing = [k for k in MODEL_INPUT_KEYS if k not in inputs]
        if missing:
            raise KeyError(f"{type(self).__name__}: missing model input(s) {missing}; "
                           f"expected keys {list(MODEL_INPUT_KEYS)}")
        return self.head(self.interest(inputs, training=training), training=training)

    def get_config(self):
        return {"model_cfg": self.model_cfg.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
