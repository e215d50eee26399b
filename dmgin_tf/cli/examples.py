"""`dmgin examples build`: converted tables -> ExampleSet (+ item index) for training."""
from __future__ import annotations

import argparse

from dmgin_tf.cli.common import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("examples", help="build labelled examples (evaluation protocol)",
                              description=__doc__)
    sub = p.add_subparsers(dest="examples_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="behaviors.parquet + items.parquet -> examples.npz",
                       description="Builds one example per labelled event under the fixed "
                                   "evaluation protocol (docs/design.md: Evaluation protocol) and writes examples.npz, "
                                   "examples.json and item_index.parquet.")
    b.add_argument("--data", required=True, metavar="DIR",
                   help="converted data directory (behaviors.parquet, items.parquet)")
    b.add_argument("--dataset", choices=["taobao", "movielens", "generic"],
                   help="dataset spec (default: data.dataset of the config)")
    b.add_argument("--grouping-key", choices=["item_id", "category", "random", "table"],
                   help="item -> group mapping (default: grouping.key; cluster = table)")
    b.add_argument("--group-table", metavar="FILE",
                   help="item_id -> group_id Parquet/CSV from `dmgin grouping` (grouping key table)")
    b.add_argument("--num-groups", type=int, help="K for --grouping-key random (default grouping.num_groups)")
    b.add_argument("--output", required=True, metavar="DIR", help="output directory")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(b)
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from dmgin_tf.data.converters.common import check_output_dir
    from dmgin_tf.data.examples import SPLIT_NAMES, build_from_canonical, group_table_note
    check_output_dir(args.output)
    cfg = config_from_args(args, {"data.dataset": args.dataset,
                                  "grouping.num_groups": args.num_groups})
    key = args.grouping_key or cfg.grouping.key
    if key == "cluster":
        key = "table"
    if args.num_groups is not None and key != "random":
        from dmgin_tf.errors import DataError
        raise DataError(f"--num-groups {args.num_groups}: only --grouping-key random uses it "
                        f"(the key is {'cluster' if key == 'table' else key!r}; a cluster "
                        f"table brings its own groups)")
    es = build_from_canonical(args.data, args.output, cfg.data, grouping_key=key,
                              group_table=args.group_table,
                              num_groups=cfg.grouping.num_groups if key == "random" else 0,
                              grouping_seed=cfg.grouping.seed, progress=not args.no_progress)
    m = es.metadata
    print(f"{m['spec']['name']}: {m['num_users']} users, {m['num_behaviors']} behaviors, "
          f"{m['num_examples']} examples in {m['build_seconds']:.1f}s "
          f"(grouping {m['grouping_key']}, {m['group_vocab_size']} group ids)")
    profile = es.history_profile()
    for name in SPLIT_NAMES:
        c, h = m["counts"][name], profile[name]
        print(f"  {name:5s} {c['examples']:>9d} examples  {c['positives']:>9d} positives  "
              f"{c['users']:>6d} users  {_history_line(h)}")
    print(f"  users train-only (< {cfg.data.min_events_for_test} labelled events): "
          f"{m['users_train_only']}; OOV history behaviors {m['history_oov_behaviors']}, "
          f"OOV candidates {m['candidate_oov_examples']}")
    note = group_table_note(m)
    if note:
        print(note)
    print(f"wrote {args.output}")
    return 0


def _history_line(h: dict) -> str:
    """One split's history profile (`ExampleSet.history_profile`) for the summary; a
    split without examples, or whose examples have no history, says so instead of nan."""
    import math
    if math.isnan(h["history_mean"]):
        return "history: no examples"
    if math.isnan(h["gap_p50_hours"]):
        return "history: none (no example has an earlier behavior)"
    return (f"history: mean {h['history_mean']:.0f} behaviors, newest "
            f"{h['gap_p50_hours']:.2g} h / {h['gap_p90_hours']:.2g} h before the request "
            f"(p50 / p90)")
