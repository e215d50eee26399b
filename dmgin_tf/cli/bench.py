"""`dmgin bench <what>`: the benchmarks of docs/benchmarks.md, one subcommand each.

    dmgin bench quality --dataset taobao --data data/taobao-userbehavior

Each subcommand is registered by one `_add_<name>(sub)` function listed in
`SUBCOMMANDS`; add a benchmark by writing its function and appending it there.
"""
from __future__ import annotations

import argparse
import os
import shlex

from dmgin_tf.cli.common import add_config_args, at_least, config_from_args, positive
from dmgin_tf.config import BUILTIN_MODELS

DOCS_DEFAULT = os.path.join("docs", "benchmarks.md")


def _add_quality(sub) -> None:
    p = sub.add_parser(
        "quality", help="AUC/GAUC/logloss of every model and ablation (mean ± std over seeds)",
        description="Trains DMGIN, every baseline and ablation with one split and budget and "
                    "writes a markdown table, a PNG chart, JSON and the dataset's block of "
                    "docs/benchmarks.md.")
    p.add_argument("--dataset", choices=["taobao", "movielens", "generic"],
                   help="dataset to run (required unless --render)")
    p.add_argument("--render", metavar="RESULTS_JSON", nargs="+",
                   help="render results a run wrote (e.g. quality_taobao.json from the GPU job "
                        "queue) into .md/.png/.json in --output and the docs block; trains "
                        "nothing. Several files of one dataset are merged in order: the first "
                        "keeps its metadata, later ones add (or replace) rows; budgets and "
                        "seeds must match")
    p.add_argument("--tuning", metavar="DIR",
                   help="with --render: DIR holds the tuning run (quality_<dataset>.json) and "
                        "hparams_<dataset>.json; each tuned row's seed 0 is its selected "
                        "trial's run (the table run skipped it)")
    p.add_argument("--compare", metavar="RESULTS_JSON", nargs="+",
                   help="pairs FIRST SECOND [FIRST SECOND ...] of results of one row trained "
                        "twice under the same protocol (e.g. JAX on a GPU vs TF on this CPU): "
                        "per-seed metrics, difference and seed std as a table and "
                        "backend_comparison.png in --output; trains nothing")
    p.add_argument("--compare-names", nargs=2, default=("first", "second"), metavar="NAME",
                   help="column names of the two sides of --compare")
    p.add_argument("--data", metavar="PATH", help="converted or raw data (default: embedded sample)")
    p.add_argument("--seeds", type=positive(int),
                   help="number of seeds (0..N-1; default 3, with --quick 1)")
    p.add_argument("--models", nargs="+", metavar="MODEL", choices=list(BUILTIN_MODELS),
                   help=f"models to compare (default: {' '.join(BUILTIN_MODELS)})")
    p.add_argument("--no-ablations", action="store_true", help="skip DMGIN's ablation rows")
    p.add_argument("--k-values", type=positive(int), nargs="+", metavar="K",
                   help="K of the random-grouping sweep (default 16 256 2048)")
    p.add_argument("--group-table", metavar="FILE", help="item -> group table: adds key=cluster")
    p.add_argument("--item-embeddings", metavar="DIR",
                   help="catalog embedding (`dmgin encoder embed` output): adds the "
                        "`dmgin +item embedding` row")
    p.add_argument("--epochs", type=positive(int), help="epochs per row (default 1)")
    p.add_argument("--steps-per-epoch", type=at_least(int, 0),
                   help="batches per epoch at most (default 40; 0 = the whole train split)")
    p.add_argument("--batch-size", type=positive(int), help="batch size (default 256)")
    p.add_argument("--history-length", type=positive(int), help="L (default 100)")
    p.add_argument("--backend", choices=["tensorflow", "jax"], help="Keras backend (default tensorflow)")
    p.add_argument("--variants", nargs="+", metavar="ROW",
                   help="only these rows (exact names, e.g. gbdt \"dmgin -context\")")
    p.add_argument("--budget", choices=["cpu", "convergence"], default="cpu",
                   help="cpu: short budget for this CPU (default); convergence: the published "
                        "table's (epoch cap 40, patience 2, warm-up + cosine, val GAUC, "
                        "L = 256, batch 1024) — use it for rows merged into that table")
    p.add_argument("--hparams", metavar="FILE",
                   help="tuned hyperparameters (hparams_<dataset>.json of `dmgin bench "
                        "tune-select`) for every row of each model")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 seed, dmgin + one ablation + popularity, a few tiny steps")
    p.add_argument("--output", metavar="DIR", default=os.path.join("runs", "bench", "quality"),
                   help="runs, JSON, table and chart (default runs/bench/quality)")
    p.add_argument("--docs", metavar="FILE", default=DOCS_DEFAULT,
                   help="benchmarks page to update ('' = don't; default docs/benchmarks.md); a "
                        "dataset's table is kept when this run lacks some of its rows")
    add_config_args(p)
    p.set_defaults(func=run_quality)


