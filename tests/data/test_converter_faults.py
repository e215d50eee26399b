"""Converters under faults: out-of-range values never escape a row, a failed or
interrupted run never touches the previous good output, empty and compressed input."""
import gzip
import os
import subprocess
import sys
import zipfile

import pandas as pd
import pytest

from dmgin_tf.cli.main import main
from dmgin_tf.config import DataConfig
from dmgin_tf.data.converters import convert, convert_generic, convert_movielens, convert_taobao
from dmgin_tf.data.converters.report import read_report
from dmgin_tf.data.converters.taobao import WINDOW_START
from dmgin_tf.errors import DataError
from dmgin_tf.features import TIMESTAMP

LOOSE = DataConfig(max_error_fraction=1.0)
T0 = WINDOW_START + 3600
GOOD = [f"1,10,100,pv,{T0}", f"1,11,100,buy,{T0 + 5}", f"2,10,100,pv,{T0 + 9}"]
HUGE = [f"3,12,100,pv,{T0 * 1000}",     # milliseconds
        "3,13,100,pv,1511575200000000",  # microseconds (year 49871 in seconds)
        f"3,14,100,pv,{2 ** 63}",        # beyond int64
        f"3,15,100,pv,{2 ** 64 + 7}"]


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _bad(report, name):
    return next(f for f in report["files"] if f["path"].endswith(name))["bad"]


def test_taobao_huge_and_millisecond_timestamps_are_bad_rows(tmp_path):
    _write(tmp_path / "UserBehavior.csv", GOOD + HUGE)
    res = convert_taobao(tmp_path, tmp_path / "out", LOOSE)
    assert len(pd.read_parquet(res.behaviors_path)) == len(GOOD)   # every good row kept
    assert _bad(res.report, "UserBehavior.csv") == {"timestamp_out_of_range": 4}
    details = [s["detail"] for s in res.report["samples"] if s["reason"] == "timestamp_out_of_range"]
    assert "milliseconds" in details[0] and "--timestamp-unit ms" in details[0]
    assert "microseconds" in details[1] and "--timestamp-unit us" in details[1]
    assert all("2100" in d for d in details[2:])


def test_millisecond_timestamps_convert_with_the_unit_flag(tmp_path):
    _write(tmp_path / "UserBehavior.csv", [f"1,10,100,pv,{T0 * 1000 + 999}"])
    res = convert_taobao(tmp_path, tmp_path / "out", timestamp_unit="ms")
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [T0]
    with pytest.raises(DataError, match="timestamp unit 'min'"):
        convert("taobao", tmp_path, tmp_path / "o2", timestamp_unit="min")


@pytest.mark.parametrize("unit, scale", [("us", 10 ** 6), ("ns", 10 ** 9)])
def test_micro_and_nanosecond_timestamps_convert_with_the_unit_flag(tmp_path, unit, scale):
    """Exports in µs / ns (e.g. BigQuery's TIMESTAMP as an integer) convert with the
    flag; a value that is too large even in the unit given says so in that unit."""
    _write(tmp_path / "UserBehavior.csv", [f"1,10,100,pv,{T0 * scale + scale - 1}",
                                          f"1,11,100,pv,{T0 * scale * 10 ** 6}"])
    res = convert_taobao(tmp_path, tmp_path / "out", LOOSE, timestamp_unit=unit)
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [T0]
    detail = next(s["detail"] for s in res.report["samples"]
                  if s["reason"] == "timestamp_out_of_range")
    assert f"even read as {'microseconds' if unit == 'us' else 'nanoseconds'}" in detail
    assert f"--timestamp-unit {unit}" in detail and "Unix seconds expected" not in detail


def _ml(d, ratings_ts):
    d.mkdir()
    _write(d / "movies.csv", ["movieId,title,genres", "1,Toy Story (1995),Animation"])
    _write(d / "ratings.csv", ["userId,movieId,rating,timestamp"]
           + [f"1,1,4.0,{ts}" for ts in ratings_ts])
    return d


