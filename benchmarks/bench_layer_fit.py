"""Training speed of `GroupInterestEncoder` inside a ranker, on the TensorFlow backend.

    python benchmarks/bench_layer_fit.py --batch-size 256 --history-length 256 --steps 8

One JSON line per variant (`--variants`, default all four):
  tf_keras      the tf.keras adapter (`dmgin_tf.layers.tf_keras.GroupInterestEncoder`) in a
                functional tf.keras ranker (encoder + a context feature + MLP), `train_on_batch`
  tf_keras_xla  the same compiled with `jit_compile=True`
  keras3        the Keras 3 layer in the same ranker built with Keras 3
  keras3_xla    the same with `jit_compile=True`
Each line: first step seconds (trace + compile), then steady-state train examples/s over
`--steps` distinct synthetic batches (valid ids, oldest-first histories, right padding).

`--code-dir DIR` imports `dmgin_tf` from DIR instead of this checkout, so two versions
can be measured side by side in one session (e.g. a `git worktree` of an older commit).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = ("tf_keras", "tf_keras_xla", "keras3", "keras3_xla")


def synthetic_batches(steps, batch, length, item_vocab, group_vocab, num_types, seed=0):
    """`steps` batches of valid model inputs and labels (numpy)."""
    import numpy as np
    from dmgin_tf import features as F
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        lengths = rng.integers(length // 4, length + 1, batch)
        pos = np.arange(length)[None, :]
        valid = pos < lengths[:, None]
        item = np.where(valid, rng.integers(2, item_vocab, (batch, length)), 0).astype("int32")
        group = np.where(valid, rng.integers(2, group_vocab, (batch, length)), 0).astype("int32")
        beh = np.where(valid, rng.integers(1, num_types + 1, (batch, length)), 0).astype("int32")
        t = np.sort(rng.integers(1_600_000_000, 1_700_000_000, (batch, length)), axis=1)
        t = np.where(valid, t, 0).astype("int64")
        x = {F.HIST_ITEM: item, F.HIST_GROUP: group, F.HIST_BEHAVIOR_ID: beh, F.HIST_TIME: t,
             F.REQUEST_TIME: np.full((batch,), 1_700_000_100, "int64"),
             F.CAND_ITEM: rng.integers(2, item_vocab, batch).astype("int32"),
             F.CAND_GROUP: rng.integers(2, group_vocab, batch).astype("int32"),
             "user_age": rng.random((batch, 1)).astype("float32")}
        out.append((x, rng.integers(0, 2, (batch, 1)).astype("float32")))
    return out


def build(variant, length, encoder_kwargs):
    from dmgin_tf import features as F
    specs = {k: ((length,) if k in F.HISTORY_INPUT_KEYS else (),
                 "int64" if k in (F.HIST_TIME, F.REQUEST_TIME) else "int32")
             for k in F.MODEL_INPUT_KEYS}
    if variant.startswith("tf_keras"):
        import tf_keras as K
        from dmgin_tf.layers.tf_keras import GroupInterestEncoder
    else:
        import keras as K
        from dmgin_tf.layers import GroupInterestEncoder
    inputs = {k: K.Input(shape, dtype=dtype, name=k) for k, (shape, dtype) in specs.items()}
    user_age = K.Input((1,), name="user_age")
    interest = GroupInterestEncoder(**encoder_kwargs)(inputs)
    h = K.layers.Concatenate()([interest, user_age])
    h = K.layers.Dense(64, activation="relu")(h)
    ctr = K.layers.Dense(1, activation="sigmoid")(h)
    model = K.Model({**inputs, "user_age": user_age}, ctr)
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  jit_compile=variant.endswith("_xla"))
    return model


def run(variant, batches, length, encoder_kwargs):
    import numpy as np
    model = build(variant, length, encoder_kwargs)
    t = time.perf_counter()
    model.train_on_batch(*batches[0])
    first = time.perf_counter() - t
    model.train_on_batch(*batches[1 % len(batches)])          # a second warm-up step
    t = time.perf_counter()
    for x, y in batches:
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))
    seconds = time.perf_counter() - t
    n = sum(len(y) for _, y in batches)
    return {"first_step_s": round(first, 2), "step_ms": round(1000 * seconds / len(batches), 1),
            "train_ex_per_s": round(n / seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--history-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--code-dir", help="import dmgin_tf from this directory")
    p.add_argument("--label", default="", help="copied into each output line")
    p.add_argument("--item-vocab", type=int, default=50_000)
    p.add_argument("--group-vocab", type=int, default=2_000)
    p.add_argument("--num-types", type=int, default=4)
    p.add_argument("--max-groups", type=int, default=64)
    p.add_argument("--max-per-group", type=int, default=16)
    p.add_argument("--embedding-dim", type=int, default=16)
    args = p.parse_args(argv)
    # (dmgin_tf is not imported before --code-dir is on the path: no shared parsers here)
    for flag in ("steps", "batch_size", "history_length"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    code = os.path.abspath(args.code_dir) if args.code_dir else \
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if not os.path.isfile(os.path.join(code, "dmgin_tf", "__init__.py")):
        # A mistyped checkout would silently measure this one: "before" = "after".
        p.error(f"--code-dir {args.code_dir}: no dmgin_tf package there")
    sys.path.insert(0, code)
    import keras
    import tf_keras

    import dmgin_tf
    measured = os.path.dirname(os.path.dirname(os.path.abspath(dmgin_tf.__file__)))
    if os.path.realpath(measured) != os.path.realpath(code):
        p.error(f"dmgin_tf was imported from {measured}, not {code} (installed into this "
                f"Python?); run with a Python that does not have it installed")
    encoder_kwargs = dict(item_vocab_size=args.item_vocab, group_vocab_size=args.group_vocab,
                          num_behavior_types=args.num_types, max_groups=args.max_groups,
                          max_per_group=args.max_per_group, embedding_dim=args.embedding_dim)
    batches = synthetic_batches(args.steps, args.batch_size, args.history_length,
                                args.item_vocab, args.group_vocab, args.num_types)
    for variant in args.variants:
        keras.utils.set_random_seed(0)
        tf_keras.utils.set_random_seed(0)
        out = {"label": args.label, "variant": variant, "B": args.batch_size,
               "L": args.history_length, "steps": args.steps, "cpu_count": os.cpu_count(),
               "load_avg": round(os.getloadavg()[0], 2)}
        out.update(run(variant, batches, args.history_length, encoder_kwargs))
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
