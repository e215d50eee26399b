"""Item index: ids, grouping keys, table validation, persistence."""
import numpy as np
import pandas as pd
import pytest

from dmgin_tf.data.item_index import GROUP_ID, ItemIndex
from dmgin_tf.errors import DataError
from dmgin_tf.features import CATEGORY, ITEM_ID, OOV_ID, PAD_ID

ITEMS = pd.DataFrame({ITEM_ID: ["m", "a", "z", "q", "b"],
                      CATEGORY: ["shoes", "cake", "", "shoes", None]})


def test_item_ids_follow_catalog_order_and_unknown_is_oov():
    idx = ItemIndex.build(ITEMS, "item_id")
    assert idx.item_vocab_size == 7 and idx.group_vocab_size == 7
    assert idx.lookup(["m", "a", "b", "nope"]).tolist() == [2, 3, 6, OOV_ID]
    assert idx.lookup(np.array([["z", "x"]], dtype=object)).tolist() == [[4, OOV_ID]]
    # DGIN grouping: each item is its own group; PAD/OOV keep their ids
    assert idx.groups_of([PAD_ID, OOV_ID, 2, 6]).tolist() == [PAD_ID, OOV_ID, 2, 6]


def test_category_groups_sorted_and_missing_category_unknown():
    idx = ItemIndex.build(ITEMS, "category")
    # sorted vocabulary: cake -> 2, shoes -> 3; "" and None -> unknown group 1
    assert idx.lookup_groups(["m", "a", "z", "q", "b", "nope"]).tolist() == [3, 2, 1, 3, 1, 1]
    assert idx.group_vocab_size == 4
    # row order of the catalog does not change category group ids
    rev = ItemIndex.build(ITEMS.iloc[::-1], "category")
    assert rev.lookup_groups(["m", "a", "q"]).tolist() == [3, 2, 3]


def test_random_groups_stable_and_in_range():
    items = pd.DataFrame({ITEM_ID: [f"i{k}" for k in range(500)]})
    a = ItemIndex.build(items, "random", num_groups=7, seed=1)
    b = ItemIndex.build(items.iloc[::-1], "random", num_groups=7, seed=1)
    ga, gb = a.lookup_groups(items[ITEM_ID]), b.lookup_groups(items[ITEM_ID])
    np.testing.assert_array_equal(ga, gb)       # per item, independent of catalog order
    assert ga.min() >= 2 and ga.max() <= 8 and len(np.unique(ga)) == 7
    assert a.group_vocab_size == 9
    c = ItemIndex.build(items, "random", num_groups=7, seed=2)
    assert (c.lookup_groups(items[ITEM_ID]) != ga).any()
    with pytest.raises(DataError, match="num_groups"):
        ItemIndex.build(items, "random")


def test_group_table_offsets_ids_and_marks_missing_items_unknown(tmp_path):
    table = pd.DataFrame({ITEM_ID: ["m", "a", "q", "extra"], GROUP_ID: [0, 4, 0, 2]})
    idx = ItemIndex.build(ITEMS, "table", group_table=table)
    assert idx.lookup_groups(["m", "a", "z", "q", "b"]).tolist() == [2, 6, 1, 2, 1]
    assert idx.group_vocab_size == 5 + 2
    assert idx.info["catalog_items_without_group"] == 2 and idx.info["table_items_not_in_catalog"] == 1
    table.to_parquet(tmp_path / "g.parquet")
    from_file = ItemIndex.build(ITEMS, "cluster", group_table=tmp_path / "g.parquet", num_groups=10)
    assert from_file.grouping_key == "table" and from_file.group_vocab_size == 12
    np.testing.assert_array_equal(from_file.group_of_idx, idx.group_of_idx)
    # a sharded Parquet directory, as the Beam k-means stage writes it
    (tmp_path / "shards").mkdir()
    table.iloc[:2].to_parquet(tmp_path / "shards" / "part-0.parquet")
    table.iloc[2:].to_parquet(tmp_path / "shards" / "part-1.parquet")
    sharded = ItemIndex.build(ITEMS, "table", group_table=tmp_path / "shards")
    np.testing.assert_array_equal(sharded.group_of_idx, idx.group_of_idx)


@pytest.mark.parametrize("table, match", [
    (pd.DataFrame({ITEM_ID: ["m", "m"], GROUP_ID: [0, 1]}), "more than once"),
    (pd.DataFrame({ITEM_ID: ["m"], GROUP_ID: [-1]}), "group_id must be an integer"),
    (pd.DataFrame({ITEM_ID: ["m"], GROUP_ID: [1.5]}), "group_id must be an integer"),
    (pd.DataFrame({ITEM_ID: ["m"], "cluster": [1]}), "missing column"),
    (pd.DataFrame({ITEM_ID: ["nope"], GROUP_ID: [1]}), "shares no item_id"),
    (None, "grouping.key=cluster \\(or table\\) needs an item -> group table"),
    # Ids beyond int32 became negative group ids; sparse ids a billion-row table.
    (pd.DataFrame({ITEM_ID: ["m", "s"], GROUP_ID: [3_000_000_007, 3_000_000_008]}),
     "group_id goes up to 3,000,000,008 for 2 distinct groups"),
    (pd.DataFrame({ITEM_ID: ["m", "s"], GROUP_ID: [7, 1_000_000_007]}), "number the groups 0..K-1"),
])
def test_bad_group_tables_raise_naming_the_problem(table, match):
    with pytest.raises(DataError, match=match):
        ItemIndex.build(ITEMS, "table", group_table=table)


def test_unknown_key_and_bad_catalog():
    with pytest.raises(DataError, match="'shop'"):
        ItemIndex.build(ITEMS, "shop")
    with pytest.raises(DataError, match="duplicate item_id"):
        ItemIndex.build(pd.DataFrame({ITEM_ID: ["a", "a"]}))
    with pytest.raises(DataError, match="'category' column"):
        ItemIndex.build(pd.DataFrame({ITEM_ID: ["a"]}), "category")


def test_save_load_round_trip(tmp_path):
    idx = ItemIndex.build(ITEMS, "category")
    path = idx.save(tmp_path)
    assert path.endswith("item_index.parquet")
    back = ItemIndex.load(tmp_path)
    assert back.item_ids.tolist() == idx.item_ids.tolist()
    np.testing.assert_array_equal(back.group_of_idx, idx.group_of_idx)
    assert (back.grouping_key, back.group_vocab_size, back.info) == ("category", 4, idx.info)
    assert back.lookup(["q"]).tolist() == [5]


@pytest.mark.parametrize("name, content, words", [
    ("t.tsv", "item_id\tgroup_id\nm\t0\nz\t1\n", None),                 # read, tab-separated
    ("empty.csv", "", ["empty.csv", "cannot read it as CSV", "item_id,group_id"]),
    ("latin1.csv", b"item_id,group_id\nm\xff,0\n", ["latin1.csv", "cannot read it as CSV"]),
    ("fake.parquet", "item_id,group_id\nm,0\n", ["fake.parquet", "cannot read it as Parquet"]),
])
def test_group_table_files_read_or_fail_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if words is None:
        idx = ItemIndex.build(ITEMS, "table", group_table=path)
        assert idx.info["num_groups"] == 2
        return
    with pytest.raises(DataError) as info:
        ItemIndex.build(ITEMS, "table", group_table=path)
    for w in words:
        assert w in str(info.value), str(info.value)
