"""Smoke runs of the timing benchmarks (grouping op, scale-out, serving) on tiny sizes, so
their entry points cannot rot. Nothing here is timed or compared with a goal: the real
runs and their figures live in docs/benchmarks.md."""
import json
import os
import sys

import pytest

from dmgin_tf.data.sample import SAMPLE_ROOT

BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)


def test_bench_grouping_tiny(tmp_path):
    import bench_grouping
    md = tmp_path / "out.md"
    rows = bench_grouping.main(["--lengths", "40", "--elements", "160", "--min-seconds", "0",
                                "--append", str(md)])
    assert {(r[0], r[2]) for r in rows} == {(40, "graph"), (40, "xla")}
    table = md.read_text()
    assert "| 40 |" in table and "xla" in table and "graph" in table


@pytest.mark.slow
def test_bench_scale_tiny_on_the_sample(tmp_path):
    from dmgin_tf.bench import scale as bench_scale
    out = tmp_path / "scale"
    assert bench_scale.main(["--data", str(SAMPLE_ROOT / "taobao"), "--runners", "direct",
                             "--stages", "examples,shuffle,kmeans", "--iterations", "1",
                             "--num-groups", "4", "--docs", "", "--output", str(out)]) == 0
    summary = json.loads((out / "scale.json").read_text())
    (row,) = summary["runs"]
    assert row["examples"] > 0 and row["shuffle_users"] > 0 and row["kmeans_iterations"] >= 1
    assert row["load_1m"] >= 0 and (out / "scale.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_serving_tiny(tmp_path, monkeypatch):
    import tempfile

    import bench_serving
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    md = tmp_path / "serving.md"
    assert bench_serving.main(["--history", "24", "--candidates", "5", "--requests", "4",
                               "--batch-sizes", "1,2", "--raw-history", "16",
                               "--concurrency", "2", "--variants", "noxla",
                               "--append", str(md)]) == 0
    text = md.read_text()
    assert "rank, 1 user x 5 cand, L=24" in text and "predict_raw B=2" in text
    rows = [line for line in text.splitlines() if line.startswith("| rank") or
            line.startswith("| predict_raw")]
    assert rows and all(line.rstrip(" |").endswith("| 0") for line in rows), rows  # 0 errors
    assert not list(scratch.glob("bench_serving_*"))   # the exported models are removed


def test_probe_statistics_mlp_trains_both_encodings_on_fixed_features():
    """The probe's training loop on a tiny synthetic feature matrix (its feature builder
    is the gbdt row's, tested with that row)."""
    import numpy as np
    import probe_statistics_mlp
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.exponential(1.0, (n, 5)).astype("float32")
        y = (x[:, 0] + rng.normal(0, 0.1, n) > 1.0).astype("float32")
        return x, y, rng.integers(0, 10, n)

    mats = {"train": split(2000), "val": split(300), "test": split(300)}
    for encoding in ("bn", "ple"):
        row = probe_statistics_mlp.train_probe(mats, encoding, max_epochs=4, patience=4)
        assert row["encoding"] == encoding and 1 <= row["best_epoch"] <= 4
        assert row["test_gauc"] > 0.6          # x0 decides the label: learnable at once


def test_collaborative_item_vectors_on_the_sample(tmp_path, monkeypatch):
    """The co-rater item vectors of the Quality exploration: one row per catalog item,
    unit SVD part plus the genre part, from training examples only."""
    import numpy as np
    import pandas as pd

    import collaborative_item_vectors
    from dmgin_tf.cli.main import main
    assert main(["data", "convert", "--dataset", "movielens", "--input",
                 str(SAMPLE_ROOT / "movielens"), "--output", str(tmp_path / "ml"),
                 "--no-progress"]) == 0
    assert main(["examples", "build", "--data", str(tmp_path / "ml"), "--dataset", "movielens",
                 "--grouping-key", "category", "--output", str(tmp_path / "ex"),
                 "--no-progress"]) == 0
    out = tmp_path / "vectors.parquet"
    monkeypatch.setattr(sys, "argv", [
        "collaborative_item_vectors.py", "--examples", str(tmp_path / "ex"), "--items",
        str(tmp_path / "ml" / "items.parquet"), "--output", str(out), "--dim", "8"])
    collaborative_item_vectors.main()
    table = pd.read_parquet(out)
    items = pd.read_parquet(tmp_path / "ml" / "items.parquet")
    assert sorted(table.item_id) == sorted(items.item_id.astype(str))
    vectors = np.stack(table.embedding)
    norms = np.linalg.norm(vectors[:, :8], axis=1)
    assert vectors.shape[1] > 8 and np.all(np.isfinite(vectors))
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms < 1e-6))    # unit, or no training pair
