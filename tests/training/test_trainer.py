"""The trainer on the TensorFlow backend: files, metrics, early stopping, clear errors."""
import json
import os

import numpy as np
import pytest

from dmgin_tf.errors import DataError, DmginError
from tests.training.tiny import tiny_config, tiny_data, tiny_model_fn

keras = pytest.importorskip("keras")


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_one_epoch_writes_everything_and_metrics_match_predictions(tmp_path):
    from dmgin_tf import evaluation
    from dmgin_tf.training.callbacks import predict_split
    from dmgin_tf.training.trainer import load_trained_model, train
    data = tiny_data()
    out = str(tmp_path / "run")
    result = train(tiny_config(), data, out, model_fn=tiny_model_fn, verbose=0)
    for name in ("model.weights.h5", "config.json", "metrics.json", "history.json",
                 "history.csv", "training_curve.png", "parity_batch.npz", "tensorboard",
                 os.path.join("checkpoints", "best.weights.h5"),
                 os.path.join("checkpoints", "last.weights.h5")):
        assert os.path.exists(os.path.join(out, name)), name
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["backend"] == "tensorflow" and metrics["epochs_run"] == 1
    assert metrics["examples"] == {"train": 256, "val": 64, "test": 64}
    # Reported test metrics are those of the saved weights, recomputed independently.
    model, cfg = load_trained_model(out, tiny_model_fn)
    assert cfg.model.item_vocab_size == 42   # filled from the data
    scores = predict_split(model, data.test, 32)
    want = evaluation.evaluate(data.test.labels, scores, data.test.user_ids)
    for key in ("auc", "gauc", "logloss"):
        assert metrics["test"][key] == pytest.approx(want[key], abs=1e-6)
    assert result.metrics["val"]["num_examples"] == 64
    # The test predictions beside the metrics (dmgin bench diagnose reads them).
    saved = np.load(os.path.join(out, "test_predictions.npz"))
    np.testing.assert_allclose(saved["score"], scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(saved["label"], data.test.labels)
    np.testing.assert_array_equal(saved["user"], data.test.user_ids)
    np.testing.assert_array_equal(saved["cand_item"], data.test.candidate_ids()[0])


def test_early_stopping_restores_best_epoch(tmp_path):
    """Validation labels are flipped, so learning the train task makes val AUC worse: the
    best epoch is the first, training stops after `patience` worse epochs, and the
    weights written are epoch 1's, not the last epoch's."""
    from dmgin_tf.training.trainer import train
    data = tiny_data(n_train=512)
    data.val.labels = 1.0 - data.val.labels
    cfg = tiny_config(epochs=5, early_stopping_patience=1, learning_rate=0.05)
    out = str(tmp_path / "es")
    result = train(cfg, data, out, model_fn=tiny_model_fn, verbose=0)
    hist = result.history
    aucs = [r["val_auc"] for r in hist]
    assert result.metrics["best_epoch"] == int(np.argmax(aucs)) + 1 == 1
    assert result.metrics["epochs_run"] == 2 < 5
    assert result.metrics["val"]["auc"] == pytest.approx(aucs[0], abs=1e-9)

    def loaded(path):
        m = tiny_model_fn(result.config.model)
        from dmgin_tf.training.trainer import _build_with_dummy
        _build_with_dummy(m, result.config)
        m.load_weights(path)
        return _weights(m)

    final = loaded(os.path.join(out, "model.weights.h5"))
    best = loaded(os.path.join(out, "checkpoints", "best.weights.h5"))
    last = loaded(os.path.join(out, "checkpoints", "last.weights.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(final, best))
    assert not all(np.array_equal(a, b) for a, b in zip(final, last))


def test_history_length_mismatch_is_a_clear_error(tmp_path):
    from dmgin_tf.training.trainer import train
    cfg = tiny_config()
    cfg = cfg.apply_overrides({"model.history_length": 12})
    with pytest.raises(DataError, match=r"train batch 0: input 'hist_item' has shape \[32, 8\], "
                                        r"expected \[B, 12\]"):
        train(cfg, tiny_data(), str(tmp_path / "x"), model_fn=tiny_model_fn, verbose=0)


def test_backend_mismatch_is_refused(tmp_path):
    from dmgin_tf.training.backend import select_backend
    from dmgin_tf.training.trainer import train
    with pytest.raises(DmginError, match="train.backend='jax' but Keras runs the 'tensorflow'"):
        train(tiny_config(backend="jax"), tiny_data(), str(tmp_path / "x"),
              model_fn=tiny_model_fn, verbose=0)
    with pytest.raises(DmginError, match="already imported .* 'tensorflow' backend"):
        select_backend("jax")
    assert select_backend("tensorflow") == "tensorflow"


def test_mixed_precision_on_cpu_is_refused_under_xla_and_runs_in_graph_mode(tmp_path):
    """XLA on CPU cannot compile batched bfloat16 matrix-vector products (DMGIN's
    attention failed at its first step with "UnimplementedError: unsupported operand
    type BF16 in op dot"): the run stops first, naming the config fields; graph mode
    trains."""
    from dmgin_tf.training.trainer import train
    with pytest.raises(DmginError, match=r"train.mixed_precision=true on CPU "
                                         r"\(train.jit_compile=true\).*cannot compile"):
        train(tiny_config(mixed_precision=True, jit_compile=True), tiny_data(),
              str(tmp_path / "xla"), model_fn=tiny_model_fn, verbose=0)
    result = train(tiny_config(mixed_precision=True, jit_compile=False), tiny_data(),
                   str(tmp_path / "graph"), model_fn=tiny_model_fn, verbose=0)
    assert result.metrics["precision_policy"] == "mixed_bfloat16"
    assert np.isfinite(result.metrics["test"]["logloss"])


def test_forced_mirrored_strategy_trains(tmp_path):
    """The multi-GPU code path (MirroredStrategy) on this machine's single CPU device."""
    from dmgin_tf.training.trainer import train
    result = train(tiny_config(distribute="force"), tiny_data(n_train=128, n_val=32, n_test=32),
                   str(tmp_path / "mirrored"), model_fn=tiny_model_fn, verbose=0)
    assert result.metrics["placement"]["strategy"] == "mirrored"
    assert np.isfinite(result.metrics["test"]["logloss"])


def test_cli_train_refuses_a_second_backend(capsys):
    """Keras is loaded with TensorFlow in this process: --backend jax fails clearly."""
    from dmgin_tf.cli.main import main
    assert main(["train", "--backend", "jax", "--output", "/nonexistent/x"]) == 2
    assert "already imported in this process with the 'tensorflow' backend" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_on_embedded_sample(tmp_path, monkeypatch):
    """`dmgin train` end to end on the embedded MovieLens sample (tiny model, few steps)."""
    import dmgin_tf.training.trainer as trainer
    from dmgin_tf.cli.main import main
    monkeypatch.setattr(trainer, "default_model_fn", tiny_model_fn)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "movielens", "--output", str(out), "--history-length", "16",
               "--epochs", "1", "--batch-size", "256", "--set", "train.steps_per_epoch=3",
               "--set", "train.eval_batch_size=2048", "--quiet"])
    assert rc == 0
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["data"]["dataset"] == "movielens" and metrics["data"]["grouping_key"] == "category"
    assert metrics["test"]["num_examples"] > 1000
    assert (out / "item_index.parquet").exists() and (out / "data" / "canonical").is_dir()


def test_schedule_monitor_and_epoch_cap_flag(tmp_path):
    """Warm-up + cosine decay and early stopping on validation GAUC; a run whose best
    epoch is the last one allowed says so (it may still improve)."""
    import keras
    from dmgin_tf.training.trainer import make_optimizer, train
    data = tiny_data(n_train=256)
    cfg = tiny_config(epochs=2, lr_schedule="warmup_cosine", lr_warmup_epochs=1.0,
                      monitor="val_gauc", early_stopping_patience=5)
    result = train(cfg, data, str(tmp_path / "run"), model_fn=tiny_model_fn, verbose=0)
    m = result.metrics
    assert m["max_epochs"] == 2 and m["learning_rate"]["schedule"] == "warmup_cosine"
    assert m["monitor"] == "val_gauc"
    assert m["stopped_by_epoch_cap"] == (m["best_epoch"] == 2)
    opt = make_optimizer(cfg.train, steps_per_epoch=8)
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    rates = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 4, 8, 16)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(cfg.train.learning_rate / 2)
    assert rates[2] == pytest.approx(cfg.train.learning_rate)
    assert rates[3] == pytest.approx(cfg.train.learning_rate * cfg.train.lr_min_ratio)


