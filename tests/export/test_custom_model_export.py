"""Export of a run trained with `train(..., model_fn=...)`: the trained model or nothing."""
import os

import numpy as np
import pytest

from dmgin_tf.errors import DmginError


def _din_variant():
    """A DIN whose interest differs from the built-in one (same layers, same config)."""
    from dmgin_tf.models import DIN

    class ScaledDIN(DIN):
        def interest(self, inputs, training=None):
            return super().interest(inputs, training=training) * 3.0

    return ScaledDIN


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    from dmgin_tf.training.trainer import train
    from tests.training.tiny import tiny_config, tiny_data
    cls = _din_variant()
    cfg = tiny_config(jit_compile=False).apply_overrides(
        {"model.model": "din", "model.mlp_units": [8], "model.attention_units": [4]})
    run = str(tmp_path_factory.mktemp("custom") / "run")

    def model_fn(model_cfg):
        return cls(model_cfg, name="din")     # unbuilt: the trainer builds it

    result = train(cfg, tiny_data(n_train=64, n_val=32, n_test=32), run, model_fn=model_fn,
                   verbose=0)
    return run, model_fn, result


def test_the_run_records_the_class_it_trained(custom_run):
    run, _, result = custom_run
    assert result.metrics["model_class"].endswith("ScaledDIN")


def test_export_refuses_to_rebuild_a_custom_run_as_the_builtin_model(custom_run, tmp_path):
    from dmgin_tf.export.saved_model import export_from_run_dir
    run, _, _ = custom_run
    base = str(tmp_path / "serving")
    with pytest.raises(DmginError, match=r"trained as .*ScaledDIN.*rebuilds "
                                         r"dmgin_tf\.models\.baselines\.DIN.*model_fn"):
        export_from_run_dir(run, base, "m", variants=("noxla",))
    assert not os.path.exists(base)          # refused before anything was written


def test_export_with_the_runs_model_fn_reproduces_its_predictions(custom_run, tmp_path):
    from dmgin_tf.export.saved_model import export_from_run_dir
    from dmgin_tf.training.parity import check_saved_model_parity
    run, model_fn, _ = custom_run
    paths = export_from_run_dir(run, str(tmp_path / "serving"), "m", variants=("noxla",),
                                model_fn=model_fn)
    report = check_saved_model_parity(run, paths["noxla"])
    assert report.ok, report


def _copy_with_shifted_predictions(run, tmp_path, shift):
    """A copy of the run whose stored parity predictions are moved by `shift`."""
    import shutil
    from dmgin_tf.training.parity import PARITY_FILE
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    path = os.path.join(copy, PARITY_FILE)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **dict(arrays, predictions=arrays["predictions"] + shift))
    return copy


def test_export_refuses_weights_that_do_not_reproduce_the_runs_predictions(custom_run,
                                                                          tmp_path):
    """The same check without a recorded class: a parity batch the rebuilt model does not
    reproduce (here: predictions moved by 0.01) stops the export."""
    from dmgin_tf.export.saved_model import export_from_run_dir
    run, model_fn, _ = custom_run
    copy = _copy_with_shifted_predictions(run, tmp_path, 0.01)
    with pytest.raises(DmginError, match=r"does not reproduce the run's own predictions.*"
                                         r"max \|difference\| 0\.01"):
        export_from_run_dir(copy, str(tmp_path / "serving"), "m", variants=("noxla",),
                            model_fn=model_fn)
    # `dmgin export --no-verify` skips the comparison (the class check stays).
    export_from_run_dir(copy, str(tmp_path / "unverified"), "m", variants=("noxla",),
                        model_fn=model_fn, verify=False)


def test_older_mixed_precision_runs_are_not_compared(custom_run, tmp_path):
    """Runs from before metrics.json recorded the class stored the mixed-precision
    model's own predictions (~0.05 from the float32 rebuild that export serves)."""
    import json
    from dmgin_tf.export.saved_model import export_from_run_dir
    run, model_fn, _ = custom_run
    copy = _copy_with_shifted_predictions(run, tmp_path, 0.03)
    metrics_path = os.path.join(copy, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    del metrics["model_class"]
    metrics["precision_policy"] = "mixed_bfloat16"
    with open(metrics_path, "w") as f:
        json.dump(metrics, f)
    export_from_run_dir(copy, str(tmp_path / "serving"), "m", variants=("noxla",),
                        model_fn=model_fn, verify=False)
    export_from_run_dir(copy, str(tmp_path / "serving2"), "m", variants=("noxla",),
                        model_fn=model_fn, verify=True)


def test_a_registered_model_trains_and_exports_by_name(tmp_path):
    """docs/training.md, "Your own model": register, train by `model.model`, export."""
    from keras import ops
    from dmgin_tf import config as C
    from dmgin_tf.export.saved_model import export_from_run_dir
    from dmgin_tf.models import DIN, MODELS, register_model
    from dmgin_tf.training.parity import check_saved_model_parity
    from dmgin_tf.training.trainer import train
    from tests.training.tiny import tiny_config, tiny_data

    class DINWithHistoryMean(DIN):
        def interest(self, inputs, training=None):
            x = super().interest(inputs, training=training)
            keep = ops.cast(inputs["hist_item"], "int32") != 0
            tokens, mask = self.gathered_tokens(inputs, keep, self.model_cfg.recent_window)
            m = ops.cast(mask, tokens.dtype)[..., None]
            mean = ops.sum(tokens * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)
            return ops.concatenate([x, mean], axis=-1)

    register_model("din_mean", DINWithHistoryMean)
    try:
        cfg = tiny_config(jit_compile=False).apply_overrides(
            {"model.model": "din_mean", "model.mlp_units": [8], "model.attention_units": [4]})
        run = str(tmp_path / "run")
        result = train(cfg, tiny_data(n_train=64, n_val=32, n_test=32), run, verbose=0)
        assert type(result.model) is DINWithHistoryMean
        # Trained from a script, the class was `__main__.DINWithHistoryMean`; exported
        # from another that imports it, the module differs: the name is what counts.
        import json
        with open(os.path.join(run, "metrics.json")) as f:
            metrics = json.load(f)
        metrics["model_class"] = "__main__.DINWithHistoryMean"
        with open(os.path.join(run, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        paths = export_from_run_dir(run, str(tmp_path / "serving"), "din_mean",
                                    variants=("noxla",))
        assert check_saved_model_parity(run, paths["noxla"]).ok
    finally:
        MODELS.pop("din_mean", None)
        C._REGISTERED_MODELS.remove("din_mean")
