"""Taobao UserBehavior.csv -> canonical behaviors + items tables.

Input (no header): `user_id,item_id,category_id,behavior_type,timestamp`, behavior_type
in {pv, cart, fav, buy}, timestamp in Unix seconds (Zhu et al., KDD 2018; Tianchi 649).

Decisions on flawed rows (also written into report.json / report.md):

* wrong field count, quoting errors, non-numeric ids, unknown behavior, timestamps that
  are not a non-negative integer or lie after 2100 (millisecond timestamps are named as
  such), invalid UTF-8 (every field is a key): row dropped, counted as bad with
  `file:line`. No row can stop the conversion: an unexpected error in one row makes it
  a bad row `row_error`.
* timestamp outside the dataset's stated window 2017-11-25 .. 2017-12-03 (China time,
  UTC+8): **kept** and flagged `out_of_window` - they are real behaviors (32 rows in
  the published first-680-users file, as early as 2017-09-11) and history before the
  window is exactly what lifelong models want.
* an item seen under several categories: the item keeps its most frequent category
  (ties: the first seen); every such item is flagged `item_category_conflict`.
* exact duplicate rows (same user, item, behavior, second): the later copies are
  dropped as bad `duplicate_row` (none in the published file).
* items have no text or image in this dataset: title/description empty, image null.
"""
from __future__ import annotations

import collections
import datetime

from dmgin_tf.config import DataConfig
from dmgin_tf.data.converters.common import ConversionResult, progress_bar, publish, resolve_file, staging
from dmgin_tf.data.converters.reader import (check_line, check_timestamp, file_size, int_id,
                                             is_int_id, iter_csv_lines, raw_time_detail)
from dmgin_tf.data.converters.report import ConversionReport
from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE, BehaviorSink, write_items
from dmgin_tf.data.datasets import TAOBAO_BEHAVIORS
from dmgin_tf.features import CATEGORY

TAOBAO_FILE = "UserBehavior.csv"
_CHINA = datetime.timezone(datetime.timedelta(hours=8))
# The dataset's stated window, [2017-11-25 00:00, 2017-12-04 00:00) China time.
WINDOW_START = int(datetime.datetime(2017, 11, 25, tzinfo=_CHINA).timestamp())
WINDOW_END = int(datetime.datetime(2017, 12, 4, tzinfo=_CHINA).timestamp())
# Behaviors outside the window are real (as early as 2017-09-11) and kept; a time before
# 2017 is a broken value (a line cut short, a zero), not a behavior.
EARLIEST = (int(datetime.datetime(2017, 1, 1, tzinfo=_CHINA).timestamp()),
            "2017, long before the data set's window")
_KEY_FIELDS = (0, 1, 2, 3, 4)


def _china_time(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, _CHINA).strftime("%Y-%m-%d %H:%M:%S+08")


def convert_taobao(input_path, output_dir, config: DataConfig | None = None, *,
                   show_progress: bool = False, max_samples: int = 5,
                   timestamp_unit: str = "s") -> ConversionResult:
    """Converts UserBehavior.csv (a file, or a directory holding it) into `output_dir`.

    Streams the file line by line; memory grows with the number of distinct items
    (item -> category) and with the compact columnar behaviors table sorted at the end.

    Raises:
      DataError: when the file's bad-row fraction exceeds `config.max_error_fraction`.
      FileNotFoundError: when the input does not exist.
    """
    cfg = config or DataConfig()
    path = resolve_file(input_path, TAOBAO_FILE)
    report = ConversionReport("taobao", cfg.max_error_fraction, max_samples)
    fr = report.file(path, "behaviors")
    behaviors = set(TAOBAO_BEHAVIORS)
    # item -> [category, count] for the first category seen; items seen under a second
    # category move to `conflicts` (item -> Counter) so the common case stays small.
    item_cat: dict = {}
    conflicts: dict = {}
    with staging(output_dir) as tmp:
        sink = BehaviorSink(tmp, [fr])
        bar = progress_bar(file_size(path), f"taobao {path.name}", show_progress)
        for line in iter_csv_lines(path, bar):
            f = check_line(line, 5, report, fr, _KEY_FIELDS)
            if f is None:
                continue
            try:
                _row(f, line, fr, report, sink, behaviors, item_cat, conflicts, timestamp_unit)
            except Exception as e:  # one row never stops the conversion
                report.bad(fr, line.number, "row_error", f"{type(e).__name__}: {e}", line.text)
        bar.close()
        n_behaviors = sink.finish(tmp / BEHAVIORS_FILE, report)
        for item, counts in conflicts.items():
            chosen = counts.most_common(1)[0][0]  # ties: first seen (Counter keeps insertion order)
            item_cat[item][0] = chosen
            report.flag(fr, None, "item_category_conflict",
                        f"item {item} seen under categories {dict(counts)}; kept {chosen}")
        n_items = write_items(tmp / ITEMS_FILE, {i: {CATEGORY: c[0]} for i, c in item_cat.items()})
        report.decide("out_of_window", "timestamps outside the stated window 2017-11-25..2017-12-03 "
                      "(China time) are kept and flagged: they are real behaviors")
        report.decide("item_category_conflict", "an item seen under several categories keeps "
                      "its most frequent one (ties: first seen)")
        report.decide("duplicate_row", "exact duplicate rows (user, item, behavior, timestamp) "
                      "are dropped, keeping the first")
        report.decide("item_text", "Taobao has no item text or images: title and description "
                      "are empty, image is null for every item")
        report.info.update({"behaviors": n_behaviors, "items": n_items,
                            "behavior_types": list(TAOBAO_BEHAVIORS)})
        return publish(tmp, output_dir, report)


def _row(f, line, fr, report, sink, behaviors, item_cat, conflicts, unit) -> None:
    """Validates one split line and adds it (or records why it is bad)."""
    user, item, cat, behavior, ts_text = f  # no trimming: the raw format has no spaces
    bad = None
    for name, value in (("user_id", user), ("item_id", item), ("category_id", cat)):
        if not is_int_id(value):
            bad = ("bad_id", f"{name} {value!r} is not a numeric id")
            break
    if bad is None and behavior not in behaviors:
        bad = ("unknown_behavior", f"behavior {behavior!r} not in {list(TAOBAO_BEHAVIORS)}")
    ts = None
    if bad is None:
        ts, bad = check_timestamp(ts_text, unit, not_before=EARLIEST)
    if bad is not None:
        report.bad(fr, line.number, bad[0], bad[1], line.text)
        return
    user, item, cat = int_id(user), int_id(item), int_id(cat)
    if not WINDOW_START <= ts < WINDOW_END:
        report.flag(fr, line.number, "out_of_window",
                    f"{_china_time(ts)} outside 2017-11-25..2017-12-03 (China time); kept",
                    line.text)
    sink.add(user, item, behavior, ts, 0, line.number, raw_time_detail("", ts_text, unit))
    if item in conflicts:
        conflicts[item][cat] += 1
    else:
        entry = item_cat.get(item)
        if entry is None:
            item_cat[item] = [cat, 1]
        elif entry[0] == cat:
            entry[1] += 1
        else:
            conflicts[item] = collections.Counter({entry[0]: entry[1], cat: 1})
