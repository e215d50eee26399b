r"""`dmgin grouping fit|assign`: item -> interest group for every grouping key.

    dmgin grouping fit --items runs/data/ml/items.parquet --embeddings emb/ --key cluster \
        --num-groups 256 --output runs/grouping [--previous runs/grouping-old] \
        [--beam-runner dask --dask-local-workers 2]
    dmgin grouping fit --items runs/data/ml/items.parquet --key category --output runs/grouping-cat
    dmgin grouping assign --embeddings new_items.parquet --grouping runs/grouping \
        --output runs/new-groups

Every key writes `item_index.parquet` (model ids: 0 pad, 1 unknown, 2.. groups) and a
report (`report.md` + `group_sizes.png`); `cluster` also writes `centroids.npy`,
`item_groups/` (Parquet item_id, group_id = cluster 0..K-1) and `kmeans.json`.
"""
from __future__ import annotations

import argparse
import os

from dmgin_tf.cli.common import (add_beam_args, add_config_args, beam_overrides, config_from_args,
                                 read_items_table)


def register(subparsers) -> None:
    p = subparsers.add_parser("grouping", help="item -> interest group (k-means, item id, category, random)")
    sub = p.add_subparsers(dest="grouping_command", metavar="ACTION")
    sub.required = True

    fit = sub.add_parser("fit", help="build the item -> group map for a grouping key")
    add_config_args(fit)
    add_beam_args(fit)
    fit.add_argument("--items", required=True, help="the items.parquet of `dmgin data convert` "
                     "(or its output directory; catalog order = item ids)")
    fit.add_argument("--embeddings", help="Parquet item_id + embedding (key=cluster); "
                     "default grouping.external_embeddings")
    fit.add_argument("--key", choices=["cluster", "item_id", "category", "random"],
                     help="grouping key (default grouping.key)")
    fit.add_argument("--num-groups", type=int, help="K for cluster / random")
    fit.add_argument("--iterations", type=int, help="max Lloyd iterations")
    fit.add_argument("--previous", help="previous cluster grouping dir: keep its group ids stable")
    fit.add_argument("--output", required=True, help="output directory")
    fit.set_defaults(func=_fit)

    assign = sub.add_parser("assign", help="put new items on an existing grouping's centroids")
    add_config_args(assign)
    add_beam_args(assign)
    assign.add_argument("--embeddings", required=True, help="Parquet item_id + embedding of the items")
    assign.add_argument("--grouping", required=True, help="a `grouping fit --key cluster` output dir")
    assign.add_argument("--output", required=True, help="output directory (Parquet item_id, group_id)")
    assign.set_defaults(func=_assign)


def _fit(args: argparse.Namespace) -> int:
    import pandas as pd

    from dmgin_tf.data.converters.common import staging
    from dmgin_tf.errors import DataError
    from dmgin_tf.features import NUM_RESERVED_IDS, OOV_ID
    from transform.grouping import kmeans, report

    cfg = config_from_args(args, {**beam_overrides(args), "grouping.key": args.key,
                                  "grouping.num_groups": args.num_groups,
                                  "grouping.kmeans_iterations": args.iterations})
    g = cfg.grouping
    if g.key != "cluster":
        for flag, value in (("--embeddings", args.embeddings), ("--previous", args.previous)):
            if value:
                raise DataError(f"{flag} {value}: only key 'cluster' reads it (the key is "
                                f"{g.key!r}); drop it or pass --key cluster")
    items = read_items_table(args.items)
    previous = kmeans.load_centroids(args.previous) if g.key == "cluster" and args.previous \
        else None
    # Everything is written to a staging folder beside --output and moved in only when
    # the fit succeeded: a failed refit (bad embeddings, ids that match no item) leaves
    # the previous grouping in --output as it was.
    with staging(args.output, step="grouping") as tmp:
        index, facts = _fit_into(str(tmp), args, cfg, items, previous)
        model_groups = index.group_of_idx[NUM_RESERVED_IDS:]
        grouped = model_groups != OOV_ID
        # The report describes the real groups; items left in the unknown group are counted.
        groups = pd.DataFrame({"item_id": index.item_ids[grouped],
                               "group_id": model_groups[grouped]})
        facts["group vocabulary"] = index.group_vocab_size
        ungrouped = int((~grouped).sum())
        if ungrouped:
            facts["items without a group (the unknown group)"] = ungrouped
            print(f"note: {ungrouped:,} of {index.num_items:,} catalog items have no group "
                  f"(e.g. no embedding for them); they share the unknown group")
        unused = int(index.info.get("table_items_not_in_catalog", 0))
        if unused:
            print(f"note: {unused:,} grouped items are not in the catalog {args.items}; ignored")
        path = report.write_report(str(tmp), groups, items,
                                   title=f"Interest grouping ({g.key})", facts=facts)
        _publish_grouping(tmp, args.output)
    print(f"grouping ({g.key}): {index.num_items} items, group vocabulary "
          f"{index.group_vocab_size}; report {os.path.join(args.output, os.path.basename(path))}")
    return 0


