"""Context statistics of candidate items and groups, leak-free by construction.

What production CTR models and GBDTs live on: how often an item (and its group) was
shown in the training examples and how often it was a positive. They become model
inputs through lookup tables keyed by item / group id (`ContextStatistics` layer), so a
serving request still carries only ids.

Leakage rule (out-of-fold target statistics):
- every training example gets a fold 1..K (`assign_folds`, seeded, independent of the
  label); its features come from the table of fold k, computed from the training
  examples of the *other* folds — its own label never enters its features;
- validation, test and serving read table 0, computed from all training examples
  (the training span only: no validation or test label is ever counted).

Rates are smoothed toward the (fold's) global positive rate with a prior of
`prior` pseudo-examples, so an unseen item gets exactly the prior rate.

Numpy only (no TensorFlow): the JAX-only GPU host builds the same tables.
"""
from __future__ import annotations

import numpy as np

# Per id: log1p(examples), smoothed positive rate, log1p(positives), seen flag.
NUM_ID_FEATURES = 4
FEATURE_NAMES = ("log_examples", "positive_rate", "log_positives", "seen")
FOLD_TRAIN_ALL = 0      # table of validation/test/serving: every training example


def assign_folds(num_examples: int, num_folds: int, seed: int = 0) -> np.ndarray:
    """A fold 1..K per training example: int32 `[num_examples]`, balanced, seeded.

    The folds are a seeded permutation of the example positions — independent of the
    labels, so no fold is richer in positives by construction.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds={num_folds!r}: out-of-fold statistics need >= 2 folds")
    order = np.random.default_rng(seed).permutation(num_examples)
    folds = np.empty(num_examples, dtype=np.int32)
    folds[order] = np.arange(num_examples, dtype=np.int64) % num_folds + 1
    return folds


def id_table(ids: np.ndarray, labels: np.ndarray, folds: np.ndarray, vocab_size: int,
             num_folds: int, prior: float = 20.0) -> np.ndarray:
    """Per-id statistics of the training examples, one table per fold.

    Args:
        ids: int `[E]` candidate ids of the training examples (item or group ids,
            `0 <= id < vocab_size`).
        labels: `[E]` 0/1 labels. folds: int `[E]` in 1..K (`assign_folds`).
        vocab_size: V. num_folds: K. prior: smoothing pseudo-examples (> 0).

    Returns:
        float32 `[K + 1, V, NUM_ID_FEATURES]`: row 0 from every example; row k from the
        examples of every fold but k (what fold-k examples see).
    """
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64)
    folds = np.asarray(folds)
    if ids.shape != labels.shape or ids.shape != folds.shape:
        raise ValueError(f"ids {ids.shape}, labels {labels.shape}, folds {folds.shape}: "
                         "one value per training example expected")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids outside [0, {vocab_size}): min {ids.min()}, max {ids.max()}")
    if not prior > 0:
        raise ValueError(f"prior={prior!r} must be > 0")
    n_all = np.bincount(ids, minlength=vocab_size).astype(np.float64)
    pos_all = np.bincount(ids, weights=labels, minlength=vocab_size)
    out = np.empty((num_folds + 1, vocab_size, NUM_ID_FEATURES), dtype=np.float32)
    for k in range(num_folds + 1):
        if k == FOLD_TRAIN_ALL:
            n, pos, total, total_pos = n_all, pos_all, len(labels), labels.sum()
        else:
            held = folds == k
            n = n_all - np.bincount(ids[held], minlength=vocab_size)
            pos = pos_all - np.bincount(ids[held], weights=labels[held], minlength=vocab_size)
            total, total_pos = len(labels) - held.sum(), labels.sum() - labels[held].sum()
        rate = total_pos / total if total else 0.0
        out[k, :, 0] = np.log1p(n)
        out[k, :, 1] = (pos + prior * rate) / (n + prior)
        out[k, :, 2] = np.log1p(np.maximum(pos, 0.0))
        out[k, :, 3] = n > 0
    return out


def context_tables(cand_item, cand_group, labels, folds, item_vocab_size: int,
                   group_vocab_size: int, num_folds: int, prior: float = 20.0) -> dict:
    """`{"item": [K+1, V_item, F], "group": [K+1, V_group, F]}` (`id_table` each)."""
    return {"item": id_table(cand_item, labels, folds, item_vocab_size, num_folds, prior),
            "group": id_table(cand_group, labels, folds, group_vocab_size, num_folds, prior)}
