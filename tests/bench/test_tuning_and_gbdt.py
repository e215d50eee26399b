"""Tuning (KerasTuner search spaces, trial rows, selection on validation) and the `gbdt`
row on the embedded real sample."""
import dataclasses
import json

import numpy as np
import pytest

from dmgin_tf.bench import tuning


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    """The embedded Taobao sample as trainer splits, L = 16, category groups."""
    from dmgin_tf.config import Config
    from dmgin_tf.training.data_source import load_training_data
    from dmgin_tf.training.trainer import resolve_config
    cfg = Config().apply_overrides({"data.dataset": "taobao", "grouping.key": "category",
                                    "model.history_length": 16})
    data = load_training_data(cfg, "", str(tmp_path_factory.mktemp("sample")), progress=False,
                              log=lambda *_: None)
    return resolve_config(cfg, data), data


def test_trials_start_with_the_defaults_and_are_distinct():
    trials = tuning.sample_trials("dmgin", 5, seed=0)
    assert trials[0] == {"learning_rate": 3e-4, "weight_decay": 0.0, "embedding_dim": 16,
                         "mlp_units": "128,64", "dropout": 0.1, "attention_units": "64,32",
                         "inter_layers": 2, "intra_layers": 1, "item_min_count": 5,
                         "use_recent": True}
    assert len(trials) == 5 and all(trials.count(t) == 1 for t in trials)
    assert trials == tuning.sample_trials("dmgin", 5, seed=0)       # seeded
    assert "inter_layers" not in tuning.sample_trials("din", 2)[1]  # DIN has no blocks
    assert "use_recent" not in tuning.sample_trials("din", 2)[1]
    over = tuning.to_overrides(trials[1])
    assert over["model.mlp_units"] == [int(u) for u in trials[1]["mlp_units"].split(",")]
    rows = tuning.trial_variants(["dmgin", "din"], 3)
    assert [r.name for r in rows] == ["dmgin trial 0", "din trial 0", "dmgin trial 1",
                                      "din trial 1", "dmgin trial 2", "din trial 2"]
    assert all(r.kind == "trial" for r in rows)


def test_selection_reads_validation_only_and_compares_common_trials():
    def run(name, val, test):
        return {"variant": name, "seed": 0, "val": {"gauc": val}, "test": {"gauc": test},
                "config": {"model": {"embedding_dim": 16}, "train": {"learning_rate": 1e-3}}}
    results = {"runs": [run("dmgin trial 0", 0.60, 0.99), run("dmgin trial 1", 0.70, 0.10),
                        run("dmgin trial 2", 0.90, 0.10),      # din has no trial 2: not compared
                        run("din trial 0", 0.65, 0.50), run("din trial 1", 0.64, 0.90)]}
    best = tuning.select_best(results)
    assert best["dmgin"]["trial"] == "dmgin trial 1"
    assert best["din"]["trial"] == "din trial 0"
    assert [t for t, _ in best["dmgin"]["trials"]] == ["dmgin trial 1", "dmgin trial 0"]
    # The trials table says why a trial has no result.
    results["rows"] = [{"variant": n} for n in ("din trial 2", "din trial 3")]
    results["runs"].append({"variant": "din trial 3", "seed": 0, "error": "OOM"})
    table = tuning.trials_markdown(results, best)
    assert "| din | 2 | — | — | not run (queue time budget) |" in table
    assert "| din | 3 | — | — | failed: OOM |" in table


def test_tuner_smoke_run_trains_trials_and_writes_hparams(sample_data, tmp_path):
    from dmgin_tf.bench import quality
    cfg, _ = sample_data
    rows = tuning.trial_variants(["din"], 2)
    results = quality.run_quality(cfg, "", str(tmp_path / "q"), seeds=[0], variants=rows,
                                  budget=quality.QUICK_BUDGET, work_dir=str(tmp_path / "w"),
                                  log=lambda *_: None)
    assert {r["variant"] for r in results["runs"]} == {"din trial 0", "din trial 1"}
    assert all(r["config"]["train"]["learning_rate"] > 0 for r in results["runs"])
    best = tuning.select_best(results)
    path = tuning.write_hparams("taobao", best, str(tmp_path))
    hp = tuning.load_hparams(path)
    assert set(hp) == {"din"} and "train.learning_rate" in hp["din"]
    assert json.load(open(path))["selected_on"].startswith("validation")


