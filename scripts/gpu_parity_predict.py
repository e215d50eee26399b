"""On the GPU host: re-predict a JAX run's parity batch at full float32 matmul precision.

JAX runs float32 matmuls in TF32 on Ampere/Hopper GPUs unless told otherwise; runs made
before `dmgin train` wrote its parity batch at full precision carry TF32 reference
predictions (3e-4 off the exported TF model on the H100). This rewrites them:

    KERAS_BACKEND=jax python3 scripts/gpu_parity_predict.py RUN_DIR [RUN_DIR ...] --out DIR

writes DIR/<run name>_parity_batch.npz (same inputs, float32-precision predictions, plus the
default-precision ones for comparison); copy it over the run's parity_batch.npz here and
run `dmgin gpu parity --run RUN --saved-model EXPORTED_VERSION_DIR`.
"""
import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="dmgin train run directories (JAX)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import jax
    from dmgin_tf.training.callbacks import prediction_vector
    from dmgin_tf.training.inputs import cast_for_backend
    from dmgin_tf.training.parity import PARITY_FILE, reference_batch
    from dmgin_tf.training.trainer import load_trained_model
    os.makedirs(args.out, exist_ok=True)
    for run in args.runs:
        inputs, stored, _ = reference_batch(run)
        model, _ = load_trained_model(run)
        x = cast_for_backend(inputs, "jax")
        preds = {}
        for precision in (None, "float32"):
            with jax.default_matmul_precision(precision):
                preds[precision or "default"] = prediction_vector(model.predict_on_batch(x))
        name = os.path.basename(os.path.normpath(run))
        print(f"{name} on {jax.devices()[0]}: stored vs default "
              f"{np.abs(preds['default'] - stored).max():.2e}, default vs float32 "
              f"{np.abs(preds['default'] - preds['float32']).max():.2e}", flush=True)
        np.savez(os.path.join(args.out, f"{name}_{PARITY_FILE}"), predictions=preds["float32"],
                 default_precision=preds["default"], backend=np.asarray("jax-float32"),
                 **{f"input/{k}": v for k, v in inputs.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
