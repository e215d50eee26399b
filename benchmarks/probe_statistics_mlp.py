"""How much of the ranking signal the statistics alone carry, and how an MLP should read them.

    python benchmarks/probe_statistics_mlp.py --dataset taobao --data data/taobao-userbehavior

Builds the quality table's examples (grouping `category`, L = 256, the same split), the
`gbdt` row's feature matrix (`dmgin_tf.bench.gbdt.example_features`: the context
statistics with out-of-fold tables for training examples, the user's aggregates and
affinity, the candidate item's and group's matching counts — exactly what the sequence
models' heads read besides their learned vectors), then trains an MLP (128, 64) on it
with the head's two ways of reading dense columns:
  bn    batch normalisation (the head before piecewise-linear encoding)
  ple   piecewise-linear encoding over 16 training quantiles (`PiecewiseLinearEncoding`)
Adam 1e-3, batch 1024, early stopping on validation GAUC (patience 3, cap 40 epochs).
One JSON line per encoding: best epoch, validation and test GAUC / AUC. No sequence model
is involved: a model that reads the same features plus a history should not rank worse.
"""
import argparse
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def feature_matrices(dataset: str, data_path: str, work_dir: str):
    """{split: (x [N, F] float32, labels [N], users [N])} of the gbdt row's features."""
    from dmgin_tf.bench.gbdt import example_features
    from dmgin_tf.config import Config
    from dmgin_tf.layers.context_statistics import ContextStatistics
    from dmgin_tf.training.data_source import load_training_data
    from dmgin_tf.training.trainer import context_tables_for, resolve_config
    cfg = Config().apply_overrides({"data.dataset": dataset, "grouping.key": "category",
                                    "model.history_length": 256})
    data = load_training_data(cfg, data_path, work_dir, progress=False)
    mc = resolve_config(cfg, data).model
    context = ContextStatistics(mc.item_vocab_size, mc.group_vocab_size,
                                mc.num_behavior_types, mc.context_folds)
    tables = context_tables_for(data.train, mc)        # also gives train its folds
    context.set_tables(tables["item"], tables["group"])
    return {name: (example_features(split, mc, context), split.labels, split.user_ids)
            for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}


def train_probe(mats, encoding: str, seed: int = 0, max_epochs: int = 40, patience: int = 3):
    import keras
    import numpy as np
    from dmgin_tf import evaluation
    from dmgin_tf.layers.numeric_encoding import PiecewiseLinearEncoding, quantile_edges
    keras.utils.set_random_seed(seed)
    x_train, y_train, _ = mats["train"]
    inp = keras.Input((x_train.shape[1],))
    if encoding == "bn":
        h = keras.layers.BatchNormalization()(inp)
    else:
        ple = PiecewiseLinearEncoding(16, 8)
        h = ple(inp)
        ple.set_edges(quantile_edges(x_train, 16))
    for units in (128, 64):
        h = keras.layers.Dense(units, activation="relu")(h)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    best = {"val_gauc": -1.0}
    waited = 0
    for epoch in range(max_epochs):
        model.fit(x_train, np.asarray(y_train, "float32"), batch_size=1024, epochs=1,
                  verbose=0, shuffle=True)
        scores = {s: model.predict(mats[s][0], batch_size=4096, verbose=0).ravel()
                  for s in ("val", "test")}
        val = evaluation.evaluate(mats["val"][1], scores["val"], mats["val"][2])
        if val["gauc"] > best["val_gauc"]:
            test = evaluation.evaluate(mats["test"][1], scores["test"], mats["test"][2])
            best = {"encoding": encoding, "seed": seed, "best_epoch": epoch + 1,
                    "val_gauc": val["gauc"], "val_auc": val["auc"],
                    "test_gauc": test["gauc"], "test_auc": test["auc"]}
            waited = 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=["taobao", "movielens"])
    p.add_argument("--data", required=True, help="raw or converted data of the dataset")
    p.add_argument("--work-dir", default=os.path.join("runs", "probe"))
    p.add_argument("--encodings", nargs="+", default=["bn", "ple"], choices=["bn", "ple"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    mats = feature_matrices(args.dataset, args.data,
                            os.path.join(args.work_dir, f"data_{args.dataset}"))
    for encoding in args.encodings:
        row = train_probe(mats, encoding, seed=args.seed)
        print(json.dumps({"dataset": args.dataset, **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
