"""Keras 3 ranking metrics: AUC, logloss, and a streaming GAUC (backend-agnostic).

The numpy definitions (and the offline evaluation) are in `dmgin_tf.evaluation`; the
GAUC metric here computes the same number inside Keras loops (`model.evaluate`, custom
loops, TF or JAX backend) and is tested against `evaluation.gauc`.
"""
from __future__ import annotations

import keras
from keras import ops

_NO_USER = 2**31 - 1   # user id of empty buffer slots (sorts last, never counted)


def _stable_argsort(x):
    """Stable ascending argsort of a 1-D tensor.

    `keras.ops.argsort` promises no stability (TF's default sort is unstable); GAUC
    needs a stable pass to sort by (user, score) with two sorts. The one
    backend-specific spot of this module, tested per backend.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.argsort(x, stable=True)
    if backend == "jax":
        import jax.numpy as jnp
        return jnp.argsort(x, stable=True)
    raise NotImplementedError(f"GAUC: no stable argsort for backend {backend!r}")


@keras.saving.register_keras_serializable(package="dmgin_tf")
class GAUC(keras.metrics.Metric):
    """Group AUC: Σ_u n_u·AUC_u / Σ_u n_u over users whose examples have both labels.

    Exact (average ranks for ties, like `dmgin_tf.evaluation.gauc`): examples are kept
    in a fixed-size buffer of `capacity` rows (static shapes for XLA), and `result()`
    sorts them by (user, score). Beyond `capacity` examples since the last reset the
    result is NaN — never a silently partial number; raise `capacity` for larger
    evaluations (memory: 12 bytes per row).

    Args:
        capacity: int, maximum examples between resets.
        name, dtype: as for Keras metrics.

    Update arguments:
        y_true: `[B]` labels in {0, 1}, or `[B, 2]` = (label, user id) so the metric
            works inside `model.evaluate` when the user id travels with the label.
        y_pred: `[B]` or `[B, 1]` scores.
        sample_weight: ignored (GAUC weights users by their example counts).
        user_ids: optional int `[B]` user ids (< 2**31 - 1); overrides y_true[:, 1].

    Example:

    ```python
    m = GAUC(capacity=1024)
    m.update_state([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6], user_ids=[7, 7, 8, 8])
    float(m.result())   # 0.5
    ```
    """

    def __init__(self, capacity=2**18, name="gauc", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.capacity = int(capacity)
        # One extra slot at the end receives the rows that overflow the buffer.
        size = self.capacity + 1
        self.labels = self.add_variable(shape=(size,), initializer="zeros",
                                        dtype="float32", name="labels")
        self.scores = self.add_variable(shape=(size,), initializer="zeros",
                                        dtype="float32", name="scores")
        self.users = self.add_variable(shape=(size,), initializer="zeros",
                                       dtype="int32", name="users")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="int32",
                                       name="count")

    def update_state(self, y_true, y_pred, sample_weight=None, user_ids=None):
        y_true = ops.convert_to_tensor(y_true)
        if user_ids is None:
            if len(y_true.shape) != 2 or y_true.shape[-1] != 2:
                raise ValueError("GAUC.update_state: pass user_ids=[B] or y_true of shape "
                                 f"[B, 2] (label, user id); got y_true {y_true.shape}")
            user_ids = y_true[:, 1]
            y_true = y_true[:, 0]
        labels = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        scores = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
        users = ops.cast(ops.reshape(ops.convert_to_tensor(user_ids), (-1,)), "int32")
        pos = self.count + ops.arange(ops.shape(labels)[0], dtype="int32")
        pos = ops.where(pos < self.capacity, pos, self.capacity)[:, None]
        self.labels.assign(ops.scatter_update(self.labels, pos, labels))
        self.scores.assign(ops.scatter_update(self.scores, pos, scores))
        self.users.assign(ops.scatter_update(self.users, pos, users))
        self.count.assign(self.count + ops.shape(labels)[0])

    def result(self):
        size = self.capacity + 1
        idx = ops.arange(size, dtype="int32")
        valid = idx < ops.minimum(self.count, self.capacity)
        users = ops.where(valid, self.users, _NO_USER)
        scores = ops.where(valid, self.scores, 0.0)
        labels = ops.where(valid, self.labels, 0.0)
        validf = ops.cast(valid, "float32")

        by_score = ops.argsort(scores)
        order = ops.take(by_score, _stable_argsort(ops.take(users, by_score)))
        u, s = ops.take(users, order), ops.take(scores, order)
        y, v = ops.take(labels, order), ops.take(validf, order)
        first = ops.ones((1,), "bool")
        new_user = ops.concatenate([first, u[1:] != u[:-1]], axis=0)
        seg = ops.cumsum(ops.cast(new_user, "int32")) - 1
        start = -ops.segment_max(-idx, seg, num_segments=size, sorted=False)
        pos_in_user = ops.cast(idx - ops.take(start, seg), "float32") + 1.0
        # Equal scores of one user share their average rank (Mann-Whitney with ties).
        new_run = new_user | ops.concatenate([first, s[1:] != s[:-1]], axis=0)
        run = ops.cumsum(ops.cast(new_run, "int32")) - 1
        run_rank = (ops.segment_sum(pos_in_user, run, num_segments=size, sorted=False)
                    / ops.maximum(ops.segment_sum(ops.ones_like(pos_in_user), run,
                                                  num_segments=size, sorted=False), 1.0))
        rank = ops.take(run_rank, run)
        n = ops.segment_sum(v, seg, num_segments=size, sorted=False)
        n_pos = ops.segment_sum(y * v, seg, num_segments=size, sorted=False)
        n_neg = n - n_pos
        rank_sum = ops.segment_sum(rank * y * v, seg, num_segments=size, sorted=False)
        ok = (n_pos > 0) & (n_neg > 0)
        auc = (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / ops.where(ok, n_pos * n_neg, 1.0)
        weight = ops.where(ok, n, 0.0)
        total = ops.sum(weight)
        value = ops.sum(weight * auc) / ops.maximum(total, 1.0)
        value = ops.where(total > 0, value, float("nan"))
        return ops.where(self.count > self.capacity, float("nan"), value)

    def get_config(self):
        return {"capacity": self.capacity, "name": self.name, "dtype": self.dtype}


def ranking_metrics():
    """The standard Keras metrics for CTR models: AUC and logloss (GAUC needs user ids,
    see `GAUC`)."""
    return [keras.metrics.AUC(name="auc", num_thresholds=1000),
            keras.metrics.BinaryCrossentropy(name="logloss")]
