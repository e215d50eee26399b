"""Backend-agnostic (keras.ops) tensor ops: the XLA-friendly grouping of histories."""
from dmgin_tf.ops.candidate_lookup import (candidate_group_history, candidate_groups,
                                           candidate_item_hits)
from dmgin_tf.ops.grouping import (NUM_STATS, OOV_GROUP_ID, STAT_NAMES, CandidateGroup,
                                   GroupedHistory, group_behaviors, validate_history)

__all__ = ["NUM_STATS", "OOV_GROUP_ID", "STAT_NAMES", "CandidateGroup", "GroupedHistory",
           "candidate_group_history", "candidate_groups", "candidate_item_hits", "group_behaviors", "validate_history"]
