"""The cached user state of DMGIN/DGIN: its keys, shapes, version and checks.

A user state (`DMGIN.user_state`) holds everything `DMGIN.score_cached` needs to score
candidates without the user's history (docs/serving.md, "Serving from a cached user
state"). Per user (leading dimension U), with G = `max_groups`, D = `embedding_dim`,
M = `max_per_group`, T = `num_behavior_types`, K = `max_lookup_groups` and
I = `max_lookup_items` (both capped at the history length L):

| key | dtype | shape | what |
|---|---|---|---|
| `group_vectors` | float32 | `[U, G, D]` | the evolved group vectors (inter-group output) |
| `group_mask` | bool | `[U, G]` | which of the G groups exist |
| `group_ids` | int32 | `[U, G]` | their ids |
| `recent_tokens`, `recent_mask` | float32, bool | `[U, W, D]`, `[U, W]` | (with `use_recent`) the newest W behaviors as tokens |
| `lookup_group_ids` | int32 | `[U, K]` | the K most recently active groups (items for DGIN), 0 = empty |
| `lookup_group_size` | int32 | `[U, K]` | behaviors of each over the whole history |
| `lookup_group_counts` | float32 | `[U, K, T]` | ... per behavior type |
| `lookup_group_first_time`, `lookup_group_last_time` | time | `[U, K]` | first / last behavior |
| `lookup_items`, `lookup_behaviors` | int32 | `[U, K, M]` | each group's last M behaviors, oldest first |
| `lookup_times` | time | `[U, K, M]` | their times |
| `item_ids` | int32 | `[U, I]` | the I most recently touched items, 0 = empty |
| `item_counts` | float32 | `[U, I, T]` | touches per behavior type |
| `item_last_time` | time | `[U, I]` | the latest touch |
| `history_size` | int32 | `[U]` | non-padding behaviors |
| `context_group_ids`, `context_group_counts` | int32, float32 | `[U, K]`, `[U, K, T]` | (with context statistics) per-type counts of the K most recent `hist_group` groups |
| `user_type_counts` | float32 | `[U, T]` | (with context statistics) behaviors per type |
| `user_last_time`, `user_seen` | time, bool | `[U]` | (with context statistics) latest behavior, any behavior |
| `state_time` | time | `[U]` | the request time the state was computed at |
| `state_version` | int32 | `[U]` | the model's `state_version` (a fingerprint of config + weights) |

"time" is int64 on the TensorFlow backend (int32 on JAX), Unix seconds.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from dmgin_tf.layers.context_statistics import CONTEXT_STATE_KEYS
from dmgin_tf.layers.group_interest_encoder import (LOOKUP_STATE_KEYS, RECENT_STATE_KEYS,
                                                    USER_STATE_KEYS)

STATE_TIME = "state_time"
STATE_VERSION = "state_version"
DEFAULT_LOOKUP_GROUPS = 128   # K
DEFAULT_LOOKUP_ITEMS = 512    # I


class StaleUserStateError(ValueError):
    """A user state computed by another model version (or of another layout)."""


def state_keys(use_context: bool, use_recent: bool = False):
    """The keys of a complete user state, in a fixed order."""
    keys = USER_STATE_KEYS + (RECENT_STATE_KEYS if use_recent else ()) + LOOKUP_STATE_KEYS
    if use_context:
        keys += CONTEXT_STATE_KEYS
    return keys + (STATE_TIME, STATE_VERSION)


def model_fingerprint(model) -> int:
    """A 31-bit id of the model's class, config and weight values (fits int32 on every
    backend): two models that score differently get different ids."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(json.dumps(model.model_cfg.to_dict(), sort_keys=True, default=str).encode())
    for v in model.weights:
        h.update(v.path.encode())
        h.update(np.ascontiguousarray(np.asarray(v.numpy())).tobytes())
    return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


def check_state(state, use_context: bool, expected_version=None,
                use_recent: bool = False) -> None:
    """Raises `StaleUserStateError` naming what is wrong: missing keys, users of
    different counts, or (when the version is concrete and `expected_version` given)
    a state from another model version."""
    keys = state_keys(use_context, use_recent)
    missing = [k for k in keys if k not in state]
    if missing:
        raise StaleUserStateError(f"user state: missing key(s) {missing}; compute it with "
                                  f"the model's user_state (signature `user_state`)")
    sizes = {k: state[k].shape[0] for k in keys}
    known = {n for n in sizes.values() if n is not None}
    if len(known) > 1:
        raise StaleUserStateError(f"user state: keys have different user counts {sizes}")
    if expected_version is None:
        return
    try:
        got = np.asarray(state[STATE_VERSION]).reshape(-1)
    except (TypeError, ValueError, NotImplementedError):  # symbolic: checked in the graph
        return
    if got.dtype == object or not np.issubdtype(got.dtype, np.integer):
        return
    bad = got != int(expected_version)
    if bad.any():
        raise StaleUserStateError(
            f"user state: state_version {int(got[bad][0])} is not this model's "
            f"{int(expected_version)} (a state from another model version); recompute it "
            f"with this model's user_state")