def merged_by_dataset(paths) -> dict:
    """Results files → {dataset: results}, files of one dataset merged in the order given
    (`quality.merge_results`: per row and seed, a later file's run replaces an earlier one).
    """
    import json
    from dmgin_tf.bench import quality
    by_dataset: dict = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        name = results.get("dataset") if isinstance(results, dict) else None
        if not name or "runs" not in results:
            from dmgin_tf.errors import DmginError
            raise DmginError(f"{path}: not a quality results file (quality_<dataset>.json "
                             f"with 'dataset' and 'runs')")
        if name in by_dataset:
            first, merged = by_dataset[name]
            by_dataset[name] = (first, quality.merge_results(merged, results, base_name=first,
                                                             extra_name=path))
            print(f"merged rows {[r['variant'] for r in results['rows']]} of {path} into {first}")
        else:
            by_dataset[name] = (path, results)
    return {name: results for name, (_, results) in by_dataset.items()}


def render_quality(paths, out_dir: str, docs, tuning_dir=None) -> int:
    """Writes table, chart, JSON and docs block per dataset (no training, no Keras).

    Files of the same dataset are merged in the order given (`quality.merge_results`):
    `--render benchmarks/results/quality_movielens.json new/quality_movielens.json
    --output benchmarks/results` adds the new file's rows to the published table.
    """
    import json
    from dmgin_tf.bench import quality
    for name, results in merged_by_dataset(paths).items():
        tuned = os.path.join(tuning_dir or "", f"quality_{name}.json")
        hp = os.path.join(tuning_dir or "", f"hparams_{name}.json")
        if tuning_dir and os.path.exists(tuned) and os.path.exists(hp):
            from dmgin_tf.bench.tuning import add_tuning_runs
            with open(tuned, encoding="utf-8") as f1, open(hp, encoding="utf-8") as f2:
                payload = json.load(f2)
                results = add_tuning_runs(results, json.load(f1), payload["selection"])
                results["hparams"] = payload["hparams"]
            print(f"{name}: seed 0 of {results['seed0_from_tuning']['rows']} from {tuned}")
        written = quality.write_outputs(results, out_dir, docs or None)
        print(quality.markdown_table(results))
        print("wrote " + ", ".join(written.values()))
    return 0


def compare_quality(paths, names, out_dir: str) -> int:
    """`--compare`: tables + one chart for pairs of results files (no training)."""
    import json
    from dmgin_tf.errors import DmginError
    from dmgin_tf.bench import quality
    if len(paths) % 2:
        raise DmginError(f"bench quality --compare takes pairs of files, got {len(paths)}")
    cmps = []
    for first, second in zip(paths[::2], paths[1::2]):
        with open(first, encoding="utf-8") as f1, open(second, encoding="utf-8") as f2:
            cmps.append(quality.compare_runs(json.load(f1), json.load(f2), names=tuple(names)))
        print(quality.comparison_markdown(cmps[-1]) + "\n")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "backend_comparison.json"), "w", encoding="utf-8") as f:
        json.dump(cmps, f, indent=1)
    png = quality.plot_comparisons(cmps, os.path.join(out_dir, "backend_comparison.png"))
    print(f"wrote {os.path.join(out_dir, 'backend_comparison.json')}" + (f", {png}" if png else ""))
    return 0


