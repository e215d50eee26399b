"""`dmgin` commands are quiet by default: TensorFlow/absl logs and library warnings appear
only with `dmgin --verbose`."""
from __future__ import annotations

import os
import subprocess
import sys

_PROBE = r"""
import sys, warnings
from dmgin_tf.cli.common import configure_process
configure_process(verbose=sys.argv[1] == "verbose")
import os
print("TF_CPP_MIN_LOG_LEVEL=" + os.environ.get("TF_CPP_MIN_LOG_LEVEL", ""), file=sys.stderr)
import tensorflow as tf
from absl import logging as absl_logging
absl_logging.warning("NOISE-absl")
tf.get_logger().warning("NOISE-tensorflow-logger")
warnings.warn("NOISE-deprecation", DeprecationWarning)
warnings.warn_explicit("NOISE-tf-userwarning", UserWarning, "x.py", 1, module="tensorflow.python.x")
print("ours: done")
"""


def _run(mode: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", "GRPC_VERBOSITY", "GLOG_minloglevel")}
    p = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
    return p.stdout, p.stderr


def test_quiet_by_default_and_verbose_shows_logs():
    out, err = _run("quiet")
    assert out.strip() == "ours: done"
    assert "TF_CPP_MIN_LOG_LEVEL=2" in err
    assert "NOISE" not in err, err

    out, err = _run("verbose")
    assert out.strip() == "ours: done"
    for noise in ("NOISE-absl", "NOISE-tensorflow-logger", "NOISE-deprecation", "NOISE-tf-userwarning"):
        assert noise in err, (noise, err)


def test_cli_has_a_verbose_flag():
    from dmgin_tf.cli.main import build_parser
    args = build_parser().parse_args(["--verbose", "data", "stats", "x"])
    assert args.verbose is True
    assert build_parser().parse_args(["data", "stats", "x"]).verbose is False
