"""Per-user example building under the evaluation protocol (docs/design.md: Evaluation protocol)."""
import dataclasses
import numpy as np
import pandas as pd
import pytest

from dmgin_tf.config import DataConfig
from dmgin_tf.data.datasets import get_spec
from dmgin_tf.data.examples import (SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, ExampleSet, ItemUniverse,
                                    build_example_set, build_user_examples, sample_negative_items,
                                    split_sizes)
from dmgin_tf.data.item_index import ItemIndex
from dmgin_tf.errors import DataError
from dmgin_tf.features import BEHAVIOR, CATEGORY, ITEM_ID, OOV_ID, TIMESTAMP, USER_ID

TAOBAO = get_spec("taobao")
MOVIELENS = get_spec("movielens")
NO_NEG = get_spec("taobao", DataConfig(negatives_per_positive=0))


def user(n, ts=None, behavior="pv"):
    items = np.array([f"i{k}" for k in range(n)], dtype=object)
    ts = np.arange(n, dtype=np.int64) * 10 if ts is None else np.asarray(ts, dtype=np.int64)
    return items, np.array([behavior] * n, dtype=object), ts


# ---- split arithmetic ----------------------------------------------------------------
@pytest.mark.parametrize("n, expected", [
    (0, (0, 0, 0)), (1, (1, 0, 0)), (4, (4, 0, 0)),        # < 5 labelled: train only
    (5, (4, 0, 1)), (9, (8, 0, 1)), (10, (8, 0, 2)), (11, (9, 0, 2)),
    (14, (11, 1, 2)), (25, (18, 2, 5)), (50, (36, 4, 10)), (51, (37, 4, 10)),
])
def test_split_sizes_follow_protocol(n, expected):
    assert split_sizes(n, DataConfig()) == expected
    ue = build_user_examples("u", *user(n), NO_NEG, cfg=DataConfig())
    counts = tuple(int((ue.split == c).sum()) for c in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST))
    assert counts == expected
    # splits are contiguous in time: train, then val, then test
    assert (np.diff(ue.split) >= 0).all()


def test_test_split_is_at_least_one_event():
    cfg = DataConfig(test_fraction=0.05)
    assert split_sizes(5, cfg) == (4, 0, 1)     # floor(0.25) = 0 -> 1
    assert split_sizes(19, cfg) == (17, 1, 1)   # test floor(0.95) = 0 -> 1; val floor(1.8) = 1
    assert split_sizes(40, cfg) == (35, 3, 2)   # test floor(2.0) = 2; val floor(3.8) = 3
    assert split_sizes(4, DataConfig(min_events_for_test=3)) == (3, 0, 1)


def test_split_counts_only_labelled_events():
    # MovieLens: tags are history only and must not count toward the 5 labelled events.
    items = np.array(["a", "b", "c", "d", "e", "f", "g"], dtype=object)
    beh = np.array(["tag", "high", "low", "tag", "mid", "high", "tag"], dtype=object)
    ue = build_user_examples("u", items, beh, np.arange(7) * 10, MOVIELENS)
    assert len(ue) == 4 and (ue.split == SPLIT_TRAIN).all()     # 4 ratings -> train only
    assert ue.cand_item.tolist() == ["b", "c", "e", "f"]
    assert ue.label.tolist() == [1, 0, 0, 1]                     # label = high
    assert ue.hist_end.tolist() == [1, 2, 4, 5]                  # tags are in histories


# ---- history / leakage ---------------------------------------------------------------
def test_history_is_strictly_before_including_equal_timestamps():
    ts = [5, 5, 5, 7, 7, 9, 12, 12, 12, 12, 30]
    items, beh, ts = user(len(ts), ts)
    ue = build_user_examples("u", items, beh, ts, NO_NEG)
    for k in range(len(ue)):
        t = ue.timestamp[k]
        # plain-Python reference: count of behaviors strictly earlier
        assert ue.hist_end[k] == sum(1 for x in ts if x < t)
        assert all(x < t for x in ts[:ue.hist_end[k]])
    assert ue.hist_end.tolist() == [0, 0, 0, 3, 3, 5, 6, 6, 6, 6, 10]


def test_one_event_user_and_empty_history():
    ue = build_user_examples("u", *user(1), TAOBAO, item_universe=["i0", "x", "y"])
    assert len(ue) == 2                                  # positive + its negative
    assert ue.split.tolist() == [SPLIT_TRAIN] * 2 and ue.hist_end.tolist() == [0, 0]
    assert ue.cand_item[0] == "i0" and ue.cand_item[1] in ("x", "y")


