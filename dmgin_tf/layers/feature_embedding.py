"""Shared id and time embeddings for DMGIN and every baseline (one place, docs/design.md: Model and tensor contracts)."""
from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from dmgin_tf.features import NUM_RESERVED_IDS, OOV_ID
from dmgin_tf.layers.dense import Dense

# Recency buckets are log2-spaced in minutes: bucket b covers ages in
# [60 * (2**(b-1) - 1), 60 * (2**b - 1)) seconds, so 32 buckets reach far beyond 2038.
_BUCKET_UNIT_SECONDS = 60.0


def log_time_bucket(seconds, num_buckets):
    """Log2 buckets of a non-negative duration in seconds.

    Args:
        seconds: float tensor of any shape (negative values and NaN count as 0).
        num_buckets: int, the bucket count; larger ages (and +inf) clamp to
            `num_buckets - 1`.

    Returns:
        int32 tensor, same shape, values in `[0, num_buckets)`.
    """
    seconds = ops.cast(seconds, "float32")
    # `> 0` is False for NaN: a NaN age falls in bucket 0 on every backend (it used to
    # become int32's minimum, an index error on TensorFlow and a clamp on JAX).
    seconds = ops.where(seconds > 0.0, seconds, 0.0)
    b = ops.floor(ops.log(1.0 + seconds / _BUCKET_UNIT_SECONDS) / math.log(2.0))
    return ops.cast(ops.clip(b, 0, num_buckets - 1), "int32")


def age_seconds(times, request_time):
    """`request_time - times` as float32 seconds, broadcasting `request_time` [B].

    Args:
        times: int tensor `[B, ...]` (Unix seconds; int64 on TF, int32 on JAX).
        request_time: int tensor `[B]`.

    Returns:
        float32 tensor shaped like `times`. The subtraction happens in the integer dtype
        so that large timestamps keep full precision before the cast.
    """
    rt = ops.cast(request_time, times.dtype)
    rt = ops.reshape(rt, (-1,) + (1,) * (len(times.shape) - 1))
    return ops.cast(rt - times, "float32")


@functools.lru_cache(maxsize=None)
def _dense_gradient_gather():
    """`tf.gather` whose gradient is one dense `unsorted_segment_sum` (built on first use:
    TensorFlow is imported only on its own backend; JAX hosts lack it)."""
    import tensorflow as tf

    @tf.custom_gradient
    def gather(params, indices):
        def grad(dy):
            rows = tf.reshape(tf.convert_to_tensor(dy),
                              tf.concat([[-1], tf.shape(params)[1:]], 0))
            return tf.math.unsorted_segment_sum(rows, tf.reshape(indices, [-1]),
                                                tf.shape(params)[0]), None
        return tf.gather(params, indices), grad

    # The table's value as a tensor (a variable read, honouring Keras' state and
    # autocast scopes): a variable read inside `gather` would need a `variables` gradient.
    return lambda table, ids: gather(tf.convert_to_tensor(table), ids)


def lookup_rows(table, ids):
    """`table[ids]`: rows of a trainable table, with a dense gradient on TensorFlow.

    TensorFlow differentiates a gather into `IndexedSlices` (one row per looked-up id,
    duplicates kept) and Keras' optimizers then turn them dense themselves — Keras 3's
    Adam once for each of its moment updates, tf.keras' Adam after a `tf.unique` — so a
    table read B x L times per step paid that scatter two or three times. Here the
    gradient is one `unsorted_segment_sum` into the table's shape: the same values, summed
    once, in graph mode and under XLA alike (JAX differentiates a gather densely already;
    the op is `ops.take` there).

    Args:
        table: variable or tensor `[V, ...]`.
        ids: int tensor `[...]`, values in `[0, V)` (callers clamp out-of-vocabulary ids).

    Returns:
        `ids.shape + table.shape[1:]`, the rows of `table` in its dtype.
    """
    ids = ops.cast(ids, "int32")
    if keras.backend.backend() != "tensorflow":
        return take_clamped(table, ids)
    return _dense_gradient_gather()(table, ids)


