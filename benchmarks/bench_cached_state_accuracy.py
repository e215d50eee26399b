"""How exactly `score_cached` reproduces `rank` for given state caps, on real histories.

The embedded Taobao sample (150 users, their whole histories up to L behaviors; each
user's next behavior is a real candidate, plus items of other users' and the user's own
history), a DMGIN with random weights and random context tables: the share of
(user, candidate) scores of `score_cached` within 1e-5 of `score`/`rank`, and the largest
difference, for each (K, I) of the user state's lookup tables.

    python benchmarks/bench_cached_state_accuracy.py --length 1024 --caps 128:512 32:128
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=1024, help="L")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--caps", nargs="+", default=["128:512", "32:128"], help="K:I pairs")
    args = ap.parse_args(argv)

    import keras
    from dmgin_tf import features as F
    from dmgin_tf.config import ModelConfig
    from dmgin_tf.models import build_model
    from serving.real_histories import candidate_lists, taobao_examples  # the test reader

    keras.utils.set_random_seed(0)
    x, items, groups = taobao_examples(150, args.length)
    valid = x[F.HIST_ITEM] != 0
    distinct = [len(np.unique(x[F.HIST_GROUP][r][valid[r]])) for r in range(len(valid))]
    print(f"{len(valid)} users; behaviors per user median {int(np.median(valid.sum(1)))}, "
          f"max {valid.sum(1).max()}; distinct groups median {int(np.median(distinct))}, "
          f"max {max(distinct)}")
    model = build_model(ModelConfig(item_vocab_size=items, group_vocab_size=groups,
                                    history_length=args.length, max_groups=64,
                                    max_per_group=16, embedding_dim=16, dropout=0.0))
    model(x)
    rng = np.random.default_rng(0)
    for table in (model.context.item_table, model.context.group_table):
        table.assign(rng.normal(size=table.shape).astype("float32"))
    hist = {k: x[k] for k in F.HISTORY_INPUT_KEYS + (F.REQUEST_TIME,)}
    ci, cg = candidate_lists(x, args.candidates)
    ref = np.asarray(model.score(model.encode_user(hist),
                                 dict(hist, **{F.CAND_ITEM: ci, F.CAND_GROUP: cg})))
    print("| K | I | scores within 1e-5 | next real item within 1e-5 | max difference |")
    print("|---|---|---|---|---|")
    for cap in args.caps:
        k, i = (int(v) for v in cap.split(":"))
        state = model.user_state(hist, k, i)
        gap = np.abs(np.asarray(model.score_cached(state, {F.CAND_ITEM: ci,
                                                           F.CAND_GROUP: cg})) - ref)
        print(f"| {k} | {i} | {np.mean(gap <= 1e-5):.1%} | {np.mean(gap[:, 0] <= 1e-5):.1%} "
              f"| {gap.max():.3g} |")
    return 0


if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
