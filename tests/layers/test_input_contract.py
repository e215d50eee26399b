"""GroupInterestEncoder's input contract: every rule raises a named error in eager mode,
[B, 1] candidates are one candidate per row, and out-of-vocabulary ids map to OOV the
same way eagerly and under XLA."""
import numpy as np
import pytest
import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.layers import GroupInterestEncoder
from dmgin_tf.layers.input_contract import InputContractError

from .synthetic import synthetic_inputs

KW = dict(item_vocab_size=40, group_vocab_size=8, num_behavior_types=2, max_groups=3,
          max_per_group=2, embedding_dim=8)


@pytest.fixture(scope="module")
def encoder():
    enc = GroupInterestEncoder(**KW)
    enc.build()
    return enc


def _x():
    # Realistic seconds (2023) so the time rules see real timestamps.
    x = synthetic_inputs(batch=4, length=12, seed=1)
    valid = x[F.HIST_ITEM] != 0
    x[F.HIST_TIME] = np.where(valid, x[F.HIST_TIME] + 1_700_000_000, 0)
    x[F.REQUEST_TIME] = x[F.REQUEST_TIME] + 1_700_000_000
    return x


def _set(x, key, row, col, value):
    x[key] = x[key].copy()
    x[key][row, col] = value
    return x


def _first_valid(x):
    return 0, 0    # synthetic rows have at least one behavior at position 0


def _broken(rule):
    x = _x()
    r, c = _first_valid(x)
    if rule == "missing":
        del x[F.HIST_TIME]
    elif rule == "sparse":
        x[F.HIST_ITEM] = tf.sparse.from_dense(x[F.HIST_ITEM])
    elif rule == "float_ids":
        x[F.CAND_ITEM] = x[F.CAND_ITEM].astype("float32")
    elif rule == "history_lengths":
        x[F.HIST_GROUP] = x[F.HIST_GROUP][:, :8]
    elif rule == "batch":
        x[F.REQUEST_TIME] = x[F.REQUEST_TIME][:3]
    elif rule == "no_candidates":
        x[F.CAND_ITEM] = x[F.CAND_ITEM][:, None][:, :0]
        x[F.CAND_GROUP] = x[F.CAND_GROUP][:, None][:, :0]
    elif rule == "cand_rank":
        x[F.CAND_ITEM] = x[F.CAND_ITEM].reshape(4, 1, 1)
        x[F.CAND_GROUP] = x[F.CAND_GROUP].reshape(4, 1, 1)
    elif rule == "item_above_vocab":
        x = _set(x, F.HIST_ITEM, r, c, 40)
    elif rule == "cand_item_above_vocab":
        x[F.CAND_ITEM] = x[F.CAND_ITEM].copy()
        x[F.CAND_ITEM][2] = 1000
    elif rule == "group_above_vocab":
        x = _set(x, F.HIST_GROUP, r, c, 8)
    elif rule == "behavior_above_t":
        x = _set(x, F.HIST_BEHAVIOR_ID, r, c, 3)
    elif rule == "negative_id":
        x[F.CAND_GROUP] = x[F.CAND_GROUP].copy()
        x[F.CAND_GROUP][1] = -5
    elif rule == "minus_one_padding":
        x[F.HIST_ITEM] = np.where(x[F.HIST_ITEM] == 0, -1, x[F.HIST_ITEM])
    elif rule == "milliseconds":
        x[F.HIST_TIME] = x[F.HIST_TIME] * 1000
        x[F.REQUEST_TIME] = x[F.REQUEST_TIME] * 1000
    elif rule == "empty_history_axis":     # L = 0 crashed in a gather (indices not in [0, 0))
        for k in F.HISTORY_INPUT_KEYS:
            x[k] = x[k][:, :0]
    elif rule == "history_after_request":
        x = _set(x, F.HIST_TIME, r, c, int(x[F.REQUEST_TIME][r]) + 60)
    return x


