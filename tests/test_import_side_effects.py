"""Importing the library has no side effects on the process environment (the CLI and the
tf.keras adapter module are the places that set TF_USE_LEGACY_KERAS)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = r"""
import json, os, sys
env0 = dict(os.environ)
import dmgin_tf, dmgin_tf.config, dmgin_tf.features, dmgin_tf.data, dmgin_tf.evaluation
env1 = dict(os.environ)
heavy = sys.argv[1] == "heavy"
if heavy:
    import keras                      # TensorFlow/Keras set a few variables of their own
    env2 = dict(os.environ)
    import dmgin_tf.ops, dmgin_tf.layers, dmgin_tf.models
    env3 = dict(os.environ)
else:
    env2 = env3 = env1
diff = lambda a, b: {k: [a.get(k), b.get(k)] for k in set(a) | set(b) if a.get(k) != b.get(k)}
print(json.dumps({"package": diff(env0, env1), "layers_models": diff(env2, env3),
                  "tf_loaded_by_package": "tensorflow" in sys.modules and not heavy}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["KERAS_BACKEND"] = "tensorflow"
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_dmgin_tf_leaves_environ_unchanged():
    r = _probe("light")
    assert r["package"] == {}
    assert not r["tf_loaded_by_package"]          # and stays light: no TensorFlow import


def test_layers_and_models_add_nothing_to_what_keras_sets():
    r = _probe("heavy")
    assert r["package"] == {}
    assert r["layers_models"] == {}
