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

from dmgin_tf.training import quality, quality_jobs
from dmgin_tf.training.quality_jobs import Job, plan_jobs, run_queue, worker_layout

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
    from dmgin_tf.training.gpu_bundle import QualitySpec, build_bundle
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
