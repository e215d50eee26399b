"""benchmarks/bench_efficiency.py: the analysis against exact references, the guards, the
docs block, and the entry point on tiny sizes (not timed)."""
import json
import math

import numpy as np
import pytest

from dmgin_tf.features import (CAND_GROUP, CAND_ITEM, HIST_BEHAVIOR_ID, HIST_GROUP, HIST_ITEM,
                               HIST_TIME, MODEL_INPUT_KEYS, REQUEST_TIME)


@pytest.fixture(scope="module")
def be():
    from dmgin_tf.bench import efficiency
    return efficiency


def test_synthetic_batch_is_a_valid_repetitive_history(be):
    x, y = be.synthetic_batch(8, 500, num_items=1000, num_groups=50, num_behavior_types=4, seed=3)
    assert set(x) == set(MODEL_INPUT_KEYS)
    for k in (HIST_ITEM, HIST_GROUP, HIST_BEHAVIOR_ID, HIST_TIME):
        assert x[k].shape == (8, 500)
    assert x[REQUEST_TIME].shape == x[CAND_ITEM].shape == x[CAND_GROUP].shape == y.shape == (8,)
    assert x[HIST_ITEM].dtype == np.int32 and x[HIST_TIME].dtype == np.int64
    assert x[HIST_ITEM].min() >= 2 and x[HIST_ITEM].max() <= 1001      # ids 0/1 reserved
    assert x[HIST_GROUP].min() >= 2 and x[HIST_GROUP].max() <= 51
    assert set(np.unique(x[HIST_BEHAVIOR_ID])) <= {1, 2, 3, 4}
    assert (np.diff(x[HIST_TIME], axis=1) > 0).all()                   # oldest first
    assert (x[HIST_TIME] < x[REQUEST_TIME][:, None]).all()
    # One group per item, candidates included.
    pairs = set(zip(x[HIST_ITEM].ravel(), x[HIST_GROUP].ravel())) | set(
        zip(x[CAND_ITEM], x[CAND_GROUP]))
    assert len({i for i, _ in pairs}) == len(pairs)
    # Zipf repetition: far fewer distinct items than slots, mostly views.
    assert len(np.unique(x[HIST_ITEM])) < 0.5 * x[HIST_ITEM].size
    assert 0.8 < (x[HIST_BEHAVIOR_ID] == 1).mean() < 0.9
    # Fixed seed → the same batch.
    x2, _ = be.synthetic_batch(8, 500, num_items=1000, num_groups=50, seed=3)
    np.testing.assert_array_equal(x[HIST_ITEM], x2[HIST_ITEM])


def _cells(a=1e-6, b=1e-8, lengths=(100, 1000, 10000)):
    """DMGIN at a·L, the Transformer at b·L² seconds per example (crossover L = a/b)."""
    cells = []
    for L in lengths:
        for model, t in (("dmgin", a * L), ("transformer", b * L * L)):
            cells.append({"model": model, "length": L, "batch_size": 4, "status": "ok",
                          "train_examples_per_s": 1 / t, "serve_examples_per_s": 3 / t})
    return cells


def test_slopes_ratios_and_crossover_match_exact_power_laws(be):
    cells = _cells()
    slopes = be.fit_slopes(cells, "train")
    assert slopes["dmgin"]["all"] == pytest.approx(1.0)
    assert slopes["transformer"]["all"] == pytest.approx(2.0)
    assert slopes["transformer"]["last_two"] == pytest.approx(2.0)
    ratio = {(r["model"], r["length"]): r for r in be.ratios(cells)}
    assert ratio[("transformer", 10000)]["dmgin_cheaper_train"] == pytest.approx(100.0)
    assert ratio[("transformer", 1000)]["dmgin_cheaper_serve"] == pytest.approx(10.0)
    assert ratio[("dmgin", 100)]["dmgin_cheaper_train"] == pytest.approx(1.0)
    # a·L = b·L² at L = a/b; log-log interpolation is exact for power laws.
    assert be.crossover(_cells(a=1e-6, b=1e-9), "train")["length"] == pytest.approx(1000.0)
    cx = be.crossover(_cells(a=1e-6, b=2e-9, lengths=(100, 1000)), "serve")
    assert cx["length"] == pytest.approx(500.0)
    assert be.crossover(_cells(a=1e-6, b=1e-7), "train")["below"] == 100
    assert "not cheaper" in be.crossover(_cells(a=1.0, b=1e-9), "train")["text"]