def test_undefined_validation_metric_falls_back_and_is_named(tmp_path, capsys):
    """Validation GAUC with no user holding both labels (one example per user) is NaN
    every epoch: early stopping says so and monitors val AUC instead; with one label in
    the whole validation split, the train loss. Test metrics that are undefined are
    named with their reason, not printed as a bare nan."""
    from dmgin_tf import evaluation
    from dmgin_tf.training.trainer import train
    data = tiny_data(n_train=256)
    data.val.user_ids = np.arange(len(data.val.labels))            # one example per user
    cfg = tiny_config(epochs=3, monitor="val_gauc", early_stopping_patience=1)
    result = train(cfg, data, str(tmp_path / "gauc"), model_fn=tiny_model_fn, verbose=1)
    out = capsys.readouterr().out
    assert "val_gauc is undefined on the validation split (no user has both labels" in out
    assert "early stopping monitors val AUC" in out
    aucs = [r["val_auc"] for r in result.history]
    assert result.metrics["best_epoch"] == int(np.argmax(aucs)) + 1

    data = tiny_data(n_train=256)
    data.val.labels = np.ones_like(data.val.labels)
    data.test.labels = np.ones_like(data.test.labels)
    train(cfg, data, str(tmp_path / "one_label"), model_fn=tiny_model_fn, verbose=1)
    out = capsys.readouterr().out
    assert "(all 64 examples have label 1); early stopping monitors train loss" in out
    assert "note: test AUC is undefined: all 64 examples have label 1" in out
    assert evaluation.undefined_reason("gauc", [0, 1, 1], ["a", "a", "b"]) is None
    assert evaluation.undefined_reason("auc", [], None) == "no examples"