def test_duplicate_events_each_become_examples_without_seeing_each_other():
    items = np.array(["a", "a", "a", "b"], dtype=object)
    beh = np.array(["pv", "pv", "pv", "buy"], dtype=object)
    ue = build_user_examples("u", items, beh, [100, 100, 100, 200], NO_NEG)
    assert ue.cand_item.tolist() == ["a", "a", "a", "b"]
    assert ue.hist_end.tolist() == [0, 0, 0, 3]


def test_unsorted_input_and_unknown_behavior_are_rejected():
    with pytest.raises(DataError, match="not sorted"):
        build_user_examples("u", *user(3, [3, 1, 2]), NO_NEG)
    items, _, ts = user(2)
    with pytest.raises(DataError, match="'click'"):
        build_user_examples("u", items, np.array(["pv", "click"], dtype=object), ts, NO_NEG)


# ---- negatives -----------------------------------------------------------------------
def test_negatives_share_event_fields_and_are_untouched():
    universe = ItemUniverse([f"i{k}" for k in range(200)] + [f"n{k}" for k in range(200)])
    items, beh, ts = user(30, np.repeat(np.arange(15), 2))
    ue = build_user_examples("alice", items, beh, ts, TAOBAO, item_universe=universe, seed=3)
    assert len(ue) == 60
    pos, neg = np.arange(0, 60, 2), np.arange(1, 60, 2)
    assert ue.label[pos].tolist() == [1] * 30 and ue.label[neg].tolist() == [0] * 30
    for f in ("timestamp", "split", "hist_end", "event"):
        np.testing.assert_array_equal(getattr(ue, f)[pos], getattr(ue, f)[neg])
    assert not set(ue.cand_item[neg]) & set(items)
    # deterministic: same call, and a plain list universe, give the same draws
    again = build_user_examples("alice", items, beh, ts, TAOBAO, item_universe=list(universe.ids), seed=3)
    np.testing.assert_array_equal(ue.cand_item, again.cand_item)
    other_seed = build_user_examples("alice", items, beh, ts, TAOBAO, item_universe=universe, seed=4)
    assert (other_seed.cand_item[neg] != ue.cand_item[neg]).any()


def test_negatives_are_uniform_over_untouched_items():
    universe = [f"x{k}" for k in range(20)]
    draws = sample_negative_items("u", universe[:5], universe, 15000, seed=0)
    counts = pd.Series(draws).value_counts()
    assert set(counts.index) == set(universe[5:])
    assert counts.max() < 1150 and counts.min() > 850     # expected 1000 each (sd ~30)


def test_negatives_when_user_touched_almost_or_all_items():
    universe = [f"x{k}" for k in range(100)]
    draws = sample_negative_items("u", universe[:98], universe, 50, seed=1)   # fallback path
    assert set(draws) <= {"x98", "x99"} and len(draws) == 50
    np.testing.assert_array_equal(draws, sample_negative_items("u", universe[:98], universe, 50, seed=1))
    assert len(sample_negative_items("u", universe, universe, 5, seed=1)) == 0
    items = np.array(universe[:3], dtype=object)
    ue = build_user_examples("u", items, np.array(["pv"] * 3, dtype=object), [1, 2, 3], TAOBAO,
                             item_universe=universe[:3])
    assert len(ue) == 3 and ue.negatives_missing == 3 and ue.label.tolist() == [1, 1, 1]


def test_negative_draws_follow_documented_stream():
    # Re-implements the documented algorithm: PCG64(blake2b64("seed:user")) raw % N, skip touched.
    import hashlib
    universe = [f"x{k}" for k in range(50)]
    touched = {"x3", "x7", "x11"}
    seed_int = int.from_bytes(hashlib.blake2b(b"9:bob", digest_size=8).digest(), "little")
    raw = np.random.PCG64(seed_int).random_raw(100)
    picks = [universe[int(r) % 50] for r in raw]        # exact integer modulo (not float)
    expected = [x for x in picks if x not in touched][:20]
    got = sample_negative_items("bob", sorted(touched), universe, 20, seed=9)
    assert got.tolist() == expected


