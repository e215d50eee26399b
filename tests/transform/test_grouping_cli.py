"""`dmgin grouping fit` outputs as `--group-table` inputs: a refit replaces the earlier
grouping (no stale k-means table left beside the new index), a grouping directory or its
`item_index.parquet` give the groups they describe, a catalog that is not Parquet is
refused naming the flag, and a k-means fit shows its progress and what it could not group."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from dmgin_tf.cli.main import main
from dmgin_tf.data.item_index import ItemIndex

IDS = [f"i{k}" for k in range(8)]


def _earlier_kmeans_output(out, items):
    """What `grouping fit --key cluster --num-groups 2` leaves in `out` (the k-means fit
    itself is tested in test_kmeans.py; here only its files matter)."""
    from transform.grouping import kmeans
    (out / kmeans.GROUPS_DIR).mkdir(parents=True)
    pd.DataFrame({"item_id": IDS, "group_id": [k % 2 for k in range(8)]}).to_parquet(
        out / kmeans.GROUPS_DIR / "part-0.parquet")
    np.save(out / kmeans.CENTROIDS_FILE, np.zeros((2, 4), np.float32))
    (out / kmeans.META_FILE).write_text("{}")
    ItemIndex.build(items, "table", num_groups=2, group_table=out / kmeans.GROUPS_DIR).save(out)


def test_a_refit_with_another_key_replaces_the_earlier_grouping(tmp_path, capsys):
    items = pd.DataFrame({"item_id": IDS, "category": ["a", "a", "b", "b", "c", "c", "d", "d"]})
    items.to_parquet(tmp_path / "items.parquet")
    out = tmp_path / "groups"
    _earlier_kmeans_output(out, items)
    (out / "notes.txt").write_text("mine")
    # The same folder refit by category: the k-means files go, the user's file stays.
    assert main(["grouping", "fit", "--items", str(tmp_path), "--key", "category",
                 "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["group_sizes.png", "item_index.parquet",
                                                       "notes.txt", "report.md"]
    category = ItemIndex.build(items, "category")
    # The folder, and its index file, as a group table: the category groups (4), not the
    # two earlier clusters and not shifted by the index's reserved ids.
    for table in (out, out / "item_index.parquet"):
        idx = ItemIndex.build(items, "table", group_table=table)
        np.testing.assert_array_equal(idx.group_of_idx, category.group_of_idx)
        assert idx.group_vocab_size == category.group_vocab_size == 6, table
    capsys.readouterr()


def test_a_catalog_that_is_not_parquet_is_refused_naming_the_flag(tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item_id,category\ni0,a\n")
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.csv"), "--key", "category",
                 "--output", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "--items " + str(tmp_path / "items.csv") in err and "not a readable Parquet" in err
    assert "Traceback" not in err and "ArrowInvalid:" not in err
    assert main(["grouping", "fit", "--items", str(tmp_path / "none"), "--key", "category",
                 "--output", str(tmp_path / "g")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_kmeans_on_identical_vectors_for_part_of_the_catalog_says_so(tmp_path, capsys):
    """Identical vectors (items without text embed the same) ran every iteration without
    converging; items without an embedding and groups left empty went unmentioned, and
    the report counted the unknown group as a real one."""
    items = pd.DataFrame({"item_id": IDS, "category": ["a"] * 8})
    items.to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({"item_id": IDS[:6], "embedding": [np.ones(4, np.float32)] * 6}).to_parquet(
        tmp_path / "emb.parquet")
    out = tmp_path / "g"
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"), "--embeddings",
                 str(tmp_path / "emb.parquet"), "--key", "cluster", "--num-groups", "3",
                 "--iterations", "20", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "k-means iteration 1/20: inertia 0" in printed and "iteration 2/" not in printed
    assert "2 of 3 groups got no item" in printed
    assert "2 of 8 catalog items have no group" in printed
    meta = json.loads((out / "kmeans.json").read_text())
    assert meta["converged"] is True and meta["iterations"] == 1
    md = (out / "report.md").read_text()
    assert "- items: 6" in md and "- non-empty groups: 1" in md
    assert "items without a group (the unknown group): 2" in md


def test_duplicate_item_ids_are_refused_before_the_fit(tmp_path, capsys):
    """An embedding table listing an item twice ran the whole k-means, then failed
    naming the output folder."""
    items = pd.DataFrame({"item_id": IDS, "category": ["a"] * 8})
    items.to_parquet(tmp_path / "items.parquet")
    ids = IDS + ["i1"]
    pd.DataFrame({"item_id": ids, "embedding": list(np.eye(9, 4, dtype=np.float32))}).to_parquet(
        tmp_path / "emb.parquet")
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"), "--embeddings",
                 str(tmp_path / "emb.parquet"), "--key", "cluster", "--num-groups", "2",
                 "--output", str(tmp_path / "g")]) == 2
    captured = capsys.readouterr()
    assert "emb.parquet: duplicate item_id 'i1' (rows 1 and 8)" in captured.err, captured.err
    assert "k-means iteration" not in captured.out


def test_a_failed_refit_keeps_the_earlier_grouping(tmp_path, capsys):
    items = pd.DataFrame({"item_id": IDS, "category": ["a", "a", "b", "b", "c", "c", "d", "d"]})
    out = tmp_path / "groups"
    _earlier_kmeans_output(out, items)
    items.assign(category="").to_parquet(tmp_path / "items.parquet")     # no categories
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"), "--key",
                 "category", "--output", str(out)]) == 2
    assert "none of the 8 items has a category" in capsys.readouterr().err
    assert (out / "centroids.npy").exists() and (out / "item_groups").is_dir()


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_failed_cluster_refit_leaves_the_earlier_grouping_untouched(tmp_path, capsys):
    """A k-means refit removed the earlier grouping before reading the embeddings: a NaN
    in them, an unreadable file or ids that match no item left --output empty or half
    new (a new k-means table beside no index)."""
    items = pd.DataFrame({"item_id": IDS, "category": ["a"] * 8})
    items.to_parquet(tmp_path / "items.parquet")
    out = tmp_path / "groups"
    _earlier_kmeans_output(out, items)
    before = {p: (out / p).read_bytes() for p in _files(out) if (out / p).is_file()}
    vectors = list(np.eye(8, 4, dtype=np.float32))
    nan = [v.copy() for v in vectors]
    nan[3][0] = np.nan
    pd.DataFrame({"item_id": IDS, "embedding": nan}).to_parquet(tmp_path / "nan.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"hello")
    pd.DataFrame({"item_id": [f"x{k}" for k in range(8)], "embedding": vectors}).to_parquet(
        tmp_path / "other_ids.parquet")
    for name, words in (("nan.parquet", ["non-finite"]),
                        ("garbage.parquet", ["--embeddings", "garbage.parquet",
                                             "not a readable Parquet"]),
                        ("other_ids.parquet", ["--embeddings", "other_ids.parquet",
                                               "none of its 8 item ids is in the catalog"])):
        assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"),
                     "--embeddings", str(tmp_path / name), "--key", "cluster", "--num-groups",
                     "2", "--output", str(out)]) == 2, name
        captured = capsys.readouterr()
        for w in words:
            assert w in captured.err, (name, captured.err)
        assert "Traceback" not in captured.err
        assert {p: (out / p).read_bytes() for p in _files(out) if (out / p).is_file()} == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".groups.")], name
    assert "k-means iteration" not in captured.out     # ids checked before the fit


def test_a_behaviors_table_as_the_catalog_and_an_output_under_a_file_are_named(tmp_path,
                                                                                  capsys):
    """A behaviors table passed as --items failed with 'duplicate item_id values'; an
    --output under a regular file with a bare 'File exists'."""
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i0", "i0"], "behavior": ["pv", "pv"],
                  "timestamp": [1, 2]}).to_parquet(tmp_path / "behaviors.parquet")
    assert main(["grouping", "fit", "--items", str(tmp_path / "behaviors.parquet"), "--key",
                 "category", "--output", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "--items" in err and "a behaviors table (it has user_id)" in err, err
    pd.DataFrame({"item_id": IDS, "category": ["a"] * 8}).to_parquet(tmp_path / "items.parquet")
    for args in (["grouping", "fit", "--items", str(tmp_path / "items.parquet"), "--key",
                  "category"], ["examples", "build", "--data", str(tmp_path), "--dataset",
                                "taobao", "--grouping-key", "category"]):
        assert main(args + ["--output", str(tmp_path / "items.parquet" / "out")]) == 2
        err = capsys.readouterr().err
        assert "items.parquet is a file, not a directory" in err and "Traceback" not in err, err


def test_more_random_groups_than_items_is_refused(tmp_path, capsys):
    pd.DataFrame({"item_id": IDS, "category": ["a"] * 8}).to_parquet(tmp_path / "items.parquet")
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"), "--key",
                 "random", "--num-groups", "9", "--output", str(tmp_path / "g")]) == 2
    assert "grouping.num_groups=9 exceeds the 8 items" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_zero_or_text_embeddings_are_refused_naming_the_item_or_column(tmp_path, capsys):
    """An all-zero vector (what a failed embedding job often writes) was grouped with
    whatever came first, silently; numbers stored as strings were parsed, and words
    crashed mid-fit with a bare ValueError."""
    items = pd.DataFrame({"item_id": IDS, "category": ["a"] * 8})
    items.to_parquet(tmp_path / "items.parquet")
    vectors = [np.arange(1, 5, dtype=np.float32) * (k + 1) % 7 + 1 for k in range(8)]
    zero = [v.copy() for v in vectors]
    zero[5][:] = 0.0
    tables = {"zero": zero, "all_zero": [np.zeros(4, np.float32)] * 8,
              "numbers_as_text": [[str(x) for x in v] for v in vectors],
              "words": [["a", "b", "c", "d"]] * 8}
    expected = {"zero": "item 'i5' has an all-zero embedding (1 such item(s)",
                "all_zero": "item 'i0' has an all-zero embedding (8 such item(s)",
                "numbers_as_text": "column 'embedding' must hold lists of numbers, has list<",
                "words": "column 'embedding' must hold lists of numbers, has list<"}
    for name, rows in tables.items():
        pd.DataFrame({"item_id": IDS, "embedding": rows}).to_parquet(tmp_path / f"{name}.parquet")
        assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"),
                     "--embeddings", str(tmp_path / f"{name}.parquet"), "--key", "cluster",
                     "--num-groups", "2", "--output", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert f"{name}.parquet" in err and expected[name] in err, (name, err)
        assert "Traceback" not in err and "ValueError" not in err, err
        assert not (tmp_path / name).exists(), name
    # The same vectors as numbers group fine.
    pd.DataFrame({"item_id": IDS, "embedding": vectors}).to_parquet(tmp_path / "ok.parquet")
    assert main(["grouping", "fit", "--items", str(tmp_path / "items.parquet"), "--embeddings",
                 str(tmp_path / "ok.parquet"), "--key", "cluster", "--num-groups", "2",
                 "--output", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
