"""`dmgin pipeline run|compile`: the TFX pipeline (tfx_pipeline/, docs/pipeline.md).

    dmgin pipeline run                         # embedded Taobao sample, span 1
    dmgin pipeline run --data DIR --dataset movielens --span 2 --pipeline-root runs/pipeline
    dmgin pipeline compile --target kubeflow-v2 --output dmgin_pipeline.json
"""
from __future__ import annotations

import argparse
import os
import sys

from dmgin_tf.cli.common import (add_beam_args, add_config_args, beam_overrides, config_from_args,
                               use_sample_config)
from dmgin_tf.display import display_path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="converted dir (behaviors/items.parquet) or raw "
                   "data of --dataset for this span (default: the embedded sample)")
    p.add_argument("--dataset", choices=["taobao", "movielens", "generic"],
                   help="dataset spec (default: data.dataset)")
    p.add_argument("--data-root", metavar="DIR",
                   help="span directories live here (default: <pipeline root>/data)")
    p.add_argument("--span", type=int, default=1, help="span to train on (default 1)")
    p.add_argument("--pipeline-root", metavar="DIR", help="artifacts + metadata.sqlite "
                   "(default: pipeline.root)")
    p.add_argument("--serving-dir", metavar="DIR", help="Pusher base path; versions land in "
                   "<dir>/<model name>/<version>/ (default: pipeline.serving_dir)")
    p.add_argument("--model-name", help="served model name (default: serving.model_name)")
    p.add_argument("--encoder", choices=["auto", "train", "external", "skip"], default="auto",
                   help="MultimodalEncoder mode (auto: skip unless grouping.key=cluster)")
    p.add_argument("--no-refit-groups", action="store_true",
                   help="keep the previous centroids, only assign new items")
    p.add_argument("--no-cache", action="store_true", help="re-run every component")
    p.add_argument("--no-xla", action="store_true", help="export without jit_compile")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                   help="add TFX's Tuner component: KerasTuner random search over the model's "
                        "search space, TRIALS full training runs, best by validation GAUC; "
                        "the Trainer uses its best hyperparameters (default 0: no tuning)")
    add_config_args(p)
    add_beam_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("pipeline", help="TFX pipeline: run locally or compile for an "
                              "orchestrator", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="pipeline_command", metavar="ACTION")
    sub.required = True
    r = sub.add_parser("run", help="run with LocalDagRunner (SQLite ML Metadata)")
    _common(r)
    r.set_defaults(func=_run)
    c = sub.add_parser("compile", help="write the pipeline spec an orchestrator deploys")
    _common(c)
    c.add_argument("--target", choices=["kubeflow-v2", "ir", "airflow"], default="kubeflow-v2",
                   help="kubeflow-v2: Vertex/KFP v2 PipelineSpec JSON (needs kfp-pipeline-spec); "
                        "ir: TFX pipeline IR (pbtxt); airflow: a DAG file for AirflowDagRunner")
    c.add_argument("--output", required=True, metavar="FILE")
    c.add_argument("--image", default="dmgin-tf:latest",
                   help="container image of the components (kubeflow-v2)")
    c.set_defaults(func=_compile)


