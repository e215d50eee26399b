"""The input contract of `GroupInterestEncoder`, checked where inputs enter the layer.

| input | shape | dtype | values |
|---|---|---|---|
| `hist_item` | `[B, L]` | int | item ids in `[0, item_vocab_size)`; 0 = empty slot |
| `hist_group` | `[B, L]` | int | group ids in `[0, group_vocab_size)`; 0 on empty slots |
| `hist_behavior_id` | `[B, L]` | int | behavior types in `[0, T]` (1..T; 0 on empty slots) |
| `hist_time` | `[B, L]` | int | Unix **seconds**, not after `request_time` |
| `request_time` | `[B]` or `[B, 1]` | int | Unix seconds |
| `cand_item` | `[B]`, `[B, 1]` or `[B, N]` | int | item ids in `[0, item_vocab_size)` |
| `cand_group` | same as `cand_item` | int | group ids in `[0, group_vocab_size)` |

Two levels (`GroupInterestEncoder(validate=True)`, the default):

- *structure*, on every call, also symbolic ones (model build, tracing): every key
  present, dense tensors (not sparse/ragged), integer dtypes, ranks, and equal static
  sizes (`[B, L]` histories, one batch size); `[B, 1]` request times and candidates are
  reshaped to `[B]` (one candidate per row, what `FixedLenFeature([1])` gives).
- *values*, when the inputs are concrete (eager TF, numpy, JAX outside `jit`): id ranges
  (which also catches -1 padding: the padding id is 0), seconds rather than
  milliseconds, no history event after the request. Values in empty slots
  (`hist_item == 0`) other than `hist_item` itself are ignored by the layer, not checked.

Both raise `InputContractError` naming the input, the rule and the first bad value.
Compiled calls (tf.function / XLA / JAX jit) cannot raise on values; there the layer maps
out-of-range ids the same way on every device (`clamp_ids`): item and group ids outside
the vocabulary → `OOV_ID` (1), behavior ids outside `[0, T]` → 0 (the grouping op's
"unknown type": behaviors have no OOV bucket, 1..T are real types), negative times → 0.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, HISTORY_INPUT_KEYS, MAX_TIME_S, MODEL_INPUT_KEYS,
                               MS_HINT_MIN, OOV_ID, PAD_ID, REQUEST_TIME, unknown_id_hint)

CANDIDATE_KEYS = (CAND_ITEM, CAND_GROUP)


class InputContractError(ValueError):
    """An input of `GroupInterestEncoder` breaks the contract (names input and rule)."""

    # AutoGraph (tf.keras traces models and `fit` through it) re-raises an error from
    # converted code as its own type only when that type's constructor is
    # `Exception.__init__` (or one of a few builtin types); a subclass of ValueError
    # otherwise reached the caller as a StagingError, which `except InputContractError`
    # / `except ValueError` miss. The constructor is the same: one message.
    __init__ = Exception.__init__


def _fail(name, rule, detail=""):
    raise InputContractError(f"input {name!r}: {rule}{': ' + detail if detail else ''} "
                             "(contract: docs/layers.md, 'Input contract')")


def _is_concrete(x) -> bool:
    """True for values we can read now (numpy, eager TF, JAX outside a trace)."""
    if isinstance(x, (np.ndarray, np.generic, int)):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.executing_eagerly() and hasattr(x, "numpy")
    if backend == "jax":
        import jax
        return not isinstance(x, jax.core.Tracer)
    return False


def _dtype_name(x):
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return str(getattr(dtype, "name", dtype))


def check_structure(inputs, *, keys=MODEL_INPUT_KEYS, owner="GroupInterestEncoder") -> dict:
    """Structure rules (any mode); returns the inputs with `[B, 1]` request times and
    candidates as `[B]`. Raises `InputContractError`; `owner` names the layer or model
    in the messages."""
    if not isinstance(inputs, dict):
        raise InputContractError(
            f"{owner} takes a dict of inputs with keys {list(keys)}, got "
            f"{type(inputs).__name__}")
    missing = [k for k in keys if k not in inputs]
    if missing:
        raise InputContractError(f"missing input(s) {missing}; {owner} needs "
                                 f"{list(keys)} (got {sorted(inputs)})")
    out = dict(inputs)
    unknown_rank = []
    for k in keys:
        x = out[k]
        kind = type(x).__name__
        if kind in ("SparseTensor", "RaggedTensor") or "Sparse" in kind:
            _fail(k, f"must be a dense tensor, got a {kind}",
                  "pad each history to L keeping the newest L events "
                  "(docs/layers.md, 'Building inputs from tf.Example')")
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = out[k] = np.asarray(x)
        dtype = _dtype_name(x)
        if "int" not in dtype:
            _fail(k, f"must have an integer dtype, got {dtype}",
                  "ids and Unix-second times are integers (cast floats with care)")
        if getattr(x.shape, "rank", 0) is None:
            unknown_rank.append(k)
    hist_shape = None
    for k in HISTORY_INPUT_KEYS:
        if k not in keys or k in unknown_rank:
            continue
        shape = tuple(out[k].shape)
        if len(shape) != 2:
            _fail(k, f"must be [B, L], got shape {list(shape)}")
        if shape[1] is None:
            _fail(k, f"the history length L must be static, got shape {list(shape)}",
                  "pad every history to one L, keeping the newest L events; a functional "
                  "model built on Input((L,)) and called with histories of another length "
                  "is traced again with an unknown L — send exactly the model's L")
        if shape[1] == 0:
            _fail(k, f"the history length L must be >= 1, got shape {list(shape)}",
                  "a user without history is a row of padding (id 0) of the model's L")
        if hist_shape is None:
            hist_shape = (HIST_ITEM if HIST_ITEM in keys else k, shape)
        elif not _same(shape, hist_shape[1]):
            _fail(k, f"shape {list(shape)} differs from {hist_shape[0]!r} "
                     f"{list(hist_shape[1])}; every history input is [B, L] with one L")
    batch = hist_shape[1][0] if hist_shape else None
    if REQUEST_TIME in keys and REQUEST_TIME not in unknown_rank:
        rt = out[REQUEST_TIME]
        if len(rt.shape) == 2 and rt.shape[1] == 1:
            rt = out[REQUEST_TIME] = ops.reshape(rt, (-1,))
        if len(rt.shape) != 1:
            _fail(REQUEST_TIME, f"must be [B] (or [B, 1]), got shape {list(rt.shape)}")
        if not _same((rt.shape[0],), (batch,)):
            _fail(REQUEST_TIME, f"batch {rt.shape[0]} differs from the history's {batch}")
    cands = [k for k in CANDIDATE_KEYS if k in keys and k not in unknown_rank]
    for k in cands:
        c = out[k]
        if len(c.shape) == 2 and c.shape[1] == 1:
            c = out[k] = ops.reshape(c, (-1,))      # [B, 1]: one candidate per row
        if len(c.shape) not in (1, 2):
            _fail(k, f"must be [B] (one candidate per row, also [B, 1]) or [B, N] "
                     f"(N candidates per row), got shape {list(c.shape)}")
        if len(c.shape) == 2 and c.shape[1] == 0:
            _fail(k, f"needs at least one candidate per row (N >= 1), got shape "
                     f"{list(c.shape)}", "skip the call for a request without candidates")
        if not _same((c.shape[0],), (batch,)):
            _fail(k, f"batch {c.shape[0]} differs from the history's {batch}")
    if len(cands) == 2 and not _same(tuple(out[CAND_ITEM].shape), tuple(out[CAND_GROUP].shape)):
        _fail(CAND_GROUP, f"shape {list(out[CAND_GROUP].shape)} differs from "
                          f"'cand_item' {list(out[CAND_ITEM].shape)}")
    if unknown_rank:
        # Checked last, so that a wrong shape of another input is named first: a trace
        # with a relaxed signature (tf.keras retraces so after a call with another rank,
        # e.g. [B] then [B, 1] candidates) loses the ranks of the inputs that changed,
        # and [B] and [B, N] candidates take different paths, so the rank must be known
        # when the graph is built.
        _fail(unknown_rank[0], "has an unknown rank in this trace" + (
            f" (so do {unknown_rank[1:]})" if len(unknown_rank) > 1 else ""),
              "keep one rank per input across calls (e.g. always [B] or always [B, 1] "
              "candidates), or trace with a fixed-rank input_signature")
    return out


def check_state_rows(inputs, users) -> None:
    """`score_candidates` / `user_features` (any mode): the history, request time and
    candidates hold one row per user of the state (`users`, None: unknown); `[N]`
    candidates with a one-user state are that user's N candidates. Raises
    `InputContractError`."""
    for k in (HIST_ITEM, REQUEST_TIME, CAND_ITEM):
        x = inputs.get(k)
        if x is None or len(x.shape) == 0:
            continue
        if k == CAND_ITEM and len(x.shape) == 1 and _same((users,), (1,)):
            continue
        if not _same((x.shape[0],), (users,)):
            _fail(k, f"has {x.shape[0]} rows but the user state holds {users} user(s); "
                     f"row u belongs to the state's user u")


def check_cached_candidates(inputs, users) -> None:
    """Structure rules of `score_cached` (any mode): `cand_item` and `cand_group` present,
    `[U, N]` of one shape, U = the state's user count `users` (None: unknown), and
    `request_time`, when given, `[U]`. Raises `InputContractError`."""
    for k in CANDIDATE_KEYS:
        if k not in inputs:
            raise InputContractError(f"missing input {k!r}; score_cached takes cand_item and "
                                     f"cand_group [U, N] (got {sorted(inputs)})")
        shape = tuple(inputs[k].shape)
        if len(shape) != 2:
            _fail(k, f"must be [U, N] (N candidates for each of the state's U users), "
                     f"got shape {list(shape)}")
        if not _same((shape[0],), (users,)):
            _fail(k, f"has {shape[0]} rows but the user state holds {users} user(s); "
                     f"row u scores candidates for the state's user u")
    if not _same(tuple(inputs[CAND_GROUP].shape), tuple(inputs[CAND_ITEM].shape)):
        _fail(CAND_GROUP, f"shape {list(inputs[CAND_GROUP].shape)} differs from "
                          f"'cand_item' {list(inputs[CAND_ITEM].shape)}")
    if inputs.get(REQUEST_TIME) is not None:
        shape = tuple(inputs[REQUEST_TIME].shape)
        if len(shape) != 1 or not _same(shape, (users,)):
            _fail(REQUEST_TIME, f"must be [U] with U = {users} (the state's users), got "
                                f"shape {list(shape)}")


def _same(a, b):
    """Static shapes agree where both are known."""
    return len(a) == len(b) and all(x is None or y is None or int(x) == int(y)
                                    for x, y in zip(a, b))


def check_values(inputs, *, item_vocab_size, group_vocab_size, num_behavior_types,
                 keys=MODEL_INPUT_KEYS) -> None:
    """Value rules on concrete inputs (skipped, returning None, when any is symbolic)."""
    if not all(_is_concrete(inputs[k]) for k in keys):
        return
    a = {k: np.asarray(ops.convert_to_numpy(inputs[k])) for k in keys}
    ranges = {HIST_ITEM: (item_vocab_size, "item_vocab_size"),
              CAND_ITEM: (item_vocab_size, "item_vocab_size"),
              HIST_GROUP: (group_vocab_size, "group_vocab_size"),
              CAND_GROUP: (group_vocab_size, "group_vocab_size"),
              HIST_BEHAVIOR_ID: (num_behavior_types + 1, "num_behavior_types + 1")}
    for k, (hi, what) in ranges.items():
        if k not in a:
            continue
        bad = (a[k] < 0) | (a[k] >= hi)
        if k in (HIST_GROUP, HIST_BEHAVIOR_ID) and HIST_ITEM in a:
            bad &= a[HIST_ITEM] != PAD_ID      # empty slots are ignored, whatever they hold
        if bad.any():
            pos, value = _first(a[k], bad)
            hint = (" — padding is 0, not -1" if value == -1 else
                    f" — {unknown_id_hint(k)}" if value >= hi else "")
            _fail(k, f"id outside [0, {hi}) ({what}={hi})", f"{value} at {pos}{hint}")
    for k in (HIST_TIME, REQUEST_TIME):
        if k not in a:
            continue
        t = a[k] if k == REQUEST_TIME or HIST_ITEM not in a else \
            np.where(a[HIST_ITEM] != PAD_ID, a[k], 0)
        bad = (t < 0) | (t > MAX_TIME_S)
        if bad.any():
            pos, value = _first(t, bad)
            hint = " — this looks like milliseconds; use Unix seconds" \
                if value >= MS_HINT_MIN else ""
            _fail(k, f"time outside [0, {MAX_TIME_S}] (Unix seconds, 1970..2100)",
                  f"{value} at {pos}{hint}")
    if HIST_ITEM in a:
        pad = a[HIST_ITEM] == PAD_ID
        if HIST_TIME in a and REQUEST_TIME in a:
            late = ~pad & (a[HIST_TIME] > a[REQUEST_TIME].reshape(-1, 1))
            if late.any():
                pos, value = _first(a[HIST_TIME], late)
                _fail(HIST_TIME, "history event after request_time",
                      f"{value} at {pos} > request_time {a[REQUEST_TIME].reshape(-1)[pos[0]]}; "
                      "the history holds only events before the request")


def validate_inputs(inputs, *, item_vocab_size, group_vocab_size, num_behavior_types) -> None:
    """The whole contract (table above) on a concrete batch — numpy, eager tensors — at a
    data boundary, e.g. on a sample of the tf.data pipeline before `fit`, or in a
    request handler before a compiled model that cannot raise on values.

    Args:
      inputs: dict of `MODEL_INPUT_KEYS` arrays.
      item_vocab_size, group_vocab_size, num_behavior_types: the layer's sizes.

    Raises:
      InputContractError: naming the input, the rule and the first bad value.
    """
    inputs = check_structure(inputs)
    if not all(_is_concrete(inputs[k]) for k in MODEL_INPUT_KEYS):
        raise InputContractError("validate_inputs needs concrete values (numpy or eager "
                                 "tensors), not symbolic or traced ones")
    check_values(inputs, item_vocab_size=item_vocab_size, group_vocab_size=group_vocab_size,
                 num_behavior_types=num_behavior_types)


def _first(values, bad):
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    return list(pos), values[pos].item()


_NARROW_INTS = ("int8", "int16", "uint8", "uint16")


def clamp_ids(inputs, *, item_vocab_size, group_vocab_size):
    """The compiled-path rule: item / group ids outside the vocabulary → `OOV_ID`
    (padding 0 stays 0). Behavior ids and times are clamped by the grouping op itself
    (behavior outside [0, T] → 0, negative time → 0). Same result on CPU, XLA and GPU."""
    out = dict(inputs)
    for keys, hi in (((HIST_ITEM, CAND_ITEM), item_vocab_size),
                     ((HIST_GROUP, CAND_GROUP), group_vocab_size)):
        for k in keys:
            if k in out:
                x = ops.convert_to_tensor(out[k])
                if str(getattr(x.dtype, "name", x.dtype)) in _NARROW_INTS:
                    # int8 / int16 ids (e.g. a pandas downcast) would compare against a
                    # vocabulary size wrapped into their range: every id would be OOV.
                    x = ops.cast(x, "int32")
                out[k] = ops.where((x < 0) | (x >= hi), ops.cast(OOV_ID, x.dtype), x)
    return out
