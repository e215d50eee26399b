"""Real model inputs from the embedded Taobao sample (no pipeline run): each user's last
behavior is the candidate, the L behaviors before it the history."""
import numpy as np
import pandas as pd

from dmgin_tf import features as F
from dmgin_tf.data.sample import sample_path

BEHAVIORS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}


def taobao_examples(num_users, length):
    """(inputs dict of [U, L] / [U] arrays, item vocab size, group vocab size).

    Ids are dense (2.. ; 0 padding, 1 OOV), histories left-aligned oldest first, as the
    model-input contract has them; users with < 2 behaviors are skipped.
    """
    df = pd.read_csv(sample_path("taobao") / "UserBehavior.csv",
                     names=["user", "item", "cat", "behavior", "ts"])
    df = df[df.behavior.isin(BEHAVIORS)].sort_values(["user", "ts"], kind="stable")
    item_idx = {v: i + 2 for i, v in enumerate(sorted(df.item.unique()))}
    cat_idx = {v: i + 2 for i, v in enumerate(sorted(df.cat.unique()))}
    rows = {k: [] for k in F.MODEL_INPUT_KEYS}
    for _, g in df.groupby("user", sort=True):
        if len(g) < 2:
            continue
        hist, cand = g.iloc[:-1].tail(length), g.iloc[-1]
        n = len(hist)
        pad = lambda a, dt: np.pad(np.asarray(a, dt), (0, length - n))  # noqa: E731
        rows[F.HIST_ITEM].append(pad([item_idx[v] for v in hist.item], np.int32))
        rows[F.HIST_GROUP].append(pad([cat_idx[v] for v in hist.cat], np.int32))
        rows[F.HIST_BEHAVIOR_ID].append(pad([BEHAVIORS[v] for v in hist.behavior], np.int32))
        rows[F.HIST_TIME].append(pad(hist.ts, np.int64))
        rows[F.REQUEST_TIME].append(np.int64(max(cand["ts"], hist.ts.max())))
        rows[F.CAND_ITEM].append(np.int32(item_idx[cand["item"]]))
        rows[F.CAND_GROUP].append(np.int32(cat_idx[cand["cat"]]))
        if len(rows[F.CAND_ITEM]) == num_users:
            break
    return ({k: np.stack(v) for k, v in rows.items()}, len(item_idx) + 2, len(cat_idx) + 2)


def candidate_lists(inputs, n, seed=0):
    """[U, n] candidates per user: each user's own candidate, items and groups from the
    other users' histories (hits and misses), and the user's own recent items."""
    rng = np.random.default_rng(seed)
    u = len(inputs[F.CAND_ITEM])
    pool_i, pool_g = inputs[F.HIST_ITEM], inputs[F.HIST_GROUP]
    items = np.zeros((u, n), np.int32)
    groups = np.zeros((u, n), np.int32)
    for r in range(u):
        valid = np.flatnonzero(pool_i[r])
        own = rng.choice(valid, size=min(n // 3, len(valid)), replace=False) if len(valid) else []
        others = np.argwhere(pool_i != 0)
        pick = others[rng.integers(0, len(others), size=n)]
        items[r] = pool_i[pick[:, 0], pick[:, 1]]
        groups[r] = pool_g[pick[:, 0], pick[:, 1]]
        items[r, 1:1 + len(own)] = pool_i[r, own]
        groups[r, 1:1 + len(own)] = pool_g[r, own]
        items[r, 0], groups[r, 0] = inputs[F.CAND_ITEM][r], inputs[F.CAND_GROUP][r]
    return items, groups
