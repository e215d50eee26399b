"""`assets.extra/tf_serving_warmup_requests`: PredictionLog records TF Serving replays
at load time, so every XLA shape is compiled before the first real request.

One record per (signature, bucket): `serving_default`/`predict_raw`/`user_state` at
every batch bucket, `rank`/`score`/`score_cached` at every candidate count whose request
pads to a distinct shape (the buckets, then multiples of the largest up to the cap, reached
by requests of at most `max_candidates`: `Contract.warm_candidate_sizes`) — the padded
shapes are exactly these, so nothing compiles at serving time. (`tensorize` is not
compiled with XLA and has no record.) Records are built from real
examples (rows are reused cyclically to fill a bucket). TF Serving reads at most 1000.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from dmgin_tf import features as F
from dmgin_tf.config import ConfigError
from dmgin_tf.export.signatures import EXAMPLES, score_state_keys

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000

HISTORY_KEYS = F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)


def _cycle(x: np.ndarray, n: int) -> np.ndarray:
    return np.take(np.asarray(x), np.arange(n) % len(x), axis=0)


def _log(model_name: str, signature: str, inputs: Mapping[str, np.ndarray]):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))


def build_warmup_logs(model_name: str, signatures: Mapping[str, object],
                      dense: Mapping[str, np.ndarray], examples: Optional[Sequence[bytes]],
                      batch_buckets: Sequence[int], candidate_buckets: Sequence[int]) -> List:
    """PredictionLogs for every signature × bucket (`candidate_buckets`: the candidate
    counts to send, e.g. `Contract.warm_candidate_sizes()`).

    Args:
      model_name: model name for the requests' ModelSpec.
      signatures: name → callable concrete function (used to compute `score`'s state).
      dense: real model inputs (MODEL_INPUT_KEYS, [E, L] / [E]), E >= 1.
      examples: the same examples serialized (serving layout), or None.
    """
    dense = {k: np.asarray(dense[k]) for k in F.MODEL_INPUT_KEYS}
    logs = []
    for b in batch_buckets:
        rows = {k: _cycle(v, b) for k, v in dense.items()}
        if "serving_default" in signatures and examples is not None and \
                _takes_examples(signatures["serving_default"]):
            logs.append(_log(model_name, "serving_default",
                             {EXAMPLES: np.array(_cycle(np.array(examples, dtype=object), b), dtype=object)}))
        if "predict_raw" in signatures:
            logs.append(_log(model_name, "predict_raw", rows))
        if "user_state" in signatures:
            logs.append(_log(model_name, "user_state", {k: rows[k] for k in HISTORY_KEYS}))
    user = {k: dense[k][:1] for k in HISTORY_KEYS}          # one real user
    state = (signatures["user_state"](**{k: tf.constant(v) for k, v in user.items()})
             if "score" in signatures else None)
    for c in candidate_buckets:
        cands = {F.CAND_ITEM: _cycle(dense[F.CAND_ITEM], c).reshape(1, c),
                 F.CAND_GROUP: _cycle(dense[F.CAND_GROUP], c).reshape(1, c)}
        if "rank" in signatures:
            logs.append(_log(model_name, "rank", dict(user, **cands)))
        if state is not None:
            logs.append(_log(model_name, "score", dict(user, **cands, **{
                k: state[k].numpy() for k in score_state_keys(state)})))
            if "score_cached" in signatures:
                logs.append(_log(model_name, "score_cached", dict(
                    cands, **{F.REQUEST_TIME: user[F.REQUEST_TIME]},
                    **{k: v.numpy() for k, v in state.items()})))
    if len(logs) > MAX_RECORDS:
        raise ConfigError(
            f"{len(logs)} warmup records ({len(candidate_buckets)} padded candidate counts × "
            f"the candidate signatures, {len(batch_buckets)} batch buckets × the others); TF "
            f"Serving reads at most {MAX_RECORDS}: add a larger serving.candidate_buckets "
            f"entry or lower serving.max_candidates (requests pad to multiples of the "
            f"largest bucket up to the cap)")
    return logs


def _takes_examples(fn) -> bool:
    return any(getattr(spec, "name", None) == EXAMPLES
               for spec in tf.nest.flatten(fn.structured_input_signature))


def write_warmup_file(saved_model_dir: str, logs: Sequence) -> str:
    """Writes the records as a TFRecord file in `<saved_model_dir>/assets.extra/`."""
    d = os.path.join(saved_model_dir, WARMUP_DIR)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as w:
        for plog in logs:
            w.write(plog.SerializeToString())
    return path


def read_warmup_file(path: str) -> List:
    """Parses a warmup file back into PredictionLog messages."""
    if os.path.isdir(path):
        path = os.path.join(path, WARMUP_DIR, WARMUP_FILE)
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]


def inputs_of(plog) -> Dict[str, np.ndarray]:
    """The request tensors of one PredictionLog as numpy arrays."""
    return {k: tf.make_ndarray(v) for k, v in plog.predict_log.request.inputs.items()}
