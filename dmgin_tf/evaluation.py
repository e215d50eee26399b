"""Offline ranking metrics (numpy only): AUC, GAUC, logloss (docs/design.md: Evaluation protocol).

- `auc`: area under the ROC curve = probability that a random positive scores above a
  random negative, ties counted as 1/2 (Mann-Whitney U with average ranks).
- `gauc`: Σ_u n_u·AUC_u / Σ_u n_u over users u whose examples contain both labels
  (n_u = the user's number of examples); users with one label only are left out.
- `logloss`: mean binary cross-entropy with predictions clipped to [eps, 1 - eps].

    >>> evaluate([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6], users=["a", "a", "b", "b"])["gauc"]
    0.5
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from dmgin_tf.errors import DataError

LOGLOSS_EPS = 1e-7


def _check(labels, scores, users=None):
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise DataError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = y[~np.isin(y, (0.0, 1.0))][0]
        raise DataError(f"labels must be 0 or 1, got {bad!r}")
    if not np.isfinite(s).all():
        raise DataError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
    if users is not None:
        u = np.asarray(users).reshape(-1)
        if u.shape != y.shape:
            raise DataError(f"users and labels differ in length: {u.shape[0]} vs {y.shape[0]}")
        return y, s, u
    return y, s


def _grouped_auc(y: np.ndarray, s: np.ndarray, codes: np.ndarray, num_groups: int):
    """Per-group AUC via average ranks within each group, vectorized.

    Returns (auc [G] float64 with NaN where a group lacks a label, n [G] int64).
    """
    order = np.lexsort((s, codes))
    g, s_sorted, y_sorted = codes[order], s[order], y[order]
    m = len(g)
    n = np.bincount(g, minlength=num_groups)
    if m == 0:
        return np.full(num_groups, np.nan), n
    group_start = np.concatenate([[0], np.cumsum(n)[:-1]])
    # Tie runs: consecutive equal (group, score); each element gets its run's mean rank.
    new_run = np.ones(m, dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s_sorted[1:] != s_sorted[:-1])
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    run_last = np.concatenate([run_first[1:], [m]]) - 1
    pos_in_group_first = run_first - group_start[g[run_first]]
    pos_in_group_last = run_last - group_start[g[run_first]]
    run_rank = (pos_in_group_first + pos_in_group_last) / 2.0 + 1.0   # 1-based average rank
    rank = run_rank[run_id]
    n_pos = np.bincount(g, weights=y_sorted, minlength=num_groups)
    n_neg = n - n_pos
    rank_sum = np.bincount(g, weights=rank * y_sorted, minlength=num_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc, n


def auc(labels, scores) -> float:
    """ROC AUC over all examples; labels [N] in {0,1}, scores [N]. NaN if one class only."""
    y, s = _check(labels, scores)
    return float(_grouped_auc(y, s, np.zeros(len(y), dtype=np.int64), 1)[0][0])


def per_user_auc(labels, scores, users):
    """(user values [U], AUC [U] (NaN where one label only), examples [U])."""
    y, s, u = _check(labels, scores, users)
    values, codes = np.unique(u, return_inverse=True)
    a, n = _grouped_auc(y, s, codes.astype(np.int64), len(values))
    return values, a, n


def gauc(labels, scores, users) -> float:
    """Σ_u n_u·AUC_u / Σ_u n_u over users with both labels; NaN if there is none."""
    _, a, n = per_user_auc(labels, scores, users)
    ok = ~np.isnan(a)
    if not ok.any():
        return float("nan")
    return float(np.sum(a[ok] * n[ok]) / np.sum(n[ok]))


def logloss(labels, scores, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy; scores are probabilities, clipped to [eps, 1 - eps]."""
    y, p = _check(labels, scores)
    if len(y) == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def undefined_reason(metric: str, labels, users=None) -> Optional[str]:
    """Why `metric` ("auc" or "gauc") is undefined on these labels, or None if it is not.

    AUC needs both labels among the examples; GAUC needs at least one user whose own
    examples hold both. Depends on labels (and users) only, so it can be asked before any
    model is trained.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    n, pos = len(y), int(y.sum())
    if n == 0:
        return "no examples"
    if pos in (0, n):
        return f"all {n:,} examples have label {int(pos == n)}"
    if metric == "gauc":
        if users is None:
            return "no user ids"
        _, codes = np.unique(np.asarray(users).reshape(-1), return_inverse=True)
        pos_u = np.bincount(codes, weights=y)
        n_u = np.bincount(codes)
        if not ((pos_u > 0) & (pos_u < n_u)).any():
            return f"no user has both labels among its examples ({len(n_u):,} users, {n:,} examples)"
    return None


def evaluate(labels, scores, users: Optional[np.ndarray] = None) -> dict:
    """All metrics at once.

    Args:
      labels: [N] 0/1. scores: [N] predicted probabilities. users: [N] user keys (any
        hashable numpy-comparable values) for GAUC; None skips GAUC.

    Returns: {auc, gauc, logloss, num_examples, positive_rate, num_users,
      num_users_gauc, gauc_examples}.
    """
    y, s = _check(labels, scores)
    out = {"auc": auc(y, s), "logloss": logloss(y, s), "num_examples": int(len(y)),
           "positive_rate": float(y.mean()) if len(y) else float("nan")}
    if users is not None:
        values, a, n = per_user_auc(y, s, users)
        ok = ~np.isnan(a)
        out.update(gauc=float(np.sum(a[ok] * n[ok]) / np.sum(n[ok])) if ok.any() else float("nan"),
                   num_users=int(len(values)), num_users_gauc=int(ok.sum()),
                   gauc_examples=int(n[ok].sum()))
    return out