def _setup(args):
    use_sample_config(args, args.dataset)   # the embedded sample (docs/pipeline.md)
    cfg = config_from_args(args, {"data.dataset": args.dataset, **beam_overrides(args)})
    from dmgin_tf.errors import DmginError
    # Argument problems first, before anything runs (TFX spans are numbered from 0).
    if args.span < 0:
        raise DmginError(f"--span {args.span}: spans are numbered from 0")
    from dmgin_tf.config import NAME_RULE, is_valid_name
    if args.model_name is not None and not is_valid_name(args.model_name):
        raise DmginError(f"--model-name {args.model_name!r}: {NAME_RULE}")
    if args.data and not os.path.exists(args.data):
        raise DmginError(f"--data {args.data}: no such file or directory")
    if args.data and os.path.isdir(args.data) and not os.listdir(args.data):
        raise DmginError(f"--data {args.data}: the folder is empty; give the raw "
                         f"{cfg.data.dataset} dataset (its folder or file) or the output folder "
                         f"of `dmgin data convert` (behaviors.parquet, items.parquet)")
    if args.encoder == "external" and not cfg.grouping.external_embeddings:
        raise DmginError("--encoder external needs the embeddings: --set "
                         "grouping.external_embeddings=PATH (Parquet or TFRecord of "
                         "item_id -> vector; docs/encoder.md)")
    if cfg.model.item_content_dim:
        # The pipeline's Trainer reads ids only; it failed there, after the data steps.
        raise DmginError(f"model.item_content_dim={cfg.model.item_content_dim}: the pipeline's "
                         f"Trainer does not read the catalog embedding; set it to 0 (item "
                         f"content vectors are read by `dmgin bench quality --item-embeddings`)")
    if cfg.grouping.key == "cluster" and cfg.data.dataset == "taobao":
        raise DmginError("grouping.key=cluster needs item text, which Taobao lacks; use "
                         "--set grouping.key=category")
    root = args.pipeline_root or cfg.pipeline.root
    for flag, path in (("--pipeline-root", root), ("--data-root", args.data_root or ""),
                       ("--serving-dir", args.serving_dir or "")):
        if "://" in path:
            from dmgin_tf.errors import DmginError
            raise DmginError(f"{flag} {path}: a URL; the pipeline's own components read and "
                             f"write with local file APIs, so give a local or mounted path "
                             f"(e.g. a gcsfuse mount of the bucket; docs/pipeline.md, "
                             f"Compile targets)")
    data_root = args.data_root or os.path.join(root, "data")
    serving = args.serving_dir or cfg.pipeline.serving_dir
    kwargs = dict(model_name=args.model_name, encoder=args.encoder,
                  refit_groups=not args.no_refit_groups, enable_cache=not args.no_cache,
                  export_jit_compile=not args.no_xla)
    if getattr(args, "tune", 0):
        if args.tune < 0:
            from dmgin_tf.errors import DmginError
            raise DmginError(f"--tune {args.tune}: the number of trials must be >= 0")
        kwargs["tune_trials"] = args.tune
    return cfg, root, data_root, serving, kwargs


def _run(args) -> int:
    import os
    from tfx_pipeline.runner import check_served_baseline, prepare_span, run_pipeline
    cfg, root, data_root, serving, kwargs = _setup(args)
    # Before the span is written: a run refused here leaves nothing behind.
    check_served_baseline(root, os.path.join(serving, kwargs.get("model_name")
                                             or cfg.serving.model_name), cfg.pipeline.name)
    span_path = prepare_span(cfg, data_root, args.span, args.data)
    print(f"span {args.span}: {display_path(span_path)}", flush=True)
    summary = run_pipeline(cfg, data_root=data_root, span=args.span, pipeline_root=root,
                           serving_base=serving, echo=lambda m: print(m, flush=True), **kwargs)
    if summary.pushed_dir:
        print(f"pushed: {display_path(summary.pushed_dir)}")
    elif summary.blessed is False:
        why = "; ".join(summary.blessing_failures) or "see the Evaluator's validation result"
        print(f"not blessed ({why}): the served model is unchanged", file=sys.stderr)
    return 0


def _compile(args) -> int:
    from tfx_pipeline.compile import compile_pipeline
    cfg, root, data_root, serving, kwargs = _setup(args)
    if args.data:
        # As `run` does: the span's converted data under the data root, where the
        # compiled pipeline's components read it (--data was otherwise only read for
        # which config to use).
        from tfx_pipeline.runner import prepare_span
        span_path = prepare_span(cfg, data_root, args.span, args.data)
        print(f"span {args.span}: {display_path(span_path)}", flush=True)
    path = compile_pipeline(cfg, args.target, args.output, data_root=data_root, span=args.span,
                            pipeline_root=root, serving_base=serving, image=args.image, **kwargs)
    print(f"wrote {path}")
    return 0
