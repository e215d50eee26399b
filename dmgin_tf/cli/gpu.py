r"""`dmgin gpu`: an offline training bundle for air-gapped GPU hosts with JAX, and the
JAX -> TensorFlow parity check of its runs (docs/gpu.md).

    dmgin gpu bundle --dataset taobao movielens --output runs/gpu_bundle
    dmgin gpu bundle --quality --dataset taobao movielens --data taobao=... movielens=... \
        --output runs/gpu_quality        # the quality table as a parallel job queue
    dmgin gpu bundle --quality --dataset movielens --data ... --group-table movielens=GROUPS \
        --variants "dmgin key=cluster" --output runs/gpu_cluster   # one row, merged later
    # on the GPU host:   bash run.sh              (runs land in ./out, or in RUN_OUT=DIR)
    dmgin gpu parity --run out/taobao_dmgin     # back on the TF machine: JAX weights -> TF model
"""
from __future__ import annotations

import argparse
import json
import os
import re

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
    b.add_argument("--host-python", default="3.12", metavar="X.Y",
                   help="the GPU host's Python version: the wheels are downloaded for it "
                        "(default 3.12)")
    b.add_argument("--no-wheels", action="store_true",
                   help="skip `pip download` (wheels/ already there, or a dry run)")
    b.add_argument("--group-table", nargs="+", metavar="[NAME=]PATH",
                   help="item -> group table per dataset (`dmgin grouping fit --key cluster` "
                        "output, item_groups/): the grouping of grouping.key=cluster, and with "
                        "--quality the `dmgin key=cluster` row of that dataset; a bare PATH "
                        "only when one dataset is bundled")
    b.add_argument("--item-embeddings", nargs="+", metavar="[NAME=]PATH",
                   help="catalog embedding per dataset (`dmgin encoder embed` output): with "
                        "--quality the `dmgin +item embedding` row of that dataset")
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
    b.add_argument("--variants", nargs="+", metavar="ROW",
                   help="--quality: only these rows (exact names, e.g. \"dmgin key=cluster\")")
    b.add_argument("--tune", type=int, metavar="TRIALS",
                   help="--quality: instead of the table, TRIALS tuning trials per model (the "
                        "defaults + KerasTuner random search, seed 0 only); pick the best per "
                        "model on validation with `dmgin bench tune-select`")
    b.add_argument("--hparams", nargs="+", metavar="[NAME=]FILE",
                   help="--quality: tuned hyperparameters per dataset (hparams_<dataset>.json "
                        "of `dmgin bench tune-select`), used by every row of each model")
    b.add_argument("--max-mb", type=float, default=64.0,
                   help="warn when the bundle is larger than this (default 64 MiB)")
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


def per_dataset_paths(datasets, items, flag: str = "--data") -> dict:
    """`[NAME=]PATH` arguments of `flag` -> {dataset: path}.

    A bare PATH is accepted only when one dataset is bundled; NAME must be one of
    `datasets` and appear once. Errors name the flag and the offending value.
    """
    from dmgin_tf.errors import DmginError
    if not items:
        return {}
    if len(items) == 1 and "=" not in items[0] and len(datasets) == 1:
        return {datasets[0]: items[0]}
    out = {}
    for item in items:
        if "=" not in item:
            raise DmginError(f"{flag} {item!r}: with several datasets ({' '.join(datasets)}) "
                             f"write NAME=PATH, e.g. {flag} {datasets[-1]}={item}")
        name, path = item.split("=", 1)
        if name not in datasets:
            raise DmginError(f"{flag} {item!r}: {name!r} is not a bundled dataset "
                             f"(--dataset {' '.join(datasets)})")
        if name in out:
            raise DmginError(f"{flag}: dataset {name!r} given twice ({out[name]!r}, {path!r})")
        out[name] = path
    return out


