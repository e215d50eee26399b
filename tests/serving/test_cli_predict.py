"""`dmgin predict` against a served model: every record scored in file order, in
batches; a record the server refuses stops the run naming it, or (`--on-invalid skip`)
is listed in the rejects file while the others are scored."""
import csv

import numpy as np
import portpicker
import pytest
import tensorflow as tf

from dmgin_tf.cli.main import main
from dmgin_tf.serving.protos import read_model_server_config
from dmgin_tf.serving.server import DevServer
from serving.standin import make_example, reference, save_standin, write_models_config

BAD = 6    # the refused record: two floats where the model reads three


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    base = str(root / "m")
    save_standin(base, 1)
    cfg = read_model_server_config(write_models_config(str(root / "models.config"), "m", base))
    server = DevServer(cfg, port=portpicker.pick_unused_port(), metrics_port=0,
                       poll_interval_s=60)
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop(1)


def _write(path, rows, bad=()):
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, r in enumerate(rows):
            w.write(make_example(r[:2] if i in bad else r))
    return str(path)


def _read(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_every_record_is_scored_in_file_order(tmp_path, target, capsys):
    x = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    out = tmp_path / "ctr.csv"
    assert main(["predict", "--target", target, "--model", "m", "--examples",
                 _write(tmp_path / "e.tfrecord", x), "--batch-size", "4",
                 "--output", str(out)]) == 0
    rows = _read(out)
    assert rows[0] == ["index", "ctr"] and [int(r[0]) for r in rows[1:]] == list(range(11))
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], reference(x, 1), atol=1e-6)
    assert "wrote 11 predictions" in capsys.readouterr().out


def test_an_invalid_record_stops_the_run_by_name_and_leaves_no_output(tmp_path, target,
                                                                      capsys):
    x = np.ones((10, 3), np.float32)
    out = tmp_path / "ctr.csv"
    assert main(["predict", "--target", target, "--model", "m", "--examples",
                 _write(tmp_path / "e.tfrecord", x, bad={BAD}), "--batch-size", "4",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"record {BAD}:" in err and "--on-invalid skip" in err, err
    assert not out.exists() and not (tmp_path / "ctr.csv.partial").exists()


def test_a_run_that_stops_at_a_refused_record_sends_nothing_after_it(tmp_path, target,
                                                                    capsys, monkeypatch):
    """A refused batch was rescored one example at a time to its end before the run
    stopped at its first bad record: a batch of 1,024 cost 1,024 more requests."""
    from dmgin_tf.serving import Client
    sizes = []
    predict = Client.predict_examples

    def counted(self, records, **kw):
        sizes.append(len(records))
        return predict(self, records, **kw)

    monkeypatch.setattr(Client, "predict_examples", counted)
    assert main(["predict", "--target", target, "--model", "m", "--examples",
                 _write(tmp_path / "e.tfrecord", np.ones((8, 3), np.float32), bad={1}),
                 "--batch-size", "8", "--output", str(tmp_path / "ctr.csv")]) == 2
    assert "record 1:" in capsys.readouterr().err
    assert sizes == [8, 1, 1], sizes      # the batch, then records 0 and 1 alone


def test_skip_scores_the_other_records_and_lists_the_refused_one(tmp_path, target, capsys):
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    out = tmp_path / "ctr.csv"
    assert main(["predict", "--target", target, "--model", "m", "--examples",
                 _write(tmp_path / "e.tfrecord", x, bad={BAD}), "--batch-size", "4",
                 "--output", str(out), "--on-invalid", "skip"]) == 0
    rows = _read(out)[1:]
    kept = [i for i in range(10) if i != BAD]
    assert [int(r[0]) for r in rows] == kept
    np.testing.assert_allclose([float(r[1]) for r in rows], reference(x[kept], 1), atol=1e-6)
    rejects = _read(str(out) + ".rejects.csv")
    assert rejects[0] == ["index", "error"] and len(rejects) == 2 and rejects[1][0] == str(BAD)
    assert "x" in rejects[1][1] and "example 0" not in rejects[1][1], rejects
    assert f"1 examples refused" in capsys.readouterr().err


def test_when_every_record_is_refused_the_run_fails_and_keeps_the_reasons(tmp_path, target,
                                                                          capsys):
    out = tmp_path / "ctr.csv"
    assert main(["predict", "--target", target, "--model", "m", "--examples",
                 _write(tmp_path / "e.tfrecord", np.ones((3, 3)), bad={0, 1, 2}),
                 "--output", str(out), "--on-invalid", "skip"]) == 2
    assert "refused all 3 examples" in capsys.readouterr().err
    assert not out.exists()
    assert [r[0] for r in _read(str(out) + ".rejects.csv")[1:]] == ["0", "1", "2"]


def test_rejects_without_skip_is_refused(tmp_path, capsys):
    assert main(["predict", "--examples", _write(tmp_path / "e.tfrecord", np.ones((1, 3))),
                 "--rejects", str(tmp_path / "r.csv"), "--target", "127.0.0.1:1"]) == 2
    assert "--on-invalid skip" in capsys.readouterr().err


def test_a_batch_over_the_message_limit_names_its_records_and_a_batch_size(
        tmp_path, target, capsys, monkeypatch):
    """Long histories made a batch larger than gRPC's limit: a raw "Sent message larger
    than max" without the records or what to change."""
    import dmgin_tf.serving as serving_package
    monkeypatch.setattr(serving_package, "Client", _small_limit_client(serving_package.Client))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    assert main(["predict", "--target", target, "--model", "m", "--examples",
                 _write(tmp_path / "e.tfrecord", x), "--batch-size", "8",
                 "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "records 0..7 make a request larger than gRPC's message limit" in err, err
    assert "--batch-size 2" in err


def _small_limit_client(cls):
    class Small(cls):
        def __init__(self, *args, **kwargs):
            kwargs["max_message_bytes"] = 120
            super().__init__(*args, **kwargs)
    return Small
