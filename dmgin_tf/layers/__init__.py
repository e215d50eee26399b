"""DMGIN Keras 3 layers (backend-agnostic: `keras.ops` only; TF and JAX backends).

`GroupInterestEncoder` is the public layer to drop into a ranking model; the others are
its building blocks. tf.keras (Keras 2) adapters live in `dmgin_tf.layers.tf_keras`
(imported explicitly: it needs TensorFlow). Guide: docs/layers.md.
"""
from dmgin_tf.layers.candidate_group_attention import CandidateGroupAttention
from dmgin_tf.layers.candidate_match import candidate_item_match
from dmgin_tf.layers.feature_embedding import FeatureEmbedding, age_seconds, log_time_bucket
from dmgin_tf.layers.group_statistics import GroupStatistics
from dmgin_tf.layers.hstu_block import HSTUBlock
from dmgin_tf.layers.input_contract import InputContractError, validate_inputs
from dmgin_tf.layers.inter_group_transformer import InterGroupTransformer
from dmgin_tf.layers.intra_group_transformer import IntraGroupTransformer, masked_mean
from dmgin_tf.layers.target_attention import TargetAttention
from dmgin_tf.layers.transformer_block import Packing, TransformerBlock, masked_softmax
from dmgin_tf.layers.group_interest_encoder import GroupInterestEncoder, USER_STATE_KEYS
