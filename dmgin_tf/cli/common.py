"""Flags shared by subcommands, so every command spells them the same way."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

from dmgin_tf.config import Config, ConfigError, load_config


# Environment for quiet TensorFlow / XLA / gRPC C++ logging (errors still shown).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "2"}
# Libraries whose Python warnings (deprecations, "do not pass input_shape", ...) a user of
# the CLI cannot act on.
NOISY_MODULES = r"(tensorflow|tf_keras|keras|tfx|tensorflow_[a-z_]+|apache_beam|absl|google\.protobuf|ml_metadata)(\.|$)"


def _drop_reported_component_failures(record: logging.LogRecord) -> bool:
    """TFX's launcher logs "Execution N failed." before re-raising; `dmgin pipeline run`
    names the failed component and its error itself, so the line is noise."""
    return record.msg != "Execution %d failed."


def configure_process(verbose: bool = False) -> None:
    """What every `dmgin` command sets before anything imports TensorFlow.

    Always `TF_USE_LEGACY_KERAS=1` (tf.keras = Keras 2 for TFX/TFRS/TFMA; our layers are
    Keras 3). Unless `verbose`: TensorFlow/XLA/gRPC C++ logs below ERROR, absl and the
    `tensorflow` logger at ERROR, deprecation warnings and third-party library warnings
    ignored — also in Beam worker subprocesses (through the environment). Values the
    caller already set in the environment are kept.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning,"
                                            "ignore::PendingDeprecationWarning")
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=NOISY_MODULES)
    for name in ("tensorflow", "absl", "apache_beam", "tfx", "h5py", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("absl").addFilter(_drop_reported_component_failures)
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _drop_library_finalizer_errors
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # the JAX-only path may run without absl
        pass


def _drop_library_finalizer_errors(unraisable) -> None:
    """`sys.unraisablehook` of a quiet command: an error in a TensorFlow / Beam / TFX
    object's finalizer (e.g. `AtomicFunction.__del__` when the garbage collector runs
    while a component tears its graph down) is printed by Python as "Exception ignored
    in ..." with a traceback, although nothing failed; drop those, show every other."""
    owner = getattr(unraisable.object, "__module__", None) or getattr(
        type(unraisable.object), "__module__", "")
    if re.match(NOISY_MODULES, str(owner or "")):
        return
    sys.__unraisablehook__(unraisable)


def at_least(kind, minimum):
    """argparse `type=`: a `kind` (int / float) number >= `minimum`; argparse names the
    flag in its error ("argument --seeds: must be >= 1, got 0")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


def positive(kind):
    """argparse `type=`: a `kind` number > 0."""
    def parse(text: str):
        value = at_least(kind, float("-inf"))(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


SAMPLE_CONFIG = "sample_config.yaml"   # in tfx_pipeline/: the embedded sample's small model


def use_sample_config(args: argparse.Namespace, dataset: str | None, quiet: bool = False) -> None:
    """Runs on the embedded Taobao sample (no `--data`, no `data.input_path`, no
    `--config`) take `tfx_pipeline/sample_config.yaml`, a small model that finishes in
    minutes, instead of the package defaults sized for real logs (L = 512, 5 epochs);
    sets `args.config` and says so."""
    given_input = any(o.split("=", 1)[0].strip() == "data.input_path"
                      for o in getattr(args, "overrides", []) or [])
    if args.data or args.config or given_input or (dataset or "taobao") != "taobao":
        return
    import tfx_pipeline
    from dmgin_tf.display import display_path
    args.config = os.path.join(os.path.dirname(tfx_pipeline.__file__), SAMPLE_CONFIG)
    if not quiet:
        print(f"embedded sample: using {display_path(args.config)}", flush=True)


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
    flags = {k: v for k, v in (extra or {}).items() if v is not None}
    for key, value in flags.items():
        # A command's own flag used to win silently over a --set of the same key, so a
        # bad --set value was never checked and a conflicting one was dropped.
        if key in overrides and overrides[key].strip() != _flag_text(value):
            raise ConfigError(f"{key} is given twice: --set {key}={overrides[key]} and its "
                              f"own flag ({_flag_text(value)}); give it once")
    overrides.update(flags)
    return load_config(getattr(args, "config", None), overrides)


def _flag_text(value) -> str:
    """A flag's value as it would be written after `--set KEY=` (lists comma-joined)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


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


def read_items_table(path: str, flag: str = "--items"):
    """The catalog a command was given: `items.parquet`, or a `dmgin data convert` output
    directory holding it. Raises DataError naming `flag` for anything else (a CSV, a
    folder without the catalog), instead of a Parquet reader's error."""
    import pandas as pd
    from dmgin_tf.errors import DataError
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "items.parquet")):
        path = os.path.join(path, "items.parquet")
    if not os.path.exists(path):
        raise DataError(f"{flag} {path}: no such file or directory")
    try:
        items = pd.read_parquet(path)
    except (ValueError, OSError) as e:      # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{flag} {path}: not a readable Parquet catalog ({type(e).__name__}); "
                        f"pass the items.parquet of `dmgin data convert` (or its output "
                        f"directory); CSV catalogs are converted first") from None
    from dmgin_tf.features import ITEM_ID, USER_ID
    if ITEM_ID not in items.columns or USER_ID in items.columns:
        what = ("a behaviors table (it has user_id)" if USER_ID in items.columns
                else f"not an items catalog (no item_id column; columns {list(items.columns)})")
        raise DataError(f"{flag} {path}: {what}; pass the items.parquet of `dmgin data "
                        f"convert` (or its output directory)")
    return items
