"""Weights handoff between backends: JAX-trained `model.weights.h5` into the TF-backend model.

A training run writes `parity_batch.npz` next to `model.weights.h5`: up to 256 test
inputs and the predictions of the trained model on them, made by the backend that trained
it. In another process running the other backend (Keras fixes its backend per process),

    from dmgin_tf.training.parity import check_run_parity
    report = check_run_parity("runs/dmgin_jax")      # rebuild, load weights, predict, compare
    assert report.max_abs_diff < 1e-5

rebuilds the model from the run's `config.json`, loads its weights and compares. The
SavedModel export check calls `reference_batch` / `compare_predictions` with the
exported signature's outputs instead of a Keras model.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from dmgin_tf.errors import DmginError

PARITY_FILE = "parity_batch.npz"
DEFAULT_TOLERANCE = 1e-5
# Export refuses a rebuilt model this far from the run's own predictions: backends and
# devices differ by ~1e-6, a different model (another class, other weights) by far more.
REBUILD_TOLERANCE = 1e-3


@dataclasses.dataclass
class ParityReport:
    """Result of comparing two backends' predictions on the same examples.

    Attributes:
      reference_backend: backend that trained the run and wrote the reference predictions.
      backend: backend that re-predicted here.
      num_examples: batch size compared.
      max_abs_diff: max |p_ref - p| over the batch.
      tolerance: threshold for `ok`.
    """
    reference_backend: str
    backend: str
    num_examples: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


def reference_batch(run_dir: str) -> Tuple[Dict[str, np.ndarray], np.ndarray, str]:
    """(inputs {key: [B, L] / [B]}, predictions [B] float, backend) saved by a run."""
    path = os.path.join(run_dir, PARITY_FILE)
    if not os.path.exists(path):
        raise DmginError(f"{path} not found: the run has no parity batch (train it with "
                         f"`dmgin train`, which writes one)")
    with np.load(path, allow_pickle=False) as z:
        inputs = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("input/")}
        return inputs, z["predictions"].astype(np.float64), str(z["backend"])


def compare_predictions(reference: np.ndarray, predictions: np.ndarray,
                        reference_backend: str, backend: str,
                        tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """Max absolute difference of two prediction vectors `[B]`."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    got = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if ref.shape != got.shape:
        raise DmginError(f"parity: {len(ref)} reference predictions vs {len(got)} predictions")
    diff = float(np.max(np.abs(ref - got))) if len(ref) else 0.0
    return ParityReport(reference_backend, backend, len(ref), diff, tolerance)


def check_run_parity(run_dir: str, model_fn: Optional[Callable] = None,
                     tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """Rebuilds the run's model on this process's backend, loads `model.weights.h5`,
    predicts the run's parity batch and compares with the stored predictions."""
    import keras
    from dmgin_tf.training.callbacks import prediction_vector
    from dmgin_tf.training.inputs import cast_for_backend
    from dmgin_tf.training.trainer import load_trained_model
    inputs, reference, ref_backend = reference_batch(run_dir)
    model, _ = load_trained_model(run_dir, model_fn)
    backend = keras.backend.backend()
    preds = prediction_vector(model.predict_on_batch(cast_for_backend(inputs, backend)))
    return compare_predictions(reference, preds, ref_backend, backend, tolerance)


def check_rebuilt_model(run_dir: str, model, custom_model_fn: bool = False,
                        predictions: bool = True) -> None:
    """Refuses a model rebuilt from a run (`load_trained_model`) that is not the model the
    run trained: a class of another name than the one `metrics.json` records (a run
    trained with `train(..., model_fn=...)` rebuilt without it; the module is not
    compared: a class defined in a script is `__main__.X` there and `script.X` when
    imported), or predictions on `parity_batch.npz` more than `REBUILD_TOLERANCE` from
    the ones the run stored. Export calls this before writing anything.

    Args:
      run_dir: the training run.
      model: the rebuilt model, weights loaded.
      custom_model_fn: the caller rebuilt it with its own model_fn (the class check is
        then left to the predictions).
      predictions: compare the predictions (`dmgin export --no-verify` skips it). Runs
        whose metrics.json predates `model_class` and that trained in mixed precision
        stored the reduced-precision model's predictions (~0.05 from the float32
        rebuild): not compared.

    Raises:
      DmginError naming the run, both classes or the difference, and the remedy.
    """
    import json
    import keras
    from dmgin_tf.training.callbacks import prediction_vector
    from dmgin_tf.training.inputs import cast_for_backend
    from dmgin_tf.training.trainer import METRICS_FILE, MODEL_CLASS_KEY, class_path
    remedy = ("export it from Python with the model the run trained: "
              "`export_from_run_dir(run_dir, ..., model_fn=...)` with the same model_fn, or "
              "`dmgin_tf.models.register_model` of that class under model.model")
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    metrics = {}
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
    recorded = metrics.get(MODEL_CLASS_KEY)
    rebuilt = class_path(model)
    if recorded and recorded.rsplit(".", 1)[-1] != rebuilt.rsplit(".", 1)[-1] \
            and not custom_model_fn:
        raise DmginError(f"{run_dir} was trained as {recorded} ({METRICS_FILE}: "
                         f"{MODEL_CLASS_KEY}), but its config rebuilds {rebuilt}: {remedy}")
    old_mixed = recorded is None and metrics.get("precision_policy", "float32") != "float32"
    if not predictions or old_mixed or not os.path.exists(os.path.join(run_dir, PARITY_FILE)):
        return
    inputs, reference, ref_backend = reference_batch(run_dir)
    backend = keras.backend.backend()
    preds = prediction_vector(model.predict_on_batch(cast_for_backend(inputs, backend)))
    report = compare_predictions(reference, preds, ref_backend, backend, REBUILD_TOLERANCE)
    if not report.ok:
        raise DmginError(f"the model rebuilt from {run_dir} ({rebuilt}) does not reproduce the "
                         f"run's own predictions on {PARITY_FILE}: max |difference| "
                         f"{report.max_abs_diff:.3g} > {REBUILD_TOLERANCE:g} over "
                         f"{report.num_examples} examples. If the run was trained with a "
                         f"custom model, {remedy}")


def check_saved_model_parity(run_dir: str, saved_model_dir: str,
                             signature: str = "predict_raw",
                             tolerance: float = DEFAULT_TOLERANCE) -> ParityReport:
    """The exported SavedModel (TF, `dmgin export` of this run) against the predictions the
    training backend stored: the weights handoff end to end, JAX training → TF Serving.

    Args:
      run_dir: the training run (its `parity_batch.npz`).
      saved_model_dir: one exported version directory (`<base>/<name>/<version>`).
      signature: a raw-tensor signature taking `MODEL_INPUT_KEYS` (`predict_raw`).
    """
    import tensorflow as tf
    from dmgin_tf.features import PREDICTION
    from dmgin_tf.training.inputs import cast_for_backend
    inputs, reference, ref_backend = reference_batch(run_dir)
    loaded = tf.saved_model.load(saved_model_dir)
    if signature not in loaded.signatures:
        raise DmginError(f"{saved_model_dir}: no signature {signature!r} "
                         f"(has {sorted(loaded.signatures)})")
    fn = loaded.signatures[signature]
    args = {k: tf.constant(v) for k, v in cast_for_backend(inputs, "tensorflow").items()}
    preds = fn(**args)[PREDICTION].numpy()
    return compare_predictions(reference, preds, ref_backend, f"saved_model:{signature}",
                               tolerance)