# ---- ExampleSet ------------------------------------------------------------------------
def make_tables(seed=0, n_users=12, n_items=40):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 25))
        ts = np.sort(rng.integers(1000, 1060, n))      # coarse times: many ties
        for t in ts:
            rows.append((f"u{u}", f"i{rng.integers(0, n_items)}", rng.choice(["pv", "cart", "fav", "buy"]), int(t)))
    beh = pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, BEHAVIOR, TIMESTAMP])
    items = pd.DataFrame({ITEM_ID: [f"i{k}" for k in range(n_items)],
                          CATEGORY: [f"c{k % 5}" for k in range(n_items)]})
    return beh, items


def test_example_set_matches_per_user_function_and_is_order_independent():
    beh, items = make_tables()
    index = ItemIndex.build(items, "category")
    es = build_example_set(beh, items, TAOBAO, index, DataConfig(), progress=False)
    es.validate()
    # shuffling users (keeping each user's own row order) changes nothing
    users = beh[USER_ID].unique()[::-1]
    shuffled = pd.concat([beh[beh[USER_ID] == u] for u in users], ignore_index=True)
    es2 = build_example_set(shuffled, items, TAOBAO, index, DataConfig(), progress=False)
    for f in ("ex_user", "ex_hist_end", "ex_cand_item", "ex_label", "ex_split", "ex_request_time"):
        np.testing.assert_array_equal(getattr(es, f), getattr(es2, f))
    # each user's examples equal a direct build_user_examples call
    for u, uid in enumerate(es.user_ids):
        rows = beh[beh[USER_ID] == uid]
        ue = build_user_examples(uid, rows[ITEM_ID].to_numpy(object), rows[BEHAVIOR].to_numpy(object),
                                 rows[TIMESTAMP].to_numpy(), TAOBAO, item_universe=index.item_ids)
        m = es.ex_user == u
        np.testing.assert_array_equal(es.ex_cand_item[m], index.lookup(ue.cand_item))
        np.testing.assert_array_equal(es.ex_hist_end[m], ue.hist_end)
        np.testing.assert_array_equal(es.ex_split[m], ue.split)
        sl = slice(es.user_offsets[u], es.user_offsets[u + 1])
        np.testing.assert_array_equal(es.beh_time[sl], rows[TIMESTAMP].to_numpy())
    c = es.metadata["counts"]
    assert sum(v["examples"] for v in c.values()) == len(es) == 2 * len(beh)


def test_a_truncated_or_missing_example_set_is_named(tmp_path):
    """A partial copy (e.g. to a GPU host) gave `BadZipFile: File is not a zip file`
    without a path, and a folder with examples.json but no examples.npz was taken for
    raw data to convert."""
    from dmgin_tf.config import Config
    from dmgin_tf.training.data_source import prepare_example_dir
    beh, items = make_tables(seed=1)
    build_example_set(beh, items, TAOBAO, None, DataConfig(), progress=False).save(tmp_path)
    npz = tmp_path / "examples.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"examples.npz: not a readable example set .*Copy it again"):
        ExampleSet.load(tmp_path)
    npz.unlink()
    with pytest.raises(DataError, match=r"holds examples.json but no examples.npz.*copy the whole"):
        prepare_example_dir(Config(), str(tmp_path), str(tmp_path / "work"))


def test_example_set_keeps_file_order_for_equal_timestamps():
    beh = pd.DataFrame({USER_ID: ["u"] * 4, ITEM_ID: ["c", "a", "b", "d"],
                        BEHAVIOR: ["pv", "buy", "pv", "pv"], TIMESTAMP: [5, 5, 5, 9]})
    items = pd.DataFrame({ITEM_ID: ["a", "b", "c", "d"]})
    index = ItemIndex.build(items)
    es = build_example_set(beh, items, NO_NEG, index, DataConfig(), progress=False)
    assert index.item_ids[es.beh_item - 2].tolist() == ["c", "a", "b", "d"]
    assert es.ex_hist_end.tolist() == [0, 0, 0, 3]


def test_unknown_items_map_to_oov_and_are_counted():
    beh = pd.DataFrame({USER_ID: ["u"] * 3, ITEM_ID: ["a", "zz", "b"], BEHAVIOR: ["pv"] * 3,
                        TIMESTAMP: [1, 2, 3]})
    items = pd.DataFrame({ITEM_ID: ["a", "b"]})
    es = build_example_set(beh, items, NO_NEG, None, DataConfig(), progress=False)
    assert es.beh_item.tolist() == [2, OOV_ID, 3]
    assert es.ex_cand_item.tolist() == [2, OOV_ID, 3]
    assert es.ex_cand_group.tolist() == [2, OOV_ID, 3]
    assert es.metadata["history_oov_behaviors"] == 1 and es.metadata["candidate_oov_examples"] == 1


