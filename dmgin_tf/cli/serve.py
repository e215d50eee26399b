"""`dmgin serve`: development gRPC server speaking TF Serving's API (a stand-in for
tests and demos; production = the official tensorflow/serving image, serving_configs/).

    dmgin serve --model-config-file serving_configs/models.config --port 8500 \\
        [--enable-batching --batching-parameters-file serving_configs/batching_parameters.txt] \\
        [--rest-metrics-port 8501] [--ssl-cert cert.pem --ssl-key key.pem]
    dmgin serve --model-name dmgin --model-base-path runs/serving/dmgin   # one model, no file

Binds 127.0.0.1 by default; a server reachable from other hosts should use TLS
(`--ssl-cert/--ssl-key`, PEM files).
"""
from __future__ import annotations

import argparse
import signal
import threading


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="development PredictionService server (TF Serving stand-in)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config-file", metavar="FILE", help="ModelServerConfig text proto")
    p.add_argument("--model-name", metavar="NAME",
                   help="without a config file: serve one model of this name (with --model-base-path)")
    p.add_argument("--model-base-path", metavar="DIR",
                   help="without a config file: the model's folder of numbered versions")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--enable-batching", action="store_true", help="server-side request batching")
    p.add_argument("--batching-parameters-file", metavar="FILE", help="BatchingParameters text proto")
    p.add_argument("--rest-metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on this port")
    p.add_argument("--monitoring-config-file", metavar="FILE",
                   help="MonitoringConfig text proto (metrics path)")
    p.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0,
                   help="version polling interval (default 1)")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--max-concurrent-rpcs", type=int, default=64)
    p.add_argument("--max-batch-size", type=int, default=4096,
                   help="row limit per request without batching (default 4096)")
    p.add_argument("--max-candidates", type=int, metavar="N",
                   help="candidates per user in rank/score (default: the export's max_candidates)")
    p.add_argument("--version-settle-seconds", type=float, default=1.0, metavar="S",
                   help="a new version directory must be complete and unchanged this long (default 1)")
    p.add_argument("--ssl-cert", metavar="PEM", help="TLS certificate chain (with --ssl-key)")
    p.add_argument("--ssl-key", metavar="PEM", help="TLS private key (with --ssl-cert)")
    # TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism.
    p.add_argument("--tensorflow-intra-op-parallelism", type=int, default=0, metavar="N",
                   help="threads one op may use (default 0: TensorFlow's choice, the cores)")
    p.add_argument("--tensorflow-inter-op-parallelism", type=int, default=0, metavar="N",
                   help="ops run in parallel (default 0: TensorFlow's choice)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="do not replay assets.extra warmup records at load")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    from dmgin_tf.errors import DmginError
    # TF Serving's two ways to name the models: a config file, or one model by flags.
    single = args.model_name is not None or args.model_base_path is not None
    if args.model_config_file and single:
        raise DmginError("--model-config-file or --model-name/--model-base-path, not both")
    if not args.model_config_file and not (args.model_name and args.model_base_path):
        raise DmginError("name the models: --model-config-file FILE, or --model-name NAME "
                         "--model-base-path DIR")
    if single and not os.path.isdir(args.model_base_path):
        raise DmginError(f"--model-base-path {args.model_base_path}: no such directory")
    # Files first, before TensorFlow is imported (~10 s): a typo answers at once.
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        value = getattr(args, flag)
        if value and not os.path.isfile(value):
            raise DmginError(f"--{flag.replace('_', '-')} {value}: no such file")
    from dmgin_tf.serving.metrics import DEFAULT_PATH
    from dmgin_tf.serving.protos import (read_batching_parameters, read_model_server_config,
                                         read_monitoring_config, single_model_config)
    from dmgin_tf.serving.server import DevServer
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for flag in ("port", "rest_metrics_port"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 65535:
            raise DmginError(f"--{flag.replace('_', '-')} {value}: must be in [0, 65535]")
    for flag in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
        if getattr(args, flag) < 0:
            raise DmginError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 0")
    for flag in ("max_message_bytes", "max_concurrent_rpcs", "max_batch_size", "max_candidates"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise DmginError(f"--{flag.replace('_', '-')} {value}: must be >= 1")
    if not args.file_system_poll_wait_seconds > 0 or not args.version_settle_seconds >= 0:
        raise DmginError("--file-system-poll-wait-seconds must be > 0 and "
                         "--version-settle-seconds >= 0")
    batching = None
    if args.enable_batching:
        if not args.batching_parameters_file:
            raise DmginError("--enable-batching needs --batching-parameters-file")
        batching = read_batching_parameters(args.batching_parameters_file)
    path = DEFAULT_PATH
    if args.monitoring_config_file:
        mon = read_monitoring_config(args.monitoring_config_file)
        path = mon.prometheus_config.path or DEFAULT_PATH
    threads = set_tensorflow_threads(args.tensorflow_intra_op_parallelism,
                                     args.tensorflow_inter_op_parallelism)
    models = (read_model_server_config(args.model_config_file) if args.model_config_file
              else single_model_config(args.model_name, args.model_base_path))
    server = DevServer(models, port=args.port,
                       host=args.host, batching=batching, max_batch_size=args.max_batch_size,
                       max_message_bytes=args.max_message_bytes,
                       max_concurrent_rpcs=args.max_concurrent_rpcs,
                       poll_interval_s=args.file_system_poll_wait_seconds,
                       metrics_port=args.rest_metrics_port, metrics_path=path, warmup=args.warmup,
                       max_candidates=args.max_candidates, settle_s=args.version_settle_seconds,
                       ssl_cert=args.ssl_cert, ssl_key=args.ssl_key)
    port = server.start()
    print(f"dmgin serve: gRPC{' (TLS)' if args.ssl_cert else ''} on {args.host}:{port}"
          + (f", metrics on http://{args.host}:{server.metrics_http.port}{path}"
             if server.metrics_http else "")
          + f"; TensorFlow threads: intra-op {threads[0] or 'default'}, "
            f"inter-op {threads[1] or 'default'}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("dmgin serve: shutting down (finishing in-flight requests)", flush=True)
    server.stop(grace_s=10)
    return 0


def set_tensorflow_threads(intra: int, inter: int):
    """Sets TensorFlow's thread pools before any model loads (0 = TensorFlow's choice)
    → the (intra, inter) now in effect.

    Where the server shares few cores with other processes (its clients, a cache), one
    intra-op thread avoids the pools' threads contending for them: on a 2-core host
    with the client beside it, `score_cached` ran faster with `--tensorflow-intra-op-
    parallelism 1` (docs/benchmarks.md, cached serving).
    """
    import tensorflow as tf
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())