def quality_spec(args: argparse.Namespace):
    """The QualitySpec of `--quality` (rows, seeds, GPU budget with the flags applied)."""
    import dataclasses
    from dmgin_tf.bench import quality
    from dmgin_tf.bench.gpu_bundle import QualitySpec
    budget = quality.CONVERGENCE_BUDGET
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                 ("history_length", args.history_length),
                                 ("steps_per_epoch", args.steps_per_epoch)) if v is not None}
    budget = dataclasses.replace(budget, **changes)
    tables = per_dataset_paths(args.dataset, args.group_table, "--group-table")
    # The cluster row is listed once here; the bundle gives it only to datasets with a table.
    embeddings = per_dataset_paths(args.dataset, args.item_embeddings, "--item-embeddings")
    variants = quality.default_variants(args.model if args.model != ["dmgin"] else
                                        quality.MODEL_NAMES, group_table=bool(tables),
                                        k_values=args.k_values or (16, 256, 2048),
                                        item_embeddings=bool(embeddings))
    # The gbdt row needs TensorFlow (Decision Forests): run it where TF is, then merge.
    variants = [v for v in variants if v.model != "gbdt"]
    seeds = tuple(range(args.seeds))
    if args.tune:
        from dmgin_tf.bench.tuning import trial_variants
        models = args.model if args.model != ["dmgin"] else quality.MODEL_NAMES
        variants, seeds = trial_variants(models, args.tune), (0,)
    if args.variants:
        variants = quality.select_variants(variants, args.variants, flag="--variants")
    hparams, skip = None, []
    if args.hparams:
        import json
        from dmgin_tf.bench.tuning import load_hparams
        paths = per_dataset_paths(args.dataset, args.hparams, "--hparams")
        hparams = {name: load_hparams(path) for name, path in paths.items()}
        # A tuned row's seed 0 is its selected trial's run: not trained again.
        for name, path in paths.items():
            with open(path, encoding="utf-8") as f:
                selected = json.load(f)["selection"]
            skip += [(name, v.name, 0) for v in variants
                     if v.kind == "model" and v.model in selected and 0 in seeds]
    overrides = (("train.mixed_precision", bool(args.mixed_precision)),)
    # Every other row keeps grouping by category, also for a dataset with a cluster table:
    # its table stays comparable with the published one, the cluster row is the ablation.
    return QualitySpec(tuple(variants), seeds, budget, "category", overrides, hparams,
                       tuple(skip))


def _bundle_command() -> str:
    """This process's command line as `dmgin gpu bundle ...` (for MANIFEST.json)."""
    import shlex
    import sys
    argv = sys.argv[1:]
    if "gpu" in argv:
        argv = argv[argv.index("gpu"):]
    return "dmgin " + " ".join(shlex.quote(a) for a in argv)


def run_bundle(args: argparse.Namespace) -> int:
    from dmgin_tf.bench.gpu_bundle import build_bundle   # numpy/pandas only, no Keras
    cfg = config_from_args(args, {"train.epochs": args.epochs,
                                  "model.history_length": args.history_length,
                                  "train.batch_size": args.batch_size})
    from dmgin_tf.errors import DmginError
    if args.variants and not args.quality:
        raise DmginError("gpu bundle --variants: rows of the quality table; add --quality")
    if not re.fullmatch(r"3\.\d{1,2}", args.host_python):
        raise DmginError(f"--host-python {args.host_python!r}: a Python version like 3.12")
    manifest = build_bundle(cfg, args.dataset, args.output,
                            data_paths=per_dataset_paths(args.dataset, args.data), models=args.model,
                            wheels=not args.no_wheels,
                            group_tables=per_dataset_paths(args.dataset, args.group_table,
                                                           "--group-table"),
                            item_embeddings=per_dataset_paths(args.dataset, args.item_embeddings,
                                                              "--item-embeddings"),
                            quality=quality_spec(args) if args.quality else None,
                            command=_bundle_command(),
                            size_limit_bytes=int(args.max_mb * 2**20),
                            host_python=args.host_python)
    mib = manifest["total_bytes"] / 2**20
    print(f"bundle {args.output}: {mib:.1f} MiB ({len(manifest['wheels'])} wheels, "
          f"{manifest['wheel_bytes'] / 2**20:.1f} MiB)")
    if args.quality:
        q = manifest["quality"]
        rows = ", ".join(f"{d}: {len(r)} rows" for d, r in q["rows_by_dataset"].items())
        print(f"quality: {q['runs']} runs ({rows}; {len(q['seeds'])} seeds), "
              f"budget {q['budget']}")
    print(f"run on the GPU host:  RUN_OUT=<dir> bash {os.path.join(args.output, 'run.sh')}")
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
