"""Stable group ids across retrains: match new centroids to the previous run's.

A warm-started model has learned embeddings for group ids; a refit must give the
"same" interest the same id. We match new centroids to old ones with the Hungarian
algorithm (`scipy.optimize.linear_sum_assignment`) maximising total cosine similarity:
a matched new centroid inherits its old centroid's id; when K grows, unmatched new
centroids get fresh ids after the old ones; when K shrinks, some old ids go unused.

    >>> import numpy as np
    >>> old = np.eye(3, dtype=np.float32)
    >>> stable_permutation(old[[2, 0, 1]], old).tolist()   # new centroid j -> id
    [2, 0, 1]
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from dmgin_tf.errors import DataError


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def match_centroids(new: np.ndarray, old: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of new to old centroids on cosine similarity.

    Args:
      new: [K_new, D] centroids of this fit.
      old: [K_old, D] centroids of the previous fit (row i has id i).

    Returns:
      (new_idx, old_idx): matched pairs, int64 [min(K_new, K_old)] each.
    """
    from scipy.optimize import linear_sum_assignment
    new, old = np.asarray(new), np.asarray(old)
    if new.ndim != 2 or old.ndim != 2 or new.shape[1] != old.shape[1]:
        raise DataError(f"centroid shapes differ: new {new.shape}, previous {old.shape}; "
                        "stable ids need embeddings of the same dimension")
    sim = _unit(new) @ _unit(old).T
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def stable_permutation(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Id for every new centroid: int64 [K_new] (a permutation of 0..K_new-1 when
    K_new == K_old; ids ≥ K_old for unmatched centroids when K grows)."""
    rows, cols = match_centroids(new, old)
    ids = np.full(len(new), -1, dtype=np.int64)
    ids[rows] = cols
    unmatched = np.flatnonzero(ids < 0)
    ids[unmatched] = len(old) + np.arange(len(unmatched))
    return ids


def relabel_centroids(new: np.ndarray, old: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """New centroids reordered so that row index = stable id.

    Returns:
      centroids: float32 [max id + 1, D]; rows of ids without a new centroid (old ids
        left over when K shrank) are NaN — assignment never picks them.
      similarity: float64 [max id + 1], cosine similarity of each id's new centroid to
        its old one (NaN for fresh ids and unused rows) — reported as id drift.
    """
    ids = stable_permutation(new, old)
    size = int(ids.max()) + 1
    out = np.full((size, new.shape[1]), np.nan, dtype=np.float32)
    out[ids] = new
    sim = np.sum(_unit(new) * _unit(old[np.minimum(ids, len(old) - 1)]), axis=1)
    sim[ids >= len(old)] = np.nan
    order_sim = np.full(size, np.nan)
    order_sim[ids] = sim
    return out, order_sim
