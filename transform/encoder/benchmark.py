"""Retrieval benchmark of the encoder (docs/encoder.md), one command:

    python -m transform.encoder.benchmark --items DIR/items.parquet --output OUT.json

Splits the catalog into train / held-out items (20 %, seed 0), and scores on the
held-out items (title → description/category recall@k, `retrieval.view_recall`):

1. ``random_init_scratch``  – scratch encoder, random weights (no training);
2. ``scratch_trained``      – scratch encoder trained contrastively on train items;
3. ``minilm_frozen_raw``    – MiniLM mean-pooled output, no heads, no training;
4. ``minilm_random_heads``  – MiniLM + untrained projection heads;
5. ``minilm_trained_heads`` – MiniLM frozen + heads trained on train items.

MiniLM rows are skipped when the package is absent.
"""
from __future__ import annotations

import argparse
import json
import time


def run(items_path: str, epochs: int = 10, scratch_epochs: int = 3, batch_size: int = 256,
        holdout: float = 0.2, seed: int = 0, scratch_max_steps: int = 0,
        parts=("scratch", "minilm")) -> dict:
    import pandas as pd
    from transform.encoder.minilm import minilm_source_dir
    from transform.encoder.retrieval import split_items

    items = pd.read_parquet(items_path)
    train, held = split_items(items, holdout, seed)
    results = {"items": len(items), "train_items": len(train), "heldout_items": len(held)}

    def timed(name, fn):
        t = time.time()
        results[name] = fn()
        results[name]["seconds"] = round(time.time() - t, 1)
        print(name, results[name], flush=True)

    if "scratch" in parts:
        _scratch(results, timed, train, held, scratch_epochs, batch_size, seed, scratch_max_steps)
    if "minilm" in parts and minilm_source_dir() is not None:
        _minilm(results, timed, train, held, epochs, batch_size, seed)
    return results


def _scratch(results, timed, train, held, scratch_epochs, batch_size, seed, scratch_max_steps):
    from transform.encoder.config import EncoderConfig
    from transform.encoder.item_encoder import build_encoder
    from transform.encoder.retrieval import view_recall
    from transform.encoder.train import train_encoder, training_corpus
    scratch_cfg = EncoderConfig(text_backbone="scratch", epochs=scratch_epochs,
                                batch_size=batch_size, seed=seed, max_steps=scratch_max_steps)
    scratch = build_encoder(scratch_cfg, corpus=training_corpus(train))
    timed("random_init_scratch", lambda: view_recall(scratch, held))

    def train_scratch():
        enc, summary = train_encoder(train, scratch_cfg, encoder=scratch)
        out = view_recall(enc, held)
        out["training"] = {k: summary[k] for k in ("mode", "steps", "fit_seconds", "loss")}
        return out
    timed("scratch_trained", train_scratch)


def _minilm(results, timed, train, held, epochs, batch_size, seed):
    from transform.encoder.config import EncoderConfig
    from transform.encoder.item_encoder import build_encoder
    from transform.encoder.retrieval import view_recall
    from transform.encoder.train import train_encoder
    cfg = EncoderConfig(text_backbone="minilm", epochs=epochs, batch_size=batch_size, seed=seed)
    minilm = build_encoder(cfg)
    timed("minilm_frozen_raw", lambda: view_recall(minilm, held, projected=False))
    timed("minilm_random_heads", lambda: view_recall(minilm, held))

    def train_minilm():
        enc, summary = train_encoder(train, cfg, encoder=minilm)
        out = view_recall(enc, held)
        out["training"] = {k: summary[k] for k in ("mode", "steps", "feature_seconds",
                                                   "fit_seconds", "loss", "temperature")}
        return out
    timed("minilm_trained_heads", train_minilm)


def main(argv=None):
    from dmgin_tf.cli.common import configure_process
    configure_process()          # a program: tf.keras = Keras 2, quiet TensorFlow logs
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", required=True)
    p.add_argument("--output")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--scratch-epochs", type=int, default=3)
    p.add_argument("--scratch-max-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--parts", default="scratch,minilm", help="comma list: scratch, minilm")
    a = p.parse_args(argv)
    res = run(a.items, a.epochs, a.scratch_epochs, a.batch_size,
              scratch_max_steps=a.scratch_max_steps, parts=tuple(a.parts.split(",")))
    text = json.dumps(res, indent=1)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