def test_no_test_examples_is_said_with_the_rule_that_made_it(tmp_path, capsys):
    """Data whose users all have fewer than data.min_events_for_test labelled events has
    no test split: the run said nothing and metrics.json's test was null."""
    from dmgin_tf.training.trainer import train
    data = tiny_data(n_train=128, n_test=0)
    result = train(tiny_config(), data, str(tmp_path / "r"), model_fn=tiny_model_fn, verbose=1)
    out = capsys.readouterr().out
    assert result.metrics["test"] is None
    assert "note: no test examples, so no test metrics" in out
    assert "data.min_events_for_test = 5 labelled events" in out
    train(tiny_config(), tiny_data(n_train=128), str(tmp_path / "s"), model_fn=tiny_model_fn,
          verbose=1)
    assert "no test examples" not in capsys.readouterr().out
    # The same output directory again, now without test examples: the first run's
    # predictions and TensorBoard events do not stay beside the second run's results.
    s = tmp_path / "s"
    assert (s / "test_predictions.npz").exists()
    train(tiny_config(), data, str(s), model_fn=tiny_model_fn, verbose=0)
    assert not (s / "test_predictions.npz").exists()
    events = [f for _, _, files in os.walk(s / "tensorboard") for f in files
              if f.startswith("events.")]
    assert 1 <= len(events) <= 2, events          # one run: a train (+ validation) log
    assert "test_predictions.npz" not in json.load(open(s / "metrics.json"))["files"]


