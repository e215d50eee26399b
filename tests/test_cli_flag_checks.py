"""Flags and side files that bypass the config sections are checked before any work:
one line naming the flag (or file) and the value, exit 2, nothing written."""
import pytest

from dmgin_tf.cli.main import main


def _one_line_error(capsys, *words, usage=False):
    """The error line; argparse's own errors (`usage`) follow the usage lines."""
    err = capsys.readouterr().err.strip()
    if usage:
        assert err.startswith("usage:"), err
        err = err.splitlines()[-1]
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    assert "Traceback" not in err and "run 'dmgin --debug" not in err, err
    return err


@pytest.mark.parametrize("text, words", [
    ("- 1\n", ["top level must be a mapping", "list"]),
    ("encoder:\n", []),                                   # an empty section = defaults
    ("encoder: [\n", ["invalid YAML", "line 2"]),
    ("encoder:\n  epochs: 1\nbatch_size: 8\n", ["not both", "batch_size"]),
    ("encoder: 3\n", ["must be a mapping", "3"]),
    ("epochs: 1\nepochs: 2\n", ["epochs", "twice"]),
    ("minilm_trainable_blocks: 99\n", ["minilm_trainable_blocks", "[0, 6]"]),
])
def test_encoder_config_file_problems(tmp_path, text, words):
    from dmgin_tf.cli.encoder import encoder_config_from_args
    from dmgin_tf.config import ConfigError
    path = tmp_path / "e.yaml"
    path.write_text(text)

    class Args:
        encoder_config = str(path)
        epochs = steps = batch_size = learning_rate = seed = minilm_trainable_blocks = None
        from_scratch = False
    if not words:
        assert encoder_config_from_args(Args()).epochs == 5
        return
    with pytest.raises(ConfigError) as e:
        encoder_config_from_args(Args())
    for w in words:
        assert w in str(e.value), e.value


def test_encoder_config_json_syntax(tmp_path, capsys):
    (tmp_path / "b.json").write_text('{"epochs": 1')
    assert main(["encoder", "train", "--items", str(tmp_path), "--output", str(tmp_path / "e"),
                 "--encoder-config", str(tmp_path / "b.json")]) == 2
    _one_line_error(capsys, "b.json", "invalid JSON", "line 1")


def test_encoder_flags_refused_up_front(tmp_path, capsys):
    assert main(["encoder", "train", "--items", str(tmp_path), "--output", str(tmp_path / "e"),
                 "--minilm-trainable-blocks", "99"]) == 2
    _one_line_error(capsys, "minilm_trainable_blocks", "[0, 6]")
    for bad in ("0", "-3"):
        with pytest.raises(SystemExit) as e:
            main(["encoder", "embed", "--encoder", str(tmp_path), "--items", str(tmp_path),
                  "--output", str(tmp_path / "o"), "--batch-size", bad])
        assert e.value.code == 2
        _one_line_error(capsys, "--batch-size", "must be >= 1", usage=True)
    assert not (tmp_path / "o").exists()


def test_library_embedding_refuses_bad_batch_sizes(tmp_path):
    from dmgin_tf.errors import DataError
    from transform.embedding import embed_catalog
    from transform.encoder.item_encoder import embed_prepared
    with pytest.raises(DataError, match="batch_size=-3"):
        embed_catalog(str(tmp_path), str(tmp_path), str(tmp_path / "o"), batch_size=-3)
    with pytest.raises(ValueError, match="batch_size=0"):
        embed_prepared(None, {"full_token_ids": [[1]]}, 0)


def test_trainable_blocks_beyond_the_backbone_are_refused():
    from transform.encoder.text_tower import set_trainable_blocks

    class Layer:
        trainable = True

    class Backbone:
        num_layers = 2
        trainable = True
        layers = [Layer(), Layer()]

        def get_layer(self, name):
            return Layer()
    with pytest.raises(ValueError, match="trainable_blocks=3.*2 transformer blocks"):
        set_trainable_blocks(Backbone(), 3)
    set_trainable_blocks(Backbone(), 2)


def test_export_model_name_follows_the_serving_rule(tmp_path, capsys):
    assert main(["export", "--model-dir", str(tmp_path), "--output",
                 str(tmp_path / "bad name"), "--variants", "noxla"]) == 2
    _one_line_error(capsys, "'bad name'", "letters, digits")
    assert not any(tmp_path.iterdir())


