"""Loopback serving benchmark: p50/p99 latency and throughput through `dmgin serve`.

Exports a DMGIN model (random weights — latency does not depend on them) with history
length L, serves it with the dev server (`dmgin serve`, its own process, as TF Serving
would be) on 127.0.0.1 and measures from this process, each for a bounded number of
requests:

1. `rank`: one user with an L-behavior history × C candidates per request, XLA vs
   non-XLA variant (the goal in docs/design.md, Export and serving: p99 < 20 ms for C = 100, L = 10 000);
2. `predict_raw` vs batch size B, without and with server batching (concurrent clients).

    python benchmarks/bench_serving.py --history 10000 --candidates 100 --requests 200 \\
        --append docs/benchmarks.md

Prints a Markdown table; `--append` adds it with the command to docs/benchmarks.md.

3. With `--cached-lengths 1000,10000,100000`: instead of 1-2, `score_cached` (the request
   carries the user's cached state, no history) vs `rank` (the request carries the
   history) for each L, XLA variant, one user x C candidates, plus the user-state
   cache's own round trip: a Redis GET of one state on a private `redis-server`
   (measured separately), and `CachedRanker.rank_user` (GET + score_cached) end to end.
   `--docs docs/benchmarks.md` writes the table into its marked block there.

    python benchmarks/bench_serving.py --cached-lengths 1000,10000,100000 --candidates 100 \\
        --requests 200 --docs docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

WARMUP_DEADLINE_S = 900.0   # first request per shape = XLA compile


def synthetic_inputs(n, L, num_items, num_groups, seed=0):
    """Full histories of L behaviors (the worst case for serving), int ids."""
    from dmgin_tf import features as F
    rng = np.random.default_rng(seed)
    item = rng.integers(2, num_items, size=(n, L)).astype(np.int32)
    t = np.sort(rng.integers(1_500_000_000, 1_510_000_000, size=(n, L)), axis=1).astype(np.int64)
    return {F.HIST_ITEM: item, F.HIST_GROUP: (item % (num_groups - 2) + 2).astype(np.int32),
            F.HIST_BEHAVIOR_ID: rng.integers(1, 5, size=(n, L)).astype(np.int32),
            F.HIST_TIME: t, F.REQUEST_TIME: t[:, -1] + 60,
            F.CAND_ITEM: rng.integers(2, num_items, size=n).astype(np.int32),
            F.CAND_GROUP: rng.integers(2, num_groups, size=n).astype(np.int32)}


SERVER_START_TIMEOUT_S = 300.0


def batching_text(opts) -> str:
    """A `BatchingParameters` text proto for `dmgin serve --batching-parameters-file`."""
    lines = [f"max_batch_size {{ value: {opts.max_batch_size} }}",
             f"batch_timeout_micros {{ value: {opts.batch_timeout_micros} }}",
             f"max_enqueued_batches {{ value: {opts.max_enqueued_batches} }}",
             f"num_batch_threads {{ value: {opts.num_batch_threads} }}"]
    lines += [f"allowed_batch_sizes: {b}" for b in opts.allowed_batch_sizes]
    return "\n".join(lines) + "\n"


def serve_command(config: str, port: int, intra_op: int) -> list:
    """`dmgin serve` as its own process: no version polling during the run, no warmup
    records (the benchmark warms up with its own request shapes)."""
    return [sys.executable, "-m", "dmgin_tf.cli.main", "serve", "--model-config-file", config,
            "--port", str(port), "--file-system-poll-wait-seconds", "3600", "--no-warmup",
            "--tensorflow-intra-op-parallelism", str(intra_op)]


def stop(server) -> None:
    """Graceful stop (SIGTERM), then kill if it hangs."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


_SCRATCH: list = []


def scratch_dir(prefix: str) -> str:
    """A temporary folder for the exported models, removed when `main` returns or
    raises (each run writes 24 MB to 1 GB of SavedModels)."""
    path = tempfile.mkdtemp(prefix=prefix)
    _SCRATCH.append(path)
    return path


