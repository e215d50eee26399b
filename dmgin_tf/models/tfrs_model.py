"""DMGIN as a `tfrs.Model` (tf.keras / Keras 2) with a `tfrs.tasks.Ranking` task.

The ranker is the Keras 3 model from `build_model` run through
`dmgin_tf.layers.tf_keras.KerasLayerAdapter` — the same math and the same weights. Weights
move in one format, the Keras 3 model's `.weights.h5`:

    keras3_model.save_weights("m.weights.h5")          # trained on TF or JAX backend
    tfrs_model = TFRSRankingModel(model_cfg)
    tfrs_model.load_keras3_weights("m.weights.h5")     # and back: save_keras3_weights

Needs KERAS_BACKEND=tensorflow and TF_USE_LEGACY_KERAS=1 (set by the `dmgin` CLI and by
`dmgin_tf.layers.tf_keras` when TensorFlow is not imported yet).
"""
from __future__ import annotations

import tensorflow_recommenders as tfrs
import tf_keras

from dmgin_tf.features import LABEL, MODEL_INPUT_KEYS
from dmgin_tf.layers.tf_keras import KerasLayerAdapter, load_keras3_weights, save_keras3_weights
from dmgin_tf.models import as_model_config, build_model


class TFRSRankingModel(tfrs.Model):
    """TFRS ranking model around any `build_model` model (DMGIN by default).

    Args:
        model_cfg: `ModelConfig` (or dict); `model_cfg.model` picks the ranker
            (dmgin, or a baseline for comparisons).
        ranker: optional already-built Keras 3 `RankingModel` to wrap (its weights are
            used as they are); default `build_model(model_cfg)`.

    Call arguments:
        features: dict with `features.MODEL_INPUT_KEYS` (and `label` for training);
            extra keys are ignored.

    Returns:
        ctr `[B]` float32.

    `compute_loss` = `tfrs.tasks.Ranking(BinaryCrossentropy, metrics=[AUC])` on
    `features["label"]`, so `model.fit(dataset_of_feature_dicts)` trains it.

    Example:

    ```python
    model = TFRSRankingModel(ModelConfig(item_vocab_size=100, group_vocab_size=20))
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
    model.fit(tf.data.Dataset.from_tensor_slices(features).batch(256), epochs=1)
    ```
    """

    def __init__(self, model_cfg, ranker=None, **kwargs):
        super().__init__(**kwargs)
        self.model_cfg = as_model_config(model_cfg)
        self.ranker = KerasLayerAdapter(ranker if ranker is not None
                                        else build_model(self.model_cfg), name="ranker")
        self.task = tfrs.tasks.Ranking(
            loss=tf_keras.losses.BinaryCrossentropy(),
            metrics=[tf_keras.metrics.AUC(name="auc", num_thresholds=1000)])

    @property
    def keras3_model(self):
        """The wrapped Keras 3 model (encode_user/score for DMGIN)."""
        return self.ranker.inner

    def call(self, features, training=False):
        return self.ranker({k: features[k] for k in MODEL_INPUT_KEYS}, training=training)

    def compute_loss(self, features, training=False):
        predictions = self(features, training=training)
        return self.task(labels=features[LABEL], predictions=predictions,
                         training=training)

    def save_keras3_weights(self, path):
        """Writes the ranker's weights as the Keras 3 `.weights.h5` (loads on TF or JAX)."""
        save_keras3_weights(self.keras3_model, path)

    def load_keras3_weights(self, path):
        """Loads a Keras 3 `.weights.h5` of a `build_model(model_cfg)` model (call the
        model once first; `CheckpointMismatchError` otherwise)."""
        load_keras3_weights(self.keras3_model, path)