def test_gbdt_features_are_leak_free(sample_data):
    """Permuting test labels changes no test feature; a training example's own label
    never enters its features (out-of-fold tables)."""
    from dmgin_tf.bench.gbdt import example_features
    from dmgin_tf.layers.context_statistics import ContextStatistics
    from dmgin_tf.training.data_source import training_data_from_example_set
    from dmgin_tf.training.trainer import context_tables_for
    cfg, data = sample_data
    m = cfg.model

    def features(example_set, split_name):
        d = training_data_from_example_set(example_set, m.history_length)
        ctx = ContextStatistics(m.item_vocab_size, m.group_vocab_size, m.num_behavior_types,
                                m.context_folds)
        tables = context_tables_for(d.train, m)
        ctx.set_tables(tables["item"], tables["group"])
        return example_features(getattr(d, split_name), m, ctx)

    es = data.train.example_set
    test_idx = es.split_indices("test")
    labels = es.ex_label.copy()
    labels[test_idx] = np.random.default_rng(0).permutation(labels[test_idx])
    np.testing.assert_array_equal(features(es, "test"),
                                  features(dataclasses.replace(es, ex_label=labels), "test"))

    train_idx = es.split_indices("train")
    flipped = es.ex_label.copy()
    i = 5
    flipped[train_idx[i]] = 1 - flipped[train_idx[i]]
    before = features(es, "train")
    after = features(dataclasses.replace(es, ex_label=flipped), "train")
    np.testing.assert_array_equal(before[i], after[i])
    assert not np.array_equal(before, after)           # the label does reach other rows


def test_gbdt_smoke_run(sample_data, monkeypatch):
    pytest.importorskip("tensorflow_decision_forests")
    from dmgin_tf.bench import gbdt
    monkeypatch.setattr(gbdt, "GRID", {"max_depth": (3,), "shrinkage": (0.1,)})
    monkeypatch.setattr(gbdt, "NUM_TREES", 20)
    cfg, data = sample_data
    out = gbdt.run_gbdt(data, cfg.model, [0, 1], log=lambda *_: None)
    assert [r["seed"] for r in out["runs"]] == [0, 1]
    for r in out["runs"]:
        assert 0.0 <= r["test"]["auc"] <= 1.0 and np.isfinite(r["test"]["logloss"])
    assert len(out["features"]) == len(gbdt.feature_names(cfg.model))
    assert out["params"] == {"max_depth": 3, "shrinkage": 0.1}


def test_table_takes_seed0_of_tuned_rows_from_their_selected_trial():
    from dmgin_tf.bench import quality
    m = {"auc": 0.7, "gauc": 0.6, "logloss": 0.5}
    runs = [{"variant": "din", "seed": s, "test": m, "val": m, "seconds": 1.0} for s in (1, 2)]
    runs += [{"variant": "dmgin -context", "seed": s, "test": m, "val": m, "seconds": 1.0}
             for s in (0, 1, 2)]
    variants = [quality.Variant("din", "din"),
                quality.Variant("dmgin -context", "dmgin", (("use_context", False),),
                                kind="ablation")]
    table = quality.summarize("taobao", runs, variants, [0, 1, 2], quality.CONVERGENCE_BUDGET,
                              default_key="category", data="d", backend="jax")
    assert table["rows"][0]["partial"]
    trial = {"variant": "din trial 1", "seed": 0, "val": m, "seconds": 2.0,
             "test": {"auc": 0.9, "gauc": 0.9, "logloss": 0.1}}
    out = tuning.add_tuning_runs(table, {"runs": [trial]}, {"din": {"trial": "din trial 1"}})
    row = out["rows"][0]
    assert not row["partial"] and row["runs"] == 3
    assert row["gauc"]["mean"] == pytest.approx((0.9 + 0.6 + 0.6) / 3)
    assert out["rows"][1]["runs"] == 3 and out["missing_runs"] == []
    assert out["seed0_from_tuning"]["rows"] == ["din"]
