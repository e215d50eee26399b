"""k-means grouping in Beam (DirectRunner): objective vs scikit-learn, stable ids under a
perturbed refit, new-item assignment, report. Dask runs: tests/transform/test_dask.py."""
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmgin_tf.config import BeamConfig, GroupingConfig
from dmgin_tf.data.item_index import ItemIndex
from dmgin_tf.errors import DataError
from transform import beam_io
from transform.grouping import kmeans, report, stable_ids

DIRECT = BeamConfig.from_dict({"direct_running_mode": "in_memory"})


def blobs(n=600, k=8, d=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    return (centers[rng.integers(k, size=n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def write_embeddings(path, x, prefix="i"):
    ids = [f"{prefix}{i}" for i in range(len(x))]
    pq.write_table(pa.table({"item_id": ids,
                             "embedding": pa.array(list(x), type=pa.list_(pa.float32()))}),
                   path, row_group_size=max(1, len(x) // 3))
    return ids


def groups_of(out_dir):
    t = beam_io.read_parquet_table(os.path.join(out_dir, kmeans.GROUPS_DIR)).to_pandas()
    return dict(zip(t["item_id"], t["group_id"]))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("km")
    x = blobs()
    ids = write_embeddings(root / "emb.parquet", x)
    cfg = GroupingConfig.from_dict({"num_groups": 8, "kmeans_iterations": 30, "seed": 0})
    res = kmeans.fit_kmeans(str(root / "emb.parquet"), cfg, DIRECT, str(root / "out"), splits=3)
    return root, x, ids, cfg, res


def test_objective_matches_sklearn(fitted):
    from sklearn.cluster import KMeans
    root, x, ids, cfg, res = fitted
    xn = kmeans.l2_normalize(x)
    # Objective of what we wrote, recomputed from scratch with numpy.
    g = groups_of(str(root / "out"))
    assign = np.array([g[i] for i in ids])
    ours = sum(float(((xn[assign == j] - xn[assign == j].mean(0)) ** 2).sum())
               for j in np.unique(assign))
    sk = KMeans(8, random_state=cfg.seed, n_init=1).fit(xn).inertia_
    assert ours <= sk * 1.03, (ours, sk)
    # The written assignment is nearest-centroid w.r.t. the saved centroids.
    cents = np.load(root / "out" / kmeans.CENTROIDS_FILE)
    np.testing.assert_array_equal(assign, np.argmin(kmeans.squared_distances(xn, cents), 1))
    assert res.rows == len(ids) and res.counts.sum() == len(ids)
    assert res.history == sorted(res.history, reverse=True)  # Lloyd never increases inertia


def test_beam_lloyd_step_equals_numpy(fitted, tmp_path):
    root, x, ids, cfg, res = fitted
    xn = kmeans.l2_normalize(x)
    c0 = kmeans.kmeans_plus_plus(xn, 8, 1)
    sums, counts, inertia, rows = kmeans.lloyd_step(str(root / "emb.parquet"), c0, DIRECT,
                                                     str(tmp_path), 0, splits=4)
    idx, dist = kmeans.assign(xn, c0)
    np.testing.assert_array_equal(counts, np.bincount(idx, minlength=8))
    ref = np.stack([xn[idx == j].sum(0) for j in range(8)])
    np.testing.assert_allclose(sums, ref, rtol=1e-5, atol=1e-5)
    assert rows == len(x) and inertia == pytest.approx(dist.sum(), rel=1e-6)


def test_stable_ids_under_perturbed_refit(fitted, tmp_path):
    root, x, ids, cfg, res = fitted
    rng = np.random.default_rng(5)
    # Perturbed catalog: 10% of items dropped, 40 new ones, small noise on the rest;
    # different seed so the unmatched fit numbers clusters differently.
    keep = rng.random(len(x)) > 0.1
    x2 = x[keep] + 0.05 * rng.normal(size=x[keep].shape).astype(np.float32)
    ids2 = [i for i, k in zip(ids, keep) if k]
    new = blobs(40, seed=0)[:40] + 0.05
    path2 = tmp_path / "emb2.parquet"
    all_ids = ids2 + [f"n{i}" for i in range(40)]
    pq.write_table(pa.table({"item_id": all_ids, "embedding": pa.array(
        list(np.concatenate([x2, new])), type=pa.list_(pa.float32()))}), path2)
    cfg2 = cfg.replace(seed=11)
    old = np.load(root / "out" / kmeans.CENTROIDS_FILE)
    res2 = kmeans.fit_kmeans(str(path2), cfg2, DIRECT, str(tmp_path / "refit"), splits=2,
                             previous_centroids=old)
    g1, g2 = groups_of(str(root / "out")), groups_of(str(tmp_path / "refit"))
    same = np.mean([g1[i] == g2[i] for i in ids2])
    assert same > 0.95, same
    assert np.nanmin(res2.matched_similarity) > 0.95
    # Without matching, the seed change scrambles ids (so the test above is meaningful).
    res3 = kmeans.fit_kmeans(str(path2), cfg2, DIRECT, str(tmp_path / "raw"), splits=2)
    g3 = groups_of(str(tmp_path / "raw"))
    assert np.mean([g1[i] == g3[i] for i in ids2]) < 0.9


def test_stable_permutation_handles_k_change():
    old = np.eye(4, dtype=np.float32)
    perm = stable_ids.stable_permutation(old[[3, 1]], old)
    assert perm.tolist() == [3, 1]                       # K shrank: ids kept, 0 and 2 unused
    grown = np.concatenate([old[[2, 0, 1, 3]], [[1, 1, 0, 0]]]).astype(np.float32)
    assert stable_ids.stable_permutation(grown, old).tolist() == [2, 0, 1, 3, 4]
    cents, sim = stable_ids.relabel_centroids(old[[3, 1]], old)
    assert np.isnan(cents[[0, 2]]).all() and np.allclose(cents[[1, 3]], old[[1, 3]])
    # NaN rows are never nearest.
    idx, _ = kmeans.assign(old, cents)
    assert set(idx.tolist()) <= {1, 3}
    with pytest.raises(DataError, match="dimension"):
        stable_ids.match_centroids(np.ones((2, 3)), np.ones((2, 4)))


def test_assign_new_items_uses_existing_centroids(fitted, tmp_path):
    root, x, ids, cfg, res = fitted
    cents = kmeans.load_centroids(str(root / "out"))
    new = blobs(30, seed=9)
    path = tmp_path / "new.parquet"
    new_ids = write_embeddings(path, new, prefix="new")
    n = kmeans.assign_new_items(str(path), cents, str(tmp_path / "assigned"), DIRECT)
    assert n == 30
    t = beam_io.read_parquet_table(str(tmp_path / "assigned")).to_pandas().set_index("item_id")
    expect = np.argmin(kmeans.squared_distances(kmeans.l2_normalize(new), cents), 1)
    assert t.loc[new_ids, "group_id"].tolist() == expect.tolist()
    with pytest.raises(DataError, match="dimension"):
        kmeans.assign_new_items(str(path), cents[:, :5], str(tmp_path / "bad"), DIRECT)


def test_group_table_feeds_item_index(fitted):
    root, x, ids, cfg, res = fitted
    items = pd.DataFrame({"item_id": ids + ["unseen"]})
    idx = ItemIndex.build(items, "table", num_groups=len(res.centroids),
                          group_table=str(root / "out" / kmeans.GROUPS_DIR))
    g = groups_of(str(root / "out"))
    assert idx.lookup_groups([ids[0], "unseen"]).tolist() == [g[ids[0]] + 2, 1]
    assert idx.group_vocab_size == len(res.centroids) + 2


def test_bad_inputs_are_named(tmp_path):
    pq.write_table(pa.table({"item_id": ["a"], "vec": [[1.0]]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="embedding"):
        kmeans.embedding_dim(str(tmp_path / "x.parquet"))
    pq.write_table(pa.table({"item_id": ["a", "b"], "embedding": [[1.0, 2.0], [1.0]]}),
                   tmp_path / "y.parquet")
    with pytest.raises(DataError, match="'b' has an embedding of length 1"):
        kmeans.read_range(beam_io.parquet_work_items(str(tmp_path / "y.parquet"))[0])
    with pytest.raises(DataError, match="num_groups=5 exceeds"):
        kmeans.fit_kmeans(str(tmp_path / "y.parquet"), GroupingConfig.from_dict({"num_groups": 5}),
                          DIRECT, str(tmp_path / "o"))


def test_report_purity_and_files(tmp_path):
    groups = pd.DataFrame({"item_id": list("abcdef"), "group_id": [0, 0, 0, 1, 1, 2]})
    items = pd.DataFrame({"item_id": list("abcdef"), "title": ["t a", "t b", "", "t d", "t e", "t f"],
                          "category": ["x", "x", "y", "y", "y", ""]})
    # group 0: x x y -> 2; group 1: y y -> 2; group 2: no category -> ignored; 4 / 5.
    assert report.purity(groups["group_id"], items["category"]) == pytest.approx(0.8)
    path = report.write_report(str(tmp_path), groups, items, facts={"runner": "direct"})
    text = open(path).read()
    assert "purity vs category: 0.800" in text and "t a" in text and "runner: direct" in text
    assert os.path.getsize(tmp_path / report.SIZES_PNG) > 1000
