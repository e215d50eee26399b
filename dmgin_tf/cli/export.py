r"""`dmgin export`: a training run directory → TF Serving SavedModels (XLA + non-XLA twin).

    dmgin export --model-dir runs/dmgin --output runs/serving/dmgin [--version 3] \
        [--state-groups 128 --state-items 512]

writes runs/serving/dmgin/<version>/ (jit_compile) and runs/serving/dmgin_noxla/<version>/.
"""
from __future__ import annotations

import argparse
import os

from dmgin_tf.cli.common import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a trained model for TF Serving",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, metavar="DIR", help="output directory of dmgin train")
    p.add_argument("--output", required=True, metavar="BASE/NAME",
                   help="model base path; the last component is the model name")
    p.add_argument("--version", type=int, help="version number (default: 1 + the largest "
                   "version of any exported variant)")
    p.add_argument("--variants", default="xla,noxla",
                   help="comma list of xla,noxla (default both)")
    p.add_argument("--state-groups", type=int, default=None, metavar="K",
                   help="cached user state (user_state / score_cached): lookup tables for the "
                        "K most recently active groups (default 128, capped at L)")
    p.add_argument("--state-items", type=int, default=None, metavar="I",
                   help="cached user state: the I most recently touched items (default 512, "
                        "capped at L)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip comparing the exported signatures with the Keras model")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from dmgin_tf.errors import DmginError
    from dmgin_tf.export.saved_model import export_from_run_dir
    from dmgin_tf.models.cached_state import DEFAULT_LOOKUP_GROUPS, DEFAULT_LOOKUP_ITEMS
    for flag, value in (("--state-groups", args.state_groups), ("--state-items", args.state_items)):
        if value is not None and value < 1:
            raise DmginError(f"{flag}={value}: must be >= 1")
    for item in args.overrides:
        if not item.startswith("serving."):
            raise DmginError(f"--set {item}: an export takes the model's config from "
                             f"--model-dir ({args.model_dir}/config.json); only serving.* "
                             f"settings apply here")
    run_config = os.path.join(args.model_dir, "config.json")
    if not getattr(args, "config", None) and os.path.isfile(run_config):
        # The run's own serving.* settings (e.g. `dmgin train --set
        # serving.candidate_buckets=...`), --set on top; the package defaults replaced them.
        args.config = run_config
    cfg = config_from_args(args)
    base, name = os.path.split(os.path.normpath(args.output))
    paths = export_from_run_dir(args.model_dir, base or ".", name, version=args.version,
                                variants=[v.strip() for v in args.variants.split(",") if v.strip()],
                                serving_cfg=cfg.serving, verify=args.verify,
                                state_groups=args.state_groups or DEFAULT_LOOKUP_GROUPS,
                                state_items=args.state_items or DEFAULT_LOOKUP_ITEMS,
                                log=print)
    for variant, path in paths.items():
        print(f"{variant}: {path}")
    return 0
