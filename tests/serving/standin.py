"""A tiny stand-in SavedModel with DMGIN's signature names, for dev-server tests.

ctr = sigmoid(x @ W + bias), where `bias` is the version number / 10 so a test can tell
versions apart from the output alone.
"""
import os

import numpy as np
import tensorflow as tf

W = np.array([0.5, -1.0, 2.0], np.float32)


def reference(x: np.ndarray, version: int) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ W + version / 10.0)))


def make_example(x) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=list(map(float, x))))})
    ).SerializeToString()


class StandIn(tf.Module):
    def __init__(self, version: int):
        super().__init__()
        self.w = tf.Variable(W)
        self.b = tf.Variable(version / 10.0)

    def _ctr(self, x):
        return tf.sigmoid(tf.linalg.matvec(x, self.w) + self.b)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def predict_raw(self, x):
        return {"ctr": self._ctr(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serving_default(self, examples):
        parsed = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([3], tf.float32)})
        return {"ctr": self._ctr(parsed["x"])}

    @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name="x"),
                                  tf.TensorSpec([1, None], tf.float32, name="scale")])
    def rank(self, x, scale):
        return {"ctr": self._ctr(x)[:, None] * scale}


def save_standin(base_path: str, version: int) -> str:
    """Writes version `version` under base_path atomically (temp dir + rename)."""
    m = StandIn(version)
    final = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".tmp-{version}")
    tf.saved_model.save(m, tmp, signatures={"serving_default": m.serving_default,
                                             "predict_raw": m.predict_raw, "rank": m.rank})
    os.rename(tmp, final)
    return final


def write_models_config(path: str, name: str, base_path: str, policy: str = "latest { num_versions: 1 }"):
    with open(path, "w") as f:
        f.write(f'model_config_list {{ config {{ name: "{name}" base_path: "{base_path}" '
                f'model_platform: "tensorflow" model_version_policy {{ {policy} }} }} }}\n')
    return path