def test_fit_asks_for_training_batches_in_order_and_reads_ahead_boundedly(tmp_path, monkeypatch):
    """The sequence shuffles itself (seeded); Keras must not reorder its batches, or the
    read-ahead misses and built batches pile up (memory growing with the epoch)."""
    from dmgin_tf.training import callbacks as cb
    from dmgin_tf.training.trainer import train
    asked, waiting = [], []
    real = cb.SplitSequence.__getitem__

    def spy(self, index):
        out = real(self, index)
        if self.shuffle:            # the training sequence
            asked.append(index)
            waiting.append(len(self._pending))
        return out

    monkeypatch.setattr(cb.SplitSequence, "__getitem__", spy)
    cfg = tiny_config(epochs=2, batch_size=16, early_stopping_patience=5)
    train(cfg, tiny_data(), str(tmp_path / "run"), model_fn=tiny_model_fn, verbose=0)
    per_epoch = 256 // 16
    # Keras reads a few batches first to infer the input signature; then two epochs in order.
    assert asked[-2 * per_epoch:] == list(range(per_epoch)) * 2
    assert max(waiting) <= 4


def test_read_ahead_stays_bounded_under_random_access():
    from dmgin_tf.training.callbacks import SplitSequence
    from dmgin_tf.training.inputs import ArraySplit
    n = 512
    split = ArraySplit({"x": np.arange(n)}, np.zeros(n), np.arange(n))
    split.batch = lambda idx: {"x": np.arange(n)[idx]}
    plain = SplitSequence(split, 8, seed=1, backend="jax")
    seq = SplitSequence(split, 8, seed=1, backend="jax", prefetch=4, threads=2)
    try:
        for i in np.random.default_rng(0).permutation(len(seq)):
            np.testing.assert_array_equal(seq[int(i)][0]["x"], plain[int(i)][0]["x"])
            assert len(seq._pending) <= 4
    finally:
        seq.close()


def test_a_damaged_run_directory_is_named_not_a_library_error(tmp_path):
    """Truncated weights (h5py's 'truncated file'), invalid config JSON (JSONDecodeError)
    and weights of another config (Keras' 'N objects could not be loaded')."""
    import shutil
    from dmgin_tf.training.trainer import load_trained_model, train
    run = tmp_path / "run"
    train(tiny_config(), tiny_data(), str(run), model_fn=tiny_model_fn, verbose=0)
    load_trained_model(str(run), tiny_model_fn)                      # intact: loads

    def damaged(name, edit):
        bad = tmp_path / name
        shutil.copytree(run, bad)
        edit(bad)
        return str(bad)

    def truncate(d):
        data = (d / "model.weights.h5").read_bytes()
        (d / "model.weights.h5").write_bytes(data[:1000])

    def other_config(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"]["embedding_dim"] = 8
        (d / "config.json").write_text(json.dumps(cfg))

    cases = [(damaged("truncated", truncate), r"truncated/model.weights.h5 does not load"),
             (damaged("json", lambda d: (d / "config.json").write_text("{\n")),
              r"json/config.json: cannot read the run's config \(JSONDecodeError"),
             (damaged("other", other_config), r"other/model.weights.h5 does not load into the "
                                              r"model .*other/config.json describes")]
    for path, match in cases:
        with pytest.raises(DataError, match=match):
            load_trained_model(path, tiny_model_fn)


def test_a_rerun_into_a_used_folder_never_mixes_two_runs(tmp_path, monkeypatch):
    """A second run into the same folder sets the first aside (`previous_run/`) and
    deletes it only once its own metrics are written; a run interrupted before that
    leaves its own history and checkpoints beside the complete earlier run, never next
    to the earlier run's weights and metrics (what `dmgin export` would read). The data
    cache and other files in the folder are left alone."""
    from dmgin_tf.training import trainer
    data = tiny_data()
    out = tmp_path / "run"
    trainer.train(tiny_config(), data, str(out), model_fn=tiny_model_fn, verbose=0)
    (out / "data").mkdir()
    (out / "notes.txt").write_text("mine")
    first = json.loads((out / "metrics.json").read_text())

    def interrupted(*args, **kwargs):   # the second run's first epoch is cut short
        (out / "history.json").write_text("[]")
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(), data, str(out), model_fn=tiny_model_fn, verbose=0)
    left = set(os.listdir(out))
    assert left == {"history.json", "checkpoints", "previous_run", "data", "notes.txt"}, left
    kept = out / "previous_run"
    assert json.loads((kept / "metrics.json").read_text()) == first
    assert (kept / "model.weights.h5").exists() and (kept / "config.json").exists()
    # `dmgin export` of the folder points at the complete run (was a raw FileNotFoundError).
    with pytest.raises(DataError, match=r"did not finish; its complete earlier run is in .*previous_run"):
        trainer.load_config_file(str(out))
    # Interrupted again: the unfinished run goes, the complete earlier one stays.
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(), data, str(out), model_fn=tiny_model_fn, verbose=0)
    assert json.loads((kept / "metrics.json").read_text()) == first
    # A run that finishes replaces it.
    monkeypatch.undo()
    trainer.train(tiny_config(), data, str(out), model_fn=tiny_model_fn, verbose=0)
    assert not kept.exists() and (out / "metrics.json").exists()
    assert {"data", "notes.txt"} <= set(os.listdir(out))
    assert "previous_run" not in json.loads((out / "metrics.json").read_text())["files"]


