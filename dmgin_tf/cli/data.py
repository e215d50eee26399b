r"""`dmgin data fetch|convert|stats`: public datasets, raw data -> canonical tables, statistics.

    dmgin data fetch ml-latest-small --to data/movielens-latest-small [--convert]
    dmgin data convert --dataset taobao --input data/taobao-userbehavior --output runs/data/taobao
    dmgin data convert --dataset movielens --output runs/data/ml        # embedded sample
    dmgin data convert --dataset generic --input events.csv --items items.csv \
        --behaviors click,cart,order --output runs/data/mine
    dmgin data stats runs/data/taobao
    dmgin data stats --dataset movielens --input data/movielens-latest-small
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from dmgin_tf.cli.common import add_config_args, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="convert raw data to canonical tables; dataset statistics",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="data_command", metavar="{fetch,convert,stats}")
    sub.required = True

    _add_fetch(sub)

    conv = sub.add_parser("convert", help="stream a raw dataset into behaviors/items Parquet + report",
                          description="Converts raw data into behaviors.parquet, items.parquet, "
                                      "report.json and report.md in --output (see docs/data.md).")
    _add_source_args(conv)
    conv.add_argument("--output", required=True, metavar="DIR", help="output directory")
    conv.add_argument("--json", action="store_true", help="print the report as JSON instead of a summary")
    conv.set_defaults(func=_convert)

    stats = sub.add_parser("stats", help="users, items, interactions, history lengths, behavior counts",
                           description="Statistics of a converted directory (PATH), or of raw data "
                                       "converted on the fly (--dataset X [--input RAW]).")
    stats.add_argument("path", nargs="?", metavar="PATH", help="directory written by `dmgin data convert`")
    _add_source_args(stats, dataset_required=False)
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=_stats)


def _add_fetch(sub) -> None:
    from dmgin_tf.data.fetch import ARCHIVES, BASE_URL_ENV, MANUAL
    names = "\n".join(f"  {a.name:16s} {a.description}" for a in ARCHIVES.values())
    fetch = sub.add_parser(
        "fetch", help="download a public dataset from its publisher, verify it, unpack it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Downloads a MovieLens archive from GroupLens, checks its size and SHA-256 "
                    "and every member's CRC, and unpacks it into --to.\n\n" + names +
                    "\n  taobao           manual download (its terms): " + MANUAL["taobao"].split(": ")[0])
    fetch.add_argument("name", metavar="NAME", help="dataset: " + ", ".join(ARCHIVES) + " (or taobao)")
    fetch.add_argument("--to", required=True, metavar="DIR", help="dataset directory to create")
    fetch.add_argument("--convert", action="store_true",
                       help="also write canonical tables (behaviors/items Parquet) into DIR/canonical")
    fetch.add_argument("--sha256", metavar="HEX", help="expected SHA-256 instead of the recorded one")
    fetch.add_argument("--archive", metavar="ZIP", help="use this downloaded zip instead of the network")
    fetch.add_argument("--base-url", metavar="URL",
                       help=f"download from this mirror (default: ${BASE_URL_ENV} or GroupLens)")
    fetch.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout (s)")
    fetch.add_argument("--force", action="store_true", help="replace a non-empty --to directory")
    fetch.set_defaults(func=_fetch)


def _fetch(args) -> int:
    from dmgin_tf.data.fetch import fetch
    result = fetch(args.name, args.to, base_url=args.base_url, sha256=args.sha256,
                   archive=args.archive, convert=args.convert, timeout=args.timeout, force=args.force)
    print(f"{result.name}: {result.size:,} bytes, sha256 {result.sha256} ok; "
          f"{len(result.files)} files in {result.directory}")
    if result.canonical:
        print(f"canonical tables: {result.canonical}")
    return 0


def _add_source_args(p: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    p.add_argument("--dataset", choices=["taobao", "movielens", "generic"], required=dataset_required,
                   help="input format (default for stats: convert nothing, read PATH)")
    p.add_argument("--input", metavar="PATH",
                   help="raw file or directory (default: the embedded sample of --dataset)")
    p.add_argument("--items", metavar="FILE", help="generic: items CSV/Parquet (item_id, title, "
                   "description, category, image)")
    p.add_argument("--behaviors", metavar="B1,B2,...", help="generic: the behavior vocabulary")
    p.add_argument("--max-error-fraction", type=float, metavar="F",
                   help="fail when a file has more than this fraction of bad rows (data.max_error_fraction)")
    p.add_argument("--timestamp-unit", choices=["s", "ms", "us", "ns"], default="s",
                   help="unit of the input's integer timestamps, converted to seconds "
                        "(default s: values in another unit are bad rows that name it); "
                        "Parquet timestamp columns carry their own unit")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_config_args(p)


def _run_convert(args, output_dir):
    from dmgin_tf.data.converters import convert
    cfg = config_from_args(args, {"data.dataset": args.dataset,
                                  "data.max_error_fraction": args.max_error_fraction})
    kwargs = {"show_progress": not args.no_progress, "timestamp_unit": args.timestamp_unit}
    if args.dataset == "generic":
        kwargs["items_path"] = args.items
        kwargs["behavior_types"] = _behavior_list(args.behaviors)
    elif args.items or args.behaviors:
        from dmgin_tf.errors import DmginError
        raise DmginError("--items/--behaviors apply to --dataset generic only")
    return convert(args.dataset, args.input or cfg.data.input_path, output_dir, cfg.data, **kwargs)


def _behavior_list(text):
    """--behaviors "click,cart" -> ["click", "cart"]; [] when not given. A value that
    names no behavior (",,", " ") or one twice is refused: it is a typo, not a request
    to infer the vocabulary."""
    if text is None:
        return []
    from dmgin_tf.errors import DmginError
    names = [b.strip() for b in text.split(",")]
    if not any(names):
        raise DmginError(f"--behaviors {text!r} names no behavior type; give them comma-"
                         "separated (e.g. --behaviors click,cart,order) or leave the flag out")
    if "" in names:
        raise DmginError(f"--behaviors {text!r} has an empty name between commas")
    twice = sorted({b for b in names if names.count(b) > 1})
    if twice:
        raise DmginError(f"--behaviors {text!r} names {', '.join(twice)} more than once")
    return names


def _convert(args) -> int:
    result = _run_convert(args, args.output)
    if args.json:
        print(json.dumps(result.report, indent=2, ensure_ascii=False))
        return 0
    r = result.report
    print(f"wrote {result.behaviors_path} ({r['info']['behaviors']:,} behaviors), "
          f"{result.items_path} ({r['info']['items']:,} items)")
    for f in r["files"]:
        bad = ", ".join(f"{k} {v}" for k, v in f["bad"].items()) or "none"
        flagged = ", ".join(f"{k} {v}" for k, v in f["flagged"].items()) or "none"
        print(f"  {f['path']}: read {f['rows_read']:,}, kept {f['rows_kept']:,}; bad: {bad}; flagged: {flagged}")
    print(f"report: {result.output_dir / 'report.md'}")
    for note in (time_unit_note(result.behaviors_path, r, args.timestamp_unit),
                 catalog_note(r), behavior_case_note(r)):
        if note:
            print(f"dmgin data convert: note: {note}", file=sys.stderr)
    return 0


def catalog_note(report: dict) -> str:
    """A note when most behaviors name items the catalog lacks (they were added without
    text or category): usually the two files spell item ids differently."""
    kept = sum(f["rows_kept"] for f in report["files"] if f.get("role") == "behaviors")
    missing = sum(f["flagged"].get("item_not_in_catalog", 0) for f in report["files"])
    if not kept or missing <= kept / 10:
        return ""
    return (f"{missing:,} of {kept:,} behaviors ({missing / kept:.0%}) name items missing from "
            f"the items file and were kept without text or category; check that both files "
            f"write item_id the same way (e.g. 'item-123' vs '123')")


def behavior_case_note(report: dict) -> str:
    """A note when behavior types differ only in case ('pv', 'PV'): they are kept as
    separate types, which is rarely meant."""
    from dmgin_tf.data.converters.generic import case_collisions
    groups = case_collisions(report.get("info", {}).get("behavior_types", []))
    if not groups:
        return ""
    return ("behavior types that differ only in case are kept apart: "
            + "; ".join(", ".join(map(repr, g)) for g in groups)
            + " (names are case-sensitive; normalise them, or pass --behaviors to refuse the others)")


def time_unit_note(behaviors_path, report: dict, unit) -> str:
    """A note when the converted times look like the wrong `--timestamp-unit`: most rows
    outside the dataset's window, or every time before 2001 (Unix 1e9) — e.g. seconds
    divided by 1000 under `--timestamp-unit ms`. Empty when nothing looks wrong."""
    import datetime
    import pyarrow.parquet as pq
    from dmgin_tf.data.converted import column_statistics
    from dmgin_tf.features import TIMESTAMP
    kept = sum(f["rows_kept"] for f in report["files"])
    outside = sum(f["flagged"].get("out_of_window", 0) for f in report["files"])
    maxima = [stats.max for _, name, stats in column_statistics(
        pq.ParquetFile(behaviors_path).metadata) if name == TIMESTAMP and stats.has_min_max]
    latest = max(maxima) if maxima else None
    unit_text = f"--timestamp-unit {unit}" if unit else "the timestamp unit (seconds)"
    if kept and outside > kept / 2:
        return (f"{outside:,} of {kept:,} rows fall outside the dataset's time window; check "
                f"{unit_text}")
    if latest is not None and latest < 1_000_000_000:
        when = datetime.datetime.fromtimestamp(latest, datetime.timezone.utc).date()
        return f"the latest behavior is dated {when}; check {unit_text}"
    return ""


def _stats(args) -> int:
    from dmgin_tf.data.stats import dataset_stats, format_stats
    from dmgin_tf.errors import DmginError
    if args.path and (args.dataset or args.input):
        raise DmginError("give either PATH (a converted directory) or --dataset/--input, not both")
    if args.path:
        from dmgin_tf.data.converters.common import failure_dir
        failed = failure_dir(args.path) / "report.md"
        if failed.exists() and os.path.isdir(args.path):   # else the missing folder is the error
            print(f"dmgin data stats: note: the last conversion into {args.path} failed "
                  f"(see {failed}); these statistics are of the previous successful one",
                  file=sys.stderr)
        stats = dataset_stats(args.path)
    elif args.dataset:
        from dmgin_tf.errors import DataError
        with tempfile.TemporaryDirectory(prefix="dmgin-stats-") as tmp:
            try:
                _run_convert(args, f"{tmp}/canonical")
            except DataError as e:  # its report lives in tmp, about to be deleted
                msg = str(e).split("; report: ")[0]
                if args.input:   # a report of the user's file is worth keeping
                    msg += (" (run `dmgin data convert --output DIR` with the same input to "
                            "keep the report)")
                raise DataError(msg) from None
            stats = dataset_stats(f"{tmp}/canonical")
            stats["path"] = str(args.input or f"embedded sample ({args.dataset})")
    else:
        raise DmginError("stats needs PATH (a converted directory) or --dataset [--input RAW]")
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats), file=sys.stdout)
    return 0
