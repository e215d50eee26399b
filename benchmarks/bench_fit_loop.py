r"""Fit loop vs raw steps: where `dmgin train` loses time around the model step.

    KERAS_BACKEND=jax python benchmarks/bench_fit_loop.py --data runs/gpu_bundle/data/taobao \
        --history-length 32 --batch-size 256 --steps 40

Measures on one model and one example set, in one process:
  densify   host-side batch building (examples/s)
  raw       `train_on_batch` over pre-densified distinct batches (the model-step ceiling)
  fit       `dmgin_tf.training.trainer.train` (Keras fit + our feeding + callbacks),
            steady-state epoch (the second), examples/s from its metrics.json
and prints one JSON line with the fit/raw ratio. Backend from KERAS_BACKEND (jax default).
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="example-set directory")
    p.add_argument("--config", help="base config (default: the example dir's ../../config_<ds>.json "
                                     "when present, else defaults)")
    p.add_argument("--model", default="dmgin")
    p.add_argument("--history-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="steps per measured epoch / raw loop")
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--no-jit", dest="jit_compile", action="store_false",
                   help="graph mode instead of XLA (train.jit_compile=false) for both loops")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--skip-raw", action="store_true")
    p.add_argument("--tiny-model", action="store_true",
                   help="tests/training/tiny.py's model: a near-free step, so the loop's own "
                        "cost shows (as on a GPU, where the step is fast next to the host)")
    p.add_argument("--legacy-feed", action="store_true",
                   help="the loop as before the fix: batches built on demand and Keras' "
                        "ModelCheckpoint (per-step host sync)")
    p.add_argument("--prefetch", type=int, help="override trainer.FEED_PREFETCH")
    p.add_argument("--threads", type=int, help="override trainer.FEED_THREADS")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    from dmgin_tf.config import load_config
    from dmgin_tf.data.examples import ExampleSet
    from dmgin_tf.training.data_source import training_data_from_example_set
    from dmgin_tf.training.inputs import cast_for_backend
    from dmgin_tf.training.trainer import train, resolve_config, default_model_fn, seed_everything

    backend = keras.backend.backend()
    model_fn = default_model_fn
    if args.tiny_model:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "tests", "training"))
        from tiny import tiny_model_fn as model_fn
    if args.legacy_feed:
        from dmgin_tf.training import callbacks as cb, trainer as trainer_mod
        trainer_mod.FEED_PREFETCH = 0
        cb.EpochCheckpoint = keras.callbacks.ModelCheckpoint
    from dmgin_tf.training import trainer as trainer_mod
    if args.prefetch is not None:
        trainer_mod.FEED_PREFETCH = args.prefetch
    if args.threads is not None:
        trainer_mod.FEED_THREADS = args.threads
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides.update({"train.backend": backend, "model.model": args.model,
                      "model.history_length": args.history_length,
                      "train.batch_size": args.batch_size, "train.steps_per_epoch": args.steps,
                      "train.epochs": 2, "train.early_stopping_patience": 5,
                      "train.mixed_precision": args.mixed_precision,
                      "train.jit_compile": args.jit_compile,
                      "model.item_vocab_size": 0, "model.group_vocab_size": 0})
    es = ExampleSet.load(args.data)
    overrides["data.dataset"] = es.metadata.get("spec", {}).get("name", "taobao")
    cfg = load_config(args.config, overrides)
    data = training_data_from_example_set(es, args.history_length, args.data)
    # Evaluation splits shrunk: this benchmark is about the training loop.
    for name in ("val", "test"):
        split = getattr(data, name)
        split.indices, split.labels, split.user_ids = (split.indices[:512], split.labels[:512],
                                                       split.user_ids[:512])
    cfg = resolve_config(cfg, data)
    out = {"backend": backend, "model": args.model, "L": args.history_length,
           "B": args.batch_size, "steps": args.steps, "mixed_precision": args.mixed_precision,
           "jit_compile": args.jit_compile,
           "tiny_model": args.tiny_model, "legacy_feed": args.legacy_feed,
           "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()[0]}

    rng = np.random.default_rng(0)
    idx = [rng.choice(len(data.train), args.batch_size, replace=False) for _ in range(args.steps)]
    t = time.perf_counter()
    batches = [(cast_for_backend(data.train.batch(i), backend),
                data.train.labels[i].astype(np.float32)) for i in idx]
    out["densify_ex_per_s"] = args.steps * args.batch_size / (time.perf_counter() - t)

    if not args.skip_raw:
        seed_everything(0)
        keras.config.set_dtype_policy("mixed_bfloat16" if args.mixed_precision else "float32")
        model = model_fn(cfg.model)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.BinaryCrossentropy(), jit_compile=args.jit_compile)
        t = time.perf_counter()
        model.train_on_batch(*batches[0])
        out["raw_first_step_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for x, y in batches:
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss))     # waits for the last step
        out["raw_ex_per_s"] = args.steps * args.batch_size / (time.perf_counter() - t)
        keras.config.set_dtype_policy("float32")
        del model

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = train(cfg, data, tmp, model_fn=model_fn, verbose=0)
        out["fit_total_s"] = time.perf_counter() - t
        out["fit_epoch_s"] = result.metrics["train_seconds"]
        out["fit_ex_per_s"] = result.metrics["train_examples_per_second"]
    if "raw_ex_per_s" in out:
        out["fit_over_raw"] = out["fit_ex_per_s"] / out["raw_ex_per_s"]
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
