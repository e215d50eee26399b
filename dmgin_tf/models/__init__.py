"""Ranking models (Keras 3): DMGIN and the baselines, one builder.

    model = build_model(model_cfg)            # built, ready for compile/fit
    ctr = model(inputs)                       # inputs: dict of features.MODEL_INPUT_KEYS

`model_cfg.model` picks: dmgin | dgin | din | sim | bst | transformer, or a model added with
`register_model` (docs/training.md, "Your own model"). The TFRS / tf.keras variant is
`dmgin_tf.models.tfrs_model` (imported explicitly: it needs TensorFlow).
"""
from __future__ import annotations

import re

from dmgin_tf.config import BUILTIN_MODELS, ModelConfig, add_model_name
from dmgin_tf.models.baselines import BST, DIN, FullTransformer, SIMHard
from dmgin_tf.models.dmgin import DGIN, DMGIN, encoder_from_config
from dmgin_tf.models.ranking_model import (MLPHead, RankingModel, as_model_config,
                                           dummy_inputs, input_specs, time_dtype)

MODELS = {"dmgin": DMGIN, "dgin": DGIN, "din": DIN, "sim": SIMHard, "bst": BST,
          "transformer": FullTransformer}
assert tuple(MODELS) == BUILTIN_MODELS


def register_model(name: str, cls) -> None:
    """Makes `model.model = name` build `cls(model_cfg, name=name)` everywhere a config
    names a model: `build_model`, `train`, `load_trained_model` and `export_from_run_dir` in this
    process (the `dmgin` commands know the built-in models only).

    Args:
        name: lower-case identifier, not a built-in model's name.
        cls: a `RankingModel` subclass (or any Keras model class taking
            `(model_cfg, name=...)`, the input dict of `features.MODEL_INPUT_KEYS` and
            returning `ctr [B]`). Registering a name again replaces its class.

    Raises:
        ValueError: a malformed or built-in name, or `cls` not a class.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"register_model: name {name!r} must be a lower-case identifier "
                         f"(letters, digits, _)")
    if name in BUILTIN_MODELS and MODELS[name] is not cls:
        raise ValueError(f"register_model: {name!r} is a built-in model; choose another name")
    if not isinstance(cls, type):
        raise ValueError(f"register_model({name!r}, ...): expected a model class, got "
                         f"{type(cls).__name__}")
    MODELS[name] = cls
    add_model_name(name)


def build_model(model_cfg: ModelConfig) -> RankingModel:
    """Builds the model named by `model_cfg.model`, with its weights created.

    Args:
        model_cfg: `ModelConfig` (or its dict). `item_vocab_size` and `group_vocab_size`
            must be filled from the data (>= 2: ids 0/1 are reserved).

    Returns:
        A built `RankingModel` (keras.Model): inputs dict (see `input_specs`) → ctr [B].
    """
    cfg = as_model_config(model_cfg)
    if cfg.item_vocab_size < 2:
        raise ValueError(f"model.item_vocab_size={cfg.item_vocab_size!r}: fill it from the "
                         "data (ids incl. the reserved 0/1), must be >= 2")
    if cfg.group_vocab_size < 2 and cfg.model not in ("dgin",):
        raise ValueError(f"model.group_vocab_size={cfg.group_vocab_size!r}: fill it from "
                         "the data (ids incl. the reserved 0/1), must be >= 2")
    model = MODELS[cfg.model](cfg, name=cfg.model)
    model(dummy_inputs(cfg, batch_size=1))   # creates every weight (empty histories)
    return model


__all__ = ["build_model", "register_model", "input_specs", "dummy_inputs", "time_dtype", "MODELS", "DMGIN",
           "DGIN", "DIN", "SIMHard", "BST", "FullTransformer", "RankingModel", "MLPHead",
           "encoder_from_config"]
