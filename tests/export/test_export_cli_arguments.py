"""`dmgin export` refuses settings it would not apply."""
from __future__ import annotations

from dmgin_tf.cli.main import main


def test_export_refuses_model_settings_it_would_drop(tmp_path, capsys):
    """An export takes the model config from the run directory; `--set
    model.history_length=64` was accepted and silently ignored."""
    rc = main(["export", "--model-dir", str(tmp_path / "run"), "--output", str(tmp_path / "s/m"),
               "--set", "model.history_length=64"])
    err = capsys.readouterr().err
    assert rc == 2 and "--set model.history_length=64" in err and "only serving.*" in err, err
    assert not (tmp_path / "s").exists()
