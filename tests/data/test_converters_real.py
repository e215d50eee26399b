"""Converters on real data (embedded sample; full shared sets via `shared_data_dir`),
checked row for row against an independent pandas reading of the raw files."""
import numpy as np
import pandas as pd

from dmgin_tf.data.converters import convert
from dmgin_tf.data.sample import sample_path
from dmgin_tf.features import BEHAVIOR, CATEGORY, DESCRIPTION, ITEM_ID, TIMESTAMP, TITLE, USER_ID

COLS = [USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP]


def taobao_reference(path) -> pd.DataFrame:
    raw = pd.read_csv(path, header=None, names=[USER_ID, ITEM_ID, CATEGORY, BEHAVIOR, TIMESTAMP],
                      dtype={USER_ID: str, ITEM_ID: str, CATEGORY: str, BEHAVIOR: str, TIMESTAMP: "int64"})
    raw["order"] = np.arange(len(raw))
    return raw.sort_values([USER_ID, TIMESTAMP, "order"]).reset_index(drop=True)


def movielens_reference(root) -> pd.DataFrame:
    r = pd.read_csv(root / "ratings.csv", dtype={"userId": str, "movieId": str})
    r[BEHAVIOR] = np.where(r.rating <= 2.5, "low", np.where(r.rating <= 3.5, "mid", "high"))
    t = pd.read_csv(root / "tags.csv", dtype={"userId": str, "movieId": str})
    t[BEHAVIOR] = "tag"
    both = pd.concat([r, t], ignore_index=True)  # ratings first: the file order tie-break
    both["order"] = np.arange(len(both))
    both = both.rename(columns={"userId": USER_ID, "movieId": ITEM_ID, "timestamp": TIMESTAMP})
    return both.sort_values([USER_ID, TIMESTAMP, "order"]).reset_index(drop=True)


def check_taobao(src, out):
    res = convert("taobao", src, out)
    ref = taobao_reference(res.report["files"][0]["path"])
    pd.testing.assert_frame_equal(pd.read_parquet(res.behaviors_path), ref[COLS])
    items = pd.read_parquet(res.items_path)
    assert items[ITEM_ID].is_unique and set(items[ITEM_ID]) == set(ref[ITEM_ID])
    # every item's category is its most frequent one in the raw rows
    top = ref.groupby([ITEM_ID, CATEGORY]).size().reset_index(name="n")
    top = top.sort_values([ITEM_ID, "n"], ascending=[True, False]).drop_duplicates(ITEM_ID)
    assert items.set_index(ITEM_ID)[CATEGORY].sort_index().equals(top.set_index(ITEM_ID)[CATEGORY].sort_index())
    conflicts = (ref.groupby(ITEM_ID)[CATEGORY].nunique() > 1).sum()
    assert res.report["files"][0]["flagged"].get("item_category_conflict", 0) == conflicts
    return res


def check_movielens(src, out):
    res = convert("movielens", src, out)
    ref = movielens_reference(src)
    pd.testing.assert_frame_equal(pd.read_parquet(res.behaviors_path), ref[COLS])
    movies = pd.read_csv(src / "movies.csv", dtype={"movieId": str})
    items = pd.read_parquet(res.items_path)
    assert list(items[ITEM_ID]) == list(movies.movieId)
    assert list(items[TITLE]) == list(movies.title.str.strip())  # quoted commas parsed right; trimmed
    tagged = set(pd.read_csv(src / "tags.csv", dtype={"movieId": str}).movieId)
    no_text = (movies.genres == "(no genres listed)") & ~movies.movieId.isin(tagged)
    assert list(items[DESCRIPTION] == "") == list(no_text)
    return res


def test_taobao_sample(tmp_path):
    res = check_taobao(sample_path("taobao"), tmp_path)
    flagged = res.report["files"][0]["flagged"]
    assert flagged["item_category_conflict"] == 1 and flagged["out_of_window"] >= 1
    assert res.report["rows_bad"] == 0


def test_movielens_sample(tmp_path):
    res = check_movielens(sample_path("movielens"), tmp_path)
    assert res.report["rows_bad"] == 0
    items = pd.read_parquet(res.items_path).set_index(ITEM_ID)
    assert items.loc["11", TITLE] == "American President, The (1995)"


def test_taobao_full(shared_data_dir, tmp_path):
    res = check_taobao(shared_data_dir / "taobao-userbehavior", tmp_path)
    assert res.report["files"][0]["flagged"]["out_of_window"] == 32  # per the data README


def test_movielens_full(shared_data_dir, tmp_path):
    res = check_movielens(shared_data_dir / "movielens-latest-small", tmp_path)
    assert res.report["info"]["behaviors"] == 100836 + 3683


def test_sample_is_small_and_licensed():
    total = sum(p.stat().st_size for p in sample_path("taobao").parent.rglob("*") if p.is_file())
    assert total < 3 * 2**20
    assert "Usage License" in (sample_path("movielens") / "README.txt").read_text()
    assert "Zhu" in (sample_path("taobao") / "LICENSE.md").read_text()
