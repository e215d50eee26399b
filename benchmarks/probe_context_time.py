"""How much a trained model's test score rests on context statistics that count events
later than the test example (docs/benchmarks.md, Quality).

    python benchmarks/probe_context_time.py --run RUN_DIR --examples EXAMPLE_SET \
        --items CONVERTED/items.parquet [--grouping-key category] [--buckets 40]

The quality table's context statistics (`dmgin_tf.data.context_stats`) give validation
and test examples the item and group counts and positive rates over every training
example. Under the per-user time split the training examples of *other* users include
events after a test example's request time. This probe scores the run's test split twice
with the model unchanged: with the statistics as trained and evaluated (table 0 = every
training example), and with table 0 rebuilt, for each of `--buckets` quantile buckets of
the test request times, from the training examples strictly before the bucket starts.
It also prints how many test examples count later events. The training examples'
out-of-fold tables are left as they are.
"""
import argparse
import os

import numpy as np
import pandas as pd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a `dmgin train` / quality run folder")
    p.add_argument("--examples", required=True, help="`dmgin examples build` output folder")
    p.add_argument("--items", required=True, help="items.parquet of `dmgin data convert`")
    p.add_argument("--grouping-key", default="category",
                   help="the grouping the run was trained with (default category)")
    p.add_argument("--buckets", type=int, default=40)
    p.add_argument("--backend", default="jax", choices=["jax", "tensorflow"])
    args = p.parse_args(argv)

    os.environ.setdefault("KERAS_BACKEND", args.backend)
    from dmgin_tf import evaluation as E
    from dmgin_tf.data.context_stats import assign_folds, id_table
    from dmgin_tf.data.examples import ExampleSet
    from dmgin_tf.data.item_index import ItemIndex
    from dmgin_tf.training import callbacks as cb
    from dmgin_tf.training.backend import select_backend
    from dmgin_tf.training.data_source import ExampleSetSplit, regroup
    from dmgin_tf.training.trainer import load_trained_model
    select_backend(args.backend)

    es = regroup(ExampleSet.load(args.examples),
                 ItemIndex.build(pd.read_parquet(args.items), args.grouping_key))
    model, cfg = load_trained_model(args.run)
    mc = cfg.model
    test = ExampleSetSplit(es, "test", mc.history_length)
    ctx = model.context
    if ctx is None:
        raise SystemExit(f"{args.run}: the model reads no context statistics")
    k = ctx.num_folds
    item_saved = np.asarray(ctx.item_table.value).reshape(k + 1, -1, 4).copy()
    group_saved = np.asarray(ctx.group_table.value).reshape(k + 1, -1, 4).copy()
    train = es.split_indices("train")
    check = id_table(es.ex_cand_item[train], es.ex_label[train],
                     assign_folds(len(train), k, 0), mc.item_vocab_size, k, mc.context_prior)
    if not np.allclose(check[0], item_saved[0], atol=1e-5):
        raise SystemExit("the run's item table does not match these examples (another "
                         "example set or grouping?)")

    t_train = es.ex_request_time[train]
    t_test = es.ex_request_time[test.indices]
    item_train = es.ex_cand_item[train]
    # (item, time) as one sortable key: training examples of the item at or after t
    keys = np.sort(item_train.astype(np.int64) << 32 | t_train.astype(np.int64))
    item_test = es.ex_cand_item[test.indices].astype(np.int64) << 32
    later = (np.searchsorted(keys, item_test | 0xFFFFFFFF, "right")
             - np.searchsorted(keys, item_test | t_test.astype(np.int64), "left"))
    print(f"test examples whose item statistics count later training events: "
          f"{np.mean(later > 0):.1%}")

    asis = cb.predict_split(model, test, 1024, args.backend)
    m0 = E.evaluate(test.labels, asis, test.user_ids)
    edges = np.unique(np.quantile(t_test, np.linspace(0, 1, args.buckets + 1)))
    past_scores = np.full(len(test), np.nan)
    for b in range(len(edges) - 1):
        last = b == len(edges) - 2
        sel = np.flatnonzero((t_test >= edges[b]) & ((t_test <= edges[b + 1]) if last
                                                     else (t_test < edges[b + 1])))
        if not len(sel):
            continue
        before = t_train < edges[b]
        ones = np.ones(int(before.sum()), np.int32)
        item, group = item_saved.copy(), group_saved.copy()
        item[0] = id_table(item_train[before], es.ex_label[train][before], ones,
                           mc.item_vocab_size, k, mc.context_prior)[0]
        group[0] = id_table(es.ex_cand_group[train][before], es.ex_label[train][before], ones,
                            mc.group_vocab_size, k, mc.context_prior)[0]
        ctx.set_tables(item, group)

        class Bucket:
            def __len__(self):
                return len(sel)

            def batch(self, rows):
                return test.batch(sel[np.asarray(rows)])

        past_scores[sel] = cb.predict_split(model, Bucket(), 1024, args.backend)
    ctx.set_tables(item_saved, group_saved)
    m1 = E.evaluate(test.labels, past_scores, test.user_ids)
    for name, m in (("as trained and published (table 0 = every training example)", m0),
                    (f"table 0 from earlier training examples only ({len(edges) - 1} "
                     f"buckets)", m1)):
        print(f"{name}: test AUC {m['auc']:.4f}  GAUC {m['gauc']:.4f}  "
              f"logloss {m['logloss']:.4f}")


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    raise SystemExit(run_script(main))