def _fit_into(out: str, args, cfg, items, previous):
    """The grouping of `cfg.grouping.key` written into `out` → (ItemIndex, report facts)."""
    from dmgin_tf.data.item_index import ItemIndex
    from dmgin_tf.errors import DataError
    from transform.grouping import kmeans
    g = cfg.grouping
    facts = {"key": g.key}
    if g.key != "cluster":
        if g.key == "random" and g.num_groups > len(items):
            raise DataError(f"grouping.num_groups={g.num_groups} exceeds the {len(items):,} "
                            f"items of {args.items} (random groups of one item or none)")
        index = ItemIndex.build(items, g.key, num_groups=g.num_groups, seed=g.seed)
        index.save(out)
        return index, facts
    emb = args.embeddings or g.external_embeddings
    if not emb:
        raise DataError("grouping key 'cluster' needs --embeddings (or grouping.external_embeddings)")
    from transform.embedding import embeddings_table_path
    emb = embeddings_table_path(emb)      # `dmgin encoder embed --output` dir works too
    _check_embedding_ids(emb, items, args.items)
    res = kmeans.fit_kmeans(emb, g, cfg.beam, out, previous_centroids=previous, log=print)
    empty = int((res.counts == 0).sum())
    if empty:
        print(f"note: {empty} of {len(res.centroids)} groups got no item (fewer distinct "
              f"embeddings than groups?); lower --num-groups")
    index = ItemIndex.build(items, "table", num_groups=len(res.centroids),
                            group_table=os.path.join(out, kmeans.GROUPS_DIR))
    index.save(out)
    facts.update(iterations=res.iterations, converged=res.converged,
                 inertia=f"{res.inertia:.4f}", runner=cfg.beam.runner,
                 seconds=f"{res.seconds:.1f}")
    if res.matched_similarity is not None:
        facts["stable ids"] = f"matched to {args.previous}"
    return index, facts


def _check_embedding_ids(emb: str, items, items_path: str) -> None:
    """Refuses, before k-means runs, an embedding table that cannot be read or whose
    item ids match no catalog item (DataError naming the file)."""
    import pyarrow as pa

    from dmgin_tf.errors import DataError
    from dmgin_tf.features import ITEM_ID
    from transform import beam_io
    try:
        ids = beam_io.read_parquet_table(emb, [ITEM_ID]).column(0).to_pylist()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"--embeddings {emb}: not a readable Parquet table of item_id, "
                        f"embedding ({type(e).__name__}: {e})") from None
    catalog = set(items[ITEM_ID].astype(str))
    if ids and not any(str(i) in catalog for i in ids):
        raise DataError(f"--embeddings {emb}: none of its {len(ids):,} item ids is in the "
                        f"catalog {items_path} (e.g. {[str(i) for i in ids[:3]]} vs "
                        f"{sorted(catalog)[:3]})")


def _publish_grouping(tmp, output: str) -> None:
    """Moves a finished grouping from the staging folder `tmp` into `output`, replacing
    what an earlier `grouping fit` wrote there (other files stay)."""
    os.makedirs(output, exist_ok=True)
    _remove_previous_grouping(output)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(output, name))


def _remove_previous_grouping(output: str) -> None:
    """Removes what an earlier `grouping fit` wrote into `output` (other files stay): a
    refit with another key would otherwise leave the old k-means table beside the new
    index, and `--group-table output` would read the old groups."""
    import shutil
    from dmgin_tf.data.item_index import FILE_NAME
    from transform.grouping import kmeans, report
    if not os.path.isdir(output):
        return
    for name in (FILE_NAME, kmeans.CENTROIDS_FILE, kmeans.META_FILE, report.REPORT_MD,
                 report.SIZES_PNG):
        if os.path.isfile(os.path.join(output, name)):
            os.remove(os.path.join(output, name))
    shutil.rmtree(os.path.join(output, kmeans.GROUPS_DIR), ignore_errors=True)


def _assign(args: argparse.Namespace) -> int:
    from transform.grouping import kmeans
    cfg = config_from_args(args, beam_overrides(args))
    from transform.embedding import embeddings_table_path
    n = kmeans.assign_new_items(embeddings_table_path(args.embeddings),
                                kmeans.load_centroids(args.grouping),
                                args.output, cfg.beam)
    print(f"assigned {n} items to existing groups -> {args.output}")
    return 0