def test_movielens_millisecond_and_int64_overflow(tmp_path):
    src = _ml(tmp_path / "ml", [964982703, 964982703000 + 1, 2 ** 63])
    res = convert_movielens(src, tmp_path / "out", LOOSE)
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [964982703]
    assert _bad(res.report, "ratings.csv") == {"timestamp_out_of_range": 2}
    # all milliseconds: refused as a whole, with the reason in the message
    src = _ml(tmp_path / "ml2", [964982703000, 964982704000])
    with pytest.raises(DataError, match="timestamp_out_of_range 2"):
        convert_movielens(src, tmp_path / "out2")
    res = convert_movielens(src, tmp_path / "out3", timestamp_unit="ms")
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [964982703, 964982704]


def test_generic_int64_overflow_and_float_timestamps(tmp_path):
    _write(tmp_path / "b.csv", ["user_id,item_id,behavior,timestamp", "u,i,click,100",
                                f"u,j,click,{2 ** 63}", "u,k,click,1e300", "u,l,click,1700000000000"])
    res = convert_generic(tmp_path / "b.csv", tmp_path / "out", LOOSE)
    assert len(pd.read_parquet(res.behaviors_path)) == 1
    assert _bad(res.report, "b.csv") == {"timestamp_out_of_range": 2, "bad_timestamp": 1}


def _snapshot(d):
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d))}


def test_failed_run_leaves_previous_output_untouched_and_reports_beside_it(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "UserBehavior.csv", GOOD)
    out = tmp_path / "out"
    convert_taobao(src, out)
    before = _snapshot(out)
    _write(src / "UserBehavior.csv", GOOD[:1] + ["x,1,1,pv,1"] * 3)   # 75% bad
    with pytest.raises(DataError) as info:
        convert_taobao(src, out, DataConfig(max_error_fraction=0.1))
    assert "out.failed" in str(info.value) and "previous conversion" in str(info.value)
    assert _snapshot(out) == before                                 # byte for byte
    assert _bad(read_report(tmp_path / "out.failed"), "UserBehavior.csv") == {"bad_id": 3}
    # `dmgin data stats` on the old output says the last conversion failed
    assert main(["data", "stats", str(out)]) == 0
    assert "last conversion into" in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path) if ".convert-" in n]  # no staging left
    # the next good run replaces the output and clears the failure report
    _write(src / "UserBehavior.csv", GOOD[:2])
    res = convert_taobao(src, out)
    assert len(pd.read_parquet(res.behaviors_path)) == 2
    assert not (tmp_path / "out.failed").exists()


def test_output_dir_with_other_files_keeps_them(tmp_path):
    _write(tmp_path / "UserBehavior.csv", GOOD)           # input inside the output dir
    res = convert_taobao(tmp_path / "UserBehavior.csv", tmp_path)
    assert (tmp_path / "UserBehavior.csv").exists() and res.behaviors_path.exists()


