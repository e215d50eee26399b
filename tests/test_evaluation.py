"""AUC / GAUC / logloss against scikit-learn and a plain-Python GAUC."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from dmgin_tf.errors import DataError
from dmgin_tf.evaluation import auc, evaluate, gauc, logloss, per_user_auc


def data(n=3000, seed=0, users=40):
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    s = np.round(r.random(n) * 0.5 + 0.3 * y, 1)      # rounded: many ties
    u = r.integers(0, users, n).astype(str)
    return y, s, u


def plain_gauc(y, s, u):
    num = den = 0.0
    for user in sorted(set(u.tolist())):
        m = u == user
        if len(set(y[m].tolist())) < 2:
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    y, s, _ = data(seed=seed)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc([0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_plain_python(seed):
    y, s, u = data(seed=seed, users=60)
    u[:5] = "only_one"; y[:5] = 1            # a user with a single label is excluded
    assert gauc(y, s, u) == pytest.approx(plain_gauc(y, s, u), abs=1e-12)
    values, a, n = per_user_auc(y, s, u)
    assert np.isnan(a[values.tolist().index("only_one")])
    ev = evaluate(y, s, u)
    assert ev["num_users_gauc"] == int((~np.isnan(a)).sum()) and ev["num_users"] == len(values)
    assert ev["gauc_examples"] == int(n[~np.isnan(a)].sum())


def test_gauc_weights_by_user_examples():
    # user a: AUC 1 over 4 examples; user b: AUC 0 over 2 examples -> 4/6
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.8, 0.1, 0.2, 0.1, 0.9]
    assert gauc(y, s, ["a"] * 4 + ["b"] * 2) == pytest.approx(4 / 6)
    assert np.isnan(gauc([1, 1], [0.1, 0.2], ["a", "b"]))


def test_logloss_matches_sklearn_and_clips():
    r = np.random.default_rng(0)
    y, p = r.integers(0, 2, 500), r.random(500)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    assert np.isfinite(logloss([1, 0], [0.0, 1.0]))
    assert logloss([1, 0], [0.0, 1.0]) == pytest.approx(-np.log(1e-7), rel=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(DataError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        auc([0, 1], [np.nan, 0.2])
    with pytest.raises(DataError, match="length"):
        gauc([0, 1], [0.1, 0.2], ["a"])
    assert np.isnan(auc([1, 1], [0.1, 0.2]))
