"""Tiny data and a tiny Keras 3 model for trainer tests (no dependence on dmgin_tf.models).

The synthetic task is learnable in one epoch: the label is 1 exactly when the candidate
item appears in the history, which the tiny model sees through an explicit match count.
"""
from __future__ import annotations

import numpy as np

from dmgin_tf.config import Config
from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, MODEL_INPUT_KEYS, REQUEST_TIME)

NUM_ITEMS = 40          # item ids 2..41
HISTORY = 8


def tiny_arrays(n: int, seed: int = 0, history: int = HISTORY):
    """Dense inputs [n, history] / [n], labels [n] and user ids [n]."""
    rng = np.random.default_rng(seed)
    hist_item = rng.integers(2, NUM_ITEMS + 2, size=(n, history)).astype(np.int32)
    lengths = rng.integers(1, history + 1, size=n)
    pad = np.arange(history)[None, :] >= lengths[:, None]
    hist_item[pad] = 0
    label = rng.random(n) < 0.5
    cand = rng.integers(2, NUM_ITEMS + 2, size=n).astype(np.int32)
    # Positives take their candidate from the history, negatives from outside it.
    for i in range(n):
        row = hist_item[i][hist_item[i] > 0]
        if label[i]:
            cand[i] = row[rng.integers(len(row))]
        else:
            while cand[i] in row:
                cand[i] = rng.integers(2, NUM_ITEMS + 2)
    t = np.sort(rng.integers(1_500_000_000, 1_500_100_000, size=(n, history)), axis=1)
    t[pad] = 0
    inputs = {
        HIST_ITEM: hist_item,
        HIST_GROUP: np.where(pad, 0, hist_item % 5 + 2).astype(np.int32),
        HIST_BEHAVIOR_ID: np.where(pad, 0, rng.integers(1, 5, size=(n, history))).astype(np.int32),
        HIST_TIME: t.astype(np.int64),
        REQUEST_TIME: (t.max(axis=1) + 10).astype(np.int64),
        CAND_ITEM: cand,
        CAND_GROUP: (cand % 5 + 2).astype(np.int32),
    }
    users = rng.integers(0, max(2, n // 8), size=n)
    return inputs, label.astype(np.float32), users


def tiny_data(n_train=256, n_val=64, n_test=64, seed=0, history=HISTORY):
    from dmgin_tf.training.inputs import ArraySplit
    from dmgin_tf.training.trainer import TrainingData
    splits = [ArraySplit(*tiny_arrays(n, seed + i, history)) for i, n in
              enumerate((n_train, n_val, n_test))]
    return TrainingData(*splits, model_overrides={"item_vocab_size": NUM_ITEMS + 2,
                                                   "group_vocab_size": 7,
                                                   "num_behavior_types": 4},
                        info={"dataset": "synthetic"})


def tiny_config(backend="tensorflow", **train):
    values = {"model": {"history_length": HISTORY, "embedding_dim": 4},
              "train": {"backend": backend, "epochs": 1, "batch_size": 32, **train}}
    return Config.from_dict(values)


def tiny_model_fn(model_cfg):
    """inputs dict of MODEL_INPUT_KEYS -> ctr [B]: item embeddings + history match count."""
    import keras
    from keras import ops

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__(name="tiny")
            self.emb = keras.layers.Embedding(model_cfg.item_vocab_size, model_cfg.embedding_dim)
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(1, dtype="float32")

        def call(self, inputs):
            cand = self.emb(inputs[CAND_ITEM])                                     # [B, D]
            match = ops.sum(ops.cast(ops.equal(inputs[HIST_ITEM],
                                               ops.expand_dims(inputs[CAND_ITEM], 1)), "float32"),
                            axis=1, keepdims=True)                                 # [B, 1]
            x = self.hidden(ops.concatenate([ops.cast(cand, "float32"), match], axis=-1))
            return ops.sigmoid(ops.squeeze(ops.cast(self.out(x), "float32"), -1))  # [B]

    return Tiny()
