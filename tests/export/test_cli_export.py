"""`dmgin export` from a training run: the cached user state's caps from the command line."""
import numpy as np
import pytest


def test_export_cli_sets_the_user_state_caps(tmp_path, capsys):
    import tensorflow as tf
    from dmgin_tf.cli.main import main
    from dmgin_tf.training.trainer import train
    from tests.training.tiny import tiny_config, tiny_data
    cfg = tiny_config(jit_compile=False).apply_overrides(
        {"model.max_groups": 4, "model.max_per_group": 2, "model.num_heads": 2,
         "model.mlp_units": [8], "model.attention_units": [4]})
    run = str(tmp_path / "run")
    train(cfg, tiny_data(n_train=64, n_val=32, n_test=32), run, verbose=0)
    assert main(["export", "--model-dir", run, "--output", str(tmp_path / "serving" / "m"),
                 "--variants", "noxla", "--state-groups", "3", "--state-items", "5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    # Progress while the signatures are traced (minutes on a small CPU), the check
    # against the Keras model before the version is published, then the result.
    assert out[0].startswith("export noxla: tracing the signatures into ")
    assert out[1] == "verifying the export against the Keras model ..."
    assert out[2].startswith("export noxla: saved (")
    path = out[-1].split("noxla: ")[1].strip()
    sig = tf.saved_model.load(path).signatures["user_state"]
    outputs = sig.structured_outputs
    assert outputs["lookup_group_ids"].shape[-1] == 3 and outputs["item_ids"].shape[-1] == 5
    assert main(["export", "--model-dir", run, "--output", str(tmp_path / "s2" / "m"),
                 "--state-groups", "0"]) == 2
    assert "--state-groups=0: must be >= 1" in capsys.readouterr().err


def test_export_cli_keeps_the_runs_serving_settings(tmp_path, capsys):
    """`dmgin train --set serving.candidate_buckets=...` was recorded in the run and then
    replaced by the package defaults at `dmgin export` (the Python export kept it)."""
    import json
    from dmgin_tf.cli.main import main
    from dmgin_tf.training.trainer import train
    from tests.training.tiny import tiny_config, tiny_data
    cfg = tiny_config(jit_compile=False).apply_overrides(
        {"model.max_groups": 4, "model.max_per_group": 2, "model.num_heads": 2,
         "model.mlp_units": [8], "model.attention_units": [4],
         "serving.candidate_buckets": [8, 32], "serving.max_candidates": 64})
    run = str(tmp_path / "run")
    train(cfg, tiny_data(n_train=64, n_val=32, n_test=32), run, verbose=0)

    def exported(*extra):
        out = str(tmp_path / f"s{len(extra)}" / "m")
        assert main(["export", "--model-dir", run, "--output", out, "--variants", "noxla",
                     "--no-verify", *extra]) == 0
        path = capsys.readouterr().out.strip().splitlines()[-1].split("noxla: ")[1].strip()
        return json.load(open(f"{path}/assets.extra/dmgin_export.json"))

    info = exported()
    assert info["candidate_buckets"] == [8, 32] and info["max_candidates"] == 64
    info = exported("--set", "serving.max_candidates=40")       # --set on top of the run's
    assert info["candidate_buckets"] == [8, 32] and info["max_candidates"] == 40