def main(argv=None):
    import shutil
    try:
        return _main(argv)
    finally:
        while _SCRATCH:
            shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def percentiles(lat):
    a = np.asarray(lat) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def run_load(fn, requests, concurrency):
    """Calls fn() `requests` times from `concurrency` threads → (latencies s, wall s, errors)."""
    lat, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))

    def worker():
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 — counted, reported
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0, errors


def _main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from dmgin_tf.cli.common import positive
    ap.add_argument("--history", type=positive(int), default=10000, help="L")
    ap.add_argument("--candidates", type=positive(int), default=100)
    ap.add_argument("--requests", type=positive(int), default=200,
                    help="requests per measurement")
    ap.add_argument("--batch-sizes", default="1,8,32", help="predict_raw batch sizes")
    ap.add_argument("--raw-history", type=int, default=1000, help="L for the predict_raw sweep")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads in the batching runs")
    ap.add_argument("--variants", default="xla,noxla", help="export variants to measure")
    ap.add_argument("--skip-raw", action="store_true", help="only the rank measurement")
    ap.add_argument("--append", metavar="MD", help="append the results to this Markdown file")
    ap.add_argument("--cached-lengths", default="",
                    help="comma-separated L: measure score_cached vs rank (section 3) instead")
    ap.add_argument("--docs", metavar="MD", help="with --cached-lengths: write the block here")
    ap.add_argument("--server-intra-op", type=int, default=0, metavar="N",
                    help="the server's --tensorflow-intra-op-parallelism (0: TensorFlow's choice)")
    ap.add_argument("--state-groups", type=int, default=128, help="K of the user state")
    ap.add_argument("--state-items", type=int, default=512, help="I of the user state")
    args = ap.parse_args(argv)
    if args.cached_lengths:
        return cached_benchmark(args, argv)

    import keras  # noqa: F401
    import portpicker
    from dmgin_tf import features as F
    from dmgin_tf.config import ModelConfig, ServingConfig
    from dmgin_tf.export.saved_model import export_model
    from dmgin_tf.models import build_model
    from dmgin_tf.serving import Client
    from dmgin_tf.serving.batching import BatchOptions
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    num_items, num_groups = 100_000, 1002
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    tmp = scratch_dir("bench_serving_")

    def export(L, buckets, cand_buckets):
        cfg = ModelConfig(item_vocab_size=num_items, group_vocab_size=num_groups, history_length=L,
                          max_groups=64, max_per_group=16, embedding_dim=16, inter_layers=2,
                          dropout=0.0)
        model = build_model(cfg)
        scfg = ServingConfig(batch_buckets=buckets, candidate_buckets=cand_buckets)
        t0 = time.perf_counter()
        # No warmup records: the benchmark warms up with its own request shapes (and
        # skips compiling buckets it never uses).
        export_model(model, tmp, f"m{L}", history_length=L, serving_cfg=scfg,
                     variants=variants)
        print(f"exported L={L} in {time.perf_counter() - t0:.0f}s", flush=True)
        return f"m{L}"

    def serve(name, batching=None):
        """`dmgin serve` in a subprocess (client and server in one process would share
        the GIL and threads, which no deployment does) → (server process, port)."""
        mcfg = model_server_config_pb2.ModelServerConfig()
        mc = mcfg.model_config_list.config.add(name=name, base_path=os.path.join(tmp, name),
                                                model_platform="tensorflow")
        mc.model_version_policy.latest.num_versions = 1
        port = portpicker.pick_unused_port()
        config = os.path.join(tmp, f"{name}.models.config")
        with open(config, "w", encoding="utf-8") as f:
            f.write(text_format.MessageToString(mcfg))
        cmd = serve_command(config, port, args.server_intra_op)
        if batching is not None:
            path = os.path.join(tmp, f"{name}.batching.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(batching_text(batching))
            cmd += ["--enable-batching", "--batching-parameters-file", path]
        log = open(os.path.join(tmp, f"{name}.server.log"), "w")
        t0 = time.perf_counter()
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            with Client(f"127.0.0.1:{port}", name, timeout_s=10) as c:
                while True:
                    if server.poll() is not None:
                        raise RuntimeError(f"dmgin serve exited with {server.returncode}; "
                                           f"log: {log.name}")
                    try:
                        c.wait_until_available(timeout_s=5)
                        break
                    except Exception:  # noqa: BLE001 — not up yet (port closed / loading)
                        if time.perf_counter() - t0 > SERVER_START_TIMEOUT_S:
                            raise
        except BaseException:
            stop(server)
            raise
        print(f"  server process for {name} up in {time.perf_counter() - t0:.0f}s", flush=True)
        return server, port

    # 1. rank: one user x C candidates, L-long history, XLA vs not.
    C, L = args.candidates, args.history
    cand_buckets = tuple(sorted({C if C > 128 else 128}))
    name = export(L, (1,), cand_buckets)
    user = synthetic_inputs(1, L, num_items, num_groups, seed=1)
    cands = np.random.default_rng(2).integers(2, num_items, size=C).astype(np.int32)
    groups = (cands % (num_groups - 2) + 2).astype(np.int32)
    for variant in variants:
        model_name = name if variant == "xla" else name + "_noxla"
        server, port = serve(model_name)
        try:
            with Client(f"127.0.0.1:{port}", model_name, candidate_buckets=cand_buckets,
                        timeout_s=30) as c:
                call = lambda: c.rank(user, cands, groups)  # noqa: E731
                # The first call compiles the XLA cluster for this shape (tens of seconds
                # on 2 cores; the export has no warmup records here): no deadline for it.
                c.rank(user, cands, groups, timeout_s=WARMUP_DEADLINE_S)
                for _ in range(2):
                    call()
                lat, wall, errors = run_load(call, args.requests, 1)
        finally:
            stop(server)
        p50, p99 = percentiles(lat)
        rows.append((f"rank, 1 user x {C} cand, L={L}", variant, "off", 1, p50, p99,
                     len(lat) / wall * C, "cand/s", len(errors)))
        print(rows[-1], flush=True)
        # The same signature called in this process, no gRPC: separates the model's time
        # from the server's (proto conversion, validation, threads).
        import tensorflow as tf
        version_dir = sorted(os.listdir(os.path.join(tmp, model_name)), key=int)[-1]
        fn = tf.saved_model.load(os.path.join(tmp, model_name, version_dir)).signatures["rank"]
        sig_args = {k: tf.constant(v) for k, v in user.items()
                    if k not in (F.CAND_ITEM, F.CAND_GROUP)}            # [1, L] / [1]
        sig_args[F.CAND_ITEM] = tf.constant(cands[None])
        sig_args[F.CAND_GROUP] = tf.constant(groups[None])
        direct = lambda: fn(**sig_args)[F.PREDICTION].numpy()  # noqa: E731
        direct()
        lat, wall, errors = run_load(direct, args.requests, 1)
        p50, p99 = percentiles(lat)
        rows.append((f"rank, 1 user x {C} cand, L={L} — in-process SavedModel call, no gRPC",
                     variant, "—", 1, p50, p99, len(lat) / wall * C, "cand/s", len(errors)))
        print(rows[-1], flush=True)

    # 2. predict_raw vs batch size, without / with server batching (noxla and xla).
    Lr = args.raw_history
    sizes = [] if args.skip_raw else [int(b) for b in args.batch_sizes.split(",")]
    if sizes:
        buckets = tuple(sorted(set(sizes) | {max(sizes) * args.concurrency}))
        rname = export(Lr, buckets, (16,))
        data = synthetic_inputs(buckets[-1], Lr, num_items, num_groups, seed=3)
        batching = BatchOptions(max_batch_size=buckets[-1], batch_timeout_micros=2000,
                                max_enqueued_batches=1000, num_batch_threads=1,
                                allowed_batch_sizes=buckets)
        n_req = max(20, args.requests // 2)
        for variant in variants:
            model_name = rname if variant == "xla" else rname + "_noxla"
            for mode, opts, conc in (("off", None, 1), ("on", batching, args.concurrency)):
                server, port = serve(model_name, opts)
                try:
                    with Client(f"127.0.0.1:{port}", model_name, timeout_s=30) as c:
                        # Compile every padded batch size first: server batching merges
                        # concurrent requests into any bucket, and a first-time XLA compile
                        # inside the timed run would be measured as a multi-second request
                        # (what the export's warmup records prevent in deployment).
                        for b in buckets:
                            c.predict({k: v[:b] for k, v in data.items()},
                                      signature="predict_raw", timeout_s=WARMUP_DEADLINE_S)
                        for b in sizes:
                            req = {k: v[:b] for k, v in data.items()}
                            call = lambda: c.predict(req, signature="predict_raw")  # noqa: E731
                            call()
                            lat, wall, errors = run_load(call, n_req, conc)
                            p50, p99 = percentiles(lat)
                            rows.append((f"predict_raw B={b}, L={Lr}", variant, f"{mode} (x{conc} clients)",
                                         b, p50, p99, len(lat) * b / wall, "ex/s", len(errors)))
                            print(rows[-1], flush=True)
                finally:
                    stop(server)

    lines = ["| request | variant | server batching | rows/request | p50 ms | p99 ms | throughput | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | "
                     f"{r[6]:,.0f} {r[7]} | {r[8]} |")
    table = "\n".join(lines)
    print(table)
    if args.append:
        cmd = "python benchmarks/bench_serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.append, "a", encoding="utf-8") as f:
            f.write(f"\n## Serving latency (gRPC loopback, `dmgin serve`)\n\n"
                    f"Command: `{cmd}`  \nMachine: {platform.machine()}, {os.cpu_count()} cores "
                    f"(shared), TF CPU, {time.strftime('%Y-%m-%d')}. Model: DMGIN, G=64, M=16, D=16, "
                    f"2 HSTU layers, random weights; full-length synthetic histories.\n\n{table}\n")
    return 0


def request_bytes(model_name, signature, inputs) -> int:
    """Serialized size of the PredictRequest `Client` sends for `inputs`."""
    from tensorflow_serving.apis import predict_pb2
    from dmgin_tf.serving import tensor_protos
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tensor_protos.from_ndarray(np.asarray(v)))
    return req.ByteSize()


CACHED_BLOCK = ("<!-- serving-cached:start -->", "<!-- serving-cached:end -->")


def cached_benchmark(args, argv):
    """Section 3 of the module doc: score_cached vs rank vs L, and the cache round trip."""
    import json
    import portpicker
    from dmgin_tf import features as F
    from dmgin_tf.config import ModelConfig, ServingConfig
    from dmgin_tf.docs_blocks import replace_block
    from dmgin_tf.export.saved_model import export_model, read_export_info
    from dmgin_tf.models import build_model
    from dmgin_tf.serving import Client
    from dmgin_tf.serving.cached_ranking import CachedRanker
    from dmgin_tf.serving.client import history_request
    from dmgin_tf.serving.user_state_store import RedisServer, RedisStateStore
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    num_items, num_groups, C = 100_000, 1002, args.candidates
    lengths = [int(v) for v in args.cached_lengths.split(",") if v]
    cand_buckets = (128,) if C <= 128 else (C,)
    tmp = scratch_dir("bench_cached_")
    load_before = os.getloadavg()
    rows, notes, accuracy = [], {}, {}
    cands = np.random.default_rng(2).integers(2, num_items, size=C).astype(np.int32)
    groups = (cands % (num_groups - 2) + 2).astype(np.int32)
    redis = RedisServer().start()
    try:
        for L in lengths:
            name = f"c{L}"
            cfg = ModelConfig(item_vocab_size=num_items, group_vocab_size=num_groups,
                              history_length=L, max_groups=64, max_per_group=16,
                              embedding_dim=16, inter_layers=2, dropout=0.0)
            t0 = time.perf_counter()
            paths = export_model(build_model(cfg), tmp, name, history_length=L,
                                 variants=("xla",), state_groups=args.state_groups,
                                 state_items=args.state_items,
                                 serving_cfg=ServingConfig(batch_buckets=(1,),
                                                           candidate_buckets=cand_buckets))
            info = read_export_info(paths["xla"])
            print(f"exported L={L} in {time.perf_counter() - t0:.0f}s; state "
                  f"{info['user_state_bytes']:,} B/user", flush=True)
            mcfg = model_server_config_pb2.ModelServerConfig()
            mc = mcfg.model_config_list.config.add(name=name, base_path=os.path.join(tmp, name),
                                                    model_platform="tensorflow")
            mc.model_version_policy.latest.num_versions = 1
            config = os.path.join(tmp, f"{name}.models.config")
            with open(config, "w", encoding="utf-8") as f:
                f.write(text_format.MessageToString(mcfg))
            port = portpicker.pick_unused_port()
            log = open(os.path.join(tmp, f"{name}.server.log"), "w")
            server = subprocess.Popen(
                serve_command(config, port, args.server_intra_op),
                stdout=log, stderr=subprocess.STDOUT)
            try:
                with Client(f"127.0.0.1:{port}", name, candidate_buckets=cand_buckets,
                            timeout_s=60) as c:
                    t0 = time.perf_counter()
                    while True:
                        if server.poll() is not None:
                            raise RuntimeError(f"dmgin serve exited; log: {log.name}")
                        try:
                            version = c.wait_until_available(timeout_s=5)
                            break
                        except Exception:  # noqa: BLE001 — not up yet
                            if time.perf_counter() - t0 > SERVER_START_TIMEOUT_S:
                                raise
                    user = synthetic_inputs(1, L, num_items, num_groups, seed=1)
                    history = {k: user[k][0] for k in F.HISTORY_INPUT_KEYS}
                    history[F.REQUEST_TIME] = user[F.REQUEST_TIME][0]
                    # First calls compile each XLA cluster for these shapes: no deadline.
                    c.rank(history, cands, groups, timeout_s=WARMUP_DEADLINE_S)
                    state = c.user_state(history, timeout_s=WARMUP_DEADLINE_S)
                    c.score_cached(state, cands, groups, timeout_s=WARMUP_DEADLINE_S)
                    calls = {
                        "rank": lambda: c.rank(history, cands, groups),  # noqa: E731
                        "score_cached": lambda: c.score_cached(state, cands, groups),  # noqa: E731
                    }
                    chunk = {F.CAND_ITEM: np.pad(cands, (0, cand_buckets[0] - C))[None],
                             F.CAND_GROUP: np.pad(groups, (0, cand_buckets[0] - C))[None]}
                    sizes = {
                        "rank": request_bytes(name, "rank", dict(history_request(history), **chunk)),
                        "score_cached": request_bytes(name, "score_cached", dict(
                            {k: np.asarray(v)[None] for k, v in state.items()},
                            **{F.REQUEST_TIME: np.asarray([history[F.REQUEST_TIME]])}, **chunk)),
                    }
                    # How far the cached state's caps (K groups, I items) move the scores
                    # from rank's on these histories (every candidate in the state: 0).
                    gap = np.abs(calls["score_cached"]() - calls["rank"]())
                    accuracy[L] = (float(gap.max()), float(np.mean(gap <= 1e-5)))
                    for sig in ("rank", "score_cached"):
                        # Steady state: the first seconds after a server starts ran
                        # slower than later ones (whichever L came first), so each
                        # signature is warmed for 3 s before it is timed.
                        warm_until = time.perf_counter() + 3.0
                        while time.perf_counter() < warm_until:
                            calls[sig]()
                        lat, wall, errors = run_load(calls[sig], args.requests, 1)
                        p50, p99 = percentiles(lat)
                        rows.append((L, sig, p50, p99, sizes[sig], len(errors)))
                        print(rows[-1], flush=True)
                    # The cache: one state per user in Redis, GET measured alone, then the
                    # whole cached path (GET + decode + checks + score_cached).
                    store = RedisStateStore(redis.url, prefix=f"bench:{name}", timeout_s=1.0)

                    class _One:
                        def get(self, user_id):
                            return dict(history)

                    ranker = CachedRanker(c, store, _One())
                    store.put("u1", version, state)
                    ranker.rank_user("u1", cands, groups)
                    lat, _, errors = run_load(lambda: store.get("u1", version), args.requests, 1)
                    p50, p99 = percentiles(lat)
                    from dmgin_tf.serving.user_state_store import encode_state
                    rows.append((L, "Redis GET of the state (alone)", p50, p99,
                                 len(encode_state(state)), len(errors)))
                    lat, _, errors = run_load(lambda: ranker.rank_user("u1", cands, groups),
                                              args.requests, 1)
                    p50, p99 = percentiles(lat)
                    rows.append((L, "rank_user: Redis GET + score_cached", p50, p99,
                                 sizes["score_cached"], len(errors)))
                    print(rows[-2], rows[-1], dict(ranker.counters), flush=True)
                    notes[L] = info["user_state_bytes"]
            finally:
                stop(server)
    finally:
        redis.close()
    load_after = os.getloadavg()
    lines = ["| L | request | p50 ms | p99 ms | bytes sent per request | errors |",
             "|---|---|---|---|---|---|"]
    for L, what, p50, p99, size, err in rows:
        lines.append(f"| {L:,} | {what} | {p50:.1f} | {p99:.1f} | {size:,} | {err} |")
    table = "\n".join(lines)
    print(table)
    cmd = "python benchmarks/bench_serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
    block = (f"{CACHED_BLOCK[0]}\n### Serving from a cached user state: `score_cached` vs `rank`\n\n"
             f"Command: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M')}; machine: "
             f"{platform.machine()}, {os.cpu_count()} cores (shared); load average before / after: "
             f"{load_before[0]:.1f} / {load_after[0]:.1f}"
             + (" — other work shared the cores during the run, so these latencies include "
                "that contention" if load_before[0] >= 1.0 else "")   # after: our own load
             + f". Model: DMGIN, G=64, M=16, D=16, 2 HSTU "
             f"layers, random weights, XLA variant, full-length synthetic histories; one user x "
             f"{C} candidates (padded to {cand_buckets[0]}), {args.requests} timed requests each "
             f"from one client over gRPC to `dmgin serve` in its own process (TensorFlow "
             f"intra-op threads: {args.server_intra_op or 'default'}). State: K = "
             f"{args.state_groups} groups, I = {args.state_items} items (capped at L; "
             f"{', '.join(f'{v:,} B/user at L={k:,}' for k, v in notes.items())}). "
             f"Redis: a private `redis-server` on loopback; 'bytes' of the GET row = the "
             f"stored value.\n\n{table}\n\nScores of `score_cached` vs `rank` for the same "
             f"request (max abs difference; share of candidates within 1e-5): "
             + "; ".join(f"L={k:,}: {a[0]:.3g}, {a[1]:.0%}" for k, a in accuracy.items())
             + f". Candidates here are uniform over {num_groups - 2:,} groups, so most fall in "
             f"a group the user touched but not among the K most recent (scored as if absent; "
             f"docs/serving.md, \"Accuracy of the caps\").\n{CACHED_BLOCK[1]}")
    if args.docs:
        def before_efficiency(text, blk):
            marker = "<!-- efficiency:start -->"
            if marker in text:
                head, tail = text.split(marker, 1)
                return head.rstrip("\n") + "\n\n" + blk + "\n\n" + marker + tail
            return text.rstrip("\n") + "\n\n" + blk + "\n"
        replace_block(args.docs, block, append=before_efficiency)
    with open(os.path.join(tmp, "cached.json"), "w") as f:
        json.dump(rows, f)
    return 0


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
