"""README command 1 end to end: `dmgin demo` (pipeline on the embedded sample -> push ->
dev gRPC server -> Predict) succeeds and prints only our own lines: no pip chatter, no
TensorFlow / absl / XLA log lines, no Python warnings."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dmgin_tf.serving.user_state_store import redis_server_binary

pytestmark = pytest.mark.slow

NOISE = re.compile(
    r"^(?:[IWEF]\d{4} |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |WARNING:absl|"
    r"WARNING:tensorflow|INFO:tensorflow|.*(?:DeprecationWarning|UserWarning|FutureWarning)|"
    r"Successfully installed|Processing /|Collecting |Installing collected|"
    r"(?:Building|Created) wheel|running bdist_wheel|.*tensorflow/core/|.*external/local_xla/)")


def test_demo_succeeds_and_prints_only_our_lines(tmp_path):
    # A user's shell: none of the variables our scripts set to quiet libraries.
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", "TF_USE_LEGACY_KERAS")}
    # The cached user states go to a private redis-server where one is installed.
    redis = ["--redis"] if redis_server_binary() else []
    proc = subprocess.run([sys.executable, "-m", "dmgin_tf.cli.main", "demo", "--workdir",
                           str(tmp_path / "demo"), "--requests", "2"] + redis, env=env,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "blessed=True pushed=True" in proc.stdout and "demo finished" in proc.stdout
    assert "gRPC Predict" in proc.stdout and "example 1: ctr=" in proc.stdout
    # The cached path: a miss ranks with the history and writes the state, then a hit.
    assert ("[4/4] cached user state (Redis at" if redis else
            "[4/4] cached user state (in-process") in proc.stdout
    assert "call 1: miss" in proc.stdout and "call 2: hit -> score_cached" in proc.stdout
    noise = [line for line in out.splitlines() if NOISE.match(line)]
    assert not noise, noise[:10]
