"""Config validation: every numeric field's range and finiteness, cross-field rules,
file problems and duplicate keys are one-line ConfigErrors naming the field."""
import pytest

from dmgin_tf.cli.main import main
from dmgin_tf.config import Config, ConfigError, load_config


@pytest.mark.parametrize("override, words", [
    ({"train.learning_rate": "inf"}, ["train.learning_rate", "finite"]),
    ({"train.learning_rate": "nan"}, ["train.learning_rate", "finite"]),
    ({"train.learning_rate": "1e400"}, ["train.learning_rate", "finite"]),
    ({"train.learning_rate": "0"}, ["train.learning_rate"]),
    # The server's ports are `dmgin serve` flags: setting one in a config did nothing.
    ({"serving.port": "8500"}, ["'serving.port': not a config setting", "dmgin serve --port"]),
    ({"serving.max_candidates": "-5"}, ["serving.max_candidates=-5"]),
    ({"serving.max_candidates": "100"}, ["candidate_buckets", "max_candidates=100"]),
    ({"serving.candidate_buckets": "64,16"}, ["candidate_buckets", "increasing"]),
    ({"model.history_length": str(10 ** 11)}, ["model.history_length=100000000000"]),
    ({"model.history_length": "1e11"}, ["model.history_length", "integer"]),
    ({"model.item_vocab_size": str(2 ** 40)}, ["model.item_vocab_size"]),
    ({"model.embedding_dim": str(2 ** 70)}, ["model.embedding_dim", "64-bit"]),
    ({"data.test_fraction": "0.6", "data.val_fraction": "0.4"}, ["test_fraction + val_fraction", "< 1"]),
    ({"data.test_fraction": "0.7", "data.val_fraction": "0.5"}, ["test_fraction + val_fraction"]),
    ({"data.max_history": "0"}, ["data.max_history=0"]),
    ({"data.seed": "-1"}, ["data.seed=-1"]),
    ({"train.batch_size": str(2 ** 40)}, ["train.batch_size"]),
    ({"pipeline.max_auc_drop": "2"}, ["pipeline.max_auc_drop"]),
    ({"grouping.kmeans_tol": "-inf"}, ["grouping.kmeans_tol", "finite"]),
    # Sizes no machine can hold (the first was killed for memory, the second raised a
    # ResourceExhaustedError mid-training).
    # Names become folders and URL path segments.
    ({"serving.model_name": "my model"}, ["serving.model_name='my model'", "letters, digits"]),
    ({"serving.model_name": "../up"}, ["serving.model_name='../up'"]),
    ({"serving.model_name": "a/b"}, ["serving.model_name='a/b'"]),
    ({"pipeline.name": ""}, ["pipeline.name=''"]),
    ({"pipeline.name": "team/ranker"}, ["pipeline.name='team/ranker'"]),
    ({"model.context_folds": "100000"}, ["model.context_folds=100000", "[2, 100]"]),
    ({"model.max_per_group": "100000"}, ["model.max_per_group", "6,400,000 group slots"]),
])
def test_out_of_range_values_are_refused(override, words):
    with pytest.raises(ConfigError) as info:
        Config().apply_overrides(override)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_configs_written_with_the_old_port_fields_still_load():
    """Every run's config.json from before carries serving.port / metrics_port (never
    read by anything): export and parity must still load those runs."""
    old = Config().to_dict()
    old["serving"].update(port=8500, metrics_port=8502)
    assert Config.from_dict(old) == Config()


def test_defaults_and_edges_are_accepted():
    cfg = Config().apply_overrides({"serving.max_candidates": "512",
                                    "data.test_fraction": "0.5", "data.val_fraction": "0.49"})
    assert cfg.serving.max_candidates == 512


@pytest.mark.parametrize("name, text, words", [
    ("bad.yaml", "train:\n  epochs: [1\n", ["bad.yaml", "invalid YAML", "line"]),
    ("bad.json", '{"train": {"epochs": 1,}}', ["bad.json", "invalid JSON", "line 1"]),
    ("dup.yaml", "train:\n  epochs: 1\n  epochs: 2\n", ["dup.yaml", "'epochs'", "twice", "line 3"]),
    ("dup2.yaml", "train: {epochs: 1}\ntrain: {epochs: 2}\n", ["'train'", "twice"]),
    ("dup.json", '{"train": {"epochs": 1, "epochs": 2}}', ["dup.json", "'epochs'", "twice"]),
    ("latin1.yaml", b"train:\n  output_dir: caf\xe9\n", ["latin1.yaml", "UTF-8"]),
    # Sections and keys of the wrong kind (were TypeError / ValueError from dict()).
    ("int_section.yaml", "model: 5\n", ["model", "expected a mapping", "int 5"]),
    ("str_section.yaml", "model: abc\n", ["model", "expected a mapping", "'abc'"]),
    ("list_section.json", '{"model": [1]}', ["model", "expected a mapping", "list"]),
    ("list_top.yaml", "- 1\n- 2\n", ["list_top.yaml", "top level must be a mapping"]),
    ("mixed_keys.yaml", "1: 2\nfoo: 3\n", ["config", "field names", "[1]"]),
    ("mixed_inner.yaml", "model: {1: 2, foo: 3}\n", ["model", "field names", "[1]"]),
    ("complex_key.yaml", "? [a, b]\n: 1\n", ["complex_key.yaml", "list key on line 1", "not a field name"]),
])
def test_file_problems_are_config_errors(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_directory_and_missing_paths(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_cli_prints_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: .inf\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.learning_rate" in err and "finite" in err, err
    assert main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a directory" in err, err
