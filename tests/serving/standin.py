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


# ---- a stand-in with DMGIN's input names and an export contract ------------------------
IDS_L = 6                       # history length
IDS_CONTRACT = {"model_config": {"item_vocab_size": 10, "group_vocab_size": 5,
                                 "num_behavior_types": 3},
                "batch_buckets": [1, 4], "candidate_buckets": [4, 8], "max_candidates": 16}


def _hist_specs(batch=None):
    return dict(hist_item=tf.TensorSpec([batch, IDS_L], tf.int32, "hist_item"),
                hist_group=tf.TensorSpec([batch, IDS_L], tf.int32, "hist_group"),
                hist_behavior_id=tf.TensorSpec([batch, IDS_L], tf.int32, "hist_behavior_id"),
                hist_time=tf.TensorSpec([batch, IDS_L], tf.int64, "hist_time"),
                request_time=tf.TensorSpec([batch], tf.int64, "request_time"))


class IdsStandIn(tf.Module):
    """ctr = sigmoid(0.1 * (#history items + cand_item + sum(group_vectors)) + version/10)."""

    def __init__(self, version: int):
        super().__init__()
        self.b = tf.Variable(version / 10.0)

    def _user(self, h):
        return tf.reduce_sum(tf.cast(h["hist_item"] > 0, tf.float32), axis=1)

    @tf.function(input_signature=[dict(_hist_specs(), cand_item=tf.TensorSpec([None], tf.int32, "cand_item"),
                                       cand_group=tf.TensorSpec([None], tf.int32, "cand_group"))])
    def predict_raw(self, inputs):
        z = self._user(inputs) + tf.cast(inputs["cand_item"], tf.float32)
        return {"ctr": tf.sigmoid(0.1 * z + self.b)}

    @tf.function(input_signature=[dict(_hist_specs(), cand_item=tf.TensorSpec([None, None], tf.int32, "cand_item"),
                                       cand_group=tf.TensorSpec([None, None], tf.int32, "cand_group"))])
    def rank(self, inputs):
        z = self._user(inputs)[:, None] + tf.cast(inputs["cand_item"], tf.float32)
        return {"ctr": tf.sigmoid(0.1 * z + self.b)}

    @tf.function(input_signature=[dict(_hist_specs(), cand_item=tf.TensorSpec([None, None], tf.int32, "cand_item"),
                                       cand_group=tf.TensorSpec([None, None], tf.int32, "cand_group"),
                                       group_vectors=tf.TensorSpec([None, 2, 4], tf.float32, "group_vectors"))])
    def score(self, inputs):
        z = (self._user(inputs) + tf.reduce_sum(inputs["group_vectors"], [1, 2]))[:, None] \
            + tf.cast(inputs["cand_item"], tf.float32)
        return {"ctr": tf.sigmoid(0.1 * z + self.b)}


def save_ids_standin(base_path: str, version: int, contract: dict = IDS_CONTRACT) -> str:
    """The DMGIN-named stand-in with `assets.extra/dmgin_export.json` (its contract)."""
    import json
    m = IdsStandIn(version)
    final = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".tmp-{version}")
    tf.saved_model.save(m, tmp, signatures={"serving_default": m.predict_raw,
                                             "predict_raw": m.predict_raw, "rank": m.rank,
                                             "score": m.score})
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, "assets.extra", "dmgin_export.json"), "w") as f:
        json.dump(contract, f)
    os.rename(tmp, final)
    return final


def ids_inputs(users: int = 1, cands: int = 3, rank: bool = True) -> dict:
    """A valid request for IdsStandIn (rank: cand_* [U, N]; else predict_raw [B])."""
    hist = np.array([[2, 3, 9, 0, 0, 0]] * users, np.int32)
    out = dict(hist_item=hist, hist_group=np.minimum(hist, 4).astype(np.int32),
               hist_behavior_id=np.where(hist > 0, 3, 0).astype(np.int32),
               hist_time=np.where(hist > 0, 1_700_000_000, 0).astype(np.int64),
               request_time=np.full([users], 1_700_000_100, np.int64))
    shape = [users, cands] if rank else [users]
    out["cand_item"] = np.full(shape, 5, np.int32)
    out["cand_group"] = np.full(shape, 2, np.int32)
    return out
