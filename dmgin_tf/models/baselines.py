"""Baselines on the same inputs and embeddings as DMGIN: DIN, SIM-hard, BST, and a
full-sequence Transformer reference (DGIN lives in `dmgin.py`)."""
from __future__ import annotations

import keras
from keras import ops

from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, PAD_ID, REQUEST_TIME)
from dmgin_tf.layers.dense import Dense
from dmgin_tf.layers.feature_embedding import FeatureEmbedding
from dmgin_tf.layers.intra_group_transformer import masked_mean
from dmgin_tf.layers.target_attention import TargetAttention, select_last
from dmgin_tf.layers.transformer_block import TransformerBlock
from dmgin_tf.models.ranking_model import RankingModel


class _SequenceBaseline(RankingModel):
    """Shared pieces: the embeddings, the candidate query, target attention."""

    def __init__(self, model_cfg=None, **kwargs):
        super().__init__(model_cfg, **kwargs)
        c = self.model_cfg
        self.embedding = FeatureEmbedding(c.item_vocab_size, c.group_vocab_size,
                                          c.num_behavior_types + 1, c.embedding_dim,
                                          num_time_buckets=c.num_time_buckets,
                                          item_content_dim=c.item_content_dim,
                                          item_min_count=c.item_min_count,
                                          dtype=self.dtype_policy, name="embedding")
        self.query_proj = Dense(c.embedding_dim, dtype=self.dtype_policy, name="candidate_query")
        self.target_attention = TargetAttention(c.attention_units, dtype=self.dtype_policy,
                                                name="target_attention")

    def transformer_blocks(self):
        """`inter_layers` (at least one) self-attention blocks, BST's and the full
        Transformer's, named block_0, block_1, ... (their checkpoint keys)."""
        c = self.model_cfg
        return [TransformerBlock(c.num_heads, dropout=c.dropout, dtype=self.dtype_policy,
                                 name=f"block_{i}") for i in range(max(1, c.inter_layers))]

    def query(self, inputs):
        return self.query_proj(ops.concatenate(
            [self.embedding.item(inputs[CAND_ITEM]), self.embedding.group(inputs[CAND_GROUP])],
            axis=-1))

    def gathered_tokens(self, inputs, keep, k):
        """Tokens `[B, k, D]` and mask `[B, k]` of the last k kept behaviors."""
        idx, mask = select_last(keep, min(k, inputs[HIST_ITEM].shape[-1]))
        take = lambda key: ops.take_along_axis(inputs[key], idx, axis=1)  # noqa: E731
        tokens = self.embedding.tokens(take(HIST_ITEM), take(HIST_BEHAVIOR_ID),
                                       take(HIST_TIME), inputs[REQUEST_TIME])
        return tokens * ops.cast(mask, tokens.dtype)[..., None], mask

    def all_tokens(self, inputs):
        mask = ops.cast(inputs[HIST_ITEM], "int32") != PAD_ID
        tokens = self.embedding.tokens(inputs[HIST_ITEM], inputs[HIST_BEHAVIOR_ID],
                                       inputs[HIST_TIME], inputs[REQUEST_TIME])
        return tokens * ops.cast(mask, tokens.dtype)[..., None], mask


@keras.saving.register_keras_serializable(package="dmgin_tf")
class DIN(_SequenceBaseline):
    """DIN (Zhou et al. 2018): target attention over the `recent_window` newest
    behaviors; features = [attended history, candidate query]."""

    MODEL_NAME = "din"

    def interest(self, inputs, training=None):
        keep = ops.cast(inputs[HIST_ITEM], "int32") != PAD_ID
        tokens, mask = self.gathered_tokens(inputs, keep, self.model_cfg.recent_window)
        q = self.query(inputs)
        return ops.concatenate([self.target_attention(q, tokens, mask), q], axis=-1)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class SIMHard(_SequenceBaseline):
    """SIM with hard search (Pi et al. 2020): the newest `recent_window` behaviors in
    the candidate's group (category/cluster), then target attention."""

    MODEL_NAME = "sim"

    def interest(self, inputs, training=None):
        keep = ((ops.cast(inputs[HIST_ITEM], "int32") != PAD_ID)
                & (ops.cast(inputs[HIST_GROUP], "int32")
                   == ops.cast(inputs[CAND_GROUP], "int32")[:, None]))
        tokens, mask = self.gathered_tokens(inputs, keep, self.model_cfg.recent_window)
        q = self.query(inputs)
        return ops.concatenate([self.target_attention(q, tokens, mask), q], axis=-1)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class BST(_SequenceBaseline):
    """BST (Chen et al. 2019): Transformer over [candidate, newest `recent_window`
    behaviors] with position embeddings; features = [candidate output, mean of the
    behavior outputs, candidate query]."""

    MODEL_NAME = "bst"

    def __init__(self, model_cfg=None, **kwargs):
        super().__init__(model_cfg, **kwargs)
        c = self.model_cfg
        self.blocks = self.transformer_blocks()
        self.position = keras.layers.Embedding(c.recent_window + 1, c.embedding_dim,
                                               dtype=self.dtype_policy,
                                               name="position_embedding")

    def interest(self, inputs, training=None):
        keep = ops.cast(inputs[HIST_ITEM], "int32") != PAD_ID
        tokens, mask = self.gathered_tokens(inputs, keep, self.model_cfg.recent_window)
        q = self.query(inputs)
        seq = ops.concatenate([q[:, None, :], tokens], axis=1)
        seq_mask = ops.concatenate([ops.ones_like(mask[:, :1]), mask], axis=1)
        seq = seq + self.position(ops.arange(seq.shape[1], dtype="int32"))[None]
        for b in self.blocks:
            seq = b(seq, padding_mask=seq_mask, training=training)
        return ops.concatenate([seq[:, 0], masked_mean(seq[:, 1:], mask, axis=1), q], -1)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class FullTransformer(_SequenceBaseline):
    """Reference: self-attention over the whole history (O(L²) on purpose — the cost
    DMGIN avoids), then target attention."""

    MODEL_NAME = "transformer"

    def __init__(self, model_cfg=None, **kwargs):
        super().__init__(model_cfg, **kwargs)
        self.blocks = self.transformer_blocks()

    def interest(self, inputs, training=None):
        tokens, mask = self.all_tokens(inputs)
        for b in self.blocks:
            tokens = b(tokens, padding_mask=mask, training=training)
        q = self.query(inputs)
        return ops.concatenate([self.target_attention(q, tokens, mask), q], axis=-1)
