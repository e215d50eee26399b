"""`--data` -> example set: the work-dir caches are rebuilt when what they were built
from changes, never reused stale."""
from __future__ import annotations

import json
import os

import pytest

from dmgin_tf.config import Config
from dmgin_tf.errors import DataError
from dmgin_tf.training.data_source import prepare_example_dir


def _prepare(cfg, work, log, data=""):
    return prepare_example_dir(cfg, data, str(work), progress=False, log=log.append)


def _built_with(example_dir):
    with open(os.path.join(example_dir, "examples.json")) as f:
        return json.load(f)["data_config"]


def test_caches_follow_the_data_config_and_input_files(tmp_path):
    cfg = Config.from_dict({"data": {"dataset": "taobao"}, "grouping": {"key": "category"}})
    log = []
    first = _prepare(cfg, tmp_path / "w", log)
    assert any(m.startswith("converting") for m in log) and any(m.startswith("building") for m in log)
    log.clear()
    assert _prepare(cfg, tmp_path / "w", log) == first and log == []       # unchanged: reused

    # Another split (the same output folder, as a second `dmgin train --set ...` gets):
    # the examples are rebuilt with it; the converted data is still current.
    other = cfg.apply_overrides({"data.test_fraction": 0.5})
    again = _prepare(other, tmp_path / "w", log)
    assert [m.split(" ")[0] for m in log] == ["building"]
    assert _built_with(again)["test_fraction"] == 0.5

    # A changed input file is converted again, and its examples rebuilt.
    raw = tmp_path / "raw.csv"
    # (Two users with their own items: each has untouched items to draw negatives from.)
    raw.write_text("1,10,100,pv,1511658000\n1,11,100,buy,1511658100\n3,13,100,pv,1511658300\n")
    log.clear()
    _prepare(cfg, tmp_path / "w2", log, data=str(raw))
    raw.write_text("1,10,100,pv,1511658000\n1,11,100,buy,1511658100\n3,13,100,pv,1511658300\n"
                   "2,12,100,pv,1511658200\n")
    os.utime(raw, ns=(1, 1))              # size and mtime both differ from the first file
    log.clear()
    _prepare(cfg, tmp_path / "w2", log, data=str(raw))
    assert [m.split(" ")[0] for m in log] == ["converting", "building"]


def test_an_example_dir_given_as_data_is_used_as_built_with_a_note(tmp_path):
    cfg = Config.from_dict({"data": {"dataset": "taobao"}, "grouping": {"key": "category"}})
    built = _prepare(cfg, tmp_path / "w", [])
    log = []
    other = cfg.apply_overrides({"data.val_fraction": 0.3})
    assert _prepare(other, tmp_path / "x", log, data=built) == built
    assert len(log) == 1 and "data.val_fraction=0.1 (this run: 0.3)" in log[0], log
    assert _built_with(built)["val_fraction"] == 0.1
    log.clear()
    _prepare(cfg, tmp_path / "x", log, data=built)
    assert log == []
    # Another data set's examples are refused, not noted as "used as built" first.
    log.clear()
    movielens = Config.from_dict({"data": {"dataset": "movielens"}})
    with pytest.raises(DataError, match=r"holds 'taobao' examples but data.dataset='movielens'"):
        _prepare(movielens, tmp_path / "x", log, data=built)
    assert log == []


def test_failed_conversions_leave_one_report_not_one_per_attempt(tmp_path):
    """Raw millisecond logs given to `dmgin train`: each failed attempt left its own
    `canonical.partial-<pid>.failed/` behind, and the hint named a flag train lacks."""
    import pytest
    from dmgin_tf.errors import DataError
    raw = tmp_path / "ms.csv"
    raw.write_text("user_id,item_id,behavior,timestamp\nu1,i1,pv,1511544070000\n")
    cfg = Config.from_dict({"data": {"dataset": "generic", "positive_behaviors": ["buy"]}})
    for _ in range(2):
        with pytest.raises(DataError, match="dmgin data convert --timestamp-unit ms"):
            _prepare(cfg, tmp_path / "w", [], data=str(raw))
    assert sorted(os.listdir(tmp_path / "w")) == ["canonical.partial.failed"]


def test_an_example_dir_keeps_its_groups_and_says_so(tmp_path):
    """--group-table and grouping.key were silently ignored for an example-set --data,
    while config.json recorded them as if applied."""
    import pytest
    from dmgin_tf.errors import DataError
    cfg = Config.from_dict({"data": {"dataset": "taobao"}, "grouping": {"key": "category"}})
    built = _prepare(cfg, tmp_path / "w", [])
    with pytest.raises(DataError, match=r"example set, used as built \(grouped by 'category'\)"):
        prepare_example_dir(cfg, built, str(tmp_path / "x"), group_table=str(tmp_path),
                            progress=False, log=print)
    log = []
    other = cfg.apply_overrides({"grouping.key": "random"})
    assert _prepare(other, tmp_path / "x", log, data=built) == built
    assert any("grouped by 'category'" in m and "grouping.key=random" in m for m in log), log
    log.clear()
    _prepare(cfg.apply_overrides({"grouping.key": "cluster"}), tmp_path / "x", log, data=built)
    assert log == []
