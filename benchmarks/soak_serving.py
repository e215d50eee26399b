"""Fault-injection soak of `dmgin serve` on loopback: does any request fail or stall
while versions change, corrupt versions arrive and the server is killed?

Bounded in time, loopback only, stops by itself. It serves a small model with DMGIN's
`predict_raw` inputs and export contract (the answer depends on the version, so every
response is checked against the version that produced it) from `dmgin serve` in its
own process, and runs N client threads (official gRPC stubs, 1 s deadline, UNAVAILABLE
retried with backoff) while it:

- pushes a new good version every `--swap-every` seconds, copied slowly
  (saved_model.pb first, the variables `--copy-pause` s later);
- pushes a corrupt version (truncated saved_model.pb) every `--corrupt-every`-th swap;
- at mid-run kills the server with SIGKILL, pushes a corrupt newest version while it is
  down, and restarts it on the same port.

It prints requests, errors by status code (outside and during the kill/restart
window), wrong answers, max and p99 latency, and the versions served:

    python benchmarks/soak_serving.py --duration 45 --clients 8
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

L = 32
CONTRACT = {"model_config": {"item_vocab_size": 1000, "group_vocab_size": 50,
                             "num_behavior_types": 4},
            "batch_buckets": [1, 8], "candidate_buckets": [16], "max_candidates": 16}
NAME = "soak"


def expected_ctr(inputs, version):
    z = (inputs["hist_item"] > 0).sum(1) + inputs["cand_item"]
    return 1.0 / (1.0 + np.exp(-(0.01 * z + version / 10.0)))


def save_version(staging, version):
    """A SavedModel whose answer depends on its version (see expected_ctr)."""
    import tensorflow as tf

    spec = {k: tf.TensorSpec([None, L], tf.int32, k)
            for k in ("hist_item", "hist_group", "hist_behavior_id")}
    spec["hist_time"] = tf.TensorSpec([None, L], tf.int64, "hist_time")
    spec["request_time"] = tf.TensorSpec([None], tf.int64, "request_time")
    spec["cand_item"] = tf.TensorSpec([None], tf.int32, "cand_item")
    spec["cand_group"] = tf.TensorSpec([None], tf.int32, "cand_group")

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.b = tf.Variable(version / 10.0, dtype=tf.float64)

        @tf.function(input_signature=[spec])
        def predict_raw(self, x):
            z = tf.reduce_sum(tf.cast(x["hist_item"] > 0, tf.float64), 1) + tf.cast(x["cand_item"], tf.float64)
            return {"ctr": tf.sigmoid(0.01 * z + self.b)}

    m = Model()
    path = os.path.join(staging, str(version))
    tf.saved_model.save(m, path, signatures={"predict_raw": m.predict_raw,
                                             "serving_default": m.predict_raw})
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, "assets.extra", "dmgin_export.json"), "w") as f:
        json.dump(CONTRACT, f)
    return path


def copy_slowly(src, dst, pause_s):
    os.makedirs(dst)
    shutil.copy(os.path.join(src, "saved_model.pb"), dst)
    time.sleep(pause_s)
    for sub in ("variables", "assets.extra"):
        if os.path.isdir(os.path.join(src, sub)):
            shutil.copytree(os.path.join(src, sub), os.path.join(dst, sub))


def push_corrupt(src, dst):
    shutil.copytree(src, dst)
    pb = os.path.join(dst, "saved_model.pb")
    data = open(pb, "rb").read()
    with open(pb, "wb") as f:
        f.write(data[: len(data) // 3])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dmgin serve` in its own process."""

    def __init__(self, config, port, log_path):
        self.config, self.port, self.log_path = config, port, log_path
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dmgin_tf.cli.main", "serve", "--model-config-file", self.config,
             "--port", str(self.port), "--file-system-poll-wait-seconds", "0.2",
             "--version-settle-seconds", "0.5", "--max-concurrent-rpcs", "64"],
            stdout=log, stderr=subprocess.STDOUT)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_ready(target, timeout_s):
    import grpc
    from dmgin_tf.serving import Client
    with Client(target, NAME, timeout_s=2.0) as c:
        t0 = time.monotonic()
        while True:
            try:
                return c.wait_until_available(timeout_s=timeout_s)
            except (TimeoutError, grpc.RpcError):
                if time.monotonic() - t0 > timeout_s:
                    raise
                time.sleep(0.2)


def request_inputs(rng, rows):
    n_hist = rng.integers(0, L + 1, size=rows)
    hist = np.zeros([rows, L], np.int32)
    for r, n in enumerate(n_hist):
        hist[r, :n] = rng.integers(2, 1000, size=n)
    return {"hist_item": hist, "hist_group": np.minimum(hist, 49).astype(np.int32),
            "hist_behavior_id": np.where(hist > 0, 2, 0).astype(np.int32),
            "hist_time": np.where(hist > 0, 1_700_000_000, 0).astype(np.int64),
            "request_time": np.full([rows], 1_700_000_100, np.int64),
            "cand_item": rng.integers(2, 1000, size=rows).astype(np.int32),
            "cand_group": rng.integers(2, 50, size=rows).astype(np.int32)}


