"""Request checks against a model version's contract, before any signature runs.

TensorFlow checks dtypes and shapes; it does not know that `cand_item` must share the
user dimension with the history, that an item id must lie inside the vocabulary the
model was trained with, or that a NaN user-state vector gives a NaN CTR. Those requests
used to return OK with a plausible-looking, wrong answer. Every rule here answers
INVALID_ARGUMENT naming the input, the offending value (and its position) and what is
allowed:

- every input with a batch dimension has the same size on dimension 0;
- `rank`/`score`: at most `max_candidates` candidates per user (N of `cand_* [U, N]`),
  `cand_item` and `cand_group` of the same shape;
- ids inside the vocabulary: item ids (`hist_item`, `cand_item`) in
  `[0, item_vocab_size)`, group ids (`hist_group`, `cand_group`, `group_ids`) in
  `[0, group_vocab_size)`, behavior ids (`hist_behavior_id`) in
  `[0, num_behavior_types]`. Out-of-vocabulary ids are refused, never clamped or mapped
  to the OOV bucket (0 is padding, 1 the OOV id a client may send on purpose);
- the same id and time rules for a user state's ids and times (`score_cached`);
- times (`hist_time`, `request_time`, and the tf.Example `timestamp`/`hist_timestamp`)
  are Unix seconds in `[0, MAX_TIME_S]`; a value that only makes sense as milliseconds
  is named as such; no history event is after the request (`hist_time` of a real slot
  > `request_time`, a tf.Example's `hist_timestamp` > its `timestamp`): the model was
  trained on histories strictly before each event, so a later one is a clock or unit bug;
- float inputs are finite (no NaN/inf);
- `score_cached`: `request_time` not before the state's `state_time` (the state holds
  the user's events up to `state_time`, so an earlier request would read later events);
  `state_version` is the version's own (`state_version` of the export
  info) — a user state from another model version is refused, never scored;
- `serving_default`: every example parses as a tf.train.Example; in each the three
  history lists (`hist_item_id`, `hist_behavior`, `hist_timestamp`) have the same length;
  float features are finite.

The vocabulary sizes and the candidate cap come from the version's
`assets.extra/dmgin_export.json` (written by `dmgin export`); a SavedModel without it
gets the shape, batch, time and finiteness rules only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping, Optional, Tuple

import grpc
import numpy as np

from dmgin_tf import features as F
from dmgin_tf.features import MAX_TIME_S, MS_HINT_MIN
from dmgin_tf.serving.errors import ServingError

EXPORT_INFO = os.path.join("assets.extra", "dmgin_export.json")
# The user state's inputs of `score_cached` (dmgin_tf.models.cached_state) that hold
# ids or times get the same rules as the history's.
STATE_TIME = "state_time"         # score_cached: request_time must not be before it
STATE_ITEM_INPUTS = ("lookup_items", "item_ids")
STATE_GROUP_INPUTS = ("group_ids", "lookup_group_ids", "context_group_ids")
STATE_TIME_INPUTS = ("lookup_times", "lookup_group_first_time", "lookup_group_last_time",
                     "item_last_time", "user_last_time", STATE_TIME)
TIME_INPUTS = (F.HIST_TIME, F.REQUEST_TIME) + STATE_TIME_INPUTS
# ... and those that hold counts must not be negative (a negative group size made
# scores NaN; negative counts shifted them).
STATE_COUNT_INPUTS = ("lookup_group_size", "lookup_group_counts", "item_counts",
                      "history_size", "context_group_counts", "user_type_counts")
CANDIDATE_INPUTS = (F.CAND_ITEM, F.CAND_GROUP)
EXAMPLES = "examples"
STATE_VERSION = "state_version"   # score_cached: must be the version's own (export info)
EXAMPLE_HISTORY = (F.HIST_ITEM_ID, F.HIST_BEHAVIOR, F.HIST_TIMESTAMP)
EXAMPLE_TIMES = (F.TIMESTAMP, F.HIST_TIMESTAMP)


def _invalid(msg: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, msg)


@dataclasses.dataclass(frozen=True)
class Contract:
    """What one exported version accepts (sizes 0 / None = not known, not checked).

    Attributes:
      item_vocab_size, group_vocab_size: ids incl. the reserved 0 (padding) and 1 (OOV).
      num_behavior_types: behavior ids 1..T (0 = padding).
      max_candidates: cap on N of `cand_* [U, N]`.
      batch_buckets, candidate_buckets: the padded shapes the export compiled.
    """
    item_vocab_size: int = 0
    group_vocab_size: int = 0
    num_behavior_types: int = 0
    max_candidates: Optional[int] = None
    batch_buckets: Tuple[int, ...] = ()
    candidate_buckets: Tuple[int, ...] = ()
    model: str = ""
    state_version: Optional[int] = None

    @classmethod
    def from_version_dir(cls, path: str, max_candidates: Optional[int] = None) -> "Contract":
        """Reads `assets.extra/dmgin_export.json` when present; `max_candidates` (the
        server's flag) overrides the exported cap."""
        info: dict = {}
        info_path = os.path.join(path, EXPORT_INFO)
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        cap = max_candidates if max_candidates is not None else info.get("max_candidates")
        buckets = tuple(int(b) for b in info.get("candidate_buckets") or ())
        if cap is None and buckets:
            cap = max(buckets)  # older exports: nothing beyond the largest bucket is warmed
        return dataclasses.replace(
            cls.from_model_config(info.get("model_config")),
            max_candidates=None if cap is None else int(cap),
            batch_buckets=tuple(int(b) for b in info.get("batch_buckets") or ()),
            candidate_buckets=buckets, state_version=info.get("state_version"))

    @classmethod
    def from_model_config(cls, mc: Optional[dict]) -> "Contract":
        """The vocabulary part of the contract from a model config dict
        (`ModelConfig.to_dict()`; missing sizes are not checked)."""
        mc = mc or {}
        return cls(item_vocab_size=int(mc.get("item_vocab_size") or 0),
                   group_vocab_size=int(mc.get("group_vocab_size") or 0),
                   num_behavior_types=int(mc.get("num_behavior_types") or 0),
                   model=str(mc.get("model") or ""))

    def id_ranges(self) -> dict:
        """input name → (lo, hi inclusive, what) for the ids whose vocabulary is known."""
        r = {}
        if self.item_vocab_size > 0:
            for k in (F.HIST_ITEM, F.CAND_ITEM) + STATE_ITEM_INPUTS:
                r[k] = (0, self.item_vocab_size - 1, f"item_vocab_size={self.item_vocab_size}")
        if self.group_vocab_size > 0:
            for k in (F.HIST_GROUP, F.CAND_GROUP) + STATE_GROUP_INPUTS:
                r[k] = (0, self.group_vocab_size - 1, f"group_vocab_size={self.group_vocab_size}")
        if self.model == "dgin" and self.item_vocab_size > 0:  # DGIN's groups are its items
            for k in ("group_ids", "lookup_group_ids"):
                r[k] = (0, self.item_vocab_size - 1,
                        f"item_vocab_size={self.item_vocab_size} (DGIN groups are items)")
        if self.num_behavior_types > 0:
            for k in (F.HIST_BEHAVIOR_ID, "lookup_behaviors"):
                r[k] = (0, self.num_behavior_types,
                        f"num_behavior_types={self.num_behavior_types}")
        return r

    def warm_candidate_sizes(self) -> Tuple[int, ...]:
        """Candidate counts whose requests reach every padded N a request under the cap
        can produce (the signature pads N to the buckets, then to multiples of the
        largest): the buckets and those multiples, with a padded N beyond the cap
        reached by a request of the cap itself (e.g. 1000 candidates pad to 1024)."""
        if not self.candidate_buckets:
            return ()
        sizes = set(self.candidate_buckets)
        largest = max(sizes)
        if self.max_candidates is not None:
            sizes.update(range(largest, -(-self.max_candidates // largest) * largest + 1, largest))
            sizes = {min(s, self.max_candidates) for s in sizes}
        return tuple(sorted(s for s in sizes if s >= 1))


def _where(v: np.ndarray, mask: np.ndarray) -> Tuple[list, object]:
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return list(idx), v[idx].item() if v.ndim else v.item()


def check_batch_dims(signature: str, inputs: Mapping[str, np.ndarray]) -> Optional[int]:
    """All inputs with a dimension 0 share it; returns it (None if no input has one)."""
    sizes = {k: int(np.shape(v)[0]) for k, v in inputs.items() if np.ndim(v) >= 1}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k!r} has {n}" for k, n in sorted(sizes.items()))
        raise _invalid(f"signature {signature!r}: inputs must have the same size on dimension 0 "
                       f"(the batch / user dimension); {listed}")
    return next(iter(sizes.values()), None)


def check_time(name: str, v: np.ndarray) -> None:
    """Unix seconds in [0, MAX_TIME_S]; names milliseconds when it looks like them."""
    if v.size == 0:
        return
    bad = (v < 0) | (v > MAX_TIME_S)
    if bad.any():
        pos, value = _where(v, bad)
        hint = (" — this looks like milliseconds; send Unix seconds"
                if value >= MS_HINT_MIN else "")
        raise _invalid(f"input {name!r}: time {value} at {pos} is outside [0, {MAX_TIME_S}] "
                       f"(Unix seconds, 1970..2100){hint}")


def check_time_order(t: np.ndarray, real: np.ndarray) -> None:
    """Histories `[U, L]` are oldest first: a real slot's time is not before the previous
    real slot's (padding slots, 0 in `real`, may sit on either side). The model keeps
    and groups the newest events by position, so a newest-first list was read backwards
    and scored under status OK."""
    if t.shape[1] < 2:
        return
    both = real[:, 1:] & real[:, :-1]
    back = both & (t[:, 1:] < t[:, :-1])
    if back.any():
        u, j = (int(x[0]) for x in np.nonzero(back))
        raise _invalid(f"input {F.HIST_TIME!r}: history not oldest first: {int(t[u, j + 1])} "
                       f"at [{u}, {j + 1}] is before {int(t[u, j])} at [{u}, {j}]; send the "
                       f"newest events in time order, oldest first")


def check_finite(name: str, v: np.ndarray) -> None:
    if v.size and v.dtype.kind == "f":
        bad = ~np.isfinite(v)
        if bad.any():
            pos, value = _where(v, bad)
            raise _invalid(f"input {name!r}: value {value} at {pos} is not finite; "
                           f"NaN and inf are refused")


def check_request(signature: str, inputs: Mapping[str, np.ndarray], contract: Contract) -> None:
    """Raises INVALID_ARGUMENT for the first rule (module docstring) a request breaks."""
    check_batch_dims(signature, inputs)
    cands = {k: np.shape(inputs[k]) for k in CANDIDATE_INPUTS if k in inputs}
    if len(set(cands.values())) > 1:
        raise _invalid(f"signature {signature!r}: {F.CAND_ITEM!r} and {F.CAND_GROUP!r} must have "
                       f"the same shape, got {[list(s) for s in cands.values()]}")
    for k, shape in cands.items():
        if len(shape) == 2 and contract.max_candidates is not None \
                and shape[1] > contract.max_candidates:
            raise _invalid(f"input {k!r}: {shape[1]} candidates per user, more than "
                           f"max_candidates={contract.max_candidates}; split the list "
                           f"(Client.rank does)")
    if STATE_VERSION in inputs and contract.state_version is not None:
        v = np.asarray(inputs[STATE_VERSION])
        bad = v != contract.state_version
        if bad.any():
            pos, value = _where(v, bad)
            raise _invalid(f"input {STATE_VERSION!r}: user state from another model version "
                           f"(state_version {value} at {pos}; this version's is "
                           f"{contract.state_version}); recompute it with the user_state "
                           f"signature")
    ranges = contract.id_ranges()
    for k, v in inputs.items():
        v = np.asarray(v)
        if k in ranges and v.size and v.dtype.kind in "iu":
            lo, hi, what = ranges[k]
            bad = (v < lo) | (v > hi)
            if bad.any():
                pos, value = _where(v, bad)
                raise _invalid(f"input {k!r}: id {value} at {pos} is outside [{lo}, {hi}] "
                               f"({what}); out-of-vocabulary ids are refused — "
                               f"{F.unknown_id_hint(k)}")
        elif k in TIME_INPUTS and v.dtype.kind in "iu":
            check_time(k, v)
        elif v.dtype.kind == "f":
            check_finite(k, v)
        if k in STATE_COUNT_INPUTS and v.size and v.dtype.kind in "iuf" and (v < 0).any():
            pos, value = _where(v, v < 0)
            raise _invalid(f"input {k!r}: count {value} at {pos} is negative; a user state "
                           f"holds counts >= 0 (recompute it with the user_state signature)")
        if k == EXAMPLES and v.dtype.kind in "OSU":
            _check_examples(v)
    if F.HIST_TIME in inputs and F.REQUEST_TIME in inputs:
        t = np.asarray(inputs[F.HIST_TIME])
        rt = np.asarray(inputs[F.REQUEST_TIME]).reshape(-1, 1)
        real = np.asarray(inputs[F.HIST_ITEM]) != F.PAD_ID if F.HIST_ITEM in inputs \
            else np.ones(t.shape, bool)
        if t.ndim == 2 and t.shape[0] == rt.shape[0]:
            late = real & (t > rt)
            if late.any():
                pos, value = _where(t, late)
                raise _invalid(f"input {F.HIST_TIME!r}: history event at {value} ({pos}) is "
                               f"after request_time {int(rt[pos[0], 0])}; the history holds "
                               f"only events before the request (a clock or unit mix-up?)")
        if t.ndim == 2 and real.shape == t.shape:
            check_time_order(t, real)
    if STATE_TIME in inputs and F.REQUEST_TIME in inputs:
        st = np.asarray(inputs[STATE_TIME]).reshape(-1)
        rt = np.asarray(inputs[F.REQUEST_TIME]).reshape(-1)
        if st.shape == rt.shape:
            early = rt < st
            if early.any():
                pos, value = _where(rt, early)
                raise _invalid(f"input {F.REQUEST_TIME!r}: {value} ({pos}) is before the user "
                               f"state's {STATE_TIME} {int(st[pos[0]])}; the state holds the "
                               f"user's events up to {STATE_TIME}, so score at or after it "
                               f"(or recompute the state)")


def _check_examples(serialized: np.ndarray) -> None:
    """Per tf.Example: parseable, equal history list lengths, times in range, finite
    floats; the first violation raises INVALID_ARGUMENT naming the example."""
    from tensorflow.core.example import example_pb2

    for i, raw in enumerate(serialized.reshape(-1)):
        try:
            ex = example_pb2.Example.FromString(bytes(raw))
        except Exception:  # noqa: BLE001 — protobuf's DecodeError and friends
            raise _invalid(f"input {EXAMPLES!r}: example {i} ({len(bytes(raw))} bytes) is not a "
                           f"serialized tf.train.Example") from None
        feats = ex.features.feature
        lengths = {}
        for k in EXAMPLE_HISTORY:
            if k in feats:
                f = feats[k]
                kind = f.WhichOneof("kind")
                lengths[k] = len(getattr(f, kind).value) if kind else 0
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise _invalid(f"input {EXAMPLES!r}: example {i}: the history lists must have the "
                           f"same number of values; {listed}")
        for k in EXAMPLE_TIMES:
            if k in feats and feats[k].WhichOneof("kind") == "int64_list":
                vals = feats[k].int64_list.value
                if vals:
                    try:
                        check_time(k, np.asarray(vals, np.int64))
                    except ServingError as e:
                        raise _invalid(f"input {EXAMPLES!r}: example {i}: feature "
                                       f"{e.message[len('input '):]}") from None
        if F.HIST_TIMESTAMP in feats:
            past = np.asarray(feats[F.HIST_TIMESTAMP].int64_list.value, np.int64)
            back = np.nonzero(past[1:] < past[:-1])[0]
            if len(back):
                j = int(back[0])
                raise _invalid(f"input {EXAMPLES!r}: example {i}: {F.HIST_TIMESTAMP!r} is not "
                               f"oldest first: {int(past[j + 1])} at position {j + 1} is "
                               f"before {int(past[j])} at {j}; list the history in time "
                               f"order, oldest first")
        if F.TIMESTAMP in feats and F.HIST_TIMESTAMP in feats:
            now = feats[F.TIMESTAMP].int64_list.value
            past = feats[F.HIST_TIMESTAMP].int64_list.value
            late = [t for t in past if now and t > now[0]]
            if late:
                raise _invalid(f"input {EXAMPLES!r}: example {i}: {F.HIST_TIMESTAMP!r} holds "
                               f"{late[0]}, after its {F.TIMESTAMP!r} {now[0]}; the history "
                               f"holds only events before the request")
        for k, f in feats.items():
            if f.WhichOneof("kind") == "float_list":
                bad = [x for x in f.float_list.value if not math.isfinite(x)]
                if bad:
                    raise _invalid(f"input {EXAMPLES!r}: example {i}: feature {k!r} holds "
                                   f"{bad[0]}; NaN and inf are refused")
