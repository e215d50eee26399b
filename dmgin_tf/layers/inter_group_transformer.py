"""Inter-group level: stacked HSTU or Transformer blocks over time-ordered groups."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.layers import arguments as A
from dmgin_tf.layers.feature_embedding import log_time_bucket
from dmgin_tf.layers.hstu_block import HSTUBlock
from dmgin_tf.layers.precision import KeepsInputDtypes
from dmgin_tf.layers.transformer_block import TransformerBlock, require_static

BLOCK_TYPES = ("hstu", "transformer")


@keras.saving.register_keras_serializable(package="dmgin_tf")
class InterGroupTransformer(KeepsInputDtypes, keras.layers.Layer):
    """Evolves the G group vectors with attention across groups (interest evolution).

    Groups arrive ordered by their last activity, most recent first (grouping op).
    `block="hstu"` stacks `HSTUBlock`s whose relative position and relative time biases
    encode order and time gaps (the paper's choice); `block="transformer"` stacks
    softmax `TransformerBlock`s with absolute position + recency-bucket embeddings added
    to the input. The output does not depend on the candidate, so it is the cacheable
    per-user state.

    Args:
        num_heads: int.
        num_layers: int (0 = identity, the "no inter" ablation).
        block: `"hstu"` or `"transformer"`.
        num_time_buckets: int, log2-minute buckets for time encodings.
        ffn_multiplier: int (transformer block). dropout: float.

    Call arguments:
        group_vectors: float `[B, G, D]`.
        group_mask: bool `[B, G]`.
        group_ages: float `[B, G]`, seconds between each group's last behavior and the
            request (None = no time encoding).
        training: bool.

    Returns:
        float `[B, G, D]`, zero at padded groups.

    Example:

    ```python
    layer = InterGroupTransformer(num_heads=2, num_layers=2, block="hstu")
    g = np.random.normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    ages = np.cumsum(np.full((2, 5), 3600.0, "float32"), axis=1)
    out = layer(g, mask, ages)   # [2, 5, 8]
    ```
    """

    def __init__(self, num_heads, num_layers=2, block="hstu", num_time_buckets=32,
                 ffn_multiplier=2, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self._keep_input_dtypes()   # float32 times / counts under mixed float16
        if block not in BLOCK_TYPES:
            raise ValueError(f"block={block!r}: must be one of {BLOCK_TYPES}")
        name = "InterGroupTransformer"
        self.num_heads = A.count(name, "num_heads", num_heads)
        self.num_layers = A.count(name, "num_layers", num_layers, minimum=0)
        self.block = block
        self.num_time_buckets = A.count(name, "num_time_buckets", num_time_buckets)
        self.ffn_multiplier = A.count(name, "ffn_multiplier", ffn_multiplier)
        self.dropout = A.rate(name, "dropout", dropout)

    def build(self, group_vectors_shape, group_mask_shape=None, group_ages_shape=None):
        require_static("InterGroupTransformer", group_vectors_shape, {-2: "G", -1: "D"})
        num_groups, dim = group_vectors_shape[-2], group_vectors_shape[-1]
        if self.block == "hstu":
            self.blocks = [HSTUBlock(self.num_heads, max_relative_position=num_groups,
                                     num_time_buckets=self.num_time_buckets,
                                     dropout=self.dropout, name=f"hstu_{i}",
                                     dtype=self.dtype_policy)
                           for i in range(self.num_layers)]
        else:
            self.blocks = [TransformerBlock(self.num_heads, self.ffn_multiplier,
                                            self.dropout, name=f"transformer_{i}",
                                            dtype=self.dtype_policy)
                           for i in range(self.num_layers)]
            if self.num_layers:
                self.position_embedding = self.add_weight(
                    name="position_embedding", shape=(num_groups, dim),
                    initializer=keras.initializers.RandomNormal(stddev=0.02))
                self.time_embedding = keras.layers.Embedding(
                    self.num_time_buckets, dim, name="recency_embedding",
                    embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                    dtype=self.dtype_policy)
                self.time_embedding.build((None,))
        for b in self.blocks:
            b.build(tuple(group_vectors_shape))
        self.built = True

    def call(self, group_vectors, group_mask, group_ages=None, training=None):
        group_vectors = ops.cast(group_vectors, self.compute_dtype)
        group_mask = ops.cast(group_mask, "bool")
        x = group_vectors * ops.cast(group_mask, group_vectors.dtype)[..., None]
        if not self.blocks:
            return x
        if self.block == "hstu":
            for b in self.blocks:
                x = b(x, padding_mask=group_mask, ages=group_ages, training=training)
            return x
        x = x + ops.cast(self.position_embedding, x.dtype)[None]
        if group_ages is not None:
            x = x + ops.cast(self.time_embedding(
                log_time_bucket(group_ages, self.num_time_buckets)), x.dtype)
        for b in self.blocks:
            x = b(x, padding_mask=group_mask, training=training)
        return x

    def compute_output_shape(self, group_vectors_shape, *args, **kwargs):
        return group_vectors_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, num_layers=self.num_layers,
                      block=self.block, num_time_buckets=self.num_time_buckets,
                      ffn_multiplier=self.ffn_multiplier, dropout=self.dropout)
        return config
