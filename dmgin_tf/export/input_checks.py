"""The request contract inside the exported signatures, for servers that do not check it.

`dmgin serve` checks every request against the version's contract before a signature
runs (`dmgin_tf.serving.validation`). TF Serving checks dtypes and shapes only, so under
it an item id beyond the vocabulary, a millisecond timestamp or a NaN state vector went
into the model, which scored an unknown id as the OOV id (the layers' compiled-path rule)
and returned a plausible, wrong CTR. These are the same value rules (the same `Contract`, so one
definition) as graph ops that run before the model, outside XLA:

- ids inside their vocabulary (`Contract.id_ranges`: item, group and behavior ids of
  the history, the candidates and a user state);
- times (`validation.TIME_INPUTS`) are Unix seconds in `[0, MAX_TIME_S]`;
- float inputs are finite;
- a user state's counts and sizes (`validation.STATE_COUNT_INPUTS`) are not negative;
- no history event (a real slot of `hist_time`) after `request_time`, and the real
  slots oldest first (non-decreasing times);
- `request_time` not before a user state's `state_time` (`score_cached`: the state
  holds the user's events up to then);
- at most `Contract.max_candidates` candidates per user (N of `cand_* [U, N]`): each
  new N past the largest bucket would otherwise compile at request time.

A request breaking one fails with INVALID_ARGUMENT ("assertion failed: [input
cand_item: ids must be in [0, 49999] …] [got min] [-5] [max] [12]"). Each rule is one
input's min and max and an `Assert`.
"""
from __future__ import annotations

from typing import List, Mapping

import tensorflow as tf

from dmgin_tf import features as F
from dmgin_tf.features import unknown_id_hint
from dmgin_tf.serving.validation import (MAX_TIME_S, MS_HINT_MIN, STATE_COUNT_INPUTS,
                                         STATE_TIME, TIME_INPUTS, Contract)


def _range_check(x: tf.Tensor, lo: int, hi: int, message: str) -> tf.Operation:
    """Two reductions: the min and max decide the check and are what the message reports
    (an empty tensor, whose min / max are the dtype's extremes, passes)."""
    low, high = tf.reduce_min(x), tf.reduce_max(x)
    ok = tf.logical_or(tf.equal(tf.size(x), 0), tf.logical_and(
        low >= tf.cast(lo, x.dtype), high <= tf.cast(hi, x.dtype)))
    return tf.debugging.Assert(ok, [message, "got min", low, "max", high])


def contract_checks(inputs: Mapping[str, tf.Tensor], contract: Contract) -> List[tf.Operation]:
    """`Assert` ops for the value rules of the module docstring, one per checked input.

    Args:
      inputs: a signature's input tensors by name (any rank; padding ids 0 and times 0
        are inside every range).
      contract: the version's sizes; unknown sizes (0) leave those ids unchecked.

    Returns:
      the ops; run them (control dependencies) before the model reads the inputs.
    """
    ranges = contract.id_ranges()
    checks = []
    for name, x in inputs.items():
        if name in ranges and x.dtype.is_integer:
            lo, hi, what = ranges[name]
            checks.append(_range_check(
                x, lo, hi, f"input {name}: ids must be in [{lo}, {hi}] ({what}); "
                f"out-of-vocabulary ids are refused — {unknown_id_hint(name)}"))
        elif name in TIME_INPUTS and x.dtype.is_integer:
            checks.append(_range_check(
                x, 0, MAX_TIME_S, f"input {name}: times must be Unix seconds in "
                f"[0, {MAX_TIME_S}] (1970..2100); {MS_HINT_MIN} or more is milliseconds"))
        elif x.dtype.is_floating:
            checks.append(tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(x)),
                [f"input {name}: values must be finite; NaN and inf are refused"]))
        if name in STATE_COUNT_INPUTS and (x.dtype.is_integer or x.dtype.is_floating):
            checks.append(tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(x < tf.zeros([], x.dtype))),
                [f"input {name}: counts must be >= 0; a user state from the user_state "
                 f"signature holds no negative count", "got min", tf.reduce_min(x)]))
    cand = inputs.get(F.CAND_ITEM)
    if cand is not None and cand.shape.rank == 2 and contract.max_candidates:
        n = tf.shape(cand)[1]
        checks.append(tf.debugging.Assert(
            n <= contract.max_candidates,
            [f"input {F.CAND_ITEM}: more candidates per user than max_candidates="
             f"{contract.max_candidates}; split the list (Client.rank does)", "got", n]))
    st, rt = inputs.get(STATE_TIME), inputs.get(F.REQUEST_TIME)
    if st is not None and rt is not None:
        early = tf.reshape(rt, [-1]) < tf.cast(tf.reshape(st, [-1]), rt.dtype)
        checks.append(tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(early)),
            # (no apostrophes: the Assert message is quoted with escapes)
            [f"input {F.REQUEST_TIME}: before {STATE_TIME}, the time of the user state; the "
             f"state holds the events up to then, so score at or after it (or recompute it)",
             "request_time", tf.reshape(rt, [-1])[:4], STATE_TIME, tf.reshape(st, [-1])[:4]]))
    t, rt, item = (inputs.get(k) for k in (F.HIST_TIME, F.REQUEST_TIME, F.HIST_ITEM))
    if t is not None and rt is not None and item is not None and t.shape.rank == 2:
        # No history event after the request (real slots only): the serving rule.
        late = tf.logical_and(tf.not_equal(item, F.PAD_ID),
                              t > tf.reshape(tf.cast(rt, t.dtype), [-1, 1]))
        checks.append(tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(late)),
            [f"input {F.HIST_TIME}: a history event is after request_time; the history "
             f"holds only events before the request", "latest event",
             tf.reduce_max(tf.where(late, t, tf.zeros_like(t)))]))
    if t is not None and item is not None and t.shape.rank == 2:
        # Oldest first: the model keeps and groups the newest events by position.
        real = tf.not_equal(item, F.PAD_ID)
        back = tf.logical_and(tf.logical_and(real[:, 1:], real[:, :-1]), t[:, 1:] < t[:, :-1])
        checks.append(tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(back)),
            [f"input {F.HIST_TIME}: history not oldest first (a real slot is earlier than the "
             f"one before it); send the newest events in time order, oldest first",
             "rows out of order", tf.where(tf.reduce_any(back, axis=1))[:4, 0]]))
    return checks
