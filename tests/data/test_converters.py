"""Converters on tiny in-code files: good rows kept exactly, every flaw reported."""
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmgin_tf.config import DataConfig
from dmgin_tf.data.converters import convert, convert_generic, convert_movielens, convert_taobao
from dmgin_tf.data.converters.report import read_report
from dmgin_tf.data.converters.taobao import WINDOW_START
from dmgin_tf.errors import DataError
from dmgin_tf.features import BEHAVIOR, CATEGORY, DESCRIPTION, IMAGE, ITEM_ID, TIMESTAMP, TITLE, USER_ID

LOOSE = DataConfig(max_error_fraction=1.0)  # tests of bad rows must not trip the limit
T0 = WINDOW_START + 3600


def _file_stats(report, name):
    return next(f for f in report["files"] if f["path"].endswith(name))


def _samples(report, reason):
    return [s for s in report["samples"] if s["reason"] == reason]


def _write(path, lines, encoding_bytes=None):
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


# --- Taobao ----------------------------------------------------------------------------------
GOOD_TAOBAO = [
    f"2,20,200,pv,{T0 + 5}",
    f"1,10,100,pv,{T0 + 2}",
    f"1,11,100,cart,{T0 + 1}",
    f"1,10,100,buy,{T0 + 2}",      # same second as line 2: file order decides
    f"1,12,101,fav,{T0 - 86400 * 60}",  # before the window: kept, flagged
    f"1,12,102,pv,{T0 + 9}",       # item 12: category conflict 101 vs 102 (102 wins 2:1)
    f"2,12,102,pv,{T0 + 7}",
]
BAD_TAOBAO = {
    "wrong_field_count": "3,30,300,pv",                  # truncated line
    "bad_timestamp": "3,30,300,pv,17abc",               # non-integer timestamp
    "unknown_behavior": f"3,30,300,click,{T0}",
    "bad_id": f"x3,30,300,pv,{T0}",
    "non_utf8": b"3,3\xff0,300,pv," + str(T0).encode(),
    "bad_quoting": f'3,"30,300,pv,{T0}',
}


