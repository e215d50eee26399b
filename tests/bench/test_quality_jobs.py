"""The GPU quality job queue (quality_jobs), the render path, and the prefetching feed.

The queue tests run fake workers (a small script speaking the worker protocol), so they
check planning, dispatch, budgets, kills, JSONL and merging in seconds without compiling
a model; the real workers were dry-run through run.sh (docs/gpu.md).
"""
import json
import os
import stat
import sys
import textwrap

import numpy as np
import pytest

from dmgin_tf.bench import quality, quality_jobs
from dmgin_tf.bench.quality_jobs import Job, plan_jobs, run_queue, worker_layout

VARIANTS = [quality.Variant("dmgin", "dmgin"),
            quality.Variant("dmgin -stats", "dmgin", (("use_stats", False),), kind="ablation"),
            quality.Variant("dmgin key=random K=16", "dmgin", (), "random", 16, kind="k-sweep"),
            quality.Variant("item popularity", "popularity", kind="baseline")]


def test_plan_is_seed_major_and_skips_popularity():
    jobs = plan_jobs(["taobao", "movielens"], VARIANTS, [0, 1, 2])
    assert len(jobs) == 3 * 3 * 2
    assert all(j.variant != "item popularity" for j in jobs)
    # Every row of both datasets with seed 0 before any seed 1.
    first = jobs[:6]
    assert {j.seed for j in first} == {0}
    assert {(j.dataset, j.variant) for j in first} == {(d, v.name) for d in ("taobao", "movielens")
                                                       for v in VARIANTS[:3]}
    assert [j.seed for j in jobs] == sorted(j.seed for j in jobs)