def test_sigterm_removes_staging_and_a_killed_runs_leftover_is_cleaned(tmp_path):
    out = tmp_path / "out"
    code = ("import os, signal, sys, time\n"
            "from dmgin_tf.data.converters.common import staging\n"
            "with staging(sys.argv[1]) as tmp:\n"
            "    (tmp / 'behaviors.parquet').write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], timeout=120)
    assert proc.returncode == -15
    assert not [n for n in os.listdir(tmp_path) if ".convert-" in n]
    # SIGKILL leaves a staging dir behind: the next run into the same output removes it
    dead = tmp_path / ".out.convert-999999-abc"
    dead.mkdir()
    _write(tmp_path / "UserBehavior.csv", GOOD)
    convert_taobao(tmp_path / "UserBehavior.csv", out)
    assert not dead.exists()


def test_sigterm_whose_exception_is_swallowed_still_ends_the_run(tmp_path):
    """A SIGTERM arriving inside an import: importlib swallows the handler's exception
    ("Exception ignored"), a half-imported module then fails with an unrelated error,
    which the CLI reported as the conversion's error (exit 2) instead of dying of the
    signal."""
    code = ("import os, signal, sys\n"
            "from dmgin_tf.data.converters.common import staging\n"
            "with staging(sys.argv[1]) as tmp:\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    except BaseException:\n"
            "        pass\n"
            "    raise AttributeError(\"partially initialized module 'pandas'\")\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -15, proc.stderr
    assert "AttributeError" not in proc.stderr, proc.stderr
    assert not [n for n in os.listdir(tmp_path) if ".convert-" in n]


def test_empty_input_is_an_error(tmp_path):
    _write(tmp_path / "UserBehavior.csv", [])
    with pytest.raises(DataError, match="no data rows"):
        convert_taobao(tmp_path, tmp_path / "out")
    src = _ml(tmp_path / "ml", [])
    with pytest.raises(DataError, match="ratings.csv: no data rows"):
        convert_movielens(src, tmp_path / "out2")
    _write(tmp_path / "b.csv", ["user_id,item_id,behavior,timestamp"])
    with pytest.raises(DataError, match="b.csv: no data rows"):
        convert_generic(tmp_path / "b.csv", tmp_path / "out3")
    assert not (tmp_path / "out").exists()


def test_gzip_is_read_and_other_archives_refused_by_name(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    with gzip.open(d / "UserBehavior.csv.gz", "wt") as f:
        f.write("".join(line + "\n" for line in GOOD))
    res = convert_taobao(d, tmp_path / "out")                # directory: finds the .gz
    assert len(pd.read_parquet(res.behaviors_path)) == len(GOOD)
    with zipfile.ZipFile(tmp_path / "UserBehavior.csv", "w") as z:
        z.writestr("UserBehavior.csv", "\n".join(GOOD))
    with pytest.raises(DataError, match="zip archive; unpack it first"):
        convert_taobao(tmp_path / "UserBehavior.csv", tmp_path / "out2")
    (tmp_path / "broken.csv").write_bytes(gzip.compress("\n".join(GOOD * 50).encode())[:60])
    with pytest.raises(DataError, match="corrupt or truncated"):
        convert_taobao(tmp_path / "broken.csv", tmp_path / "out3")


def test_cli_errors_are_one_line(tmp_path, capsys):
    _write(tmp_path / "UserBehavior.csv", ["x,1,1,pv,1"])
    assert main(["data", "convert", "--dataset", "taobao", "--input", str(tmp_path),
                 "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out.failed" in err, err
    # a stats run converting on the fly does not point at its deleted temp report
    assert main(["data", "stats", "--dataset", "taobao", "--input", str(tmp_path),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dmgin-stats-" not in err and "--output" in err, err
    # unwritable output (a path under a regular file)
    _write(tmp_path / "UserBehavior.csv", GOOD)
    assert main(["data", "convert", "--dataset", "taobao", "--input", str(tmp_path),
                 "--output", str(tmp_path / "UserBehavior.csv" / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "UserBehavior.csv" in err, err
    assert "UserBehavior.csv is a file, not a directory" in err, err


def test_an_unwritable_output_is_named_not_the_staging_folder(tmp_path, capsys, monkeypatch):
    """A folder the user may not write to was reported by the converter's hidden staging
    folder beside it (`.out.convert-<pid>-<random>: Permission denied`)."""
    import tempfile

    def refuse(prefix, dir):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "x1"))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    _write(tmp_path / "UserBehavior.csv", GOOD)
    out = tmp_path / "ro" / "out"
    assert main(["data", "convert", "--dataset", "taobao", "--input", str(tmp_path),
                 "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"output {out}: cannot write there (Permission denied)" in err, err
    assert ".convert-" not in err and len(err.splitlines()) == 1, err


def test_millisecond_events_in_one_second_are_not_duplicates(tmp_path):
    """Two clicks 333 ms apart become the same second; they are still two events (they
    were dropped as an 'exact duplicate'). A row repeated to the millisecond still is one."""
    ms = T0 * 1000
    _write(tmp_path / "UserBehavior.csv", [f"1,10,100,pv,{ms + 123}", f"1,10,100,pv,{ms + 456}",
                                           f"1,10,100,pv,{ms + 456}"])
    res = convert_taobao(tmp_path, tmp_path / "out", LOOSE, timestamp_unit="ms")
    assert pd.read_parquet(res.behaviors_path)[TIMESTAMP].tolist() == [T0, T0]
    assert _bad(res.report, "UserBehavior.csv") == {"duplicate_row": 1}
    dup = [s for s in res.report["samples"] if s["reason"] == "duplicate_row"][0]
    assert "\x1f" not in dup["text"]

    src = _ml(tmp_path / "ml", [ms + 1, ms + 2, ms + 2])
    res = convert_movielens(src, tmp_path / "ml_out", LOOSE, timestamp_unit="ms")
    assert len(pd.read_parquet(res.behaviors_path)) == 2

    (tmp_path / "g.csv").write_text("user_id,item_id,behavior,timestamp\n"
                                    f"1,2,click,{ms + 1}\n1,2,click,{ms + 2}\n1,2,click,{ms + 2}\n")
    res = convert_generic(tmp_path / "g.csv", tmp_path / "g_out", LOOSE, timestamp_unit="ms")
    assert len(pd.read_parquet(res.behaviors_path)) == 2


def test_parquet_ids_of_other_types_read_as_text_or_are_refused(tmp_path):
    """Spark's binary strings and pandas' float ids read as the ids they are (they became
    "b'u1'" and "10.0", which no items file matches); lists and booleans are refused
    naming the column (they became "[1, 2]" and "True")."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    beh = pa.table({"user_id": pa.array([b"u1", b"u2"], pa.binary()),
                    "item_id": pa.array([10.0, 11.0]), "behavior": ["click", "click"],
                    "timestamp": [T0, T0 + 1]})
    pq.write_table(beh, tmp_path / "b.parquet")
    res = convert_generic(tmp_path / "b.parquet", tmp_path / "out")
    got = pd.read_parquet(res.behaviors_path)
    assert got["user_id"].tolist() == ["u1", "u2"] and got["item_id"].tolist() == ["10", "11"]
    for column, values in (("user_id", pa.array([[1, 2], [3]])),
                           ("behavior", pa.array([True, False]))):
        bad = beh.set_column(beh.schema.get_field_index(column), column, values)
        pq.write_table(bad, tmp_path / f"{column}.parquet")
        with pytest.raises(DataError, match=rf"column '{column}' has Parquet type .*strings or integers"):
            convert_generic(tmp_path / f"{column}.parquet", tmp_path / f"o_{column}")
    # A binary id that is not UTF-8 is a bad row, not a crash.
    bad = beh.set_column(0, "user_id", pa.array([b"\xff\xfe", b"u2"], pa.binary()))
    pq.write_table(bad, tmp_path / "nonutf8.parquet")
    res = convert_generic(tmp_path / "nonutf8.parquet", tmp_path / "o_nonutf8", LOOSE)
    assert pd.read_parquet(res.behaviors_path)["user_id"].tolist() == ["u2"]


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    (tmp_path / "fake.parquet").write_text("user_id,item_id,behavior,timestamp\n1,2,click,5\n")
    with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
        convert_generic(tmp_path / "fake.parquet", tmp_path / "out")


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    """The first of the two columns silently won."""
    (tmp_path / "b.csv").write_text("user_id,user_id,item_id,behavior,timestamp\n1,9,2,click,5\n")
    with pytest.raises(DataError, match=r"b.csv: the header names column\(s\) \['user_id'\] "
                                        r"more than once"):
        convert_generic(tmp_path / "b.csv", tmp_path / "out")


def test_zero_padded_numeric_ids_are_the_same_user_and_item(tmp_path):
    """`001` and `1` were two users (Taobao), and a rating of movie `0050` created a new,
    empty catalog item beside movie 50 (MovieLens)."""
    from dmgin_tf.features import ITEM_ID, USER_ID
    d = tmp_path / "tb"
    d.mkdir()
    _write(d / "UserBehavior.csv", [f"001,010,0100,pv,{T0}", f"1,10,100,buy,{T0 + 5}",
                                    "1,10,100,pv,151154"])     # a line cut short: 1970
    res = convert_taobao(d, tmp_path / "out", LOOSE)
    beh = pd.read_parquet(res.behaviors_path)
    assert beh[USER_ID].tolist() == ["1", "1"] and beh[ITEM_ID].tolist() == ["10", "10"]
    assert _bad(res.report, "UserBehavior.csv") == {"timestamp_out_of_range": 1}
    src = tmp_path / "ml"
    src.mkdir()
    _write(src / "movies.csv", ["movieId,title,genres", "0050,Usual Suspects (1995),Crime"])
    _write(src / "ratings.csv", ["userId,movieId,rating,timestamp", "01,50,4.0,964982703",
                                 "1,0050,3.0,964982710"])
    res = convert_movielens(src, tmp_path / "out2")
    beh = pd.read_parquet(res.behaviors_path)
    assert beh[USER_ID].tolist() == ["1", "1"] and beh[ITEM_ID].tolist() == ["50", "50"]
    assert pd.read_parquet(res.items_path)[ITEM_ID].tolist() == ["50"]
    assert not any(f["flagged"] for f in res.report["files"])
