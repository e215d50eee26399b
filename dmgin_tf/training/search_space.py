"""Declared hyperparameter search spaces of every model (KerasTuner `HyperParameters`).

One definition serves the quality table's tuning (`dmgin_tf.bench.tuning`) and the TFX
pipeline's standard `Tuner` component (`tfx_pipeline.module.tuner_fn`,
`dmgin pipeline run --tune N`). Each model tunes the same kinds of knobs — learning rate,
weight decay (decoupled L2), embedding size, MLP and attention sizes, dropout, and its
number of blocks where it has blocks; the defaults are the untuned configuration.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Dict, List

# Which config field each hyperparameter sets (ModelConfig / TrainConfig).
FIELDS = {"learning_rate": "train.learning_rate", "weight_decay": "train.weight_decay",
          "embedding_dim": "model.embedding_dim", "mlp_units": "model.mlp_units",
          "dropout": "model.dropout", "inter_layers": "model.inter_layers",
          "intra_layers": "model.intra_layers", "attention_units": "model.attention_units",
          "item_min_count": "model.item_min_count", "use_recent": "model.use_recent"}
# Comma-joined lists as choices (KerasTuner choices are scalars).
MLP_CHOICES = ("128,64", "256,128", "512,256,64")
ATTENTION_CHOICES = ("64,32", "128,64")


def search_space(model: str, hp) -> None:
    """Declares `model`'s search space on a `keras_tuner.HyperParameters`.

    Shared by every model: learning rate, weight decay, embedding size, MLP sizes,
    dropout, target-attention sizes, and the minimum training examples for an item to
    keep its own embedding row. Blocks: DMGIN inter-group (HSTU) layers and intra-group
    layers (0 = mean pooling), DGIN intra-group layers, BST / full Transformer layers.
    DIN and SIM have no stacked blocks. DMGIN and DGIN may add attention over the newest
    behaviors (`use_recent`).

    Defaults are trial 0, the search's starting point: the package configuration with a
    3e-4 learning rate and `item_min_count` 5 for every model (both were level or better
    for every model they were tried on, DIN and DMGIN on both shipped sets; DMGIN and DGIN
    also start with `use_recent`, which halved DMGIN's per-user loss to DIN on MovieLens;
    docs/benchmarks.md, "How the heads read the statistics").
    """
    hp.Choice("learning_rate", [3e-4, 1e-3, 3e-3], default=3e-4)
    hp.Choice("weight_decay", [0.0, 1e-2, 5e-2], default=0.0)
    hp.Choice("embedding_dim", [16, 32], default=16)
    hp.Choice("mlp_units", list(MLP_CHOICES), default="128,64")
    hp.Choice("dropout", [0.1, 0.0, 0.2], default=0.1)
    hp.Choice("attention_units", list(ATTENTION_CHOICES), default="64,32")
    hp.Choice("item_min_count", [5, 0, 2], default=5)
    if model == "dmgin":
        hp.Choice("inter_layers", [2, 1, 3, 0], default=2)      # 0 = no inter-group blocks
        hp.Choice("intra_layers", [1, 2, 0], default=1)         # 0 = mean pooling
        hp.Boolean("use_recent", default=True)
    elif model == "dgin":
        hp.Choice("intra_layers", [1, 2, 0], default=1)
        hp.Boolean("use_recent", default=True)
    elif model in ("bst", "transformer"):
        hp.Choice("inter_layers", [2, 1, 3], default=2)


def to_overrides(values: Dict[str, object]) -> Dict[str, object]:
    """Hyperparameter values -> config overrides {dotted key: value}."""
    out = {}
    for name, value in values.items():
        if name not in FIELDS:
            raise KeyError(f"unknown hyperparameter {name!r}; known: {sorted(FIELDS)}")
        if name in ("mlp_units", "attention_units"):
            value = [int(u) for u in str(value).split(",")]
        out[FIELDS[name]] = value
    return out


def sample_trials(model: str, num_trials: int, seed: int = 0) -> List[Dict[str, object]]:
    """`num_trials` hyperparameter sets of `model`: the defaults, then random-search
    trials drawn by KerasTuner's oracle (distinct, seeded)."""
    import keras_tuner as kt
    hp = kt.HyperParameters()
    search_space(model, hp)
    trials = [dict(hp.values)]
    # The oracle prints a trial summary table per trial: keep the CLI output ours.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        oracle = kt.oracles.RandomSearchOracle(
            # KerasTuner treats seed 0 as "no seed" (random): shift by one.
            objective=kt.Objective("val_gauc", "max"), max_trials=num_trials, seed=seed + 1,
            hyperparameters=hp, allow_new_entries=False, tune_new_entries=False)
        oracle._set_project_dir(tmp, f"tune_{model}")
        while len(trials) < num_trials:
            trial = oracle.create_trial(f"bench{len(trials)}")
            if trial.status == "STOPPED":          # the space is exhausted
                break
            values = dict(trial.hyperparameters.values)
            oracle.end_trial(trial)
            if values not in trials:
                trials.append(values)
    return trials


def overrides_from_hyperparameters(hparams_config) -> Dict[str, object]:
    """Config overrides from a KerasTuner `HyperParameters` config (what the TFX `Tuner`
    component writes as `best_hyperparameters` and the Trainer receives) or a plain
    `{name: value}` dict."""
    if not hparams_config:
        return {}
    if isinstance(hparams_config, dict) and "space" in hparams_config:
        import keras_tuner as kt
        values = kt.HyperParameters.from_config(hparams_config).values
    else:
        values = dict(hparams_config)
    return to_overrides(values)