def test_example_set_save_load_round_trip(tmp_path):
    beh, items = make_tables(seed=1)
    es = build_example_set(beh, items, TAOBAO, None, DataConfig(), progress=False)
    es.save(tmp_path)
    back = ExampleSet.load(tmp_path)
    for f in ("user_ids", "user_offsets", "beh_item", "beh_time", "ex_hist_end", "ex_label", "ex_split"):
        np.testing.assert_array_equal(getattr(es, f), getattr(back, f))
    assert back.metadata["counts"] == es.metadata["counts"]
    assert back.spec == TAOBAO
    # validate() catches a leaked history
    back.ex_hist_end[:] = back.user_offsets[back.ex_user + 1] - back.user_offsets[back.ex_user]
    with pytest.raises(DataError, match="not before"):
        back.validate()


def test_validate_refuses_float_ids_and_times():
    """Float arrays (e.g. an examples.npz written by other code) would round ids and
    times silently; the label alone may be a float."""
    beh, items = make_tables(seed=1)
    es = build_example_set(beh, items, TAOBAO, None, DataConfig(), progress=False)
    es.validate()
    for name in ("beh_item", "beh_time", "ex_cand_item", "ex_request_time"):
        bad = dataclasses.replace(es, **{name: getattr(es, name).astype(np.float64)})
        with pytest.raises(DataError, match=f"{name} has dtype float64, expected integers"):
            bad.validate()


