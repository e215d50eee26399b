"""Throughput of `dmgin_tf.ops.group_behaviors` (histories/s), with and without XLA.

    python benchmarks/bench_grouping.py                       # TF backend, L = 1k,10k,100k
    python benchmarks/bench_grouping.py --lengths 10000 --batch 64
    python benchmarks/bench_grouping.py --backend jax         # jax.jit (CPU or GPU), no TF
    python benchmarks/bench_grouping.py --append docs/benchmarks.md

TF backend modes: `graph` = tf.function (no XLA), `xla` = tf.function(jit_compile=True);
`eager` on request. JAX backend: `jit` = jax.jit. Every mode of one L runs on the same
inputs in the same process, so the ratios are comparable; the first call (tracing /
compilation) is excluded and reported separately.

Inputs mimic the model contract: per row a history of random length (30–100 % of L),
oldest first, left-aligned (zero padded at the end), groups drawn Zipf-like from
`--num-groups`, 4 behavior types. `--unsorted` shuffles the times (forces the op's
general time-sort path).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    p.add_argument("--lengths", default="1000,10000,100000",
                   help="comma-separated history lengths L")
    p.add_argument("--batch", default="auto",
                   help="batch size B, or 'auto' = about --elements / L rows")
    p.add_argument("--elements", type=int, default=1_000_000,
                   help="B*L per call when --batch auto")
    p.add_argument("--modes", default="",
                   help="comma-separated modes (TF: eager,graph,xla; JAX: jit). "
                        "Default: graph,xla on TF, jit on JAX")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="time each mode for at least this long (after warm-up)")
    p.add_argument("--max-groups", type=int, default=64)
    p.add_argument("--max-per-group", type=int, default=16)
    p.add_argument("--num-behavior-types", type=int, default=4)
    p.add_argument("--num-groups", type=int, default=1000)
    p.add_argument("--unsorted", action="store_true", help="shuffle times within rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", default="", help="append a markdown table to this file")
    args = p.parse_args(argv)
    lengths = args.lengths.split(",")
    if not all(v.isdigit() and int(v) >= 1 for v in lengths):
        p.error(f"--lengths {args.lengths}: history lengths must be integers >= 1")
    if args.batch != "auto" and not (args.batch.isdigit() and int(args.batch) >= 1):
        p.error(f"--batch {args.batch}: 'auto' or an integer >= 1")
    for flag in ("elements", "max_groups", "max_per_group", "num_behavior_types",
                 "num_groups"):
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be > 0")
    if not args.min_seconds >= 0:      # 0: one timed pass per mode
        p.error(f"--min-seconds {args.min_seconds}: must be >= 0")
    return args


def make_inputs(batch, length, args, time_dtype):
    import numpy as np
    rng = np.random.default_rng(args.seed)
    n = rng.integers(max(1, int(0.3 * length)), length + 1, size=(batch, 1))
    valid = np.arange(length)[None, :] < n
    item = np.where(valid, rng.integers(2, 1_000_000, (batch, length)), 0)
    group = np.minimum(rng.zipf(1.3, (batch, length)), args.num_groups - 1)
    behavior = rng.integers(1, args.num_behavior_types + 1, (batch, length))
    gaps = rng.exponential(600.0, (batch, length)).astype(np.int64)
    times = 1_500_000_000 + np.cumsum(gaps, axis=1)
    if args.unsorted:
        times = rng.permuted(times, axis=1)
    times = np.where(valid, times, 0)
    request = times.max(axis=1) + 60
    return [item.astype(np.int32), group.astype(np.int32), behavior.astype(np.int32),
            times.astype(time_dtype), request.astype(time_dtype)]


def build_fns(args):
    """Returns {mode: callable(*inputs) -> blocking result} for the chosen backend."""
    from dmgin_tf.ops import group_behaviors
    kw = dict(max_groups=args.max_groups, max_per_group=args.max_per_group,
              num_behavior_types=args.num_behavior_types, num_groups=args.num_groups)
    if args.backend == "jax":
        import jax
        fn = jax.jit(lambda *a: group_behaviors(*a, **kw))

        def run_jit(*a):
            return jax.block_until_ready(fn(*a))
        return {"jit": run_jit}, "int32"
    import tensorflow as tf

    def op(*a):
        return tuple(group_behaviors(*a, **kw))
    fns = {"eager": op, "graph": tf.function(op, jit_compile=False),
           "xla": tf.function(op, jit_compile=True)}

    def blocking(f):
        # .numpy() of one small output forces the computation to finish.
        return lambda *a: f(*a)[0].numpy()
    return {k: blocking(v) for k, v in fns.items()}, "int64"


def to_device(inputs, backend):
    if backend == "jax":
        import jax.numpy as jnp
        return [jnp.asarray(x) for x in inputs]
    import tensorflow as tf
    return [tf.constant(x) for x in inputs]


def time_mode(fn, inputs, min_seconds):
    t0 = time.perf_counter()
    fn(*inputs)
    first = time.perf_counter() - t0
    calls, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn(*inputs)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and calls >= 2:
            # Process CPU time (all threads) is the steadier figure on a shared machine.
            return first, elapsed / calls, (time.process_time() - c0) / calls


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend      # must precede any keras import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    assert keras.backend.backend() == args.backend
    fns, time_dtype = build_fns(args)
    default_modes = "jit" if args.backend == "jax" else "graph,xla"
    modes = [m for m in (args.modes or default_modes).split(",") if m]
    unknown = [m for m in modes if m not in fns]
    if unknown:
        raise SystemExit(f"--modes: unknown mode(s) {unknown} for backend {args.backend}; "
                         f"known: {sorted(fns)}")
    device = machine()
    if args.backend == "jax":
        import jax
        device = f"{device}; jax devices: {jax.devices()}"
    rows = []
    for length in [int(x) for x in args.lengths.split(",") if x]:
        batch = (max(1, args.elements // length) if args.batch == "auto" else int(args.batch))
        inputs = to_device(make_inputs(batch, length, args, time_dtype), args.backend)
        base = None
        for mode in modes:
            first, per_call, cpu = time_mode(fns[mode], inputs, args.min_seconds)
            rate = batch / per_call
            base = base or (rate, cpu)
            rows.append((length, batch, mode, first, per_call, rate, rate / base[0], cpu,
                         base[1] / cpu))
            print(f"L={length:>7} B={batch:>5} {mode:>6}: first call {first:7.2f} s, "
                  f"{per_call * 1e3:9.1f} ms/call, {rate:10.1f} histories/s, "
                  f"x{rate / base[0]:.2f} vs {modes[0]}; CPU {cpu * 1e3:9.1f} ms/call, "
                  f"x{base[1] / cpu:.2f}", flush=True)
    if args.append:
        command = "python benchmarks/bench_grouping.py " + " ".join(sys.argv[1:])
        lines = [
            "",
            f"### group_behaviors, {args.backend} backend — "
            f"{datetime.date.today().isoformat()}",
            "",
            f"Command: `{command}`  ",
            f"Machine: {device}  ",
            f"G={args.max_groups}, M={args.max_per_group}, T={args.num_behavior_types}, "
            f"num_groups={args.num_groups}, times {'shuffled' if args.unsorted else 'sorted'}"
            f"; ratio = speed relative to `{modes[0]}` at the same L (wall: histories/s; "
            "CPU: process CPU ms per call, all threads — steadier on a shared machine).",
            "",
            "| L | B | mode | first call (s) | wall ms / call | histories/s | wall ratio "
            "| CPU ms / call | CPU ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4] * 1e3:.1f} | "
                  f"{r[5]:.1f} | {r[6]:.2f} | {r[7] * 1e3:.1f} | {r[8]:.2f} |" for r in rows]
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