RULES = {  # rule → (input named, words of the rule)
    "missing": ("hist_time", "missing input"),
    "sparse": ("hist_item", "dense tensor"),
    "float_ids": ("cand_item", "integer dtype"),
    "history_lengths": ("hist_group", "differs from 'hist_item'"),
    "batch": ("request_time", "batch 3 differs"),
    "cand_rank": ("cand_item", r"\[B\] \(one candidate per row"),
    "item_above_vocab": ("hist_item", r"outside \[0, 40\).*40 at \[0, 0\].*OOV"),
    "cand_item_above_vocab": ("cand_item", r"outside \[0, 40\).*1000 at \[2\]"),
    "group_above_vocab": ("hist_group", r"outside \[0, 8\)"),
    # Behaviors have no OOV id: the hint is 0 (unknown type), not 1 (the first type).
    "behavior_above_t": ("hist_behavior_id", r"outside \[0, 3\).*send 0 for an unknown type"),
    "negative_id": ("cand_group", r"-5 at \[1\]"),
    "minus_one_padding": ("hist_item", "padding is 0, not -1"),
    "milliseconds": ("hist_time", "looks like milliseconds"),
    "history_after_request": ("hist_time", "after request_time"),
    "empty_history_axis": ("hist_item", "L must be >= 1"),
    "no_candidates": ("cand_item", r"at least one candidate per row \(N >= 1\)"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_raises_a_named_error_in_eager_mode(encoder, rule):
    name, words = RULES[rule]
    with pytest.raises(InputContractError, match=f"'{name}'.*{words}|{words}.*'{name}'"):
        encoder(_broken(rule))


def test_the_valid_inputs_pass(encoder):
    assert encoder(_x()).shape == (4, encoder.output_dim)


def test_b1_candidates_are_one_candidate_per_row(encoder):
    x = _x()
    flat = np.asarray(encoder(x))
    x1 = dict(x, **{k: x[k][:, None] for k in (F.CAND_ITEM, F.CAND_GROUP, F.REQUEST_TIME)})
    np.testing.assert_array_equal(np.asarray(encoder(x1)), flat)


@pytest.mark.parametrize("rule", ["item_above_vocab", "milliseconds", "history_after_request",
                                  "behavior_above_t", "cand_rank"])
def test_validate_inputs_checks_the_whole_contract_without_a_layer(rule):
    from dmgin_tf.layers import validate_inputs
    sizes = dict(item_vocab_size=KW["item_vocab_size"], group_vocab_size=KW["group_vocab_size"],
                 num_behavior_types=KW["num_behavior_types"])
    validate_inputs(_x(), **sizes)
    name, words = RULES[rule]
    with pytest.raises(InputContractError, match=f"'{name}'.*{words}|{words}.*'{name}'"):
        validate_inputs(_broken(rule), **sizes)


def test_empty_slots_are_not_checked(encoder):
    """Where hist_item is 0 the slot is padding: its group, behavior and time are
    ignored by the model (docs/layers.md), so they are not refused either."""
    x = _x()
    want = np.asarray(encoder(x))
    pad = x[F.HIST_ITEM] == 0
    assert pad.any()
    y = dict(x, **{F.HIST_GROUP: np.where(pad, -1, x[F.HIST_GROUP]).astype("int32"),
                   F.HIST_BEHAVIOR_ID: np.where(pad, 99, x[F.HIST_BEHAVIOR_ID]).astype("int32"),
                   F.HIST_TIME: np.where(pad, -5, x[F.HIST_TIME])})
    np.testing.assert_allclose(np.asarray(encoder(y)), want, atol=1e-6)


def test_an_unknown_rank_in_a_trace_is_named(encoder):
    """tf.keras retraces with a relaxed (unknown-rank) signature after inputs of two
    ranks; that used to fail with "Cannot take the length of shape with unknown rank"."""
    x = _x()
    spec = {k: tf.TensorSpec(None if k == F.CAND_ITEM else (None,) + v.shape[1:],
                             tf.as_dtype(v.dtype)) for k, v in x.items()}
    f = tf.function(lambda d: encoder(d), input_signature=[spec], autograph=False)
    with pytest.raises(InputContractError, match="'cand_item': has an unknown rank in this "
                                                 "trace.*keep one rank per input"):
        f({k: tf.constant(v) for k, v in x.items()})


def test_contract_is_checked_when_a_keras_model_is_built():
    import keras
    inputs = {k: keras.Input((12,) if k in F.HISTORY_INPUT_KEYS else (),
                             dtype="float32" if k == F.HIST_ITEM else "int32", name=k)
              for k in F.MODEL_INPUT_KEYS}
    with pytest.raises(InputContractError, match="'hist_item'.*integer dtype"):
        GroupInterestEncoder(**KW)(inputs)


def test_contract_errors_keep_their_type_through_tf_keras_tracing():
    """tf.keras builds functional models and runs `fit` / `predict` through AutoGraph,
    which re-raised our error as a StagingError: `except InputContractError` (or
    `ValueError`) missed it."""
    import tf_keras
    from dmgin_tf.layers.tf_keras import GroupInterestEncoder as TfKerasEncoder
    inputs = {k: tf_keras.Input((None,) if k in F.HISTORY_INPUT_KEYS else (),
                                dtype="int64" if k in (F.HIST_TIME, F.REQUEST_TIME) else "int32",
                                name=k) for k in F.MODEL_INPUT_KEYS}
    with pytest.raises(InputContractError, match="'hist_item'.*L must be static"):
        TfKerasEncoder(**KW)(inputs)
    # The same error raised inside a function AutoGraph converts (as `fit` does).
    x = {k: tf.constant(v) for k, v in _x().items()}
    x[F.HIST_ITEM] = tf.cast(x[F.HIST_ITEM], tf.float32)
    enc = TfKerasEncoder(**KW)
    with pytest.raises(InputContractError, match="'hist_item'.*integer dtype"):
        tf.function(lambda d: enc(d))(x)


def test_out_of_vocabulary_ids_map_to_oov_the_same_eagerly_and_under_xla():
    """validate=False (what a compiled path gets): ids outside the vocabulary read as
    OOV (1) — the same numbers eagerly, in a graph and under XLA, and the same as
    sending OOV directly."""
    enc = GroupInterestEncoder(**KW, validate=False)
    enc.build()
    x = _x()
    bad = dict(x)
    bad[F.HIST_ITEM] = np.where(x[F.HIST_ITEM] == 5, 4000, x[F.HIST_ITEM]).astype("int32")
    bad[F.HIST_GROUP] = np.where(x[F.HIST_GROUP] == 3, -7, x[F.HIST_GROUP]).astype("int32")
    bad[F.CAND_ITEM] = np.array([2, 99, -1, 3], "int32")
    bad[F.CAND_GROUP] = np.array([2, 3, 50, 4], "int32")
    oov = dict(x)
    oov[F.HIST_ITEM] = np.where(x[F.HIST_ITEM] == 5, 1, x[F.HIST_ITEM]).astype("int32")
    oov[F.HIST_GROUP] = np.where(x[F.HIST_GROUP] == 3, 1, x[F.HIST_GROUP]).astype("int32")
    oov[F.CAND_ITEM] = np.array([2, 1, 1, 3], "int32")
    oov[F.CAND_GROUP] = np.array([2, 3, 1, 4], "int32")
    assert (x[F.HIST_ITEM] == 5).any() and (x[F.HIST_GROUP] == 3).any()
    expected = np.asarray(enc(oov))
    eager = np.asarray(enc(bad))
    graph = tf.function(lambda v: enc(v))(bad).numpy()
    xla = tf.function(lambda v: enc(v), jit_compile=True)(bad).numpy()
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_allclose(graph, expected, atol=1e-5)
    np.testing.assert_allclose(xla, expected, atol=1e-5)


@pytest.mark.parametrize("rule,name,words", [
    ("users", "cand_item", "has 2 rows but the user state holds 4"),
    ("rank", "cand_item", r"must be \[U, N\]"),
    ("shapes", "cand_group", "differs from 'cand_item'"),
    ("item_above_vocab", "cand_item", r"outside \[0, 40\)"),
    ("negative_group", "cand_group", r"outside \[0, 8\)"),
    ("milliseconds", "request_time", "milliseconds"),
])
def test_score_cached_checks_candidates_and_request_time(encoder, rule, name, words):
    """The cached path (`score_cached`, `cached_candidate_features`) holds the same
    contract as `__call__`: candidates of other users or shapes, ids outside the
    vocabularies and millisecond times are refused, not scored."""
    x = _x()
    state = dict(encoder.encode_user(x))
    state.update(encoder.lookup_state(x, 4, 8))
    cands = {F.CAND_ITEM: np.tile(x[F.CAND_ITEM][:, None], (1, 3)),
             F.CAND_GROUP: np.tile(x[F.CAND_GROUP][:, None], (1, 3)),
             F.REQUEST_TIME: x[F.REQUEST_TIME]}
    assert encoder.score_cached(state, cands).shape == (4, 3, encoder.output_dim)
    bad = dict(cands)
    if rule == "users":
        bad = {k: v[:2] for k, v in cands.items()}
    elif rule == "rank":
        bad[F.CAND_ITEM], bad[F.CAND_GROUP] = x[F.CAND_ITEM], x[F.CAND_GROUP]
    elif rule == "shapes":
        bad[F.CAND_GROUP] = cands[F.CAND_GROUP][:, :2]
    elif rule == "item_above_vocab":
        bad[F.CAND_ITEM] = _set(dict(cands), F.CAND_ITEM, 1, 2, 40)[F.CAND_ITEM]
    elif rule == "negative_group":
        bad[F.CAND_GROUP] = _set(dict(cands), F.CAND_GROUP, 0, 0, -1)[F.CAND_GROUP]
    elif rule == "milliseconds":
        bad[F.REQUEST_TIME] = cands[F.REQUEST_TIME] * 1000
    for fn in (encoder.score_cached, encoder.cached_candidate_features):
        with pytest.raises(InputContractError, match=f"'{name}'.*{words}"):
            fn(state, bad)


@pytest.mark.parametrize("method", ["encode_user", "lookup_state", "candidate_features",
                                    "score_candidates"])
def test_the_serving_split_checks_values_like_call(encoder, method):
    """encode_user / lookup_state / candidate_features / score_candidates refuse what
    __call__ refuses (eagerly, validate=True) instead of clamping it to OOV."""
    x = _x()
    state = dict(encoder.encode_user(x))
    calls = {"encode_user": lambda v: encoder.encode_user(v),
             "lookup_state": lambda v: encoder.lookup_state(v, 4, 8),
             "candidate_features": lambda v: encoder.candidate_features(  # [U, N] there
                 dict(v, **{k: v[k][:, None] for k in (F.CAND_ITEM, F.CAND_GROUP)})),
             "score_candidates": lambda v: encoder.score_candidates(state, v)}
    calls[method](x)
    with pytest.raises(InputContractError, match=r"'hist_item'.*outside \[0, 40\)"):
        calls[method](_set(_x(), F.HIST_ITEM, 0, 0, 41))
    with pytest.raises(InputContractError, match="'hist_time'.*milliseconds"):
        calls[method](_set(_x(), F.HIST_TIME, 0, 0, 1_700_000_000_000))


def test_score_candidates_needs_one_input_row_per_state_user(encoder):
    """A 1-user state with 4 users' history and candidates is refused by name (it used
    to fail inside target attention with 'Incompatible shapes'); [N] candidates with a
    one-user state stay that user's N candidates."""
    x = _x()
    one = {k: v[:1] for k, v in x.items()}
    state = dict(encoder.encode_user(one))
    for fn in (encoder.score_candidates, encoder.user_features):
        with pytest.raises(InputContractError, match="'hist_item': has 4 rows but the user "
                                                     "state holds 1 user"):
            fn(state, x)
    n_cands = dict(one, **{F.CAND_ITEM: x[F.CAND_ITEM], F.CAND_GROUP: x[F.CAND_GROUP]})
    assert encoder.score_candidates(state, n_cands).shape == (4, encoder.output_dim)


def test_a_wrong_shape_is_named_before_an_unknown_rank(encoder):
    """In the same relaxed trace, a `request_time` of the wrong shape is the error
    reported (it used to be hidden behind 'cand_item has an unknown rank')."""
    x = _x()
    spec = {k: tf.TensorSpec(None if k == F.CAND_ITEM else (None,) + v.shape[1:],
                             tf.as_dtype(v.dtype)) for k, v in x.items()}
    spec[F.REQUEST_TIME] = tf.TensorSpec((None, 2), tf.as_dtype(x[F.REQUEST_TIME].dtype))
    f = tf.function(lambda d: encoder(d), input_signature=[spec], autograph=False)
    bad = dict(x, **{F.REQUEST_TIME: np.stack([x[F.REQUEST_TIME]] * 2, axis=1)})
    with pytest.raises(InputContractError, match=r"'request_time': must be \[B\] \(or \[B, 1\]\)"):
        f({k: tf.constant(v) for k, v in bad.items()})


@pytest.mark.parametrize("dtype,vocab", [("int8", 200), ("int16", 40_000), ("uint8", 300)])
def test_narrow_integer_ids_are_read_as_their_values(dtype, vocab):
    """int8 / int16 ids (what a pandas integer downcast gives) were compared with a
    vocabulary size wrapped into their range, so every id silently became OOV."""
    enc = GroupInterestEncoder(**dict(KW, item_vocab_size=vocab, group_vocab_size=vocab))
    x = synthetic_inputs(batch=4, length=12, item_vocab=100, group_vocab=100, seed=3)
    narrow = dict(x, **{k: x[k].astype(dtype) for k in
                        (F.HIST_ITEM, F.HIST_GROUP, F.CAND_ITEM, F.CAND_GROUP)})
    np.testing.assert_array_equal(np.asarray(enc(narrow)), np.asarray(enc(x)))