def take_clamped(table, ids):
    """`table[ids]` with ids outside `[0, V)` clamped to the nearest row on JAX, as XLA
    does on TensorFlow (JAX's gather fills such rows with NaN); TensorFlow keeps its own
    rule (eager/graph on CPU raise, XLA clamps)."""
    if keras.backend.backend() != "tensorflow":
        ids = ops.clip(ops.cast(ids, "int32"), 0, table.shape[0] - 1)
    return ops.take(table, ids, axis=0)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class FeatureEmbedding(keras.layers.Layer):
    """Item, group, behavior-type and recency embeddings shared by all models.

    One table per id kind; behavior tokens (one per history event) are the sum of the
    item, behavior-type and recency-bucket embeddings, so every model (DMGIN and the
    baselines) sees the same history representation.

    Args:
        item_vocab_size: int, item ids `[0, item_vocab_size)` (0 = padding, 1 = OOV).
        group_vocab_size: int, group ids `[0, group_vocab_size)`. With
            `group_key="item"` groups are item ids and the item table is reused, so
            this may be 0.
        num_behavior_ids: int, behavior ids `[0, num_behavior_ids)` (0 = padding).
        embedding_dim: int, D.
        num_time_buckets: int, log2-minute recency buckets (see `log_time_bucket`).
        group_key: `"group"` (own group table) or `"item"` (DGIN: group id = item id).
        embeddings_regularizer: optional L2 factor on the id tables (float, 0 = none).
        item_content_dim: int, C > 0 adds a frozen per-item content vector (the
            multimodal encoder's catalog embedding, `set_item_content`) through a
            learned projection to every item embedding — what an item with few or no
            interactions is known by; 0 = ids only.
        item_min_count: int, k > 0 gives the item table a row map (`set_item_rows`,
            filled by the trainer) so that items seen in fewer than k training examples
            share the unknown-item row: an id seen once can only memorise that one
            example's label (the statistics and the group still describe it); 0 = every
            id its own row.

    Call methods (there is no single `call`; `call` is `item`):
        item(ids [...]) -> [..., D]; group(ids [...]) -> [..., D];
        tokens(items, behaviors, times [..], request_time [B]) -> [..., D].
        Ids must lie inside the vocabulary (TF on CPU raises; XLA and JAX clamp to the
        nearest row), so callers map unknown ids to OOV (1) upstream.

    Example:

    ```python
    emb = FeatureEmbedding(item_vocab_size=100, group_vocab_size=10,
                           num_behavior_ids=6, embedding_dim=8)
    items = np.array([[2, 3, 0]]); beh = np.array([[2, 3, 0]])
    times = np.array([[10, 20, 0]]); now = np.array([30])
    tok = emb.tokens(items, beh, times, now)   # [1, 3, 8]
    ```
    """

    def __init__(self, item_vocab_size, group_vocab_size, num_behavior_ids, embedding_dim,
                 num_time_buckets=32, group_key="group", embeddings_regularizer=0.0,
                 item_content_dim=0, item_min_count=0, **kwargs):
        super().__init__(**kwargs)
        if group_key not in ("group", "item"):
            raise ValueError(f"group_key={group_key!r}: must be 'group' or 'item'")
        for name, value in (("item_vocab_size", item_vocab_size),
                            ("num_behavior_ids", num_behavior_ids),
                            ("embedding_dim", embedding_dim),
                            ("num_time_buckets", num_time_buckets)):
            if value < 1:
                raise ValueError(f"{name}={value!r}: must be >= 1")
        if group_key == "group" and group_vocab_size < 1:
            raise ValueError(f"group_vocab_size={group_vocab_size!r}: must be >= 1 "
                             "when group_key='group'")
        self.item_vocab_size = int(item_vocab_size)
        self.group_vocab_size = int(group_vocab_size)
        self.num_behavior_ids = int(num_behavior_ids)
        self.embedding_dim = int(embedding_dim)
        self.num_time_buckets = int(num_time_buckets)
        self.group_key = group_key
        self.embeddings_regularizer = float(embeddings_regularizer)
        self.item_content_dim = int(item_content_dim)
        if self.item_content_dim < 0:
            raise ValueError(f"item_content_dim={item_content_dim!r}: must be >= 0")
        self.item_min_count = int(item_min_count)
        if self.item_min_count < 0:
            raise ValueError(f"item_min_count={item_min_count!r}: must be >= 0")
        reg = (keras.regularizers.L2(self.embeddings_regularizer)
               if self.embeddings_regularizer else None)
        init = keras.initializers.RandomNormal(stddev=0.05)
        self.item_table = keras.layers.Embedding(
            self.item_vocab_size, self.embedding_dim, embeddings_initializer=init,
            embeddings_regularizer=reg, name="item_embedding", dtype=self.dtype_policy)
        self.group_table = None
        if group_key == "group":
            self.group_table = keras.layers.Embedding(
                self.group_vocab_size, self.embedding_dim, embeddings_initializer=init,
                embeddings_regularizer=reg, name="group_embedding", dtype=self.dtype_policy)
        self.behavior_table = keras.layers.Embedding(
            self.num_behavior_ids, self.embedding_dim, embeddings_initializer=init,
            name="behavior_embedding", dtype=self.dtype_policy)
        self.time_table = keras.layers.Embedding(
            self.num_time_buckets, self.embedding_dim, embeddings_initializer=init,
            name="recency_embedding", dtype=self.dtype_policy)
        self.content_projection = None
        if self.item_content_dim:
            self.content_projection = Dense(self.embedding_dim, use_bias=False,
                                            name="item_content_projection",
                                            dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.item_table.build((None,))
        if self.group_table is not None:
            self.group_table.build((None,))
        self.behavior_table.build((None,))
        self.time_table.build((None,))
        if self.item_min_count:
            # Model item id -> row of the item table; identity until `set_item_rows`.
            self.item_rows = self.add_weight(
                name="item_rows", shape=(self.item_vocab_size,), trainable=False,
                dtype="int32", initializer=keras.initializers.Constant(
                    np.arange(self.item_vocab_size, dtype=np.int32)))
        if self.content_projection is not None:
            # Data, not a weight to learn: loaded by `set_item_content`, saved with the
            # weights (and the SavedModel), zeros until then.
            self.item_content = self.add_weight(
                name="item_content", shape=(self.item_vocab_size, self.item_content_dim),
                initializer="zeros", trainable=False, dtype="float32", autocast=False)
            self.content_projection.build((None, self.item_content_dim))
        self.built = True

    def set_item_rows(self, counts) -> int:
        """Maps items seen in fewer than `item_min_count` training examples to the
        unknown-item row. `counts`: int `[item_vocab_size]` training examples per item.
        Returns how many items keep their own row."""
        if not self.item_min_count:
            raise ValueError("FeatureEmbedding.set_item_rows: the layer was built with "
                             "item_min_count=0")
        if not self.built:
            self.build()
        counts = np.asarray(counts)
        if counts.shape != (self.item_vocab_size,):
            raise ValueError(f"FeatureEmbedding.set_item_rows: counts of shape {counts.shape}, "
                             f"expected ({self.item_vocab_size},)")
        ids = np.arange(self.item_vocab_size, dtype=np.int32)
        keep = (counts >= self.item_min_count) | (ids < NUM_RESERVED_IDS)
        self.item_rows.assign(np.where(keep, ids, OOV_ID).astype(np.int32))
        return int(keep[NUM_RESERVED_IDS:].sum())

    def set_item_content(self, table) -> None:
        """Loads the frozen item content vectors: float `[item_vocab_size,
        item_content_dim]`, row = model item id (rows 0/1 and items without a vector: 0)."""
        if self.content_projection is None:
            raise ValueError("FeatureEmbedding.set_item_content: the layer was built with "
                             "item_content_dim=0")
        if not self.built:
            self.build()
        shape = tuple(np.shape(table))
        expected = (self.item_vocab_size, self.item_content_dim)
        if shape != expected:
            raise ValueError(f"FeatureEmbedding.set_item_content: table of shape {shape}, "
                             f"expected {expected} (item_vocab_size, item_content_dim)")
        table = np.asarray(table, dtype=np.float32)
        if not np.all(np.isfinite(table)):
            raise ValueError("FeatureEmbedding.set_item_content: the table has non-finite "
                             "values")
        self.item_content.assign(table)

    def call(self, ids):
        return self.item(ids)

    def compute_output_shape(self, input_shape):
        """`call` (= `item`): ids `[...]` -> `[..., D]`."""
        return tuple(input_shape) + (self.embedding_dim,)

    def item(self, ids):
        """Item embeddings: int ids [...] -> [..., D] (+ projected content vectors)."""
        ids = ops.cast(ids, "int32")
        if (self.item_min_count or self.content_projection is not None) and not self.built:
            self.build()              # reached through this method, not __call__
        rows = take_clamped(self.item_rows, ids) if self.item_min_count else ids
        out = self._lookup(self.item_table, rows)
        if self.content_projection is not None:
            content = take_clamped(self.item_content, ids)
            out = out + self.content_projection(ops.cast(content, out.dtype))
        return out

    def _lookup(self, table, ids):
        """`table` (a built `keras.layers.Embedding`) at int ids `[...]` → `[..., D]` in
        the compute dtype: what `Embedding.__call__` returns, read through `lookup_rows`.
        The table's regularizer is a loss of its variable, so it applies unchanged."""
        if not table.built:
            table.build((None,))
        return ops.cast(lookup_rows(table.embeddings, ids), table.compute_dtype)

    def group(self, ids):
        """Group embeddings: int ids [...] -> [..., D] (item table when group_key='item')."""
        if self.group_table is None:
            return self.item(ids)
        return self._lookup(self.group_table, ids)

    def behavior(self, ids):
        """Behavior-type embeddings: int ids [...] -> [..., D]."""
        return self._lookup(self.behavior_table, ids)

    def recency(self, ages):
        """Recency embeddings of float ages in seconds [...] -> [..., D]."""
        return self._lookup(self.time_table, log_time_bucket(ages, self.num_time_buckets))

    def tokens(self, items, behaviors, times, request_time):
        """Behavior tokens: item + behavior type + recency bucket.

        Args:
            items, behaviors: int `[B, ...]`; times: int `[B, ...]` Unix seconds;
            request_time: int `[B]`.

        Returns:
            float `[B, ..., D]`. Padded slots get a (finite) token; callers mask them.
        """
        return (self.item(items) + self.behavior(behaviors)
                + self.recency(age_seconds(times, request_time)))

    def get_config(self):
        config = super().get_config()
        config.update(item_vocab_size=self.item_vocab_size,
                      group_vocab_size=self.group_vocab_size,
                      num_behavior_ids=self.num_behavior_ids,
                      embedding_dim=self.embedding_dim,
                      num_time_buckets=self.num_time_buckets,
                      group_key=self.group_key,
                      embeddings_regularizer=self.embeddings_regularizer,
                      item_content_dim=self.item_content_dim,
                      item_min_count=self.item_min_count)
        return config
