r"""`dmgin train`: train one model on one dataset with the TensorFlow or JAX backend.

    dmgin train --dataset taobao --model dmgin --backend tensorflow --output runs/dmgin
    dmgin train --dataset movielens --data data/movielens-latest-small \
        --backend jax --set train.epochs=3 --output runs/ml_jax

The handler selects the Keras backend from --backend *before* anything imports Keras
(Keras fixes its backend at import), then calls `dmgin_tf.training.trainer.train`.
"""
from __future__ import annotations

import argparse
import os
import sys

from dmgin_tf.cli.common import add_config_args, config_from_args, use_sample_config

from dmgin_tf.config import BUILTIN_MODELS as MODELS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (Keras 3; TensorFlow or JAX backend)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["taobao", "movielens", "generic"],
                   help="dataset (data.dataset); default taobao")
    p.add_argument("--data", metavar="PATH",
                   help="example-set dir, converted dir (behaviors/items.parquet) or raw data; "
                        "default: the embedded sample")
    p.add_argument("--model", choices=MODELS, help="model.model (default dmgin)")
    p.add_argument("--backend", choices=["tensorflow", "jax"],
                   help="Keras backend (train.backend; default tensorflow)")
    p.add_argument("--output", metavar="DIR", help="output directory (train.output_dir)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--batch-size", type=int, help="train.batch_size")
    p.add_argument("--history-length", type=int, help="model.history_length (L)")
    p.add_argument("--group-table", metavar="FILE",
                   help="item -> group table (Parquet/CSV, from `dmgin grouping`) for grouping.key=cluster")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="mixed precision on a GPU (float16 with TensorFlow, bfloat16 with JAX); "
                        "on CPU only with --no-jit (XLA on CPU cannot compile it)")
    p.add_argument("--no-jit", dest="jit_compile", action="store_false", default=None,
                   help="disable XLA jit_compile")
    p.add_argument("--distribute", choices=["auto", "off", "force"],
                   help="data parallelism over devices (train.distribute)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="where converted data / examples are cached (default OUTPUT/data)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    use_sample_config(args, args.dataset, quiet=args.quiet)
    cfg = config_from_args(args, {
        "data.dataset": args.dataset, "model.model": args.model, "train.backend": args.backend,
        "train.output_dir": args.output, "train.epochs": args.epochs,
        "train.batch_size": args.batch_size, "model.history_length": args.history_length,
        "train.mixed_precision": args.mixed_precision, "train.jit_compile": args.jit_compile,
        "train.distribute": args.distribute,
    })
    from dmgin_tf.training.backend import select_backend
    env = os.environ.get("KERAS_BACKEND")
    if env and env != cfg.train.backend and not args.quiet:
        print(f"note: KERAS_BACKEND={env} in the environment, but this run uses "
              f"train.backend={cfg.train.backend} (choose with --backend)", file=sys.stderr)
    select_backend(cfg.train.backend)           # before any Keras import
    from dmgin_tf.training.data_source import load_training_data
    from dmgin_tf.training.trainer import train

    output = cfg.train.output_dir
    work_dir = args.work_dir or os.path.join(output, "data")
    data = load_training_data(cfg, args.data, work_dir, group_table=args.group_table,
                              progress=not args.quiet)
    train(cfg, data, output, verbose=0 if args.quiet else 1)
    return 0
