"""Flags shared by subcommands, so every command spells them the same way."""
from __future__ import annotations

import argparse

from dmgin_tf.config import Config, ConfigError, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config FILE and repeatable --set section.field=value overrides."""
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config with one section per concern")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="override one config value (repeatable)")


def config_from_args(args: argparse.Namespace, extra: dict | None = None) -> Config:
    """Loads --config, applies --set overrides, then command-specific flag overrides."""
    overrides: dict = {}
    for item in getattr(args, "overrides", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_config(getattr(args, "config", None), overrides)


def add_beam_args(parser: argparse.ArgumentParser) -> None:
    """Beam runner selection shared by every Beam-using command (see transform.beam_runner)."""
    g = parser.add_argument_group("beam")
    g.add_argument("--beam-runner", choices=["direct", "dask", "flink", "spark", "dataflow"],
                   help="Beam runner for our Beam stages (default: direct)")
    g.add_argument("--direct-num-workers", type=int, help="DirectRunner worker processes (0 = cores)")
    g.add_argument("--dask-address", metavar="tcp://HOST:PORT", help="existing dask scheduler")
    g.add_argument("--dask-local-workers", type=int, metavar="N",
                   help="start a local dask cluster of N worker processes for this run")
    g.add_argument("--beam-arg", dest="beam_extra_args", action="append", default=None,
                   metavar="ARG", help="pass-through Beam pipeline arg, e.g. --beam-arg=--flink_master=host:8081")


def beam_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from the beam flags (None where the flag was not given)."""
    return {
        "beam.runner": getattr(args, "beam_runner", None),
        "beam.direct_num_workers": getattr(args, "direct_num_workers", None),
        "beam.dask_address": getattr(args, "dask_address", None),
        "beam.dask_local_workers": getattr(args, "dask_local_workers", None),
        "beam.extra_args": getattr(args, "beam_extra_args", None),
    }