def test_a_run_into_another_commands_output_is_refused_and_deletes_nothing(tmp_path):
    """`--output` at a group table's or an example set's folder deleted its
    item_index.parquet (a run output name) as if it were an unfinished run's."""
    from dmgin_tf.errors import DmginError
    from dmgin_tf.training import trainer
    out = tmp_path / "groups"
    out.mkdir()
    (out / "item_index.parquet").write_bytes(b"PAR1")
    (out / "report.md").write_text("groups")
    with pytest.raises(DmginError, match="holds item_index.parquet but no training run"):
        trainer.train(tiny_config(), tiny_data(), str(out), model_fn=tiny_model_fn, verbose=0)
    assert sorted(os.listdir(out)) == ["item_index.parquet", "report.md"]
    with pytest.raises(DmginError, match="report.md exists and is not a directory"):
        trainer.train(tiny_config(), tiny_data(), str(out / "report.md"),
                      model_fn=tiny_model_fn, verbose=0)


def test_cli_train_on_the_embedded_taobao_sample_uses_the_sample_config(tmp_path, monkeypatch,
                                                                        capsys):
    """Like `dmgin pipeline run`, `dmgin train` without data or config trains the sample's
    small model (tfx_pipeline/sample_config.yaml), not the defaults sized for real logs
    (L = 512, 5 epochs: minutes per epoch on a CPU); given data or a config, it does not."""
    import dmgin_tf.training.data_source as data_source
    import dmgin_tf.training.trainer as trainer
    from dmgin_tf.cli.main import main
    seen = []
    monkeypatch.setattr(data_source, "load_training_data", lambda cfg, *a, **k: None)
    monkeypatch.setattr(trainer, "train", lambda cfg, *a, **k: seen.append(cfg))
    assert main(["train", "--output", str(tmp_path / "a")]) == 0
    assert seen[-1].model.history_length == 64 and seen[-1].train.epochs == 2
    assert "embedded sample: using tfx_pipeline/sample_config.yaml" in capsys.readouterr().out
    for extra in (["--data", str(tmp_path)], ["--set", f"data.input_path={tmp_path}"],
                  ["--dataset", "movielens"]):
        assert main(["train", "--output", str(tmp_path / "b")] + extra) == 0
        assert seen[-1].model.history_length == 512, extra


