"""The building-block layers refuse bad constructor arguments and call arguments with a
message naming the layer, the argument and the value; padding never reaches outputs, NaN
padding included."""
import numpy as np
import pytest
from keras import ops

from dmgin_tf.layers import (CandidateGroupAttention, GroupInterestEncoder, GroupStatistics,
                             HSTUBlock, InterGroupTransformer, IntraGroupTransformer,
                             TargetAttention, TransformerBlock, log_time_bucket)

ENCODER = dict(item_vocab_size=50, group_vocab_size=8, num_behavior_types=3)

BAD_ARGUMENTS = [
    (TransformerBlock, dict(num_heads=0), "TransformerBlock: num_heads=0"),
    (TransformerBlock, dict(num_heads=-1), "num_heads=-1"),
    (TransformerBlock, dict(num_heads=2, dropout=1.5), "dropout=1.5 must be a number in"),
    (HSTUBlock, dict(num_heads=0), "HSTUBlock: num_heads=0"),
    (HSTUBlock, dict(num_heads=2, num_time_buckets=0), "num_time_buckets=0"),
    (HSTUBlock, dict(num_heads=2, max_relative_position=-1), "max_relative_position=-1"),
    (CandidateGroupAttention, dict(num_heads=0), "CandidateGroupAttention: num_heads=0"),
    (TargetAttention, dict(hidden_units=(-3,)), r"hidden_units\[0\]=-3"),
    (TargetAttention, dict(hidden_units=16), "hidden_units=16 must be a list of layer widths"),
    (TargetAttention, dict(hidden_units=(0,)), r"hidden_units\[0\]=0"),
    (GroupStatistics, dict(units=-2), "GroupStatistics: units=-2"),
    (GroupStatistics, dict(units=0), "units=0"),
    (InterGroupTransformer, dict(num_heads=2, num_layers=-1), "num_layers=-1 must be an integer >= 0"),
    (IntraGroupTransformer, dict(num_heads=2, output_dim=-4), "output_dim=-4"),
    (GroupInterestEncoder, dict(ENCODER, embedding_dim=8, num_heads=3),
     "embedding_dim=8 must be a multiple of num_heads=3"),
    (GroupInterestEncoder, dict(ENCODER, intra_layers=-1), "intra_layers=-1"),
    (GroupInterestEncoder, dict(ENCODER, inter_layers=-2), "inter_layers=-2"),
    (GroupInterestEncoder, dict(ENCODER, dropout=2.0), "dropout=2.0"),
    (GroupInterestEncoder, dict(ENCODER, item_vocab_size=1), "item_vocab_size=1 must be an integer >= 2"),
]


@pytest.mark.parametrize("cls,kwargs,words", BAD_ARGUMENTS,
                         ids=[f"{c.__name__}-{'-'.join(map(str, k.items()))}"[:60]
                              for c, k, _ in BAD_ARGUMENTS])
def test_bad_constructor_arguments_are_refused_by_name(cls, kwargs, words):
    with pytest.raises(ValueError, match=words):
        cls(**kwargs)


def test_zero_layers_and_empty_mlps_stay_allowed():
    InterGroupTransformer(num_heads=2, num_layers=0)       # the "no inter" ablation
    IntraGroupTransformer(num_heads=2, num_layers=0)       # mean pooling
    TargetAttention(hidden_units=())                       # a linear score
    GroupInterestEncoder(**ENCODER, intra_layers=0, inter_layers=0)


def _padded(shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    mask = np.ones(shape[:-1], bool)
    mask[0, -1] = False
    return x, mask


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_at_padding_do_not_reach_outputs(bad):
    x, mask = _padded((2, 5, 8))
    poisoned = x.copy()
    poisoned[0, -1] = bad                                  # a padded position only
    block = TransformerBlock(num_heads=2)
    np.testing.assert_allclose(np.asarray(block(poisoned, padding_mask=mask)),
                               np.asarray(block(x, padding_mask=mask)), atol=1e-6)
    hstu = HSTUBlock(num_heads=2)
    ages = np.tile(np.arange(5, dtype="float32") * 60, (2, 1))
    bad_ages = ages.copy()
    bad_ages[0, -1] = bad
    np.testing.assert_allclose(np.asarray(hstu(poisoned, padding_mask=mask, ages=bad_ages)),
                               np.asarray(hstu(x, padding_mask=mask, ages=ages)), atol=1e-6)
    att = TargetAttention(hidden_units=(16,))
    q = np.ones((2, 8), "float32")
    out = np.asarray(att(q, poisoned, mask))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.asarray(att(q, x, mask)), atol=1e-6)


def test_nan_ages_fall_in_bucket_zero_on_every_backend():
    got = np.asarray(log_time_bucket(np.array([np.nan, -5.0, 0.0, np.inf], "float32"), 32))
    assert got.tolist() == [0, 0, 0, 31]
    x, mask = _padded((1, 4, 8))
    ages = np.array([[60.0, np.nan, 3600.0, 0.0]], "float32")       # NaN at a real position
    assert np.isfinite(np.asarray(HSTUBlock(num_heads=2)(x, padding_mask=mask, ages=ages))).all()


def test_target_attention_call_arguments_are_checked():
    att = TargetAttention(hidden_units=(16,))
    q = np.ones((2, 8), "float32")
    keys = np.ones((2, 5, 8), "float32")
    mask = np.ones((2, 5), bool)
    att(q, keys, mask)
    with pytest.raises(ValueError, match="keys must be a float tensor, got dtype int32"):
        att(q, keys.astype("int32"), mask)
    with pytest.raises(ValueError, match="batch of keys.*got 3, expected 2"):
        att(q, np.ones((3, 5, 8), "float32"), np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="key_mask length S.*got 4, expected 5"):
        att(q, keys, np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="last dim of keys.*got 6, expected 8"):
        att(q, np.ones((2, 5, 6), "float32"), mask)
    with pytest.raises(ValueError, match=r"keys \[B, S, D\]"):
        att(q, np.ones((2, 8), "float32"), mask)


def test_transformer_block_call_arguments_are_checked():
    block = TransformerBlock(num_heads=2)
    x, mask = _padded((2, 5, 8))
    block(x, padding_mask=mask)
    with pytest.raises(ValueError, match="x must be a float tensor, got dtype int32"):
        block(ops.convert_to_tensor(x.astype("int32")), padding_mask=mask)
    with pytest.raises(ValueError, match="last dim of x.*got 6, expected 8"):
        block(np.ones((2, 5, 6), "float32"), padding_mask=mask)
    with pytest.raises(ValueError, match="padding_mask axis 1.*got 4, expected 5"):
        block(x, padding_mask=np.ones((2, 4), bool))
