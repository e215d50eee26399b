"""Item-popularity baseline (row "item popularity"): score = how often the candidate item
occurs among the training events. The outside bar's row of the same name
(docs/design.md: Evaluation protocol) ranks by the item's smoothed positive rate instead,
which the context statistics give every trained row (docs/benchmarks.md, Quality).

Counted over the train split's real events only — sampled negatives (Taobao) are not
behaviors and validation/test events are the future — so the baseline sees exactly the
data a trained model sees.
"""
from __future__ import annotations

import numpy as np


def popularity_counts(example_set) -> np.ndarray:
    """Train-event count per item idx: float64 `[item_vocab_size]`.

    For datasets with sampled negatives only positive examples are real events; otherwise
    (MovieLens) every labelled event is a rating of that item, whatever its label.
    """
    train = example_set.split_indices("train")
    if example_set.spec.sample_negatives:
        train = train[example_set.ex_label[train] > 0]
    items = example_set.ex_cand_item[train].astype(np.int64)
    size = int(example_set.metadata.get("item_vocab_size", 0)) or int(example_set.ex_cand_item.max()) + 1
    return np.bincount(items, minlength=size).astype(np.float64)


def popularity_scores(example_set, split: str) -> np.ndarray:
    """Popularity of each candidate of `split`: float64 `[N]`, mapped into (0, 1) by
    count / (count + 1) so logloss is defined (the ranking is that of the counts)."""
    counts = popularity_counts(example_set)
    idx = example_set.split_indices(split)
    c = counts[example_set.ex_cand_item[idx].astype(np.int64)]
    return c / (c + 1.0)


def evaluate_popularity(example_set, split: str = "test") -> dict:
    """`dmgin_tf.evaluation.evaluate` of the popularity scores on `split`."""
    from dmgin_tf import evaluation
    idx = example_set.split_indices(split)
    return evaluation.evaluate(example_set.ex_label[idx], popularity_scores(example_set, split),
                               example_set.ex_user[idx])
