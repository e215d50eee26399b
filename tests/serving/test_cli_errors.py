"""`dmgin serve` / `dmgin predict` errors: one line on stderr, exit 2, no traceback
(`dmgin --debug` shows it)."""
import socket

import pytest

from dmgin_tf.cli.main import main
from dmgin_tf.errors import DmginError
from serving.standin import save_standin, write_models_config


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_serve_on_a_port_in_use(tmp_path, capsys):
    base = str(tmp_path / "m")
    save_standin(base, 1)
    cfg = write_models_config(str(tmp_path / "models.config"), "m", base)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        port = str(sock.getsockname()[1])
        assert main(["serve", "--model-config-file", cfg, "--port", port]) == 2
        _one_line_error(capsys, "dmgin serve: error:", port, "in use")
        with pytest.raises(DmginError):  # --debug: the exception (and its traceback) surfaces
            main(["--debug", "serve", "--model-config-file", cfg, "--port", port])
    finally:
        sock.close()


def test_serve_with_a_missing_base_path(tmp_path, capsys):
    cfg = write_models_config(str(tmp_path / "models.config"), "m", str(tmp_path / "absent"))
    assert main(["serve", "--model-config-file", cfg, "--port", "0"]) == 2
    _one_line_error(capsys, "base_path", "absent", "does not exist")


@pytest.mark.parametrize("args, words", [
    (["--port", "-1"], ["--port -1", "[0, 65535]"]),
    (["--max-candidates", "-5"], ["--max-candidates -5", ">= 1"]),
    (["--ssl-cert", "c.pem"], ["--ssl-cert", "--ssl-key"]),
    (["--tensorflow-intra-op-parallelism", "-2"], ["--tensorflow-intra-op-parallelism -2", ">= 0"]),
])
def test_serve_flag_errors(tmp_path, capsys, args, words):
    base = str(tmp_path / "m")
    save_standin(base, 1)
    cfg = write_models_config(str(tmp_path / "models.config"), "m", base)
    assert main(["serve", "--model-config-file", cfg] + args) == 2
    _one_line_error(capsys, *words)


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_predict_batch_size_must_be_positive(tmp_path, capsys, value):
    examples = tmp_path / "e.tfrecord"
    examples.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main(["predict", "--examples", str(examples), "--batch-size", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "Traceback" not in err, err


def test_predict_with_no_examples_is_an_error(tmp_path, capsys):
    examples = tmp_path / "e.tfrecord"
    examples.write_bytes(b"")
    assert main(["predict", "--examples", str(examples), "--target", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no records" in err, err


@pytest.mark.parametrize("make, words", [
    (lambda p: p, ["no such file"]),
    (lambda p: (p.mkdir(), p)[1], ["is a directory"]),
    (lambda p: (p.write_text("user_id,item_id\n" * 200), p)[1],
     ["cannot read TFRecords: corrupted record at 0"]),
])
def test_predict_names_what_is_wrong_with_the_examples_file(tmp_path, capsys, make, words):
    """Without TensorFlow's function and device names ({{function_node ...}} [Op:...])."""
    path = make(tmp_path / "e.tfrecord")
    assert main(["predict", "--examples", str(path), "--target", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "{{" not in err and "[Op:" not in err, err
    for w in words:
        assert w in err, err


def test_serve_names_a_missing_file_before_importing_tensorflow(tmp_path):
    """A typo in a file flag answered after TensorFlow's ~10 s import; now at once."""
    import subprocess
    import sys
    code = ("import sys\nfrom dmgin_tf.cli.main import main\n"
            f"rc = main(['serve', '--model-config-file', {str(tmp_path / 'nope.config')!r}])\n"
            "assert 'tensorflow' not in sys.modules, 'imported TensorFlow first'\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--model-config-file" in done.stderr and "no such file" in done.stderr


@pytest.mark.parametrize("args, words", [
    (["--model-name", "m"], ["--model-config-file FILE, or --model-name NAME --model-base-path DIR"]),
    ([], ["name the models"]),
    (["--model-name", "m", "--model-base-path", "ABSENT"], ["--model-base-path", "no such directory"]),
    (["--model-config-file", "CFG", "--model-name", "m", "--model-base-path", "BASE"],
     ["not both"]),
])
def test_serve_one_model_by_flags_errors(tmp_path, capsys, args, words):
    base = str(tmp_path / "m")
    save_standin(base, 1)
    cfg = write_models_config(str(tmp_path / "models.config"), "m", base)
    args = [{"CFG": cfg, "BASE": base, "ABSENT": str(tmp_path / "absent")}.get(a, a)
            for a in args]
    assert main(["serve", "--port", "0"] + args) == 2
    _one_line_error(capsys, *words)


def test_serve_one_model_by_flags(tmp_path, monkeypatch):
    """TF Serving's --model_name / --model_base_path (no config file): the export folder
    is served as is, relative to the working directory."""
    from dmgin_tf.serving.client import Client
    from dmgin_tf.serving.protos import single_model_config
    from dmgin_tf.serving.server import DevServer
    save_standin(str(tmp_path / "serving" / "m"), 3)
    monkeypatch.chdir(tmp_path)
    cfg = single_model_config("m", "serving/m")
    (mc,) = cfg.model_config_list.config
    assert mc.base_path == str(tmp_path / "serving" / "m") and mc.model_platform == "tensorflow"
    server = DevServer(cfg, port=0, poll_interval_s=60, settle_s=0)
    port = server.start()
    try:
        with Client(f"127.0.0.1:{port}", "m") as client:
            assert client.wait_until_available(timeout_s=30) == 3
    finally:
        server.stop(1)
