"""`dmgin predict`: score serialized tf.Examples (TFRecord) through TF Serving / dmgin serve.

    dmgin predict --target localhost:8500 --model dmgin --examples data.tfrecord [--output ctr.csv]
"""
from __future__ import annotations

import argparse

from dmgin_tf.cli.common import positive


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="gRPC Predict on tf.Examples (serving_default)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:8500", help="host:port of the gRPC server")
    p.add_argument("--model", default="dmgin", help="model name (default dmgin)")
    p.add_argument("--version", type=positive(int), help="model version (default latest)")
    p.add_argument("--examples", required=True, metavar="TFRECORD",
                   help="TFRecord file of serialized serving tf.Examples")
    p.add_argument("--batch-size", type=positive(int), default=128, help="examples per request (>= 1)")
    p.add_argument("--timeout", type=positive(float), default=10.0,
                   help="deadline per request, seconds (> 0)")
    p.add_argument("--output", metavar="CSV", help="write ctr per example (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import grpc
    import tensorflow as tf

    from dmgin_tf.errors import DmginError
    from dmgin_tf.serving import Client
    import os
    if not os.path.isfile(args.examples):
        raise DmginError(f"--examples {args.examples}: "
                         f"{'is a directory' if os.path.isdir(args.examples) else 'no such file'}"
                         f" (a TFRecord file of serialized tf.train.Examples)")
    try:
        serialized = [r.numpy() for r in tf.data.TFRecordDataset(args.examples)]
    except tf.errors.OpError as e:
        # The op's message carries TF's function and device names; keep its last part.
        detail = e.message.split("}}")[-1].split("[Op:")[0].strip(" ;:")
        raise DmginError(f"--examples {args.examples}: cannot read TFRecords: {detail} "
                         f"(a TFRecord file of serialized tf.train.Examples)") from None
    if not serialized:
        raise DmginError(f"--examples {args.examples}: no records" + (
            " (empty file)" if os.path.getsize(args.examples) == 0 else
            " (too short for a TFRecord: a TFRecord file of serialized tf.train.Examples)"))
    with Client(args.target, args.model, version=args.version, timeout_s=args.timeout) as client:
        try:
            ctr = client.predict_examples(serialized, batch_size=args.batch_size)
        except grpc.RpcError as e:
            raise DmginError(f"{args.target}: {e.code().name}: {e.details()}") from None
    out = open(args.output, "w") if args.output else sys.stdout
    out.write("index,ctr\n")
    for i, v in enumerate(ctr):
        out.write(f"{i},{v:.6f}\n")
    if args.output:
        out.close()
        print(f"wrote {len(ctr)} predictions to {args.output}")
    return 0
