"""`dataset_stats` / `dmgin data stats` against independent pandas counts on the raw files."""
import json

import numpy as np
import pandas as pd
import pytest

from dmgin_tf.cli.main import main
from dmgin_tf.data.converters import convert
from dmgin_tf.data.sample import sample_path
from dmgin_tf.data.stats import dataset_stats, format_stats


def raw_reference(dataset, src) -> dict:
    """The stats, computed from the raw files with pandas only (no converter code)."""
    if dataset == "taobao":
        b = pd.read_csv(src / "UserBehavior.csv", header=None, names=["u", "i", "c", "b", "t"])
        n_items, items_seen, text_fraction = b.i.nunique(), b.i.nunique(), 0.0
    else:
        r = pd.read_csv(src / "ratings.csv")
        r["b"] = np.where(r.rating <= 2.5, "low", np.where(r.rating <= 3.5, "mid", "high"))
        t = pd.read_csv(src / "tags.csv").assign(b="tag")
        b = pd.concat([r, t]).rename(columns={"userId": "u", "movieId": "i", "timestamp": "t"})
        movies = pd.read_csv(src / "movies.csv")
        n_items, items_seen = len(movies), b.i.nunique()
        has_text = movies.title.str.strip().ne("") | movies.genres.ne("(no genres listed)") | \
            movies.movieId.isin(t.movieId)
        text_fraction = has_text.mean()
    per_user = b.groupby("u").size().to_numpy()
    return {"users": b.u.nunique(), "items": n_items, "items_with_behaviors": items_seen,
            "interactions": len(b), "behavior_counts": b.b.value_counts().to_dict(),
            "history_length": {"p50": np.percentile(per_user, 50), "p90": np.percentile(per_user, 90),
                               "p99": np.percentile(per_user, 99), "max": per_user.max()},
            "item_text_fraction": text_fraction, "item_image_fraction": 0.0,
            "time_min": b.t.min(), "time_max": b.t.max()}


def assert_stats_match(stats, ref):
    for key in ("users", "items", "items_with_behaviors", "interactions", "time_min", "time_max"):
        assert stats[key] == ref[key], key
    assert stats["behavior_counts"] == ref["behavior_counts"]
    for key in ("p50", "p90", "p99", "max"):
        assert stats["history_length"][key] == pytest.approx(ref["history_length"][key]), key
    assert stats["item_text_fraction"] == pytest.approx(ref["item_text_fraction"])
    assert stats["item_image_fraction"] == ref["item_image_fraction"]


@pytest.mark.parametrize("dataset", ["taobao", "movielens"])
def test_stats_match_pandas_on_sample(dataset, tmp_path):
    convert(dataset, sample_path(dataset), tmp_path)
    assert_stats_match(dataset_stats(tmp_path), raw_reference(dataset, sample_path(dataset)))


@pytest.mark.parametrize("dataset,subdir", [("taobao", "taobao-userbehavior"),
                                            ("movielens", "movielens-latest-small")])
def test_stats_match_pandas_on_full_data(dataset, subdir, shared_data_dir, tmp_path):
    src = shared_data_dir / subdir
    convert(dataset, src, tmp_path)
    stats = dataset_stats(tmp_path)
    assert_stats_match(stats, raw_reference(dataset, src))
    if dataset == "taobao":  # the 680-user file of docs/data.md
        assert (stats["users"], stats["items"], stats["interactions"]) == (680, 47282, 70951)
        assert stats["history_length"]["p50"] == 78 and stats["history_length"]["max"] == 539


def test_image_fraction_counts_non_null_images(tmp_path):
    (tmp_path / "b.csv").write_text("user_id,item_id,behavior,timestamp\nu,a,x,1\nu,b,x,2\n")
    (tmp_path / "i.csv").write_text("item_id,title,image\na,A,a.jpg\nb,,\n")
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    convert("generic", tmp_path / "b.csv", tmp_path / "out", items_path=tmp_path / "i.csv")
    s = dataset_stats(tmp_path / "out")
    assert (s["item_text_fraction"], s["item_image_fraction"]) == (0.5, 0.5)


def test_cli_convert_and_stats(tmp_path, capsys):
    out = tmp_path / "tb"
    assert main(["data", "convert", "--dataset", "taobao", "--output", str(out), "--no-progress"]) == 0
    assert "report:" in capsys.readouterr().out
    assert main(["data", "stats", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["users"] == dataset_stats(out)["users"] == 150
    assert main(["data", "stats", "--dataset", "movielens", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "history length p50 / p90 / p99 / max" in text and "behavior tag" in text
    assert format_stats(dataset_stats(out)).splitlines()[1].split() == ["users", "150"]


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    (tmp_path / "UserBehavior.csv").write_text("1,2,3,pv,1511544070\n1,2,3,oops,1511544071\n")
    rc = main(["data", "convert", "--dataset", "taobao", "--input", str(tmp_path), "--output",
               str(tmp_path / "out"), "--max-error-fraction", "0.1"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert "UserBehavior.csv: 1 of 2 rows are bad (50.00%" in err
    assert main(["data", "stats", str(tmp_path / "nothing")]) != 0
    assert "nothing: no such directory" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path)]) != 0          # a directory, not converted
    assert "no behaviors.parquet" in capsys.readouterr().err
    assert main(["data", "convert", "--dataset", "taobao", "--items", "x.csv", "--output", str(tmp_path)]) != 0


@pytest.mark.parametrize("value,message", [
    (",,,", "names no behavior type"),
    ("click,,cart", "an empty name between commas"),
    ("click,cart,click", "names click more than once"),
])
def test_generic_behavior_list_typos_are_refused(tmp_path, capsys, value, message):
    """--behaviors that names nothing (or a name twice) is a typo, not 'infer them'."""
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,behavior,timestamp\nu1,i1,click,1500000000\n")
    rc = main(["data", "convert", "--dataset", "generic", "--input", str(events),
               "--behaviors", value, "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_stats_piped_into_a_reader_that_stops_early_is_no_error(tmp_path):
    """`dmgin data stats DIR | head -3` printed "error: [Errno 32] Broken pipe", exit 2."""
    import os
    import subprocess
    import sys
    convert("taobao", "", tmp_path / "c", show_progress=False)
    p = subprocess.Popen([sys.executable, "-m", "dmgin_tf.cli.main", "data", "stats",
                          str(tmp_path / "c")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    p.stdout.close()                  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err, err
