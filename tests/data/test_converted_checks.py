"""A converted directory is checked before examples are built from it (`examples build`,
`train`, benchmarks, the pipeline's spans): a failed re-conversion, unreadable, empty or
hand-edited tables are refused naming the file and the reason."""
import os
import time

import numpy as np
import pytest

from dmgin_tf.cli.main import main
from dmgin_tf.config import DataConfig
from dmgin_tf.data.converted import check_converted
from dmgin_tf.data.examples import build_from_canonical
from dmgin_tf.errors import DataError
from tests.data.test_examples import make_tables


def _write(tmp_path, beh, items, name="conv"):
    d = tmp_path / name
    d.mkdir()
    beh.to_parquet(d / "behaviors.parquet")
    items.to_parquet(d / "items.parquet")
    return d


@pytest.fixture
def tables():
    return make_tables(seed=2)


def test_good_tables_pass(tmp_path, tables):
    check_converted(_write(tmp_path, *tables), "taobao")


@pytest.mark.parametrize("edit, words", [
    (lambda b, i: (b.iloc[:0], i), ["behaviors.parquet", "empty (0 rows)"]),
    (lambda b, i: (b, i.iloc[:0]), ["items.parquet", "empty (0 rows)"]),
    (lambda b, i: (b.drop(columns=["behavior"]), i), ["behaviors.parquet", "missing column",
                                                      "'behavior'"]),
    (lambda b, i: (b.assign(user_id=b.user_id.where(b.index != 3, None)), i),
     ["behaviors.parquet", "'user_id'", "1 null"]),
    (lambda b, i: (b.assign(timestamp=b.timestamp.where(b.index != 0, -100)), i),
     ["behaviors.parquet", "negative", "-100"]),
    # Floats were truncated to whole seconds by the pipeline's builder (sub-second order
    # turned into ties); strings and dates failed deep inside it with a TypeError.
    (lambda b, i: (b.assign(timestamp=b.timestamp + 0.25), i),
     ["behaviors.parquet", "'timestamp' is double, not integers"]),
    (lambda b, i: (b.assign(timestamp=b.timestamp.astype(str)), i),
     ["behaviors.parquet", "'timestamp' is string, not integers"]),
    (lambda b, i: (b.assign(timestamp=b.timestamp + 1_600_000_000_000), i),
     ["behaviors.parquet", "after 2100", "milliseconds"]),
])
def test_broken_tables_are_refused_naming_file_and_reason(tmp_path, tables, edit, words):
    d = _write(tmp_path, *edit(*tables))
    with pytest.raises(DataError) as e:
        check_converted(d, "taobao")
    for w in words:
        assert w in str(e.value), e.value
    # The builder refuses before building anything.
    with pytest.raises(DataError):
        build_from_canonical(d, tmp_path / "ex", DataConfig(), progress=False)
    assert not (tmp_path / "ex").exists()


def test_a_truncated_table_is_named(tmp_path, tables, capsys):
    d = _write(tmp_path, *tables)
    data = (d / "behaviors.parquet").read_bytes()
    (d / "behaviors.parquet").write_bytes(data[:1000])
    assert main(["examples", "build", "--data", str(d), "--dataset", "taobao",
                 "--output", str(tmp_path / "ex"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "behaviors.parquet: not a readable Parquet file" in err, err


def test_a_failed_reconversion_is_not_silently_replaced_by_the_previous_one(tmp_path, tables,
                                                                           capsys):
    d = _write(tmp_path, *tables)
    failed = tmp_path / "conv.failed"
    failed.mkdir()
    time.sleep(0.01)
    (failed / "report.md").write_text("too many bad rows")
    assert main(["examples", "build", "--data", str(d), "--dataset", "taobao",
                 "--output", str(tmp_path / "ex"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "last conversion into" in err and "conv.failed" in err and "failed" in err, err
    # A later successful conversion (newer tables) is used again.
    now = time.time() + 5
    os.utime(d / "behaviors.parquet", (now, now))
    check_converted(d, "taobao")


def test_no_sampled_negative_at_all_is_refused(tmp_path, tables):
    """Negatives come from the items a user never touched: a catalog of only the
    touched items gave an all-positive example set without a word."""
    beh, items = tables
    user = beh.user_id.iloc[0]
    one = beh[beh.user_id == user]
    d = _write(tmp_path, one, items[items.item_id.isin(one.item_id)])
    with pytest.raises(DataError, match="no negative could be sampled"):
        build_from_canonical(d, tmp_path / "ex", DataConfig(), progress=False)
    assert np.unique(one.item_id).size == len(items[items.item_id.isin(one.item_id)])


def test_convert_notes_times_that_look_like_the_wrong_unit(tmp_path, capsys):
    """Seconds converted with --timestamp-unit ms land in January 1970 without a word."""
    raw = tmp_path / "b.csv"
    raw.write_text("user_id,item_id,behavior,timestamp\nu1,i1,view,1600000000\n"
                   "u1,i2,buy,1600000010\n")
    for unit, noted in ((["--timestamp-unit", "ms"], True), ([], False)):
        out = tmp_path / f"out{len(unit)}"
        assert main(["data", "convert", "--dataset", "generic", "--input", str(raw),
                     "--output", str(out), "--no-progress"] + unit) == 0
        err = capsys.readouterr().err
        assert ("latest behavior is dated 1970-01-19; check --timestamp-unit ms" in err) == noted, err


def test_convert_notes_item_ids_the_catalog_lacks_and_behaviors_differing_in_case(tmp_path,
                                                                                 capsys):
    """Behaviors whose item ids the items file spells otherwise ('item-1' vs '1') lost
    their text and category with only a count in the report; 'pv' / 'PV' became two
    behavior types without a word, and a --behaviors list refused 'PV' without saying
    the list has 'pv'."""
    raw = tmp_path / "b.csv"
    raw.write_text("user_id,item_id,behavior,timestamp\n"
                   + "".join(f"u1,item-{i},{b},{1600000000 + i}\n"
                             for i, b in enumerate(["pv", "PV", "pv", "buy"] * 3)))
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"{i},t{i}\n" for i in range(12)))
    out = tmp_path / "out"
    assert main(["data", "convert", "--dataset", "generic", "--input", str(raw),
                 "--items", str(items), "--output", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "12 of 12 behaviors (100%) name items missing from the items file" in err, err
    assert "differ only in case are kept apart: 'PV', 'pv'" in err, err
    # Matching ids and one spelling: no notes.
    raw.write_text(raw.read_text().replace("item-", "").replace("PV", "pv"))
    assert main(["data", "convert", "--dataset", "generic", "--input", str(raw), "--items",
                 str(items), "--output", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().err
    from dmgin_tf.data.converters.generic import _case_hint
    assert _case_hint("PV", ["pv", "buy"]) == " (names are case-sensitive: the list has 'pv')"


def test_stats_errors_say_only_what_applies(tmp_path, capsys):
    """A missing folder with a failed conversion beside it got the "previous successful
    one" note before the error; --dataset generic without --input was told to keep a
    report of an input it never had."""
    (tmp_path / "gone.failed").mkdir()
    (tmp_path / "gone.failed" / "report.md").write_text("failed")
    assert main(["data", "stats", str(tmp_path / "gone")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "previous successful" not in err, err
    assert main(["data", "stats", "--dataset", "generic"]) == 2
    err = capsys.readouterr().err
    assert "needs an input path" in err and "keep the report" not in err, err
