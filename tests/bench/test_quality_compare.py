"""`dmgin bench quality --compare`: one row trained twice (e.g. JAX/GPU vs TF/CPU)."""
import json

import numpy as np
import pytest

from dmgin_tf.errors import DmginError
from dmgin_tf.bench import quality

BUDGET = {"epochs": 1, "steps_per_epoch": 40, "batch_size": 1024, "history_length": 256}


def _results(backend, gaucs, **changes):
    runs = [{"variant": "dmgin", "seed": s, "test": {"auc": 0.8 + g / 10, "gauc": g},
             "val": {"auc": 0.7, "gauc": 0.6}} for s, g in enumerate(gaucs)]
    runs.append({"variant": "item popularity", "seed": None, "test": {"auc": 0.5, "gauc": 0.5},
                 "val": None})
    res = {"dataset": "taobao", "budget": BUDGET, "seeds": [0, 1, 2],
           "default_grouping_key": "category", "counts": {"test": {"examples": 10}},
           "backend": backend, "command": f"train {backend}", "runs": runs[::-1]}
    res.update(changes)
    return res


def test_compare_reports_per_seed_values_difference_and_seed_std():
    cmp = quality.compare_runs(_results("jax", [0.5, 0.6, 0.7]),
                               _results("tensorflow", [0.6, 0.7, 0.8]), names=("gpu", "cpu"))
    gpu, cpu = cmp["sides"]
    assert gpu["seeds"] == [0, 1, 2] and gpu["values"]["test gauc"] == [0.5, 0.6, 0.7]
    assert cmp["diff"]["test gauc"] == pytest.approx(0.1)
    assert cmp["pooled_std"]["test gauc"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    md = quality.comparison_markdown(cmp)
    assert "| test gauc | 0.600 ± 0.100 (0.500, 0.600, 0.700) | 0.700 ± 0.100" in md
    assert "+0.1000" in md


@pytest.mark.parametrize("field,value", [("budget", dict(BUDGET, epochs=2)), ("seeds", [0]),
                                         ("counts", {"test": {"examples": 11}}),
                                         ("dataset", "movielens")])
def test_compare_refuses_different_experiments(field, value):
    with pytest.raises(DmginError, match=field):
        quality.compare_runs(_results("jax", [0.5]), _results("tensorflow", [0.6], **{field: value}))


def test_compare_cli_writes_json_and_chart(tmp_path, capsys):
    from dmgin_tf.cli.bench import compare_quality
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results("jax", [0.5, 0.6, 0.7])))
    b.write_text(json.dumps(_results("tensorflow", [0.6, 0.7, 0.8])))
    assert compare_quality([str(a), str(b)], ("gpu", "cpu"), str(tmp_path / "out")) == 0
    assert "| taobao, dmgin | gpu | cpu |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "backend_comparison.json").read_text())
    assert saved[0]["diff"]["test gauc"] == pytest.approx(0.1)
    assert (tmp_path / "out" / "backend_comparison.png").stat().st_size > 0
    with pytest.raises(DmginError, match="pairs"):
        compare_quality([str(a)], ("gpu", "cpu"), str(tmp_path / "out"))


def test_recorded_command_keeps_config_overrides():
    """A results file's command must reproduce it: `--set` overrides change the model."""
    from dmgin_tf.cli.bench import _reconstruct
    from dmgin_tf.cli.main import build_parser
    args = build_parser().parse_args([
        "bench", "quality", "--dataset", "movielens", "--variants", "dmgin +item embedding",
        "--set", "model.group_shares=true", "--set", "train.epochs=2"])
    cmd = _reconstruct(args)
    assert "--set model.group_shares=true --set train.epochs=2" in cmd, cmd
    assert "--variants 'dmgin +item embedding'" in cmd, cmd