def client_loop(i, target, stop, window, stats, lock, deadline_s):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from dmgin_tf.serving import tensor_protos

    rng = np.random.default_rng(i)
    # Reconnect quickly after the restart (gRPC's default backoff grows to minutes).
    channel = grpc.insecure_channel(target, options=[("grpc.initial_reconnect_backoff_ms", 100),
                                                     ("grpc.min_reconnect_backoff_ms", 100),
                                                     ("grpc.max_reconnect_backoff_ms", 500)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    while not stop.is_set():
        inputs = request_inputs(rng, int(rng.integers(1, 9)))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = NAME
        req.model_spec.signature_name = "predict_raw"
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(tensor_protos.from_ndarray(v))
        t0, started = time.perf_counter(), time.monotonic()
        end = started + deadline_s
        code, delay = "OK", 0.02
        while True:  # one logical request: UNAVAILABLE retried inside its deadline
            try:
                resp = stub.Predict(req, timeout=max(end - time.monotonic(), 1e-3))
                v = resp.model_spec.version.value
                got = tensor_protos.to_ndarray(resp.outputs["ctr"])
                if not np.allclose(got, expected_ctr(inputs, v), rtol=1e-6):
                    code = "WRONG_ANSWER"
                break
            except grpc.RpcError as e:
                code = e.code().name
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay >= end:
                    break
                time.sleep(delay * rng.uniform(0.5, 1.5))
                delay *= 2
        latency = time.perf_counter() - t0
        # A request overlapping [kill, restarted] belongs to the kill/restart window.
        in_window = window[0] is not None and time.monotonic() >= window[0] \
            and (window[1] is None or started <= window[1])
        with lock:
            key = "restart" if in_window else "steady"
            stats[key]["requests"] += 1
            if code != "OK":
                stats[key]["errors"][code] += 1
            else:
                stats["versions"][v] += 1
            if key == "steady":
                stats["latencies"].append(latency)
    channel.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=45.0, help="seconds of traffic (default 45)")
    from dmgin_tf.cli.common import positive
    p.add_argument("--clients", type=positive(int), default=8, help="concurrent clients (default 8)")
    p.add_argument("--deadline", type=float, default=1.0, help="per-request deadline, s (default 1)")
    p.add_argument("--swap-every", type=positive(float), default=4.0,
                   help="seconds between pushes (default 4)")
    p.add_argument("--corrupt-every", type=int, default=3, help="every k-th push is corrupt (default 3)")
    p.add_argument("--copy-pause", type=float, default=1.0,
                   help="seconds between saved_model.pb and the variables of a push (default 1)")
    p.add_argument("--no-kill", action="store_true", help="skip the kill/restart")
    args = p.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="dmgin-soak-")
    base, staging = os.path.join(tmp, NAME), os.path.join(tmp, "staging")
    os.makedirs(base)
    n_pushes = int(args.duration // args.swap_every) + 3
    t_build = time.perf_counter()
    for v in range(1, n_pushes + 2):
        save_version(staging, v)
    shutil.copytree(os.path.join(staging, "1"), os.path.join(base, "1"))
    config = os.path.join(tmp, "models.config")
    with open(config, "w") as f:
        f.write(f'model_config_list {{ config {{ name: "{NAME}" base_path: "{base}" '
                f'model_platform: "tensorflow" }} }}\n')
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = Server(config, port, os.path.join(tmp, "server.log"))
    stats = {"steady": {"requests": 0, "errors": collections.Counter()},
             "restart": {"requests": 0, "errors": collections.Counter()},
             "versions": collections.Counter(), "latencies": []}
    lock, stop, window = threading.Lock(), threading.Event(), [None, None]
    events = []
    threads = []
    hard_stop = time.monotonic() + args.duration + 300  # never run unbounded
    try:
        server.start()
        wait_ready(target, 120)
        print(f"built {n_pushes + 1} versions in {time.perf_counter() - t_build:.1f} s; "
              f"server ready on {target}", flush=True)
        threads = [threading.Thread(target=client_loop, daemon=True,
                                    args=(i, target, stop, window, stats, lock, args.deadline))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        version, push, killed = 1, 0, args.no_kill
        while time.monotonic() - t0 < args.duration and time.monotonic() < hard_stop:
            time.sleep(args.swap_every)
            if not killed and time.monotonic() - t0 >= args.duration / 2:
                killed = True
                window[0] = time.monotonic()
                server.kill()
                version += 1
                push_corrupt(os.path.join(staging, str(version)), os.path.join(base, str(version)))
                events.append(f"{time.monotonic() - t0:5.1f}s kill -9; corrupt v{version} pushed; restart")
                server.start()
                ready_v = wait_ready(target, 120)
                window[1] = time.monotonic()
                events.append(f"{time.monotonic() - t0:5.1f}s restarted serving v{ready_v} "
                              f"after {window[1] - window[0]:.1f} s")
                continue
            push += 1
            version += 1
            src, dst = os.path.join(staging, str(version)), os.path.join(base, str(version))
            if push % args.corrupt_every == 0:
                push_corrupt(src, dst)
                events.append(f"{time.monotonic() - t0:5.1f}s corrupt v{version} pushed")
            else:
                copy_slowly(src, dst, args.copy_pause)
                events.append(f"{time.monotonic() - t0:5.1f}s v{version} copied slowly")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
    lat = np.array(stats["latencies"]) if stats["latencies"] else np.zeros(1)
    result = {
        "duration_s": args.duration, "clients": args.clients, "deadline_s": args.deadline,
        "requests": stats["steady"]["requests"] + stats["restart"]["requests"],
        "steady": {"requests": stats["steady"]["requests"],
                   "errors": dict(stats["steady"]["errors"]),
                   "max_latency_ms": round(float(lat.max()) * 1e3, 1),
                   "p99_latency_ms": round(float(np.percentile(lat, 99)) * 1e3, 1)},
        "kill_restart_window": {"requests": stats["restart"]["requests"],
                                "errors": dict(stats["restart"]["errors"]),
                                "seconds": round((window[1] or 0) - (window[0] or 0), 1)},
        "versions_served": dict(sorted(stats["versions"].items())),
    }
    for e in events:
        print(e)
    print(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    steady_bad = sum(stats["steady"]["errors"].values())
    return 0 if steady_bad == 0 and lat.max() < args.deadline else 1


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
