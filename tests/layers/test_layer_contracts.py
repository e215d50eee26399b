"""Contracts every DMGIN layer keeps: shapes, masks (padding never leaks, empty rows are
finite), get_config/from_config round trip, SavedModel round trip, XLA parity."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf import layers as L
from .synthetic import synthetic_inputs

RNG = np.random.default_rng(42)


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _mask(*shape):
    m = RNG.random(shape) > 0.4
    m.reshape(-1, shape[-1])[0] = False          # one fully empty row
    m.reshape(-1, shape[-1])[-1] = True          # one full row
    return m


def _scramble(x, keep):
    """x with every position where `keep` is False replaced by other values."""
    noise = RNG.normal(size=x.shape).astype(x.dtype) * 10 + 3
    keep = np.broadcast_to(keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim)), x.shape)
    return np.where(keep, x, noise)


def _seq_case(dim=8):
    x, m = _normal(2, 5, dim), _mask(2, 5)
    ages = np.abs(_normal(2, 5)) * 1e5
    return x, m, ages


def case_transformer_block():
    x, m = _normal(2, 3, 5, 8), _mask(2, 3, 5)
    layer = L.TransformerBlock(num_heads=2)
    call = lambda l, a: l(a[0], padding_mask=a[1])  # noqa: E731
    return layer, call, [x, m], lambda a: [_scramble(a[0], a[1]), a[1]], (2, 3, 5, 8)


def case_hstu_block():
    x, m, ages = _seq_case()
    layer = L.HSTUBlock(num_heads=2, max_relative_position=4, num_time_buckets=8)
    call = lambda l, a: l(a[0], padding_mask=a[1], ages=a[2])  # noqa: E731
    pert = lambda a: [_scramble(a[0], a[1]), a[1], _scramble(a[2], a[1])]  # noqa: E731
    return layer, call, [x, m, ages], pert, (2, 5, 8)


def case_intra():
    tok, m, ctx = _normal(2, 3, 4, 8), _mask(2, 3, 4), _normal(2, 3, 6)
    layer = L.IntraGroupTransformer(num_heads=2, output_dim=8)
    call = lambda l, a: l(a[0], a[1], group_context=a[2])  # noqa: E731
    pert = lambda a: [_scramble(a[0], a[1]), a[1], _scramble(a[2], a[1].any(-1))]  # noqa: E731
    return layer, call, [tok, m, ctx], pert, (2, 3, 8)


def _inter_case(block):
    x, m, ages = _seq_case()
    layer = L.InterGroupTransformer(num_heads=2, num_layers=2, block=block,
                                    num_time_buckets=8)
    call = lambda l, a: l(a[0], a[1], a[2])  # noqa: E731
    pert = lambda a: [_scramble(a[0], a[1]), a[1], _scramble(a[2], a[1])]  # noqa: E731
    return layer, call, [x, m, ages], pert, (2, 5, 8)


def case_inter_hstu():
    return _inter_case("hstu")


def case_inter_transformer():
    return _inter_case("transformer")


def case_target_attention():
    q, (k, m, _) = _normal(2, 6), _seq_case()
    layer = L.TargetAttention(hidden_units=(8,))
    call = lambda l, a: l(a[0], a[1], a[2])  # noqa: E731
    return layer, call, [q, k, m], lambda a: [a[0], _scramble(a[1], a[2]), a[2]], (2, 8)


def case_candidate_group_attention():
    q, (k, m, _) = _normal(2, 8), _seq_case()
    layer = L.CandidateGroupAttention(num_heads=2, attention_units=(8,))
    call = lambda l, a: l(a[0], a[1], a[2])  # noqa: E731
    return layer, call, [q, k, m], lambda a: [a[0], _scramble(a[1], a[2]), a[2]], (2, 8)


def case_group_statistics():
    counts = np.abs(_normal(2, 3, 2)) * 5
    stats, m = _normal(2, 3, 6), _mask(2, 3)
    layer = L.GroupStatistics(units=8)
    call = lambda l, a: l(a[0], a[1], group_mask=a[2])  # noqa: E731
    pert = lambda a: [np.abs(_scramble(a[0], a[2])), _scramble(a[1], a[2]), a[2]]  # noqa: E731
    return layer, call, [counts, stats, m], pert, (2, 3, 8)


def _encoder_inputs():
    return synthetic_inputs(batch=4, length=12, empty_rows=(1,))


def _perturb_history(a):
    """Changes group/behavior/time of every padded history slot (hist_item == 0)."""
    d = dict(a[0])
    pad = d[F.HIST_ITEM] == 0
    d[F.HIST_GROUP] = np.where(pad, 5, d[F.HIST_GROUP]).astype("int32")
    d[F.HIST_BEHAVIOR_ID] = np.where(pad, 1, d[F.HIST_BEHAVIOR_ID]).astype("int32")
    d[F.HIST_TIME] = np.where(pad, 1_999_999, d[F.HIST_TIME]).astype("int64")
    return [d]


def case_group_interest_encoder():
    layer = L.GroupInterestEncoder(item_vocab_size=40, group_vocab_size=8,
                                   num_behavior_types=2, max_groups=3, max_per_group=2,
                                   embedding_dim=8, num_heads=2, attention_units=(8,))
    return layer, lambda l, a: l(a[0]), [_encoder_inputs()], _perturb_history, \
        (4, layer.output_dim)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_masks_and_config(name):
    layer, call, args, perturb, shape = CASES[name]()
    out = np.asarray(call(layer, args))
    assert out.shape == shape
    assert np.isfinite(out).all()
    # Values in padded slots must not reach any output.
    np.testing.assert_allclose(np.asarray(call(layer, perturb(args))), out, atol=1e-5)
    # Same config + same weights -> same layer.
    clone = type(layer).from_config(layer.get_config())
    call(clone, args)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(call(clone, args)), out, atol=1e-6)
    assert clone.get_config() == layer.get_config()


def test_empty_rows_give_zeros_where_documented():
    layer, call, args, _, _ = case_target_attention()
    out = np.asarray(call(layer, args))
    assert np.all(out[0] == 0)                      # row 0 has no real key
    layer, call, args, _, _ = case_inter_hstu()
    out = np.asarray(call(layer, args))
    assert np.all(out[0] == 0) and np.all(out[~args[1]] == 0)


def test_encoder_empty_history_is_finite():
    layer, call, args, _, _ = case_group_interest_encoder()
    empty = {k: np.zeros_like(v) for k, v in args[0].items()}
    out = np.asarray(call(layer, [empty]))
    assert np.isfinite(out).all()


def test_encoder_empty_batch_gives_an_empty_output():
    """B = 0 (e.g. the last, empty shard of a request batch) used to fail inside the
    grouping op with "Cannot compute the max of an empty tensor"."""
    layer, call, args, _, _ = case_group_interest_encoder()
    empty = {k: v[:0] for k, v in args[0].items()}
    assert np.asarray(call(layer, [empty])).shape == (0, layer.output_dim)


def _bind(layer, call):
    return lambda *a: call(layer, list(a))


def test_saved_model_round_trip(tmp_path):
    """Every layer inside one tf.Module: save, load, same outputs."""
    module = tf.Module()
    expected, tensors = {}, {}
    variables = []
    for name, fn in sorted(CASES.items()):
        layer, call, args, _, _ = fn()
        expected[name] = np.asarray(call(layer, args))
        variables += list(layer.variables)
        f = tf.function(_bind(layer, call))
        tensors[name] = tf.nest.map_structure(tf.convert_to_tensor, args)
        setattr(module, name, f)
        f.get_concrete_function(*tensors[name])
    module.layer_variables = variables
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    for name in CASES:
        got = getattr(loaded, name)(*tensors[name])
        np.testing.assert_allclose(np.asarray(got), expected[name], rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_encoder_xla_parity():
    layer, call, args, _, _ = case_group_interest_encoder()
    eager = np.asarray(call(layer, args))
    xla = tf.function(lambda d: layer(d), jit_compile=True)(args[0])
    np.testing.assert_allclose(np.asarray(xla), eager, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("block", ["hstu", "transformer"])
def test_encoder_under_mixed_precision_keeps_time_in_float32(policy, block):
    """Ages here reach 1,000,100 s: autocast to float16 (max 65,504) they became inf and
    picked garbage time buckets (an out-of-range gather error on CPU). The encoder under
    a mixed policy must give the float32 encoder's output with the same weights, up to
    the compute dtype's rounding: bfloat16 keeps 8 significand bits to float16's 11, so
    its tolerance is wider (with 2%, one output of 312 differed by 3.4% of the largest
    in a bfloat16 run, on unseeded weights). The weights are seeded."""
    import keras
    keras.utils.set_random_seed(7)
    tol = {"mixed_float16": 0.02, "mixed_bfloat16": 0.05}[policy]
    cfg = dict(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2, max_groups=4,
               max_per_group=3, embedding_dim=8, num_heads=2, attention_units=(8,),
               inter_layers=2, inter_block=block, intra_layers=1)
    x = synthetic_inputs(batch=6, length=12)
    ref = L.GroupInterestEncoder(**cfg)
    want = np.asarray(ref(x))
    mixed = L.GroupInterestEncoder(**cfg, dtype=policy)
    mixed(x)
    mixed.set_weights(ref.get_weights())
    got = np.asarray(mixed(x), dtype="float32")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())
    # The time buckets, not only the magnitudes: shuffling the ages changes the output.
    shifted = dict(x, **{F.REQUEST_TIME: x[F.REQUEST_TIME] + 10_000_000})
    assert not np.allclose(np.asarray(ref(shifted)), want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mixed(shifted), dtype="float32"),
                               np.asarray(ref(shifted)),
                               atol=tol * np.abs(want).max())