def test_worker_layout_gpu_and_cpu():
    gpu = worker_layout(gpus=1, cpus=16)
    assert gpu.processes == 5
    assert {e["CUDA_VISIBLE_DEVICES"] for e in gpu.env} == {"0"}
    assert gpu.env[0]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(gpu.env[0]["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.18)
    two = worker_layout(gpus=2, cpus=32)
    assert two.processes == 10 and {e["CUDA_VISIBLE_DEVICES"] for e in two.env} == {"0", "1"}
    cpu = worker_layout(processes=2, gpus=0, cpus=2)
    assert cpu.processes == 2 and all(e["JAX_PLATFORMS"] == "cpu" for e in cpu.env)


FAKE_WORKER = textwrap.dedent("""
    import json, os, sys, time
    print("@@READY", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        if job["variant"] == "dmgin -stats" and job["seed"] == 1:
            print("@@RESULT " + json.dumps(dict(job, error="ValueError: boom")), flush=True)
            continue
        print("noise on stdout is ignored", flush=True)
        auc = 0.6 + 0.1 * job["seed"]
        rec = dict(job, test={"auc": auc, "gauc": auc - 0.05, "logloss": 0.6},
                   val={"auc": auc}, seconds=0.1, train_examples_per_second=1000.0)
        print("@@RESULT " + json.dumps(rec), flush=True)
""")


def _fake_python(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    exe = tmp_path / "fakepy"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_compilation_cache_only_on_gpu_workers(tmp_path):
    from dmgin_tf.bench.quality_jobs import compilation_cache_dir
    gpu = worker_layout(processes=2, gpus=1, cpus=8)
    cpu = worker_layout(processes=2, gpus=0, cpus=8)
    assert compilation_cache_dir(None, str(tmp_path), gpu) == str(tmp_path / "jax_cache")
    assert compilation_cache_dir(None, str(tmp_path), cpu) is None
    assert compilation_cache_dir("/c", str(tmp_path), cpu) == "/c"      # asked for: used


def test_queue_runs_every_job_once_and_reports_failures(tmp_path):
    jobs = plan_jobs(["taobao", "movielens"], VARIANTS, [0, 1])
    got = []
    counts = run_queue(jobs, worker_layout(processes=2, gpus=0), str(tmp_path), str(tmp_path),
                       budget_s=60, hard_limit_s=120, on_result=got.append,
                       python=_fake_python(tmp_path), log=lambda m: None)
    assert counts["done"] == len(jobs) - 2 and counts["failed"] == 2
    assert counts["not_started"] == 0 and counts["killed"] == 0
    assert sorted((r["dataset"], r["variant"], r["seed"]) for r in got) == \
        sorted((j.dataset, j.variant, j.seed) for j in jobs)


def test_queue_budget_stops_starting_and_hard_limit_kills(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    jobs = plan_jobs(["taobao"], VARIANTS, [0, 1, 2])
    got = []
    counts = run_queue(jobs, worker_layout(processes=2, gpus=0), str(tmp_path), str(tmp_path),
                       budget_s=1.0, hard_limit_s=60, on_result=got.append,
                       python=_fake_python(tmp_path), log=lambda m: None)
    # Each worker started exactly one job before the start budget ran out.
    assert counts["done"] == 2 and counts["not_started"] == len(jobs) - 2
    monkeypatch.setenv("FAKE_SLEEP", "30")
    counts = run_queue(jobs, worker_layout(processes=2, gpus=0), str(tmp_path), str(tmp_path),
                       budget_s=60, hard_limit_s=2.0, on_result=got.append,
                       python=_fake_python(tmp_path), log=lambda m: None)
    assert counts["killed"] == 2 and counts["done"] == 0


def _bundle_with_plan(tmp_path, seeds):
    """An example-set bundle dir (tiny synthetic ExampleSet is overkill: reuse the sample)."""
    from dmgin_tf.config import Config
    from dmgin_tf.bench.gpu_bundle import QualitySpec, build_bundle
    spec = QualitySpec(tuple(VARIANTS), tuple(seeds), quality.QUICK_BUDGET, "category",
                       (("train.mixed_precision", False),))
    out = str(tmp_path / "bundle")
    build_bundle(Config(), ["taobao"], out, wheels=False, quality=spec, log=lambda *a: None)
    return out


def test_bundle_merge_and_render(tmp_path):
    bundle = _bundle_with_plan(tmp_path, [0, 1])
    plan = quality_jobs.load_plan(bundle)
    assert [v.name for v in plan["variants"]] == [v.name for v in VARIANTS]
    assert plan["config_overrides"] == {"train.mixed_precision": False}
    meta = json.load(open(os.path.join(bundle, "data", "taobao", "groupings.json")))
    assert set(meta) == {"category", "random_K16"} and meta["random_K16"]["group_vocab_size"] == 18
    table = np.load(os.path.join(bundle, "data", "taobao", "groupings.npz"))["random_K16"]
    assert table[0] == 0 and table[1] == 1 and table[2:].min() >= 2 and table.max() < 18
    run_sh = open(os.path.join(bundle, "run.sh")).read()
    assert "quality_jobs run" in run_sh and "quality_results.tar.gz" in run_sh

    out = tmp_path / "out"
    out.mkdir()
    lines = []
    for variant in ("dmgin", "dmgin -stats"):
        for seed in (0, 1):
            if variant == "dmgin -stats" and seed == 1:
                continue      # a run the budget cut
            lines.append(json.dumps({"dataset": "taobao", "variant": variant, "seed": seed,
                                     "test": {"auc": 0.7 + seed / 10, "gauc": 0.6, "logloss": 0.5},
                                     "val": {"auc": 0.7}, "seconds": 2.0}))
    (out / "quality_taobao.jsonl").write_text("\n".join(lines) + "\n{\"cut by a ki")
    results = quality_jobs.merge_dataset(bundle, str(out), "taobao", plan)
    rows = {r["variant"]: r for r in results["rows"]}
    assert rows["dmgin"]["runs"] == 2 and not rows["dmgin"]["partial"]
    assert rows["dmgin"]["auc"]["mean"] == pytest.approx(0.75)
    assert rows["dmgin -stats"]["partial"] and rows["dmgin key=random K=16"]["auc"]["mean"] is None
    assert rows["item popularity"]["runs"] == 1 and not rows["item popularity"]["partial"]
    assert ["dmgin -stats", 1] in results["missing_runs"]
    path = out / "quality_taobao.json"
    path.write_text(json.dumps(results))

    from dmgin_tf.cli.main import main
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert main(["bench", "quality", "--render", str(path), "--output", str(tmp_path / "r"),
                 "--docs", str(docs)]) == 0
    md = (tmp_path / "r" / "quality_taobao.md").read_text()
    assert "dmgin -stats (partial: 1/2 seeds)" in md and "0.750 ± 0.071" in md
    text = docs.read_text()
    assert "<!-- quality:taobao:start -->" in text and "kept" in text


def test_prefetching_sequence_keeps_order_and_content():
    """The prefetch path yields exactly the on-demand batches, across reshuffled epochs."""
    import keras  # noqa: F401 - SplitSequence is a keras PyDataset
    from dmgin_tf.training.callbacks import SplitSequence
    from dmgin_tf.training.inputs import ArraySplit
    n = 200
    rng = np.random.default_rng(0)
    split = ArraySplit({"x": np.arange(n)}, rng.integers(0, 2, n), np.arange(n))
    split.batch = lambda idx: {"x": np.arange(n)[idx]}   # no MODEL_INPUT_KEYS needed here
    plain = SplitSequence(split, 16, seed=3, backend="jax")
    fast = SplitSequence(split, 16, seed=3, backend="jax", prefetch=4, threads=3)
    try:
        for epoch in range(3):
            seen = []
            for i in range(len(plain)):
                (a, ya), (b, yb) = plain[i], fast[i]
                np.testing.assert_array_equal(a["x"], b["x"])
                np.testing.assert_array_equal(ya, yb)
                seen.append(b["x"])
            # One epoch covers distinct examples, no batch dropped or repeated.
            flat = np.concatenate(seen)
            assert len(flat) == len(plain) * 16 and len(set(flat.tolist())) == len(flat)
            plain.on_epoch_end()
            fast.on_epoch_end()
        # Out-of-order requests still get the right batch.
        np.testing.assert_array_equal(plain[5][0]["x"], fast[5][0]["x"])
        np.testing.assert_array_equal(plain[2][0]["x"], fast[2][0]["x"])
    finally:
        fast.close()


CLUSTER = quality.Variant("dmgin key=cluster", "dmgin", (), "table", kind="ablation")


def test_plan_runs_the_cluster_row_only_where_listed():
    variants = VARIANTS[:2] + [CLUSTER] + VARIANTS[2:]
    rows = {"movielens": [v.name for v in variants], "taobao": [v.name for v in VARIANTS]}
    jobs = plan_jobs(["taobao", "movielens"], variants, [0, 1], rows)
    assert {j.dataset for j in jobs if j.variant == CLUSTER.name} == {"movielens"}
    assert len(jobs) == 2 * (3 + 4)
    plan = quality_jobs.plan_dict(["taobao", "movielens"], variants, [0, 1], quality.QUICK_BUDGET,
                                  "category", {}, rows)
    plan["variants"] = variants
    assert [v.name for v in quality_jobs.dataset_variants(plan, "taobao")] == \
        [v.name for v in VARIANTS]
    assert CLUSTER in quality_jobs.dataset_variants(plan, "movielens")
    # Plans written before per-dataset rows: every dataset runs every row.
    assert len(plan_jobs(["taobao", "movielens"], variants, [0], None)) == 2 * 4


def test_bundle_gives_the_cluster_row_to_the_dataset_with_a_table(tmp_path):
    """Two datasets, a group table for movielens only: its groupings hold the table,
    its plan has the cluster row; taobao's has neither and merges without it."""
    import pandas as pd
    from dmgin_tf.config import Config
    from dmgin_tf.bench.gpu_bundle import QualitySpec, build_bundle
    movies = pd.read_csv(os.path.join(os.path.dirname(quality.__file__), "..", "sample_data",
                                      "movielens", "movies.csv"))
    table = tmp_path / "item_groups.parquet"
    pd.DataFrame({"item_id": movies["movieId"].astype(str),
                  "group_id": movies["movieId"] % 7}).to_parquet(table)
    spec = QualitySpec((VARIANTS[0], CLUSTER, VARIANTS[-1]), (0,), quality.QUICK_BUDGET,
                       "category", (("train.mixed_precision", False),))
    out = str(tmp_path / "bundle")
    manifest = build_bundle(Config(), ["taobao", "movielens"], out, wheels=False, quality=spec,
                            group_tables={"movielens": str(table)}, log=lambda *a: None,
                            command="dmgin gpu bundle --test")
    assert manifest["quality"]["rows_by_dataset"] == {
        "taobao": ["dmgin", "item popularity"],
        "movielens": ["dmgin", "dmgin key=cluster", "item popularity"]}
    assert manifest["quality"]["runs"] == 3 and manifest["command"] == "dmgin gpu bundle --test"
    ml = json.load(open(os.path.join(out, "data", "movielens", "groupings.json")))
    tb = json.load(open(os.path.join(out, "data", "taobao", "groupings.json")))
    assert set(ml) == {"category", "table"} and set(tb) == {"category"}
    assert ml["table"]["group_vocab_size"] == 7 + 2
    groups = np.load(os.path.join(out, "data", "movielens", "groupings.npz"))["table"]
    assert groups[2:].min() >= 2 and groups.max() == 8     # every sample movie is in the table
    plan = quality_jobs.load_plan(out)
    assert [j.dataset for j in plan_jobs(plan["datasets"], plan["variants"], plan["seeds"],
                                         plan["dataset_rows"])].count("movielens") == 2
    res = tmp_path / "res"
    res.mkdir()
    merged = quality_jobs.merge_dataset(out, str(res), "taobao", plan)
    assert [r["variant"] for r in merged["rows"]] == ["dmgin", "item popularity"]
    assert merged["missing_runs"] == [["dmgin", 0]]
    with pytest.raises(Exception, match="not bundled"):
        build_bundle(Config(), ["taobao"], str(tmp_path / "b2"), wheels=False, quality=spec,
                     group_tables={"movielens": str(table)}, log=lambda *a: None)


def _results(rows, seeds=(0, 1, 2), budget=quality.Budget(epochs=4), auc=0.7, **extra):
    """Synthetic `summarize` output: `rows` = variants, one run per seed."""
    runs = [{"variant": v.name, "seed": s if v.model != "popularity" else None,
             "test": {"auc": auc + 0.01 * s, "gauc": 0.6, "logloss": 0.5}, "val": {"auc": auc},
             "seconds": 10.0} for v in rows for s in (seeds if v.model != "popularity" else [0])]
    res = quality.summarize("movielens", runs, rows, list(seeds), budget, default_key="category",
                            data="ml", backend="jax", seconds=100.0)
    res.update(extra)
    return res


def test_render_merges_a_second_results_file_of_the_same_dataset(tmp_path, capsys):
    from dmgin_tf.cli.main import main
    category = quality.Variant("dmgin key=category", "dmgin", (), "category", kind="ablation")
    first = _results([VARIANTS[0], category, VARIANTS[2], VARIANTS[3]], command="published run")
    second = _results([CLUSTER], auc=0.8, command="cluster run", missing_runs=[])
    a, b = tmp_path / "quality_movielens.json", tmp_path / "new" / "quality_movielens.json"
    b.parent.mkdir()
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Quality\n\n<!-- quality:movielens:start -->\nold\n"
                    "<!-- quality:movielens:end -->\n\n## Other\n\nkept\n")
    assert main(["bench", "quality", "--render", str(a), str(b), "--output", str(tmp_path),
                 "--docs", str(docs)]) == 0
    merged = json.loads(a.read_text())           # --output is a's folder: rewritten in place
    names = [r["variant"] for r in merged["rows"]]
    # The ablation goes after the last ablation row, before the K sweep and the baseline.
    assert names == ["dmgin", "dmgin key=category", "dmgin key=cluster",
                     "dmgin key=random K=16", "item popularity"]
    cluster = merged["rows"][2]
    assert cluster["auc"]["mean"] == pytest.approx(0.81) and cluster["runs"] == 3
    assert merged["command"] == "published run" and merged["seconds"] == pytest.approx(200.0)
    assert len(merged["runs"]) == len(first["runs"]) + 3
    assert merged["merged"][0]["rows"] == ["dmgin key=cluster"]
    text = docs.read_text()
    assert "| dmgin key=cluster | cluster | 0.810 ± 0.010 |" in text and "old" not in text
    assert "from a later run" in text and "`cluster run`" in text and "kept" in text
    # Rendering the merged file with the second one again replaces the row, not duplicates it.
    assert main(["bench", "quality", "--render", str(a), str(b), "--output", str(tmp_path),
                 "--docs", ""]) == 0
    again = json.loads(a.read_text())
    assert [r["variant"] for r in again["rows"]] == names and len(again["runs"]) == len(merged["runs"])
    assert again["seconds"] == pytest.approx(200.0) and len(again["merged"]) == 1
    # Another budget: not comparable, nothing written.
    b.write_text(json.dumps(_results([CLUSTER], budget=quality.Budget(epochs=1))))
    before = a.read_text()
    capsys.readouterr()
    assert main(["bench", "quality", "--render", str(a), str(b), "--output", str(tmp_path),
                 "--docs", ""]) == 2
    err = capsys.readouterr().err
    assert "budget differs" in err and str(b) in err and a.read_text() == before


def test_tune_select_merges_trials_run_by_a_later_queue(tmp_path, capsys):
    """The first queue ran DIN's trials 0-1 and DMGIN's trial 0 only; a later queue ran
    DMGIN's trial 1: selection then compares both trials of both models."""
    from dmgin_tf.bench import tuning
    from dmgin_tf.cli.main import main
    rows = [quality.Variant(tuning.trial_name(m, i), m, kind="trial")
            for i in range(2) for m in ("dmgin", "din")]
    first = _results(rows, seeds=(0,), command="queue 1")
    first["runs"] = [r for r in first["runs"] if r["variant"] != "dmgin trial 1"]
    second = _results(rows[2:3], seeds=(0,), command="queue 2")
    config = {"model": {"embedding_dim": 16}, "train": {"learning_rate": 1e-3}}
    for r, val in zip(first["runs"] + second["runs"], (0.60, 0.65, 0.66, 0.70)):
        r.update(val={"gauc": val, "auc": val}, config=config)
    a, b = tmp_path / "a" / "quality_movielens.json", tmp_path / "b" / "quality_movielens.json"
    for path, res in ((a, first), (b, second)):
        path.parent.mkdir()
        path.write_text(json.dumps(res))
    assert main(["bench", "tune-select", str(a), "--output", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "hparams_movielens.json").read_text())
    assert one["selection"]["dmgin"]["trial"] == "dmgin trial 0"    # trial 1 not compared
    assert one["selection"]["din"]["trial"] == "din trial 0"
    assert main(["bench", "tune-select", str(a), str(b), "--output", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "hparams_movielens.json").read_text())
    assert two["selection"]["dmgin"]["trial"] == "dmgin trial 1"
    assert two["selection"]["din"]["trial"] == "din trial 1"
    assert "merged rows ['dmgin trial 1']" in capsys.readouterr().out


def test_merge_combines_the_seeds_of_one_row_from_two_queues():
    """A time-limited queue trained seeds 0-1, a second one seed 2: one 3-seed row."""
    first = _results(VARIANTS[:2], seeds=(0, 1, 2), command="queue 1")
    first["runs"] = [r for r in first["runs"] if r["seed"] != 2]
    first = quality.summarize("movielens", first["runs"], VARIANTS[:2], [0, 1, 2],
                              quality.Budget(epochs=4), default_key="category", data="ml",
                              backend="jax", seconds=100.0)
    assert first["rows"][0]["partial"] and first["rows"][0]["runs"] == 2
    second = _results(VARIANTS[:2], auc=0.9, command="queue 2")
    second["runs"] = [r for r in second["runs"] if r["seed"] == 2 and r["variant"] == "dmgin"]
    second["command"], second["date"] = "queue 2", "later"
    merged = quality.merge_results(first, second)
    dmgin, stats = merged["rows"]
    assert dmgin["runs"] == 3 and not dmgin["partial"]
    assert dmgin["auc"]["mean"] == pytest.approx((0.70 + 0.71 + 0.92) / 3)
    # A row the second queue listed but never ran keeps the first queue's runs.
    assert stats["runs"] == 2 and stats["partial"] and merged["merged"][0]["rows"] == ["dmgin"]
    # Merging the same file again changes nothing.
    again = quality.merge_results(merged, second)
    assert again["rows"] == merged["rows"] and len(again["runs"]) == len(merged["runs"])
    assert again["seconds"] == merged["seconds"] and len(again["merged"]) == 1


def test_margins_state_dmgin_lead_in_pooled_seed_stds_and_the_verdict():
    rows = [quality.Variant("dmgin", "dmgin"), quality.Variant("din", "din"),
            quality.Variant("dmgin -stats", "dmgin", (("use_stats", False),), kind="ablation"),
            quality.Variant("gbdt", "gbdt", kind="baseline"),
            quality.Variant("item popularity", "popularity", kind="baseline")]
    gauc = {"dmgin": [0.70, 0.71, 0.72], "din": [0.60, 0.62, 0.64], "gbdt": [0.69, 0.69, 0.69],
            "dmgin -stats": [0.9, 0.9, 0.9], "item popularity": [0.99]}
    runs = [{"variant": n, "seed": (s if n != "item popularity" else None),
             "test": {"auc": g, "gauc": g, "logloss": 0.5}, "val": {"auc": g}}
            for n, gs in gauc.items() for s, g in enumerate(gs)]
    res = quality.summarize("movielens", runs, rows, [0, 1, 2], quality.Budget(epochs=4),
                            default_key="category", data="ml", backend="jax")
    ms = {m["other"]: m for m in quality.margins(res)}
    # Ablations of DMGIN and popularity are not rivals; the bar's LightGBM is.
    assert set(ms) == {"din", "gbdt", "bar: LightGBM on past-only history features"}
    assert ms["din"]["diff"] == pytest.approx(0.09)
    assert ms["din"]["pooled"] == pytest.approx(np.sqrt((0.01 ** 2 + 0.02 ** 2) / 2))
    assert ms["gbdt"]["sigmas"] == pytest.approx(0.02 / np.sqrt(0.01 ** 2 / 2)) and ms["gbdt"]["met"]
    bar = ms["bar: LightGBM on past-only history features"]
    assert bar["diff"] == pytest.approx(0.71 - 0.670) and bar["pooled"] == pytest.approx(0.01)
    line = quality.margins_line(res)
    assert "Goal" in line and "**met**" in line
    runs = [dict(r, test=dict(r["test"], gauc=0.705)) if r["variant"] == "gbdt" else r
            for r in runs]
    res = quality.summarize("movielens", runs, rows, [0, 1, 2], quality.Budget(epochs=4),
                            default_key="category", data="ml", backend="jax")
    assert "**not met** (against gbdt)" in quality.margins_line(res)
    assert "**not met** (against gbdt)" in quality.markdown_table(dict(res, command="c"))


def test_catalog_embedding_reaches_every_row_that_reads_it():
    from dmgin_tf.errors import DmginError

    class Data:
        item_content = None
    table = np.zeros((5, 4), np.float32)
    row, plain = quality.Variant(quality.ITEM_CONTENT_ROW, "dmgin", item_content=True), \
        quality.Variant("din", "din")
    d = Data()
    assert quality.with_item_content(row, {}, d, table) == {"model.item_content_dim": 4}
    assert d.item_content is table
    d = Data()        # a row whose config sets the dimension (--set / tuned): fed, no override
    assert quality.with_item_content(plain, {"a": 1}, d, table, 4) == {"a": 1}
    assert d.item_content is table
    d = Data()        # a row that does not read it: untouched
    assert quality.with_item_content(plain, {}, d, table) == {} and d.item_content is None
    with pytest.raises(DmginError, match="item_content_dim=8 but the catalog embedding has 4"):
        quality.with_item_content(plain, {}, Data(), table, 8)
    with pytest.raises(DmginError, match="--item-embeddings"):
        quality.with_item_content(plain, {}, Data(), None, 4)


def test_item_embedding_row_gets_the_catalog_embedding_by_model_item_id(tmp_path):
    """The `dmgin +item embedding` row: the bundle writes the dataset's catalog
    embedding as item_content.npy, lined up with the model's item ids, and only that
    dataset runs the row; a worker trains it with the vectors loaded. (The vectors are
    synthetic here: this checks plumbing, not quality.)"""
    import pandas as pd
    from dmgin_tf.config import Config
    from dmgin_tf.bench.gpu_bundle import QualitySpec, build_bundle
    from dmgin_tf.data.item_index import ItemIndex
    from transform.embedding import write_embeddings
    movies = pd.read_csv(os.path.join(os.path.dirname(quality.__file__), "..", "sample_data",
                                      "movielens", "movies.csv"))
    ids = movies["movieId"].astype(str).tolist()[::-1]           # any order
    vectors = np.stack([np.full(4, int(i), np.float32) for i in ids])
    emb = write_embeddings(str(tmp_path / "emb"), ids, vectors)
    row = quality.Variant(quality.ITEM_CONTENT_ROW, "dmgin", kind="ablation", item_content=True)
    assert row in quality.default_variants(item_embeddings="x")
    assert row not in quality.default_variants()
    spec = QualitySpec((VARIANTS[0], row), (0,), quality.QUICK_BUDGET, "category",
                       (("train.mixed_precision", False), ("train.backend", "tensorflow")))
    out = str(tmp_path / "bundle")
    manifest = build_bundle(Config(), ["taobao", "movielens"], out, wheels=False, quality=spec,
                            item_embeddings={"movielens": emb}, log=lambda *a: None)
    assert manifest["quality"]["rows_by_dataset"] == {
        "taobao": ["dmgin"], "movielens": ["dmgin", quality.ITEM_CONTENT_ROW]}
    content = np.load(os.path.join(out, "data", "movielens", "item_content.npy"))
    index = ItemIndex.load(os.path.join(out, "data", "movielens", "item_index.parquet"))
    assert content.shape == (index.item_vocab_size, 4)
    np.testing.assert_array_equal(content[:2], 0.0)
    model_ids = index.lookup(np.array(ids))
    np.testing.assert_array_equal(content[model_ids, 0], np.array(ids, dtype=np.float32))
    assert not os.path.exists(os.path.join(out, "data", "taobao", "item_content.npy"))
    worker = quality_jobs._Worker(out, str(tmp_path / "res"))
    record = worker.run(Job("movielens", quality.ITEM_CONTENT_ROW, 0))
    assert "error" not in record and record["config"]["model"]["item_content_dim"] == 4


def test_run_set_is_repeatable_and_cannot_override_the_budget(tmp_path):
    """`run.sh --set train.epochs=1` was silently replaced by the budget's epochs, and of
    two --set flags only the last was read."""
    from dmgin_tf.errors import DmginError
    bundle = _bundle_with_plan(tmp_path, [0])
    base = ["run", "--bundle", bundle, "--out", str(tmp_path / "o")]
    with pytest.raises(DmginError, match=r"--set train.epochs=1: the run budget sets "
                                         r"train.epochs.*--epochs"):
        quality_jobs.main(base + ["--set", "model.dropout=0.1", "--set", "train.epochs=1"])
    with pytest.raises(DmginError, match="KEY=VALUE"):
        quality_jobs.main(base + ["--set", "model.dropout"])


def test_margins_of_one_seed_claim_no_verdict():
    """One seed has no spread: a lead must not read as +infσ and "met"."""
    rows = [quality.Variant("dmgin", "dmgin"), quality.Variant("din", "din")]
    runs = [{"variant": n, "seed": 0, "test": {"auc": g, "gauc": g, "logloss": 0.5},
             "val": {"auc": g}} for n, g in (("dmgin", 0.75), ("din", 0.60))]
    res = quality.summarize("movielens", runs, rows, [0], quality.Budget(epochs=4),
                            default_key="category", data="ml", backend="jax")
    ms = {m["other"]: m for m in quality.margins(res)}
    assert ms["din"]["sigmas"] is None and not ms["din"]["met"]
    line = quality.margins_line(res)
    assert "inf" not in line and "σ n/a: 1 seed" in line
    assert "**met**" not in line and "not determined" in line
    # A rival the one-seed row trails is still a miss.
    runs[0]["test"] = dict(runs[0]["test"], gauc=0.55)
    res = quality.summarize("movielens", runs, rows, [0], quality.Budget(epochs=4),
                            default_key="category", data="ml", backend="jax")
    assert "not determined" in quality.margins_line(res)


def test_a_queue_run_again_into_the_same_folder_resumes_and_never_mixes_settings(tmp_path):
    """Run again into the same OUT, the queue trained finished runs again and appended
    them: the results counted two runs for one seed, averaged across budgets."""
    from dmgin_tf.errors import DmginError
    bundle = _bundle_with_plan(tmp_path, [0, 1])
    plan = quality_jobs.load_plan(bundle)
    out = tmp_path / "out"
    out.mkdir()
    settings = quality_jobs.run_settings(plan, "taobao")

    def record(seed, auc, settings=settings):
        return json.dumps({"dataset": "taobao", "variant": "dmgin", "seed": seed,
                           "settings": settings, "test": {"auc": auc, "gauc": 0.6},
                           "val": {"auc": 0.7}, "seconds": 1.0})

    path = out / "quality_taobao.jsonl"
    path.write_text(record(0, 0.70) + "\n" + record(0, 0.72) + "\n")   # the same run twice
    assert quality_jobs.resumable_runs(str(out), "taobao", plan) == {("dmgin", 0)}
    rows = {r["variant"]: r for r in quality_jobs.merge_dataset(bundle, str(out), "taobao",
                                                                 plan)["rows"]}
    assert rows["dmgin"]["runs"] == 1 and rows["dmgin"]["auc"]["mean"] == pytest.approx(0.72)
    other = dict(settings, budget=dict(settings["budget"], epochs=99))
    path.write_text(record(0, 0.70) + "\n" + record(1, 0.71, other) + "\n")
    with pytest.raises(DmginError, match=r"holds runs made with other settings .*RUN_OUT"):
        quality_jobs.resumable_runs(str(out), "taobao", plan)


def test_a_stale_bundle_view_is_made_afresh(tmp_path):
    """A view left by a killed run linked to the old bundle (or dangled after a move):
    "src: File exists", or workers silently reading the other bundle's files."""
    bundle = _bundle_with_plan(tmp_path, [0])
    out = tmp_path / "o"
    view = out / "bundle_view"
    view.mkdir(parents=True)
    os.symlink(str(tmp_path / "moved_away" / "src"), str(view / "src"))        # dangling
    os.symlink(str(tmp_path / "other_bundle" / "data"), str(view / "data"))
    quality_jobs.main(["run", "--bundle", bundle, "--out", str(out), "--seeds", "1",
                       "--variants", "dmgin", "--budget-s", "0"])
    for name in os.listdir(bundle):
        if name != quality_jobs.PLAN_FILE:
            assert os.readlink(view / name) == os.path.join(os.path.abspath(bundle), name)
