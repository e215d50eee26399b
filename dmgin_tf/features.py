"""Feature keys and the canonical schema, in one place (docs/design.md: Data formats).

Every module imports these names; no feature-name string literals elsewhere.

Canonical tables (what converters write, Parquet):
  behaviors: USER_ID str, ITEM_ID str, BEHAVIOR str, TIMESTAMP int64 (Unix seconds)
  items:     ITEM_ID str, TITLE str, DESCRIPTION str, CATEGORY str, IMAGE bytes|None

Training example (tf.Example / numpy arrays), one per labelled event:
  USER_ID, ITEM_ID (candidate), CATEGORY (candidate), LABEL, TIMESTAMP (request time),
  HIST_ITEM_ID, HIST_BEHAVIOR, HIST_TIMESTAMP (lifelong history strictly before TIMESTAMP,
  oldest first, newest `max_history` kept).

Model inputs (dense int tensors, padding id 0; produced by TFT or the numpy builder):
  HIST_ITEM [B, L], HIST_GROUP [B, L], HIST_BEHAVIOR_ID [B, L], HIST_TIME [B, L],
  REQUEST_TIME [B], CAND_ITEM [B], CAND_GROUP [B].
"""

# --- canonical behavior / item tables -------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
BEHAVIOR = "behavior"
TIMESTAMP = "timestamp"

TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
IMAGE = "image"

BEHAVIOR_COLUMNS = (USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP)
#: Unix seconds accepted as a time anywhere (data, model inputs, requests): 1970 ..
#: 2100-01-01. Millisecond timestamps of today (~1.7e12) are far above it.
MAX_TIME_S = 4_102_444_800
#: >= 1e11 "seconds" is the year 5138: almost surely milliseconds.
MS_HINT_MIN = 100_000_000_000
ITEM_COLUMNS = (ITEM_ID, TITLE, DESCRIPTION, CATEGORY, IMAGE)

# --- labelled training examples (tf.Example features, string ids) ---------------------
LABEL = "label"
HIST_ITEM_ID = "hist_item_id"
HIST_BEHAVIOR = "hist_behavior"
HIST_TIMESTAMP = "hist_timestamp"
# Optional (TFX pipeline, `transform.examples.build_examples(item_groups=...)`): the
# ItemGrouper's group id (int64, 2.. ; 1 = unknown) of the candidate and of each history item.
GROUP_ID = "group_id"
HIST_GROUP_ID = "hist_group_id"

# --- dense model inputs (int ids after vocabulary / group lookup) ---------------------
HIST_ITEM = "hist_item"
HIST_GROUP = "hist_group"
HIST_BEHAVIOR_ID = "hist_behavior_id"
HIST_TIME = "hist_time"
REQUEST_TIME = "request_time"
CAND_ITEM = "cand_item"
CAND_GROUP = "cand_group"

MODEL_INPUT_KEYS = (HIST_ITEM, HIST_GROUP, HIST_BEHAVIOR_ID, HIST_TIME,
                    REQUEST_TIME, CAND_ITEM, CAND_GROUP)
HISTORY_INPUT_KEYS = (HIST_ITEM, HIST_GROUP, HIST_BEHAVIOR_ID, HIST_TIME)
# Optional training-only input: the out-of-fold index (1..K) of a training example, so
# its context statistics exclude its own label (`dmgin_tf.data.context_stats`). Absent
# at validation, test and serving time (= table 0, all training examples).
CONTEXT_FOLD = "context_fold"
OPTIONAL_INPUT_KEYS = (CONTEXT_FOLD,)

# --- model outputs / serving -------------------------------------------------------------
PREDICTION = "ctr"
USER_STATE = "user_state"

# --- reserved ids ---------------------------------------------------------------------------
PAD_ID = 0   # padding in every id tensor (items, groups, behaviors)
OOV_ID = 1   # unknown item / group after vocabulary lookup
NUM_RESERVED_IDS = 2  # real item / group ids start at 2
# Behavior ids have no OOV row: 1..T are the T behavior types, 0 an unknown type (or
# padding), which the statistics and embeddings ignore.


def unknown_id_hint(name: str) -> str:
    """What to send instead of an id outside the vocabulary, for input `name`."""
    if name == HIST_BEHAVIOR_ID:
        return "behavior ids 1..T are real types and have no OOV id: send 0 for an unknown type"
    return f"send the OOV id {OOV_ID} for an unknown item or group"