def test_taobao_good_rows_sorted_and_items(tmp_path):
    src = _write(tmp_path / "UserBehavior.csv", GOOD_TAOBAO)
    res = convert_taobao(tmp_path, tmp_path / "out")
    beh = pd.read_parquet(res.behaviors_path)
    assert list(beh.columns) == [USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP]
    assert beh[TIMESTAMP].dtype == "int64"
    # reference: parse with pandas, sort by (user text, timestamp, line)
    ref = pd.read_csv(src, header=None, names=[USER_ID, ITEM_ID, CATEGORY, BEHAVIOR, TIMESTAMP], dtype=str)
    ref[TIMESTAMP] = ref[TIMESTAMP].astype("int64")
    ref["line"] = range(len(ref))
    ref = ref.sort_values([USER_ID, TIMESTAMP, "line"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(beh, ref[[USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP]])
    assert list(beh[BEHAVIOR][:4]) == ["fav", "cart", "pv", "buy"]
    items = pd.read_parquet(res.items_path).set_index(ITEM_ID)
    assert list(items.columns) == [TITLE, DESCRIPTION, CATEGORY, IMAGE]
    assert items[CATEGORY].to_dict() == {"20": "200", "10": "100", "11": "100", "12": "102"}
    assert (items[TITLE] == "").all() and items[IMAGE].isna().all()
    rep = read_report(tmp_path / "out")
    assert _file_stats(rep, "UserBehavior.csv")["flagged"] == {"item_category_conflict": 1, "out_of_window": 1}
    assert _samples(rep, "out_of_window")[0]["where"].endswith("UserBehavior.csv:5")
    assert "kept 102" in _samples(rep, "item_category_conflict")[0]["detail"]
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Conversion report: taobao")


def test_taobao_each_bad_row_reported_and_good_rows_kept(tmp_path):
    lines = list(GOOD_TAOBAO)
    bad_lines = {}
    for reason, line in BAD_TAOBAO.items():
        lines.append(line)
        bad_lines[reason] = len(lines)
    lines.append(GOOD_TAOBAO[1])  # exact duplicate of line 2
    bad_lines["duplicate_row"] = len(lines)
    lines.insert(3, b"")          # blank line: ignored, not a row
    bad_lines = {r: (n + 1 if n >= 4 else n) for r, n in bad_lines.items()}
    _write(tmp_path / "UserBehavior.csv", lines)
    res = convert_taobao(tmp_path / "UserBehavior.csv", tmp_path / "out", LOOSE)
    rep = res.report
    fs = _file_stats(rep, "UserBehavior.csv")
    assert fs["bad"] == {r: 1 for r in bad_lines}
    assert fs["rows_read"] == len(GOOD_TAOBAO) + len(bad_lines) and fs["rows_kept"] == len(GOOD_TAOBAO)
    for reason, n in bad_lines.items():
        (s,) = _samples(rep, reason)
        assert s["where"].endswith(f"UserBehavior.csv:{n}") and s["kind"] == "bad" and s["detail"]
    assert "duplicate of" in _samples(rep, "duplicate_row")[0]["detail"]
    beh = pd.read_parquet(res.behaviors_path)
    assert len(beh) == len(GOOD_TAOBAO) and not beh.duplicated().any()
    assert set(beh[USER_ID]) == {"1", "2"}  # nothing of user 3 got through
    md = (tmp_path / "out" / "report.md").read_text()
    assert all(r in md for r in bad_lines)


def test_error_fraction_exceeded_raises_and_publishes_no_tables(tmp_path):
    _write(tmp_path / "UserBehavior.csv", GOOD_TAOBAO[:3] + [BAD_TAOBAO["bad_timestamp"]])
    with pytest.raises(DataError, match=r"UserBehavior.csv: 1 of 4 rows are bad \(25.00% > "
                                        r"max_error_fraction 10.00%"):
        convert_taobao(tmp_path, tmp_path / "out", DataConfig(max_error_fraction=0.1))
    assert not (tmp_path / "out" / "behaviors.parquet").exists()
    # the failure report lives beside the output, never inside it
    assert read_report(tmp_path / "out.failed")["files"][0]["bad"] == {"bad_timestamp": 1}
    # at the limit it passes
    convert_taobao(tmp_path, tmp_path / "ok", DataConfig(max_error_fraction=0.25))


def test_samples_are_capped_per_reason(tmp_path):
    _write(tmp_path / "UserBehavior.csv", GOOD_TAOBAO + [f"3,30,300,click,{T0 + i}" for i in range(9)])
    rep = convert_taobao(tmp_path, tmp_path / "out", LOOSE, max_samples=2).report
    assert rep["files"][0]["bad"]["unknown_behavior"] == 9
    assert len(_samples(rep, "unknown_behavior")) == 2


def test_negative_timestamp_is_bad(tmp_path):
    _write(tmp_path / "UserBehavior.csv", GOOD_TAOBAO + ["3,30,300,pv,-5"])
    rep = convert_taobao(tmp_path, tmp_path / "out", LOOSE).report
    assert rep["files"][0]["bad"] == {"bad_timestamp": 1}


# --- MovieLens --------------------------------------------------------------------------------
MOVIES = ["movieId,title,genres",
          '1,"American President, The (1995)",Comedy|Drama|Romance',
          "2,Heat (1995),Action|Crime|Thriller",
          "3,Nothing (2000),(no genres listed)",
          b"4,Mis\xe9rables (1995),Drama",          # latin-1 byte in a title: repaired, kept
          "5,,",                                     # no title, no genres, no tags
          "2,Heat again (1995),Action"]              # duplicate movieId
T = 964_982_600          # MovieLens times are 1995 or later; T + 100 etc. below
RATINGS = ["userId,movieId,rating,timestamp",
           f"1,1,4.0,{T + 100}", f"1,2,2.5,{T + 90}", f"1,3,3.5,{T + 100}", f"2,4,5.0,{T + 50}",
           f"2,9,1.0,{T + 60}",   # 9: not in catalog
           f"2,5,3.0,{T + 70}",
           f"2,1,6.0,{T + 80}",   # rating out of range
           "2,1,4.0,1e9",         # bad timestamp
           f"1,1,4.0,{T + 100}",  # exact duplicate
           "2,3,4.0,145573"]      # a line cut short (1970): before MovieLens began
TAGS = ["userId,movieId,tag,timestamp",
        f'1,1,"politics, US",{T + 100}', f"1,1,president,{T + 100}",
        f"1,1,President,{T + 101}",  # same second: both kept
        f"2,2,,{T + 55}",            # empty tag: behavior kept
        b"2,\xff2,heist," + str(T + 56).encode()]      # invalid byte in an id


@pytest.fixture
def ml_dir(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    _write(d / "movies.csv", MOVIES)
    _write(d / "ratings.csv", RATINGS)
    _write(d / "tags.csv", TAGS)
    return d


def test_movielens_behaviors_items_and_report(ml_dir, tmp_path):
    res = convert_movielens(ml_dir, tmp_path / "out", LOOSE)
    beh = pd.read_parquet(res.behaviors_path)
    expected = [(u, i, b, T + t) for u, i, b, t in [
        ("1", "2", "low", 90), ("1", "1", "high", 100), ("1", "3", "mid", 100),
        ("1", "1", "tag", 100), ("1", "1", "tag", 100), ("1", "1", "tag", 101),
        ("2", "4", "high", 50), ("2", "2", "tag", 55), ("2", "9", "low", 60), ("2", "5", "mid", 70)]]
    assert list(beh.itertuples(index=False, name=None)) == expected
    items = pd.read_parquet(res.items_path).set_index(ITEM_ID)
    assert list(items.index) == ["1", "2", "3", "4", "5", "9"]
    assert items.loc["1", TITLE] == "American President, The (1995)"
    assert items.loc["1", CATEGORY] == "Comedy|Drama|Romance"
    assert items.loc["1", DESCRIPTION] == "Comedy, Drama, Romance. Tags: politics, US, president"
    assert items.loc["3", CATEGORY] == "" and items.loc["3", DESCRIPTION] == ""
    assert items.loc["4", TITLE] == "Mis\ufffdrables (1995)"
    assert items.loc["9", TITLE] == "" and items.loc["2", TITLE] == "Heat (1995)"
    rep = res.report
    assert _file_stats(rep, "movies.csv")["bad"] == {"duplicate_item": 1}
    assert _file_stats(rep, "movies.csv")["flagged"] == {
        "missing_item_text": 2, "missing_title": 1, "non_utf8_text_repaired": 1}
    assert _file_stats(rep, "ratings.csv")["bad"] == {"bad_rating": 1, "bad_timestamp": 1,
                                                      "duplicate_row": 1,
                                                      "timestamp_out_of_range": 1}
    assert "before 1995-01-01" in json.dumps(rep)
    assert _file_stats(rep, "ratings.csv")["flagged"] == {"item_not_in_catalog": 1}
    assert _file_stats(rep, "tags.csv")["bad"] == {"non_utf8": 1}
    assert _file_stats(rep, "tags.csv")["flagged"] == {"empty_tag": 1}
    assert _samples(rep, "duplicate_row")[0]["where"].endswith("ratings.csv:10")
    assert "ratings.csv:2" in _samples(rep, "duplicate_row")[0]["detail"]
    assert rep["info"]["items_with_text"] == 4


def test_movielens_wrong_header_names_file(ml_dir, tmp_path):
    _write(ml_dir / "ratings.csv", ["user,movie,rating,ts", "1,1,4.0,100"])
    with pytest.raises(DataError, match="ratings.csv: expected header"):
        convert_movielens(ml_dir, tmp_path / "out")


def test_movielens_tags_optional_and_missing_ratings(ml_dir, tmp_path):
    _write(ml_dir / "tags.csv", TAGS[:1])              # a header only: no tags, no failure
    res = convert_movielens(ml_dir, tmp_path / "out0", LOOSE)
    assert "tag" not in set(pd.read_parquet(res.behaviors_path)[BEHAVIOR])
    assert "holds no rows" in json.dumps(res.report)
    (ml_dir / "tags.csv").unlink()
    res = convert_movielens(ml_dir, tmp_path / "out", LOOSE)
    assert "tag" not in set(pd.read_parquet(res.behaviors_path)[BEHAVIOR])
    _write(ml_dir / "movies.csv", MOVIES[:1])          # a catalog with a header only
    with pytest.raises(DataError, match=r"movies.csv: no data rows \(a header only\?\)"):
        convert_movielens(ml_dir, tmp_path / "out1", LOOSE)
    (ml_dir / "ratings.csv").unlink()
    # The message says what the folder holds (a mistyped name is then plain to see).
    with pytest.raises(FileNotFoundError, match=r"ratings.csv \(.* holds movies.csv"):
        convert_movielens(ml_dir, tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="is a file; pass the directory"):
        convert_movielens(ml_dir / "movies.csv", tmp_path / "out3")


def test_movielens_gzipped_files_in_a_directory_are_found(ml_dir, tmp_path):
    import gzip
    for name in ("movies.csv", "ratings.csv"):
        (ml_dir / f"{name}.gz").write_bytes(gzip.compress((ml_dir / name).read_bytes()))
        (ml_dir / name).unlink()
    res = convert_movielens(ml_dir, tmp_path / "out", LOOSE)
    assert len(pd.read_parquet(res.behaviors_path)) == 10     # the 6 ratings kept + 4 tags
    assert len(pd.read_parquet(res.items_path)) == 6


# --- generic ------------------------------------------------------------------------------------
def test_generic_csv_with_vocab_items_and_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG fake")
    _write(tmp_path / "events.csv", [
        "timestamp,user_id,item_id,behavior,event_id",
        "10,u1,a,click,e1", "5,u1,b,order,e2", "10,u1,a,click,e1",  # exact duplicate
        "10,u1,a,click,e3",       # same as row 2 but another event id: kept
        "7,u2,c,view,e4",         # unknown behavior
        "8,u2,,click,e5",         # empty item id
        "9,u2,a|b,click,e7",      # '|' is reserved by the pipeline's vocabulary lines
        "-1,u2,a,click,e6"])      # negative timestamp
    _write(tmp_path / "items.csv", ["item_id,title,image", "a,Alpha,img/a.png", "b,,img/missing.png",
                                    "a,dup,", "x|y,Bad,"])
    res = convert_generic(tmp_path / "events.csv", tmp_path / "out", LOOSE, items_path=tmp_path / "items.csv",
                          behavior_types=["click", "order"])
    beh = pd.read_parquet(res.behaviors_path)
    assert list(beh.itertuples(index=False, name=None)) == [
        ("u1", "b", "order", 5), ("u1", "a", "click", 10), ("u1", "a", "click", 10)]
    items = pd.read_parquet(res.items_path).set_index(ITEM_ID)
    assert items.loc["a", IMAGE] == b"\x89PNG fake" and items.loc["b", IMAGE] is None
    assert list(items.index) == ["a", "b"]
    rep = res.report
    assert _file_stats(rep, "events.csv")["bad"] == {
        "bad_id": 2, "bad_timestamp": 1, "duplicate_row": 1, "unknown_behavior": 1}
    assert _file_stats(rep, "items.csv")["bad"] == {"bad_id": 1, "duplicate_item": 1}
    details = json.dumps(rep)
    assert "'a|b' contains '|'" in details and "'x|y' contains '|'" in details, details
    assert _file_stats(rep, "items.csv")["flagged"] == {"missing_image": 1, "missing_item_text": 1}
    assert rep["info"]["behavior_types"] == ["click", "order"]


def test_generic_parquet_roundtrips_converted_output(tmp_path):
    ts = pa.array([3_000_000, 1_000_000], type=pa.timestamp("ms"))
    pq.write_table(pa.table({USER_ID: [7, 7], ITEM_ID: ["x", "y"], BEHAVIOR: ["buy", "view"],
                             TIMESTAMP: ts}), tmp_path / "behaviors.parquet")
    res = convert_generic(tmp_path, tmp_path / "out")  # no vocabulary: every value accepted
    beh = pd.read_parquet(res.behaviors_path)
    assert list(beh.itertuples(index=False, name=None)) == [("7", "y", "view", 1000), ("7", "x", "buy", 3000)]
    assert res.report["info"]["behavior_types"] == ["buy", "view"]
    # a converted directory is valid generic input and converts to the same tables
    again = convert("generic", tmp_path / "out", tmp_path / "again")
    pd.testing.assert_frame_equal(pd.read_parquet(again.behaviors_path), beh)
    pd.testing.assert_frame_equal(pd.read_parquet(again.items_path), pd.read_parquet(res.items_path))


def test_a_parquet_timestamp_column_is_not_divided_again_by_the_unit_flag(tmp_path):
    """A Parquet timestamp column is read in its type's unit; `--timestamp-unit ms` on top
    would date every event in January 1970, so that combination is refused."""
    ts = pa.array([1_511_544_070_000_000, 1_511_544_080_000_000],
                  type=pa.timestamp("us", tz="Asia/Shanghai"))
    pq.write_table(pa.table({USER_ID: ["u1", "u1"], ITEM_ID: ["i1", "i2"],
                             BEHAVIOR: ["click", "order"], TIMESTAMP: ts}), tmp_path / "tz.parquet")
    res = convert_generic(tmp_path / "tz.parquet", tmp_path / "out")
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [1511544070, 1511544080]
    with pytest.raises(DataError, match=r"tz.parquet: column 'timestamp' is a Parquet "
                                        r"timestamp\[us, tz=Asia/Shanghai\] column.*"
                                        r"--timestamp-unit ms is for integer timestamps"):
        convert_generic(tmp_path / "tz.parquet", tmp_path / "out2", timestamp_unit="ms")
    # integer milliseconds in Parquet still take the flag
    pq.write_table(pa.table({USER_ID: ["u1"], ITEM_ID: ["i1"], BEHAVIOR: ["click"],
                             TIMESTAMP: [1_511_544_070_123]}), tmp_path / "ms.parquet")
    res = convert_generic(tmp_path / "ms.parquet", tmp_path / "out3", timestamp_unit="ms")
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [1511544070]


def test_item_not_in_catalog_counts_rows(tmp_path):
    """The report's flagged counts are rows, as everywhere else in it: three behaviors on
    one missing item are 3, the item is added once."""
    _write(tmp_path / "b.csv", ["user_id,item_id,behavior,timestamp", "u1,X,click,10",
                                "u1,X,click,11", "u2,X,order,12", "u2,A,click,13"])
    _write(tmp_path / "items.csv", ["item_id,title", "A,Alpha"])
    res = convert_generic(tmp_path / "b.csv", tmp_path / "out", items_path=tmp_path / "items.csv")
    assert _file_stats(res.report, "b.csv")["flagged"] == {"item_not_in_catalog": 3}
    assert sorted(pd.read_parquet(res.items_path)[ITEM_ID]) == ["A", "X"]


def test_generic_missing_column_is_an_error(tmp_path):
    _write(tmp_path / "b.csv", ["user_id,item_id,when", "u,i,1"])
    with pytest.raises(DataError, match=r"b.csv: header must name columns .*missing \['behavior', 'timestamp'\]"):
        convert_generic(tmp_path / "b.csv", tmp_path / "out")


def test_report_json_is_valid_json(tmp_path):
    _write(tmp_path / "UserBehavior.csv", GOOD_TAOBAO)
    convert("taobao", tmp_path, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["dataset"] == "taobao" and data["rows_read"] == len(GOOD_TAOBAO)


def test_behavior_sink_spills_in_chunks_and_sorts(tmp_path):
    from dmgin_tf.data.converters.report import ConversionReport
    from dmgin_tf.data.converters.tables import BehaviorSink
    report = ConversionReport("t", 1.0)
    fr = report.file(tmp_path / "f.csv", "behaviors")
    rows = [("b", "i1", "pv", 5), ("a", "i2", "pv", 9), ("b", "i3", "buy", 1), ("a", "i4", "pv", 9),
            ("a", "i0", "fav", 2), ("b", "i3", "buy", 1), ("c", "i1", "pv", 0)]
    sink = BehaviorSink(tmp_path, [fr], chunk_rows=2)  # 4 spills
    for line, r in enumerate(rows, start=1):
        sink.add(*r, 0, line)
    assert sink.finish(tmp_path / "b.parquet", report) == 6
    got = list(pd.read_parquet(tmp_path / "b.parquet").itertuples(index=False, name=None))
    assert got == [("a", "i0", "fav", 2), ("a", "i2", "pv", 9), ("a", "i4", "pv", 9),
                   ("b", "i3", "buy", 1), ("b", "i1", "pv", 5), ("c", "i1", "pv", 0)]
    assert fr.bad == {"duplicate_row": 1} and not (tmp_path / "_behaviors_spill.parquet").exists()


def test_generic_empty_behavior_is_named_as_empty(tmp_path):
    """Without --behaviors the message read "behavior '' not in []"."""
    _write(tmp_path / "b.csv", ["user_id,item_id,behavior,timestamp", f"u,i,,{T0}",
                                f"u,i,view,{T0}"])
    res = convert_generic(tmp_path / "b.csv", tmp_path / "out", LOOSE)
    (sample,) = _samples(res.report, "unknown_behavior")
    assert "empty behavior" in str(sample) and "not in []" not in str(sample), sample
