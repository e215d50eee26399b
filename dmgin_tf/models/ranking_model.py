"""What every ranking model shares: inputs, the MLP head, config round trip."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import keras
import numpy as np
from keras import ops

from dmgin_tf.config import ModelConfig
from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, CONTEXT_FOLD, HIST_BEHAVIOR_ID, HIST_GROUP,
                               HIST_ITEM, HIST_TIME, MODEL_INPUT_KEYS, REQUEST_TIME)
from dmgin_tf.layers.context_statistics import ContextStatistics
from dmgin_tf.layers.dense import Dense
from dmgin_tf.layers.input_contract import (InputContractError, check_structure, check_values,
                                            clamp_ids)
from dmgin_tf.layers.numeric_encoding import PiecewiseLinearEncoding, quantile_edges


INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def check_host_batch(x) -> None:
    """On the JAX backend (64-bit off), a numpy batch's int64 values must fit int32: JAX
    converts them by wrapping, so a millisecond timestamp or an id ≥ 2³¹ would become a
    plausible-looking second or id before any check could see it. No-op elsewhere and
    for anything but a dict of numpy arrays (datasets, generators, tensors)."""
    if keras.backend.backend() != "jax" or not isinstance(x, dict):
        return
    for k, v in x.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.size and (
                v.min() < INT32_MIN or v.max() > INT32_MAX):
            bad = v[(v < INT32_MIN) | (v > INT32_MAX)].reshape(-1)[0]
            hint = (" — this looks like milliseconds; use Unix seconds"
                    if k in (HIST_TIME, REQUEST_TIME) else "")
            raise InputContractError(
                f"input {k!r}: value {int(bad)} does not fit int32, which the JAX backend "
                f"(64-bit off) would wrap silently{hint}")


@contextlib.contextmanager
def kept_jax_weights(model):
    """Keras' JAX `predict` / `evaluate` detach every variable's value for their loop and
    re-attach them only when the loop ends: an exception inside (an input refused by the
    contract checks, a shape error while tracing) left the model without weights
    (`'NoneType' object is not callable` on its next call). The values are restored on
    the way out; JAX arrays are immutable, so keeping references copies nothing."""
    if keras.backend.backend() != "jax":
        yield
        return
    kept = [(v, v.value) for v in list(model.variables) + list(model.metrics_variables)]
    try:
        yield
    except BaseException:
        for v, value in kept:
            v.assign(value)
        model._jax_state, model._jax_state_synced = None, True
        raise


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

    The last `numeric_dim` columns of the input are dense statistics (context
    statistics, raw matching counts); with `numeric_bins > 0` they are
    piecewise-linear encoded (`PiecewiseLinearEncoding`, quantile edges fitted on
    training rows by `fit_numeric_edges`) instead of batch-normalised with the
    learned vectors in front of them.

    Args:
        units: tuple of ints, hidden sizes. dropout: float.
        numeric_dim: int, trailing dense columns of the input (0 = none).
        numeric_bins: int, quantile bins per dense column (0 = batch-normalise them
            with the rest). numeric_units: int, encoded width per dense column.
    """

    def __init__(self, units=(128, 64), dropout=0.0, numeric_dim=0, numeric_bins=0,
                 numeric_units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(int(u) for u in units)
        self.dropout = float(dropout)
        self.numeric_dim = int(numeric_dim)
        self.numeric_bins = int(numeric_bins)
        self.numeric_units = int(numeric_units)
        policy = self.dtype_policy
        self.hidden = [Dense(u, activation="relu", dtype=policy, name=f"hidden_{i}")
                       for i, u in enumerate(self.units)]
        self.drop = keras.layers.Dropout(self.dropout, dtype=policy)
        self.logit = Dense(1, dtype=policy, name="logit")
        self.norm = keras.layers.BatchNormalization(dtype=policy, name="input_norm")
        self.numeric = None
        if self.numeric_dim > 0 and self.numeric_bins > 0:
            self.numeric = PiecewiseLinearEncoding(self.numeric_bins, self.numeric_units,
                                                   dtype=policy, name="numeric_encoding")

    def _split(self, features):
        """`[..., F]` → (learned `[..., F - numeric_dim]`, dense `[..., numeric_dim]`)."""
        cut = features.shape[-1] - self.numeric_dim
        return features[..., :cut], features[..., cut:]

    def build(self, input_shape):
        width = input_shape[-1]
        if self.numeric is not None:
            learned = width - self.numeric_dim
            if learned < 0:
                raise ValueError(f"MLPHead: input width {width} is smaller than "
                                 f"numeric_dim={self.numeric_dim}")
            self.numeric.build((None, self.numeric_dim))
            # Learned vectors keep the batch norm (their scale drifts while training).
            self.norm.build((None, learned))
            width = learned + self.numeric_dim * self.numeric_units
        else:
            # Matching features (log counts) and learned vectors have different scales.
            self.norm.build((None, width))
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.logit.build((None, width))
        self.built = True

    def call(self, features, training=None):
        if self.numeric is not None:
            learned, dense = self._split(features)
            h = ops.concatenate([self.norm(learned, training=training),
                                 ops.cast(self.numeric(dense), learned.dtype)], axis=-1)
        else:
            h = self.norm(features, training=training)
        for layer in self.hidden:
            h = self.drop(layer(h), training=training)
        logit = ops.squeeze(self.logit(h), axis=-1)
        return ops.cast(ops.sigmoid(ops.cast(logit, "float32")), "float32")

    def set_numeric_edges(self, dense_rows) -> Optional[np.ndarray]:
        """Fits the encoding's quantile edges on training rows of the head input
        (`[N, F]`, its last `numeric_dim` columns are used); returns the edges, or None
        when the head has no numeric encoding."""
        if self.numeric is None:
            return None
        dense_rows = np.asarray(dense_rows)
        edges = quantile_edges(dense_rows[:, dense_rows.shape[1] - self.numeric_dim:],
                               self.numeric_bins)
        self.numeric.set_edges(edges)
        return edges

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, dropout=self.dropout, numeric_dim=self.numeric_dim,
                      numeric_bins=self.numeric_bins, numeric_units=self.numeric_units)
        return config


