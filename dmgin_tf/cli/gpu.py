"""`dmgin gpu`: train on a JAX-only GPU host (docs/gpu.md).

    dmgin gpu bundle --dataset taobao movielens --output runs/gpu_bundle
    dmgin gpu bundle --quality --dataset taobao movielens --data taobao=... movielens=... \
        --output runs/gpu_quality        # the quality table as a parallel job queue
    # on the host:   OUT=/some/dir bash runs/gpu_bundle/run.sh
    dmgin gpu parity --run OUT/taobao_dmgin     # here, TF backend: JAX weights -> TF model
"""
from __future__ import annotations

import argparse
import json
import os

from dmgin_tf.cli.common import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("gpu", help="GPU training bundle (Keras 3 + JAX) and parity check",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="gpu_command", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("bundle", help="wheels + sources + example shards + run.sh for a GPU host")
    b.add_argument("--dataset", nargs="+", required=True, choices=["taobao", "movielens", "generic"],
                   help="dataset(s) to bundle")
    b.add_argument("--data", nargs="+", metavar="[NAME=]PATH",
                   help="data per dataset (converted, raw or example-set dir); default: embedded sample")
    b.add_argument("--model", nargs="+", default=["dmgin"], help="models run.sh trains (default dmgin)")
    b.add_argument("--output", required=True, metavar="DIR", help="bundle directory")
    b.add_argument("--no-wheels", action="store_true",
                   help="skip `pip download` (wheels/ already there, or a dry run)")
    b.add_argument("--group-table", metavar="FILE", help="item -> group table (grouping.key=cluster)")
    b.add_argument("--epochs", type=int, help="train.epochs in the bundled configs")
    b.add_argument("--history-length", type=int, help="model.history_length in the bundled configs")
    b.add_argument("--batch-size", type=int, help="train.batch_size in the bundled configs")
    b.add_argument("--quality", action="store_true",
                   help="bundle the quality table (every model, ablation and K, 3 seeds) as a "
                        "parallel job queue instead of `dmgin train` per model")
    b.add_argument("--seeds", type=int, default=3, help="--quality: seeds per row (default 3)")
    b.add_argument("--steps-per-epoch", type=int,
                   help="--quality: batches per epoch at most (default 0 = full train split)")
    b.add_argument("--k-values", type=int, nargs="+", metavar="K",
                   help="--quality: K of the random-grouping sweep (default 16 256 2048)")
    b.add_argument("--mixed-precision", action="store_true",
                   help="--quality: bfloat16 (default float32, so the TF export parity holds "
                        "within 1e-5)")
    add_config_args(b)
    b.set_defaults(func=run_bundle)

    q = sub.add_parser("parity", help="load a JAX run's weights into the TF-backend model and "
                                      "compare predictions on its parity batch")
    q.add_argument("--run", required=True, metavar="DIR", help="run directory of `dmgin train`")
    q.add_argument("--tolerance", type=float, default=1e-5)
    q.add_argument("--saved-model", metavar="DIR",
                   help="also compare this exported version dir (`dmgin export` of the run) "
                        "with the run's stored predictions")
    q.set_defaults(func=run_parity)


def _data_paths(datasets, items) -> dict:
    if not items:
        return {}
    if len(items) == 1 and "=" not in items[0] and len(datasets) == 1:
        return {datasets[0]: items[0]}
    out = {}
    for item in items:
        if "=" not in item:
            from dmgin_tf.errors import DmginError
            raise DmginError(f"--data {item!r}: with several datasets write NAME=PATH")
        name, path = item.split("=", 1)
        out[name] = path
    return out


def quality_spec(args: argparse.Namespace):
    """The QualitySpec of `--quality` (rows, seeds, GPU budget with the flags applied)."""
    import dataclasses
    from dmgin_tf.training import quality
    from dmgin_tf.training.gpu_bundle import QualitySpec
    budget = quality.GPU_BUDGET
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                 ("history_length", args.history_length),
                                 ("steps_per_epoch", args.steps_per_epoch)) if v is not None}
    budget = dataclasses.replace(budget, **changes)
    variants = quality.default_variants(args.model if args.model != ["dmgin"] else
                                        quality.MODEL_NAMES, group_table=args.group_table,
                                        k_values=args.k_values or (16, 256, 2048))
    overrides = (("train.mixed_precision", bool(args.mixed_precision)),)
    default_key = "table" if args.group_table else "category"   # as run_quality's fallback
    return QualitySpec(tuple(variants), tuple(range(args.seeds)), budget, default_key, overrides)


def run_bundle(args: argparse.Namespace) -> int:
    from dmgin_tf.training.gpu_bundle import build_bundle   # numpy/pandas only, no Keras
    cfg = config_from_args(args, {"train.epochs": args.epochs,
                                  "model.history_length": args.history_length,
                                  "train.batch_size": args.batch_size})
    manifest = build_bundle(cfg, args.dataset, args.output,
                            data_paths=_data_paths(args.dataset, args.data), models=args.model,
                            wheels=not args.no_wheels, group_table=args.group_table,
                            quality=quality_spec(args) if args.quality else None)
    mib = manifest["total_bytes"] / 2**20
    print(f"bundle {args.output}: {mib:.1f} MiB ({len(manifest['wheels'])} wheels, "
          f"{manifest['wheel_bytes'] / 2**20:.1f} MiB)")
    if args.quality:
        q = manifest["quality"]
        print(f"quality: {q['runs']} runs ({len(q['rows'])} rows x {len(q['seeds'])} seeds x "
              f"{len(args.dataset)} datasets), budget {q['budget']}")
    print(f"run on the GPU host:  OUT=<dir> bash {os.path.join(args.output, 'run.sh')}")
    return 0


def run_parity(args: argparse.Namespace) -> int:
    from dmgin_tf.training.backend import select_backend
    select_backend("tensorflow")
    from dmgin_tf.training.parity import check_run_parity
    reports = [check_run_parity(args.run, tolerance=args.tolerance)]
    if args.saved_model:
        from dmgin_tf.training.parity import check_saved_model_parity
        reports.append(check_saved_model_parity(args.run, args.saved_model,
                                                tolerance=args.tolerance))
    for report in reports:
        print(json.dumps(report.to_dict(), indent=1))
    return 0 if all(r.ok for r in reports) else 1