def test_cli_builds_and_prints_counts(tmp_path, capsys):
    from dmgin_tf.cli.main import main
    beh, items = make_tables(seed=2)
    beh.to_parquet(tmp_path / "behaviors.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    rc = main(["examples", "build", "--data", str(tmp_path), "--dataset", "taobao",
               "--grouping-key", "category", "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out
    es = ExampleSet.load(tmp_path / "out")
    # Each split's history profile, the train / test shift a model meets.
    h = es.history_profile()["test"]
    assert (f"history: mean {h['history_mean']:.0f} behaviors, newest "
            f"{h['gap_p50_hours']:.2g} h / {h['gap_p90_hours']:.2g} h before the request") in out
    assert es.metadata["grouping_key"] == "category" and len(es) == 2 * len(beh)
    assert main(["examples", "build", "--data", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    # An output directory whose name ends in .parquet (the item index went to the
    # directory's own path and failed after examples.npz was written).
    assert main(["examples", "build", "--data", str(tmp_path), "--dataset", "taobao",
                 "--grouping-key", "category", "--output", str(tmp_path / "ex.parquet"),
                 "--no-progress"]) == 0
    assert (tmp_path / "ex.parquet" / "item_index.parquet").is_file()


@pytest.mark.slow
def test_embedded_taobao_sample_split_sizes_match_pandas_reference(tmp_path):
    from dmgin_tf.data.converters import convert
    from dmgin_tf.data.examples import build_from_canonical
    import dmgin_tf
    import pathlib
    sample = pathlib.Path(dmgin_tf.__file__).parent / "sample_data" / "taobao"
    convert("taobao", sample, tmp_path / "conv")
    es = build_from_canonical(tmp_path / "conv", tmp_path / "ex", DataConfig(), progress=False)
    beh = pd.read_parquet(tmp_path / "conv" / "behaviors.parquet")
    n = beh.groupby(USER_ID).size()
    test = n.map(lambda k: 0 if k < 5 else max(1, int(np.floor(0.2 * k + 1e-9))))
    val = ((n - test) * 0.1 + 1e-9).astype(int).where(n >= 5, 0)
    assert es.metadata["counts"]["test"]["examples"] == 2 * test.sum()
    assert es.metadata["counts"]["val"]["examples"] == 2 * val.sum()
    es.validate()


def test_a_labelling_rule_with_one_label_is_refused_by_the_builders(tmp_path, capsys):
    """Generic data with the defaults (every behavior labelled and positive, no sampled
    negatives) gave all-positive examples: training ran and reported AUC nan."""
    from dmgin_tf.cli.main import main
    from dmgin_tf.data.examples import build_from_canonical
    from dmgin_tf.config import BeamConfig
    from transform.examples import build_user_records
    beh, items = make_tables(seed=3)
    beh.to_parquet(tmp_path / "behaviors.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    generic = DataConfig(dataset="generic")
    rule = r"every example would get label 1.*data.positive_behaviors.*data.sample_negatives"
    with pytest.raises(DataError, match=rule):
        build_from_canonical(tmp_path, tmp_path / "ex", generic, progress=False)
    with pytest.raises(DataError, match=rule):
        build_user_records(str(tmp_path), str(tmp_path / "rec"), generic,
                           BeamConfig.from_dict({"direct_running_mode": "in_memory"}),
                           item_groups={}, window=8)
    assert main(["examples", "build", "--data", str(tmp_path), "--dataset", "generic",
                 "--grouping-key", "category", "--output", str(tmp_path / "cli")]) == 2
    assert "every example would get label 1" in capsys.readouterr().err
    # Sampling asked for with zero negatives per positive is no way out either.
    with pytest.raises(DataError, match=rule):
        build_from_canonical(tmp_path, tmp_path / "ex", DataConfig(
            dataset="generic", sample_negatives=True, negatives_per_positive=0), progress=False)
    # Taobao without sampled negatives: the same rule, and the one key that helps there.
    with pytest.raises(DataError, match=r"label 1.*labels are fixed.*negatives_per_positive >= 1"):
        build_from_canonical(tmp_path, tmp_path / "ex", DataConfig(negatives_per_positive=0),
                             progress=False)
    # The labelling keys of generic data are refused where a dataset fixes its labels.
    with pytest.raises(DataError, match=r"data.positive_behaviors apply to --dataset generic"):
        build_from_canonical(tmp_path, tmp_path / "ex", DataConfig(positive_behaviors=("buy",)),
                             progress=False)
    # Naming the positives (or sampling negatives) gives both labels.
    for fix in ({"positive_behaviors": ("buy",)}, {"sample_negatives": True}):
        es = build_from_canonical(tmp_path, tmp_path / "ok", DataConfig(dataset="generic", **fix),
                                  progress=False)
        assert set(np.unique(es.ex_label)) == {0.0, 1.0}, fix


def test_a_group_table_that_misses_catalog_items_is_reported(tmp_path, capsys):
    from dmgin_tf.cli.main import main
    beh, items = make_tables(seed=4)
    beh.to_parquet(tmp_path / "behaviors.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({ITEM_ID: ["i0", "i1", "i2"], "group_id": [0, 1, 0]}).to_csv(
        tmp_path / "groups.csv", index=False)
    assert main(["examples", "build", "--data", str(tmp_path), "--dataset", "taobao",
                 "--grouping-key", "table", "--group-table", str(tmp_path / "groups.csv"),
                 "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert ("note: the group table leaves 37 of 40 catalog items (92.5%) without a group"
            in capsys.readouterr().out)


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """A bar written into a log file is noise (`dmgin train ... 2> log`)."""
    from dmgin_tf.data.examples import build_from_canonical
    beh, items = make_tables(seed=5)
    beh.to_parquet(tmp_path / "behaviors.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    build_from_canonical(tmp_path, tmp_path / "ex", DataConfig(), progress=True)
    assert "examples (taobao)" not in capsys.readouterr().err


def test_history_profile_per_split_equals_a_loop_over_examples():
    beh, items = make_tables(seed=3)
    es = build_example_set(beh, items, TAOBAO, None, DataConfig(), progress=False)
    profile = es.history_profile()
    for code, name in enumerate(("train", "val", "test")):
        lengths, gaps = [], []
        for i in np.flatnonzero(es.ex_split == code):
            first = es.user_offsets[es.ex_user[i]]
            n = int(es.ex_hist_end[i])
            lengths.append(n)
            if n:
                gaps.append((es.ex_request_time[i] - es.beh_time[first + n - 1]) / 3600)
        assert profile[name]["history_mean"] == pytest.approx(np.mean(lengths))
        assert profile[name]["gap_p90_hours"] == pytest.approx(np.percentile(gaps, 90))
        assert profile[name]["gap_p50_hours"] == pytest.approx(np.percentile(gaps, 50))


def test_cli_summary_of_users_with_one_event_says_so_without_nan(tmp_path, capsys):
    """Every user with a single event: no validation or test examples and no history;
    the summary printed `mean nan behaviors, newest nan h / nan h`."""
    from dmgin_tf.cli.main import main
    beh, items = make_tables(seed=3)
    beh.drop_duplicates(USER_ID).to_parquet(tmp_path / "behaviors.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    assert main(["examples", "build", "--data", str(tmp_path), "--dataset", "taobao",
                 "--grouping-key", "category", "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "history: none (no example has an earlier behavior)" in lines["train"], out
    assert "history: no examples" in lines["val"] and "history: no examples" in lines["test"]