def run_quality(args: argparse.Namespace) -> int:
    if args.compare:
        return compare_quality(args.compare, args.compare_names, args.output)
    if args.render:
        return render_quality(args.render, args.output, args.docs, args.tuning)
    if not args.dataset:
        from dmgin_tf.errors import DmginError
        raise DmginError("bench quality: --dataset is required (or --render RESULTS_JSON)")
    cfg = config_from_args(args, {"data.dataset": args.dataset, "train.backend": args.backend})
    from dmgin_tf.training.backend import select_backend
    select_backend(cfg.train.backend)               # before any Keras import
    from dmgin_tf.bench import quality

    import dataclasses
    base = quality.QUICK_BUDGET if args.quick else (
        quality.CONVERGENCE_BUDGET if args.budget == "convergence" else quality.Budget())
    budget = dataclasses.replace(
        base, epochs=base.epochs if args.epochs is None else args.epochs,
        # 0 is meaningful: every batch of the train split (no per-epoch cap).
        steps_per_epoch=base.steps_per_epoch if args.steps_per_epoch is None else args.steps_per_epoch,
        batch_size=base.batch_size if args.batch_size is None else args.batch_size,
        history_length=base.history_length if args.history_length is None
        else args.history_length)
    if args.quick:
        models = args.models or ["dmgin"]
        variants = [quality.Variant(m, m) for m in models]
        if not args.no_ablations:
            variants.append(quality.Variant("dmgin -stats", "dmgin", (("use_stats", False),),
                                            kind="ablation"))
        variants.append(quality.Variant("item popularity", "popularity", kind="baseline"))
        seeds = list(range(args.seeds or 1))
    else:
        variants = quality.default_variants(
            args.models or quality.MODEL_NAMES, ablations=not args.no_ablations,
            group_table=args.group_table, k_values=args.k_values or (16, 256, 2048),
            item_embeddings=args.item_embeddings)
        seeds = list(range(args.seeds or 3))
    if args.variants:
        variants = quality.select_variants(variants, args.variants, flag="--variants")
    from dmgin_tf.bench.tuning import load_hparams
    results = quality.run_quality(cfg, args.data, args.output, seeds=seeds, variants=variants,
                                  budget=budget, group_table=args.group_table,
                                  item_embeddings=args.item_embeddings,
                                  hparams=load_hparams(args.hparams))
    results["command"] = "dmgin bench quality " + _reconstruct(args)
    paths = quality.write_outputs(results, args.output, args.docs or None)
    print(quality.markdown_table(results))
    print("wrote " + ", ".join(paths.values()))
    return 0