def test_guard_skips_full_attention_at_50k_and_shrinks_batches(be):
    s = be.Settings(memory_budget_gb=6.0)
    plan = be.plan_cell("transformer", 50000, s, None)
    assert plan["skip"].startswith("skipped: > budget") and plan["batch_size"] == 1
    # 10k: the default batch (13) would need ~60 GB of scores; batch 1 fits.
    plan = be.plan_cell("transformer", 10000, s, None)
    assert plan["skip"] is None and plan["batch_size"] < s.batch_size(10000)
    assert plan["estimate_gb"] <= 6.0
    assert be.plan_cell("dmgin", 50000, s, None)["skip"] is None
    # Time guard: a previous cell at 1 s/step and L=1000 → 100 s per step at L=10k.
    prev = {"status": "ok", "length": 1000, "batch_size": 1, "serve_step_s": 1.0,
            "train_step_s": 1.0}
    plan = be.plan_cell("transformer", 10000, be.Settings(cell_budget_s=60), prev)
    assert plan["skip"] and "time est." in plan["skip"]


def test_docs_block_replaced_in_place_others_kept(be, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Quality\n\nquality text\n\n## Serving\n\nserving text\n")
    be.update_docs(str(docs), "first body")
    be.update_docs(str(docs), "second body")
    text = docs.read_text()
    assert "quality text" in text and "serving text" in text
    assert text.count(be.DOC_START) == 1 and "second body" in text and "first body" not in text
    assert "synthetic load shapes" in text


@pytest.mark.slow
def test_entry_point_tiny(tmp_path):
    """`dmgin bench efficiency` end to end on tiny sizes (serve only: XLA-free tracing
    keeps it within seconds), then `--render` from the JSON."""
    from dmgin_tf.cli.main import main
    out, docs = tmp_path / "eff", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Quality\n\nkept as is\n")
    argv = ["bench", "efficiency", "--models", "dmgin", "transformer", "--lengths", "8", "16",
            "--tokens-per-batch", "32", "--steps", "1", "--phases", "serve", "--no-jit",
            "--isolation", "inline", "--num-items", "200", "--num-groups", "20",
            "--output", str(out), "--docs", str(docs)]
    assert main(argv) == 0
    results = json.load(open(out / "efficiency.json"))
    cells = {(c["model"], c["length"]): c for c in results["cells"]}
    assert set(cells) == {("dmgin", 8), ("dmgin", 16), ("transformer", 8), ("transformer", 16)}
    for c in cells.values():
        assert c["status"] == "ok" and c["serve_examples_per_s"] > 0
        assert c["batch_size"] == 32 // c["length"]
        assert "train_examples_per_s" not in c
    assert results["command"].startswith("dmgin bench efficiency --models dmgin transformer")
    assert results["slopes"]["serve"]["dmgin"]["all"] is not None
    text = docs.read_text()
    assert "kept as is" in text and "## Efficiency" in text and "| 16 | DMGIN |" in text
    assert (tmp_path / "img" / "efficiency_tensorflow.png").stat().st_size > 1000
    assert main(["bench", "efficiency", "--render", str(out / "efficiency.json"),
                 "--output", str(tmp_path / "re"), "--docs", ""]) == 0
    assert (tmp_path / "re" / "efficiency.md").read_text() == (out / "efficiency.md").read_text()


@pytest.mark.slow
def test_train_phase_measures_an_optimizer_step(be):
    """The train path (Adam step via train_on_batch) on the cheapest model."""
    from dmgin_tf.training.backend import select_backend
    select_backend("tensorflow")
    s = be.Settings()
    r = be.measure_cell("din", 8, 2, be.model_config_dict(s, "din", 8) | {"recent_window": 4},
                        backend="tensorflow", steps=1, jit_compile=False, num_items=50,
                        num_groups=5, phases=("train",))
    assert r["status"] == "ok" and r["train_examples_per_s"] > 0 and r["train_steps_timed"] == 1
    assert math.isfinite(r["train_rss_peak_mb"]) and "serve_step_s" not in r
