"""`dmgin demo`: the README's main command, end to end on the embedded real sample.

    dmgin demo [--workdir runs/demo] [--dataset taobao] [--requests 8] [--redis]

1. runs the TFX pipeline (ExampleBuilder → validation → Transform → Trainer → Evaluator
   → Pusher) on the embedded sample (`dmgin pipeline run`),
2. starts the dev gRPC server (`dmgin serve`, the TF Serving stand-in) on the pushed
   model through a models.config like `serving_configs/models.config`,
3. sends real held-out tf.Examples through the official `PredictionService` stub
   (`dmgin_tf.serving.Client`) and prints CTR next to the label,
4. ranks those examples' candidate items for one held-out user twice through the
   cached user state (`CachedRanker.rank_user`): the first call misses, ranks with the
   history (`rank`) and writes the user's state; the second scores from the state alone
   (`score_cached`). The store is in-process, or with `--redis` a private
   `redis-server` started (and stopped) by the demo,
5. stops the server.

Nothing here that a user could not do with the separate commands; it only chains them.
"""
from __future__ import annotations

import argparse
import glob
import os
import time

from dmgin_tf.errors import DmginError

MODELS_CONFIG = """model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
  }}
}}
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="pipeline on the embedded sample → serve → gRPC Predict",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/demo", help="pipeline root, serving dir, configs")
    p.add_argument("--dataset", default="taobao", choices=["taobao"],
                   help="embedded sample to run on (Taobao; MovieLens needs the text encoder "
                        "and a bigger budget: see docs/pipeline.md)")
    p.add_argument("--requests", type=int, default=8, help="held-out examples to score over gRPC")
    p.add_argument("--redis", action="store_true",
                   help="keep the cached user states in a private redis-server (started and "
                        "stopped by the demo; needs `redis-server` on PATH) instead of in-process")
    p.set_defaults(func=run)


def _pipeline(args) -> str:
    """Runs the pipeline on the embedded sample; returns the eval split of its examples."""
    from dmgin_tf.cli import main as cli_main
    root = os.path.join(args.workdir, "pipeline")
    serving = os.path.join(args.workdir, "serving")
    print(f"[1/4] TFX pipeline on the embedded {args.dataset} sample -> {root}", flush=True)
    # No --data: `pipeline run` takes the embedded sample and its small-model config.
    rc = cli_main.main(["pipeline", "run", "--dataset", args.dataset,
                        "--pipeline-root", root, "--serving-dir", serving])
    if rc:
        raise DmginError(f"pipeline run failed (exit {rc}); see the log above")
    # The eval split's user records (one SequenceExample per user); requests are their
    # labelled positions as flat tf.Examples, what serving_default takes.
    pattern = os.path.join(root, "ExampleBuilder", "examples", "*", "Split-eval")
    splits = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not splits:
        raise DmginError(f"no eval examples under {pattern}")
    return splits[-1]


def _serve_and_predict(args, eval_dir: str) -> None:
    import numpy as np
    import tensorflow as tf

    from dmgin_tf import features as F
    from dmgin_tf.serving.client import Client
    from dmgin_tf.serving.protos import read_model_server_config
    from dmgin_tf.serving.server import DevServer
    from tfx_pipeline.eval_records import expand_records, history_window

    name = "dmgin"
    base = os.path.abspath(os.path.join(args.workdir, "serving", name))
    if not os.path.isdir(base):
        raise DmginError(f"nothing was pushed to {base}: the model was not blessed")
    config_path = os.path.join(args.workdir, "models.config")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(MODELS_CONFIG.format(name=name, base=base))
    print(f"[2/4] dev gRPC server (TF Serving stand-in) on {config_path}", flush=True)
    server = DevServer(read_model_server_config(config_path), port=0)
    port = server.start()
    try:
        with Client(f"127.0.0.1:{port}", name, timeout_s=60.0) as client:
            version = client.wait_until_available(timeout_s=120.0)
            files = sorted(glob.glob(os.path.join(eval_dir, "*.tfrecord*")))
            gzip = "GZIP" if files and files[0].endswith(".gz") else ""
            # Requests as the Evaluator scores them: each record's positions, histories cut
            # at the served model's window.
            window = history_window(os.path.join(base, str(version)))
            records = expand_records(
                (r.numpy() for r in tf.data.TFRecordDataset(files, compression_type=gzip)),
                window, limit=args.requests)
            labels = [tf.train.Example.FromString(r).features.feature[F.LABEL].int64_list.value[0]
                      for r in records]
            timings = []
            for _ in range(2):  # the first call may still compile (XLA) for this batch size
                t0 = time.perf_counter()
                ctr = client.predict_examples(records, batch_size=len(records))
                timings.append((time.perf_counter() - t0) * 1000)
            print(f"[3/4] gRPC Predict (model {name}, version {version}, serving_default): "
                  f"{len(records)} held-out examples; first call {timings[0]:.1f} ms, "
                  f"second {timings[1]:.1f} ms", flush=True)
            for i, (p, y) in enumerate(zip(np.asarray(ctr).reshape(-1), labels)):
                print(f"    example {i}: ctr={p:.4f} label={y}")
            _cached_ranking(args, client, records)
    finally:
        server.stop()


def _cached_ranking(args, client, records) -> None:
    """Step 4: one held-out user's ranking through the cached user state."""
    import numpy as np
    import tensorflow as tf

    from dmgin_tf import features as F
    from dmgin_tf.serving.cached_ranking import CachedRanker
    from dmgin_tf.serving.user_state_store import (InMemoryStateStore, RedisServer,
                                                   RedisStateStore)

    ids = client.tensorize(records)          # string ids -> the model's ids (its vocabularies)
    user = tf.train.Example.FromString(records[0]).features.feature[F.USER_ID] \
        .bytes_list.value[0].decode("utf-8")
    history = {k: ids[k][0] for k in F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)}
    cand_item, cand_group = ids[F.CAND_ITEM], ids[F.CAND_GROUP]
    request_time = int(history[F.REQUEST_TIME])
    redis = RedisServer().start() if args.redis else None
    try:
        store = RedisStateStore(redis.url) if redis else InMemoryStateStore()
        where = f"Redis at {redis.url}" if redis else "in-process store"
        print(f"[4/4] cached user state ({where}): user {user}, {len(cand_item)} candidates",
              flush=True)
        ranker = CachedRanker(client, store, {user: history})
        reference = client.rank(history, cand_item, cand_group)
        timings, scores, outcome = [], [], []
        for _ in range(2):              # a miss (rank + state written), then a hit
            hits = ranker.counters["hits"]
            t0 = time.perf_counter()
            scores.append(ranker.rank_user(user, cand_item, cand_group, request_time))
            timings.append((time.perf_counter() - t0) * 1000)
            outcome.append("hit -> score_cached, no history sent" if ranker.counters["hits"] > hits
                           else "miss -> rank with the history, state written")
        for i in range(2):
            print(f"    call {i + 1}: {outcome[i]} ({timings[i]:.1f} ms)")
        c = ranker.counters
        print(f"    max |score_cached - rank| = "
              f"{float(np.max(np.abs(scores[1] - reference))):.2e}; counters: "
              + ", ".join(f"{k} {c[k]}" for k in ("requests", "hits", "misses", "writes")))
        if not c["hits"]:
            raise DmginError("the second rank_user call did not read the cached state; "
                             f"counters: {dict(c)}")
    finally:
        if redis is not None:
            redis.close()


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    eval_dir = _pipeline(args)
    _serve_and_predict(args, eval_dir)
    print(f"demo finished in {time.time() - t0:.0f}s", flush=True)
    return 0
