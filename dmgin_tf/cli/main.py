"""`dmgin` command line: a thin layer over library functions.

Each subcommand lives in its own module `dmgin_tf/cli/<name>.py` exposing
`register(subparsers)`; handlers import heavy libraries (TensorFlow, Beam) lazily so
`dmgin --help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow

# Subcommand modules, in --help order.
COMMAND_MODULES = ("demo", "data", "encoder", "grouping", "examples", "train", "export",
                   "serve", "predict", "pipeline", "bench", "gpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmgin", description="DMGIN lifelong-sequence CTR: data, training, TFX pipeline, serving.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"dmgin_tf.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dmgin_tf.cli.{name}":
                continue  # command not shipped in this build
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from dmgin_tf import __version__
    return f"dmgin-tf {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dmgin_tf.config import ConfigError
    from dmgin_tf.errors import DmginError
    try:
        result = args.func(args)
    except (DmginError, ConfigError, FileNotFoundError) as e:
        print(f"dmgin {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmgin {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
