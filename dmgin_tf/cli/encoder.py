r"""`dmgin encoder train|embed|import`: the multimodal item encoder and catalog embedding.

    dmgin encoder train --items runs/data/ml/items.parquet --output runs/encoder \
        [--epochs 10 --steps 0 --batch-size 256 --from-scratch --eval-fraction 0.2]
    dmgin encoder embed --encoder runs/encoder --items runs/data/ml/items.parquet \
        --output runs/embeddings [--beam-runner dask --dask-local-workers 2]
    dmgin encoder import --embeddings my_mllm.tfrecord --output runs/embeddings

`train` writes a new version `<output>/<version>/` (see transform/encoder/io.py);
`embed` and `import` write the embedding table `<output>/embeddings/` (Parquet
item_id string, embedding list<float32>) that `dmgin grouping fit --embeddings` reads,
plus `<output>/report.json`.
"""
from __future__ import annotations

import argparse

from dmgin_tf.cli.common import (add_beam_args, add_config_args, at_least, beam_overrides,
                                 config_from_args, read_items_table)


def register(subparsers) -> None:
    p = subparsers.add_parser("encoder", help="multimodal item encoder: train, embed a catalog, "
                              "import external embeddings")
    sub = p.add_subparsers(dest="encoder_command", metavar="ACTION")
    sub.required = True

    train = sub.add_parser("train", help="contrastive training on a catalog (items.parquet)")
    train.add_argument("--items", required=True, help="the items.parquet of `dmgin data convert` "
                       "(or its output directory)")
    train.add_argument("--output", required=True, help="encoder base dir (a new version is added)")
    train.add_argument("--encoder-config", metavar="FILE",
                       help="YAML/JSON with EncoderConfig fields (an `encoder:` section or flat)")
    train.add_argument("--epochs", type=int, help="epochs (default 5)")
    train.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--batch-size", type=int, help="contrastive batch size (default 256)")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--from-scratch", action="store_true",
                       help="small scratch BERT instead of MiniLM")
    train.add_argument("--minilm-trainable-blocks", type=int,
                       help="also fine-tune MiniLM's last N blocks (slow on CPU; default 0)")
    train.add_argument("--eval-fraction", type=float, default=0.0,
                       help="hold out this fraction of items and report title→context recall@10")
    train.add_argument("--seed", type=int)
    train.set_defaults(func=_train)

    embed = sub.add_parser("embed", help="embed a catalog with a trained encoder (Beam RunInference)")
    add_config_args(embed)
    add_beam_args(embed)
    embed.add_argument("--encoder", required=True, help="encoder base or version dir")
    embed.add_argument("--items", required=True, help="items Parquet file/dir/glob")
    embed.add_argument("--output", required=True, help="output dir (embeddings/, bad_rows/, report.json)")
    embed.add_argument("--batch-size", type=at_least(int, 1), default=256,
                       help="rows per forward pass / Beam batch")
    embed.set_defaults(func=_embed)

    imp = sub.add_parser("import", help="validate external embeddings (Parquet/TFRecord) and "
                         "write them as the embedding table")
    imp.add_argument("--embeddings", required=True, help="Parquet or TFRecord file/dir/glob")
    imp.add_argument("--output", required=True, help="output dir (embeddings/, report.json)")
    imp.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    imp.set_defaults(func=_import)


def encoder_config_from_args(args: argparse.Namespace):
    """EncoderConfig from --encoder-config FILE, then the explicit flags."""
    from transform.encoder.config import EncoderConfig
    from dmgin_tf.config import ConfigError, read_config_file
    values: dict = {}
    if args.encoder_config:
        path = args.encoder_config
        values = read_config_file(path)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top level must be a mapping (an `encoder:` section or "
                              f"EncoderConfig fields), not a {type(values).__name__}")
        if "encoder" in values:
            flat = sorted(k for k in values if k != "encoder")
            if flat:
                raise ConfigError(f"{path}: give an `encoder:` section or flat fields, not "
                                  f"both (flat: {flat})")
            values = values["encoder"] or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: the `encoder:` section must be a mapping of "
                                  f"fields, not {values!r}")
        values = dict(values)
    flags = {"epochs": args.epochs, "max_steps": args.steps, "batch_size": args.batch_size,
             "learning_rate": args.learning_rate, "seed": args.seed,
             "minilm_trainable_blocks": args.minilm_trainable_blocks}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.from_scratch:
        values["text_backbone"] = "scratch"
    return EncoderConfig.from_dict(values)


def _train(args: argparse.Namespace) -> int:
    from dmgin_tf.errors import DataError
    from transform.encoder.io import save_encoder
    from transform.encoder.retrieval import split_items, view_recall
    from transform.encoder.train import train_encoder

    if not 0 <= args.eval_fraction < 1:
        raise DataError(f"--eval-fraction {args.eval_fraction}: the held-out share of the "
                        f"catalog, in [0, 1) (training needs the rest)")
    config = encoder_config_from_args(args)
    items = read_items_table(args.items)
    held = None
    if args.eval_fraction > 0:
        items, held = split_items(items, args.eval_fraction, config.seed)
    encoder, summary = train_encoder(items, config, log=print)
    if held is not None and len(held):
        summary["heldout_recall"] = view_recall(encoder, held)
    vdir = save_encoder(encoder, args.output)
    counts = summary["catalog"]["counts"]
    print(f"encoder {summary['backbone']} ({summary['mode']}): {summary['steps']} steps in "
          f"{summary['fit_seconds']} s, loss {summary['loss'][0]:.3f} -> {summary['loss'][-1]:.3f}; "
          f"bad rows {counts}")
    if "heldout_recall" in summary:
        r = summary["heldout_recall"]
        print(f"held-out title->context recall@10 {r['recall@10']:.3f} "
              f"({r['queries']} queries, {r['candidates']} candidates)")
    print(f"saved {vdir}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from transform.embedding import embed_catalog
    cfg = config_from_args(args, beam_overrides(args))
    print(f"embedding {args.items} with {args.encoder} (Beam, {cfg.beam.runner} runner) ...")
    report = embed_catalog(args.items, args.encoder, args.output, cfg.beam,
                           batch_size=args.batch_size, max_batch_size=args.batch_size, log=print)
    print(f"embedded {report['embedded']} of {report['rows']} rows (D={report['embedding_dim']}, "
          f"runner {report['runner']}); bad rows {report['counts']}")
    print(f"table {report['table']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from transform.embedding import import_external_embeddings
    report = import_external_embeddings(args.embeddings, args.output, normalize=args.normalize)
    print(f"imported {report['rows']} embeddings (D={report['embedding_dim']}) -> {report['table']}")
    return 0