class RankingModel(keras.Model):
    """Base of DMGIN and the baselines: inputs dict → `ctr` `[B]` float32 in (0, 1).

    Subclasses implement `interest(inputs, training) -> [B, F]`; the head is shared.
    With `model_cfg.use_context` (every model, so comparisons stay fair) the head also
    reads `ContextStatistics`: the candidate item's and group's training statistics and
    the user's history aggregates (`context_features`). Training examples may carry the
    optional input `context_fold` `[B]` (their out-of-fold index); without it the
    statistics of all training examples are used (validation, test, serving).

    Construct from a `ModelConfig` (or its dict) or from its fields as keywords, as
    Keras layers are: `DIN(item_vocab_size=10_000, group_vocab_size=500,
    embedding_dim=32)`; Keras' own keywords (`name`, `dtype`, `trainable`) pass through,
    and the model's dtype policy reaches every sublayer. `get_config()` is Keras' base
    config plus every `ModelConfig` field, so `from_config(get_config())` rebuilds the
    same architecture.
    """

    MODEL_NAME = ""      # ModelConfig.model of this class (set by each subclass)

    def __init__(self, model_cfg=None, **kwargs):
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        if model_cfg is None:
            if self.MODEL_NAME:
                overrides.setdefault("model", self.MODEL_NAME)
            model_cfg = ModelConfig.from_dict(overrides)
        elif overrides:
            model_cfg = as_model_config(model_cfg).replace(**overrides)
        super().__init__(**kwargs)
        self.model_cfg = as_model_config(model_cfg)
        c = self.model_cfg
        self.context = None
        if c.use_context:
            self.context = ContextStatistics(c.item_vocab_size, c.group_vocab_size,
                                             c.num_behavior_types, c.context_folds,
                                             dtype=self.dtype_policy,
                                             name="context_statistics")
        numeric_dim = self.dense_interest_dim() + (
            self.context.output_dim if self.context is not None else 0)
        self.head = MLPHead(c.mlp_units, c.dropout, numeric_dim=numeric_dim,
                            numeric_bins=c.numeric_bins, numeric_units=c.numeric_units,
                            dtype=self.dtype_policy, name="head")

    def interest(self, inputs, training=None):
        raise NotImplementedError

    def dense_interest_dim(self) -> int:
        """How many trailing columns of `interest` are raw statistics rather than learned
        vectors (the head encodes them with the context features); from the config only,
        as the head is built before the subclass's layers."""
        return 0

    def head_inputs(self, inputs):
        """The MLP head's input `[B, F]` in inference mode (what `fit_numeric_edges`
        fits the quantile edges on)."""
        return self.head_features(self.interest(inputs, training=False), inputs)

    def build(self, input_shape=None):
        """Creates every weight by running the model once on empty histories of the
        config's shapes (`input_shape` is implied by the config). Keras calls this when a
        `.keras` file is loaded, before the weights are read."""
        self.call(dummy_inputs(self.model_cfg, batch_size=1))
        self.built = True

    def context_features(self, inputs):
        """Context features per candidate of `inputs` (`[B]` candidates → `[B, F]`,
        `[U, N]` → `[U, N, F]`, one user's `[N]` → `[N, F]`; F = context.output_dim),
        float, or None without context."""
        if self.context is None:
            return None
        cand_item, cand_group = inputs[CAND_ITEM], inputs[CAND_GROUP]
        fold = inputs.get(CONTEXT_FOLD)
        # One user's history [1, L] with [N] candidates: score them as [1, N].
        one_user = (len(cand_item.shape) == 1 and inputs[HIST_ITEM].shape[0] == 1
                    and cand_item.shape[0] != 1)
        if one_user:
            cand_item, cand_group = cand_item[None], cand_group[None]
        cand = self.context.candidate_features(cand_item, cand_group, fold, inputs[HIST_GROUP],
                                               inputs[HIST_BEHAVIOR_ID], inputs[HIST_ITEM])
        user = self.context.user_features(inputs[HIST_ITEM], inputs[HIST_BEHAVIOR_ID],
                                          inputs[HIST_TIME], inputs[REQUEST_TIME])
        if len(cand.shape) == 3:                       # [U, N]: repeat the user per candidate
            user = ops.broadcast_to(user[:, None, :], ops.shape(cand)[:2] + (user.shape[-1],))
        out = ops.concatenate([cand, ops.cast(user, cand.dtype)], axis=-1)
        return out[0] if one_user else out

    def head_features(self, interest, inputs):
        """What the MLP head reads: the interest, plus the context features if enabled."""
        return self.join_head_features(interest, self.context_features(inputs))

    def join_head_features(self, interest, context):
        """The head's input from the interest `[..., F]` and the context features (same
        leading shape, or None); also used by scoring from a cached user state."""
        if context is None:
            return interest
        return ops.concatenate([interest, ops.cast(context, interest.dtype)], axis=-1)

    def item_embedding_layer(self):
        """The `FeatureEmbedding` that embeds this model's items."""
        encoder = getattr(self, "encoder", None)
        return encoder.embedding if encoder is not None else self.embedding

    def set_item_rows(self, counts) -> int:
        """Items with fewer than `model.item_min_count` training examples (`counts`
        `[item_vocab_size]`) share the unknown-item embedding row; returns how many
        items keep their own."""
        return self.item_embedding_layer().set_item_rows(counts)

    def set_item_content(self, table) -> None:
        """Loads the frozen item content vectors `[item_vocab_size, item_content_dim]`
        (`dmgin_tf.data.item_content.item_content_table`)."""
        if not self.model_cfg.item_content_dim:
            raise ValueError(f"{type(self).__name__}.set_item_content: "
                             "model.item_content_dim is 0 (no content vectors)")
        self.item_embedding_layer().set_item_content(table)

    def set_context_tables(self, item, group) -> None:
        """Fills the context statistics tables (`dmgin_tf.data.context_stats`); no-op
        when the model has no context features."""
        if self.context is not None:
            self.context.set_tables(item, group)

    def call(self, inputs, training=None):
        inputs = self.checked_inputs(inputs)
        interest = self.interest(inputs, training=training)
        return self.head(self.head_features(interest, inputs), training=training)

    def checked_inputs(self, inputs):
        """The encoder's input contract for every model, so the baselines take the same
        inputs the same way (docs/layers.md, "Input contract"): structure on every call
        (`[B, 1]` candidates read as `[B]`), values when concrete (eager), and in compiled
        calls out-of-vocabulary ids mapped to OOV alike on every device."""
        c = self.model_cfg
        inputs = check_structure(inputs, owner=type(self).__name__)
        check_values(inputs, item_vocab_size=c.item_vocab_size,
                     group_vocab_size=c.group_vocab_size,
                     num_behavior_types=c.num_behavior_types)
        inputs = clamp_ids(inputs, item_vocab_size=c.item_vocab_size,
                           group_vocab_size=c.group_vocab_size)
        b = ops.convert_to_tensor(inputs[HIST_BEHAVIOR_ID])
        inputs[HIST_BEHAVIOR_ID] = ops.where((b < 0) | (b > c.num_behavior_types),
                                             ops.zeros_like(b), b)   # unknown type: 0
        return inputs

    def predict(self, x, *args, **kwargs):
        check_host_batch(x)
        with kept_jax_weights(self):
            return super().predict(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        check_host_batch(x)
        with kept_jax_weights(self):
            return super().evaluate(x, *args, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Keras' `export`, with the model's named integer inputs (`input_specs`) as the
        default signature: Keras would otherwise guess float32 positional inputs."""
        if input_signature is None and format == "tf_saved_model":
            input_signature = [{k: keras.InputSpec(shape=shape, dtype=dtype, name=k)
                                for k, (shape, dtype) in input_specs(self.model_cfg).items()}]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self.model_cfg.to_dict())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Configs written before the fields were flattened keep them under "model_cfg".
        return cls(config.pop("model_cfg", None), **config)