def test_grouping_and_examples_refuse_flags_their_key_ignores(tmp_path, capsys):
    assert main(["grouping", "fit", "--items", str(tmp_path), "--key", "category",
                 "--embeddings", str(tmp_path / "nonexistent"), "--output",
                 str(tmp_path / "g")]) == 2
    _one_line_error(capsys, "--embeddings", "only key 'cluster'", "'category'")
    assert main(["examples", "build", "--data", str(tmp_path), "--dataset", "movielens",
                 "--grouping-key", "item_id", "--num-groups", "5", "--output",
                 str(tmp_path / "x")]) == 2
    _one_line_error(capsys, "--num-groups 5", "random", "'item_id'")
    assert not (tmp_path / "g").exists() and not (tmp_path / "x").exists()


def test_predict_version_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--target", "localhost:1", "--model", "m", "--examples", "x",
              "--version", "-1"])
    assert e.value.code == 2
    _one_line_error(capsys, "--version", "must be", usage=True)


def test_examples_per_epoch_counts_what_the_steps_hold():
    from dmgin_tf.training.trainer import examples_per_epoch
    # A split smaller than one batch: one partial batch of 24,008 examples.
    assert examples_per_epoch(1, 100_000, False, 24_008) == 24_008
    assert examples_per_epoch(3, 1024, True, 10_000) == 3072
    assert examples_per_epoch(10, 1024, False, 10_000) == 10_000


def test_a_behavior_type_count_other_than_the_datas_is_refused():
    """The trainer always takes the data's number of behavior types; a different setting
    was replaced without a word."""
    from dmgin_tf.config import Config, ConfigError
    from dmgin_tf.training.trainer import TrainingData, resolve_config
    data = TrainingData(None, None, None, model_overrides={"num_behavior_types": 3})
    assert resolve_config(Config(), data).model.num_behavior_types == 3
    same = Config().apply_overrides({"model.num_behavior_types": 3})
    assert resolve_config(same, data).model.num_behavior_types == 3
    with pytest.raises(ConfigError, match="num_behavior_types=1.*3 behavior types"):
        resolve_config(Config().apply_overrides({"model.num_behavior_types": 1}), data)


def test_a_missing_input_path_names_the_setting_that_gave_it(tmp_path, capsys):
    missing = str(tmp_path / "nonexistent")
    assert main(["train", "--set", f"data.input_path={missing}", "--output",
                 str(tmp_path / "run")]) == 2
    _one_line_error(capsys, f"data.input_path={missing}", "no such file")
    assert main(["train", "--data", missing, "--output", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, f"--data {missing}", "no such file")


@pytest.mark.parametrize("args, key", [
    (["train", "--epochs", "1", "--set", "train.epochs=abc"], "train.epochs"),
    (["train", "--batch-size", "256", "--set", "train.batch_size=-5"], "train.batch_size"),
    (["train", "--dataset", "taobao", "--set", "data.dataset=movielens"], "data.dataset"),
    (["data", "convert", "--dataset", "taobao", "--input", "IN", "--output", "OUT",
      "--max-error-fraction", "0.5", "--set", "data.max_error_fraction=abc"],
     "data.max_error_fraction"),
    (["grouping", "fit", "--items", "IN", "--key", "random", "--num-groups", "4", "--set",
      "grouping.num_groups=abc", "--output", "OUT"], "grouping.num_groups"),
])
def test_a_set_that_disagrees_with_its_own_flag_is_refused(tmp_path, capsys, args, key):
    """The command's flag used to win silently: a bad --set value (`abc`, -5) went
    unchecked and training started; a conflicting valid one was dropped."""
    args = [str(tmp_path / a) if a in ("IN", "OUT") else a for a in args]
    assert main(args) == 2
    _one_line_error(capsys, f"{key} is given twice", "give it once")
    assert not (tmp_path / "OUT").exists()


def test_a_set_equal_to_its_own_flag_is_accepted():
    import argparse

    from dmgin_tf.cli.common import config_from_args
    args = argparse.Namespace(config=None, overrides=["train.epochs=3", "model.mlp_units=8,4"])
    cfg = config_from_args(args, {"train.epochs": 3, "model.mlp_units": [8, 4]})
    assert cfg.train.epochs == 3 and tuple(cfg.model.mlp_units) == (8, 4)