def _reconstruct(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (for the docs)."""
    parts = [f"--dataset {args.dataset}"]
    for flag, value in (("--data", args.data), ("--epochs", args.epochs),
                        ("--steps-per-epoch", args.steps_per_epoch),
                        ("--batch-size", args.batch_size), ("--history-length", args.history_length),
                        ("--backend", args.backend), ("--group-table", args.group_table),
                        ("--item-embeddings", args.item_embeddings)):
        if value is not None:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    if args.seeds is not None:
        parts.append(f"--seeds {args.seeds}")
    if args.models:
        parts.append("--models " + " ".join(args.models))
    if args.k_values:
        parts.append("--k-values " + " ".join(map(str, args.k_values)))
    if args.no_ablations:
        parts.append("--no-ablations")
    if args.quick:
        parts.append("--quick")
    if args.budget != "cpu":
        parts.append(f"--budget {args.budget}")
    if args.hparams:
        parts.append(f"--hparams {shlex.quote(args.hparams)}")
    if args.variants:
        parts.append("--variants " + " ".join(shlex.quote(v) for v in args.variants))
    if args.config:
        parts.append(f"--config {shlex.quote(args.config)}")
    for override in args.overrides:          # --set changes the model: part of the result
        parts.append(f"--set {shlex.quote(override)}")
    return " ".join(parts)


def _add_tune_select(sub) -> None:
    p = sub.add_parser(
        "tune-select", help="pick each model's best tuning trial on validation -> hparams JSON",
        description="Reads the results of a tuning run (`dmgin gpu bundle --quality --tune N`, "
                    "quality_<dataset>.json) and writes hparams_<dataset>.json: per model the "
                    "trial with the best validation GAUC (test metrics are never read). "
                    "Several files of one dataset (e.g. trials a time-limited queue did not "
                    "reach, run later) are merged in the order given.")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON")
    p.add_argument("--metric", default="gauc", choices=["gauc", "auc"],
                   help="validation metric to select on (default gauc)")
    p.add_argument("--output", metavar="DIR", default=os.path.join("benchmarks", "results"))
    p.set_defaults(func=run_tune_select)


def run_tune_select(args: argparse.Namespace) -> int:
    from dmgin_tf.bench import tuning
    from dmgin_tf.errors import DmginError
    for results in merged_by_dataset(args.results).values():
        best = tuning.select_best(results, args.metric)
        if not best:
            raise DmginError(f"{', '.join(args.results)}: no finished tuning trial (rows "
                             f"named '<model> trial <i>' with a validation {args.metric}); "
                             f"tune-select reads the results of `dmgin gpu bundle --quality "
                             f"--tune N`")
        out = tuning.write_hparams(results["dataset"], best, args.output,
                                   source=results.get("command") or ", ".join(args.results))
        table = os.path.join(args.output, f"tuning_{results['dataset']}.md")
        with open(table, "w", encoding="utf-8") as f:
            f.write(tuning.trials_markdown(results, best) + "\n")
        for model, rec in sorted(best.items()):
            print(f"{results['dataset']} {model}: {rec['trial']} (val {args.metric} "
                  f"{rec['val']:.4f} of {len(rec['trials'])} trials)")
        print(f"wrote {out}, {table}")
    return 0


def _add_diagnose(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="per-user GAUC of two or more runs: which users and items each "
                         "ranks worse",
        description="Reads test_predictions.npz of runs on the same test examples (every "
                    "`dmgin train` run writes it) and breaks test GAUC down by user activity "
                    "and candidate exposure, and compares the runs user by user.")
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR",
                   help="runs to compare (the first is the user-by-user baseline unless "
                        "--baseline)")
    p.add_argument("--data", metavar="PATH",
                   help="the data the runs were trained on (for the training split's users "
                        "and items); default: the embedded sample")
    p.add_argument("--baseline", metavar="NAME", help="run the others are compared with")
    p.add_argument("--work-dir", default=os.path.join("runs", "diagnose", "data"),
                   help="where the example set is built if needed")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="diagnosis.json / .md / .png go here")
    p.set_defaults(func=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:
    from dmgin_tf.bench import diagnose
    from dmgin_tf.errors import DmginError
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DmginError(f"--runs {item!r}: expected NAME=RUN_DIR")
        if name in runs:
            raise DmginError(f"--runs: run name {name!r} given twice")
        runs[name] = path
    preds = {name: diagnose.load_predictions(path) for name, path in runs.items()}
    users, items = diagnose.train_split_ids(list(runs.values()), args.data, args.work_dir)
    result = diagnose.diagnose(preds, users, items, baseline=args.baseline)
    result["runs_dirs"] = runs
    result["command"] = "dmgin bench diagnose " + " ".join(shlex.quote(a) for a in [
        "--runs", *args.runs] + (["--data", args.data] if args.data else []) +
        (["--baseline", args.baseline] if args.baseline else []) + ["--output", args.output])
    paths = diagnose.write_outputs(result, args.output)
    print(diagnose.markdown(result))
    print("wrote " + ", ".join(paths))
    return 0


# (name, function adding the subparser); other benchmarks append theirs here.
SUBCOMMANDS = [("quality", _add_quality), ("tune-select", _add_tune_select),
               ("diagnose", _add_diagnose)]


def _add_scale(sub) -> None:
    from dmgin_tf.bench import scale          # owns its arguments (Beam stages, pipeline)
    scale.add_subparser(sub)


def _add_efficiency(sub) -> None:
    from dmgin_tf.bench import efficiency     # owns its arguments (cost vs history L)
    efficiency.add_subparser(sub)


SUBCOMMANDS += [("scale", _add_scale), ("efficiency", _add_efficiency)]


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (quality, ...) -> docs/benchmarks.md",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    sub.required = True
    for _, add in SUBCOMMANDS:
        add(sub)