def test_mixed_precision_metrics_are_those_of_the_float32_model_export_serves(tmp_path):
    """Export rebuilds a mixed-precision run in float32 from its weights; the run's
    metrics, saved predictions and parity batch are that model's, so they match a
    re-evaluation of the saved run (the bfloat16 model's validation is kept beside)."""
    from dmgin_tf import evaluation
    from dmgin_tf.training.callbacks import predict_split
    from dmgin_tf.training.parity import check_run_parity
    from dmgin_tf.training.trainer import load_trained_model, train
    data, out = tiny_data(), str(tmp_path / "mp")
    result = train(tiny_config(mixed_precision=True, jit_compile=False), data, out,
                   model_fn=tiny_model_fn, verbose=0)
    assert result.metrics["precision_policy"] == "mixed_bfloat16"
    assert result.metrics["mixed_precision_val"]["num_examples"] == 64
    model, _ = load_trained_model(out, tiny_model_fn)
    assert model.dtype_policy.name == "float32"
    for name, split in (("val", data.val), ("test", data.test)):
        scores = predict_split(model, split, 32)
        want = evaluation.evaluate(split.labels, scores, split.user_ids)
        for key in ("auc", "gauc", "logloss"):
            assert result.metrics[name][key] == pytest.approx(want[key], abs=1e-6), (name, key)
    saved = np.load(os.path.join(out, "test_predictions.npz"))["score"]
    np.testing.assert_allclose(saved, predict_split(model, data.test, 32), atol=1e-6)
    assert check_run_parity(out, tiny_model_fn).max_abs_diff < 1e-5


def test_cli_train_names_a_keras_backend_from_the_environment_it_does_not_use(
        tmp_path, monkeypatch, capsys):
    """`KERAS_BACKEND=jax dmgin train` runs train.backend (tensorflow by default): Keras
    users expect the variable to choose, so the run says which one it uses and how to
    choose."""
    import dmgin_tf.training.data_source as data_source
    import dmgin_tf.training.trainer as trainer
    from dmgin_tf.cli.main import main
    monkeypatch.setattr(data_source, "load_training_data", lambda cfg, *a, **k: None)
    monkeypatch.setattr(trainer, "train", lambda cfg, *a, **k: None)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert main(["train", "--output", str(tmp_path / "a")]) == 0
    assert ("KERAS_BACKEND=jax in the environment, but this run uses "
            "train.backend=tensorflow (choose with --backend)") in capsys.readouterr().err


def test_config_json_names_the_grouping_the_examples_were_built_with(tmp_path):
    """`grouping.key=cluster` without an item → group table builds `category` examples
    (with a note); the run's config.json says `category`, not the grouping it did not
    use. A key the examples do not record leaves the config as it is."""
    import dataclasses

    from dmgin_tf.training.trainer import load_config_file, train
    data = tiny_data()
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, grouping=cfg.grouping.replace(key="cluster"))
    built = dataclasses.replace(data, info=dict(data.info, grouping_key="category"))
    train(cfg, built, str(tmp_path / "a"), model_fn=tiny_model_fn, verbose=0)
    assert load_config_file(str(tmp_path / "a")).grouping.key == "category"
    train(cfg, data, str(tmp_path / "b"), model_fn=tiny_model_fn, verbose=0)
    assert load_config_file(str(tmp_path / "b")).grouping.key == "cluster"


def test_long_epochs_print_progress_lines(tmp_path, monkeypatch, capsys):
    """`dmgin train` printed nothing within an epoch (minutes on real data at L = 512);
    now a step line every PROGRESS_EVERY_S seconds (here: every step but the last)."""
    from dmgin_tf.training import trainer
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)
    cfg = tiny_config(epochs=1, batch_size=32)
    trainer.train(cfg, tiny_data(), str(tmp_path / "run"), model_fn=tiny_model_fn, verbose=1)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  epoch 1: step")]
    assert len(lines) == 256 // 32 - 1, lines
    assert lines[0].startswith("  epoch 1: step 1/8 (12%),") and "ex/s, ~" in lines[0], lines
    trainer.train(cfg, tiny_data(), str(tmp_path / "quiet"), model_fn=tiny_model_fn, verbose=0)
    assert "step" not in capsys.readouterr().out
