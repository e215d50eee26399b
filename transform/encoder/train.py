"""Contrastive training of the item encoder (`dmgin encoder train`).

Cost is bounded on CPU by construction:

* **MiniLM** (default when installed): the backbone is frozen
  (`minilm_trainable_blocks=0`), so its mean-pooled outputs for the three text views
  are computed once (one inference pass per view, padding trimmed per batch) and only
  the projection heads, the image tower and the temperature train, on cached
  `[N, 384]` features: epochs cost milliseconds per batch. With
  `minilm_trainable_blocks=k > 0` the last k blocks train too and every step runs the
  full backbone (slow on CPU; meant for GPU hosts).
* **scratch**: the small BERT trains end to end (a few M parameters at most).

`max_steps` caps optimizer steps in both cases.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional, Tuple

import numpy as np

from transform.encoder.catalog import prepare_catalog
from transform.encoder.config import EncoderConfig
from transform.encoder.item_encoder import ItemEncoder, build_encoder, text_features
from transform.encoder.model import (CONTEXT_VIEW, FULL_VIEW, HAS_IMAGE, IMAGE, TEXT_PAIR,
                                     TEXT_VIEWS, TITLE_VIEW)

_LOG = logging.getLogger(__name__)


def training_corpus(items) -> list:
    """Texts the scratch vocabulary is learned from (every view of every item)."""
    from transform.encoder.catalog import item_texts
    from dmgin_tf import features as F
    rows = items.to_dict("records") if hasattr(items, "to_dict") else list(items)
    out = []
    for r in rows:
        t = item_texts(r.get(F.TITLE), r.get(F.DESCRIPTION), r.get(F.CATEGORY))
        out.append(t[FULL_VIEW])
    return out


# Runs with at most this many optimizer steps train eagerly (see train_encoder).
EAGER_MAX_STEPS = 30


def _batches(x: dict, batch_size: int, seed: int):
    """Shuffled full batches (remainder dropped) of the dict of arrays `x`.

    Dropping the remainder keeps one traced step shape and never pads a contrastive
    batch with duplicate rows (duplicates would be false negatives).
    """
    import tensorflow as tf
    n = len(next(iter(x.values())))
    ds = tf.data.Dataset.from_tensor_slices(x)
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def _check_pairs(items) -> None:
    """Fails fast (before building a model) when no row can form a training pair."""
    from dmgin_tf import features as F
    from dmgin_tf.errors import DataError
    from transform.encoder.catalog import item_texts
    rows = items.to_dict("records") if hasattr(items, "to_dict") else list(items)
    for r in rows:
        t = item_texts(r.get(F.TITLE), r.get(F.DESCRIPTION), r.get(F.CATEGORY))
        image = r.get(F.IMAGE)
        if (t[TITLE_VIEW] and t[CONTEXT_VIEW]) or (t[FULL_VIEW] and image is not None
                                                    and not isinstance(image, float)
                                                    and len(image) > 0):
            return
    raise DataError(f"encoder training: none of {len(rows)} catalog rows has a title together "
                    "with a description/category, or text with an image; without item text, "
                    "group by category (--set grouping.key=category) or import embeddings")


class _StepLimit:
    """Keras callback stopping `fit` after `max_steps` optimizer steps."""

    def __new__(cls, max_steps: int):
        import keras

        class StepLimit(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.steps = 0

            def on_train_batch_end(self, batch, logs=None):
                self.steps += 1
                if self.steps >= max_steps:
                    self.model.stop_training = True

        return StepLimit()


def _epoch_lines(log: Callable[[str], None], epochs: int, t0: float):
    """Keras callback: one progress line per finished epoch (loss, elapsed seconds)."""
    import keras

    class EpochLines(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            log(f"encoder epoch {epoch + 1}/{epochs}: loss "
                f"{'n/a' if loss is None else f'{float(loss):.4f}'} ({time.time() - t0:.0f} s)")

    return EpochLines()


def train_encoder(items, config: EncoderConfig = EncoderConfig(),
                  encoder: Optional[ItemEncoder] = None, verbose: int = 0,
                  log: Optional[Callable[[str], None]] = None
                  ) -> Tuple[ItemEncoder, dict]:
    """Trains an encoder on a catalog with the symmetric contrastive objective.

    Args:
      items: catalog rows (DataFrame or list of dicts, canonical item columns).
      config: hyperparameters (`EncoderConfig`); with `encoder` given, only its
        training fields are used (the architecture is the encoder's).
      encoder: continue training this encoder instead of building a new one.
      verbose: Keras `fit` verbosity.
      log: called with progress lines (catalog preparation, the text feature pass, each
        epoch), e.g. `print`; the feature pass over a large catalog takes minutes.

    Returns:
      `(encoder, summary)`; `summary` (also stored as `encoder.metadata["training"]`)
      holds row counts per bad-row reason, pairs used, steps, seconds, loss per epoch,
      the final temperature and the cost mode ("cached_features" or "end_to_end").

    Raises:
      DataError: no row has a usable pair (title + description/category, or an image).
    """
    import keras
    from dmgin_tf.errors import DataError

    t0 = time.time()
    _check_pairs(items)
    if encoder is None:
        encoder = build_encoder(config, corpus=training_corpus(items))
    # Architecture (sequence length, image size) comes from the encoder; training
    # settings (epochs, steps, batch, learning rate, fine-tuning depth) from `config`.
    if encoder.backbone == "minilm":
        from transform.encoder.text_tower import set_trainable_blocks
        set_trainable_blocks(encoder.model.text_tower.backbone, config.minilm_trainable_blocks)
    prepared = prepare_catalog(items, encoder.preprocessor, encoder.config.image_size,
                               views=TEXT_VIEWS, with_images=True)
    inputs = prepared.inputs
    has_image = inputs[HAS_IMAGE] & prepared.has_text
    text_pair = inputs[TEXT_PAIR]
    usable = text_pair | has_image
    if not usable.any():  # e.g. every image failed to decode
        raise DataError(f"encoder training: none of {prepared.report.rows} catalog rows has a "
                        "title together with a description/category, or a decodable image")
    idx = np.flatnonzero(usable)
    x = {TEXT_PAIR: text_pair[idx], HAS_IMAGE: has_image[idx]}
    cached = encoder.backbone == "minilm" and config.minilm_trainable_blocks == 0
    feature_seconds = 0.0
    if log is not None:
        log(f"encoder: {len(idx):,} of {prepared.report.rows:,} catalog rows usable "
            f"({int(has_image[idx].sum()):,} with an image); "
            + ("text features of the frozen backbone first" if cached else "training end to end"))
    if cached:
        tf0 = time.time()
        for view in TEXT_VIEWS:
            if view == FULL_VIEW and not has_image.any():
                continue  # the full view is only paired with images
            x[f"{view}_features"] = text_features(
                encoder, inputs[f"{view}_token_ids"][idx], inputs[f"{view}_padding_mask"][idx],
                batch_size=max(config.batch_size, 64))
        feature_seconds = time.time() - tf0
        if log is not None:
            log(f"encoder: text features done ({feature_seconds:.0f} s)")
    else:
        for view in TEXT_VIEWS:
            if view == FULL_VIEW and not has_image.any():
                continue
            x[f"{view}_token_ids"] = inputs[f"{view}_token_ids"][idx]
            x[f"{view}_padding_mask"] = inputs[f"{view}_padding_mask"][idx]
    if has_image.any():
        x[IMAGE] = inputs[IMAGE][idx]

    n = len(idx)
    batch_size = min(config.batch_size, n) if n >= 2 else 2
    steps_per_epoch = max(1, n // batch_size)
    epochs = config.epochs
    callbacks = []
    limit = None
    if config.max_steps:
        epochs = min(epochs, math.ceil(config.max_steps / steps_per_epoch)) or 1
        limit = _StepLimit(config.max_steps)
        callbacks.append(limit)
    keras.utils.set_random_seed(config.seed)
    model = encoder.model
    total_steps = min(epochs * steps_per_epoch, config.max_steps or epochs * steps_per_epoch)
    # Tracing a BERT train step takes ~15 s on a busy 2-core CPU and XLA-compiling it
    # longer: short runs (tests, tiny catalogs) are cheaper eagerly.
    eager = total_steps <= EAGER_MAX_STEPS
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), jit_compile=False,
                  run_eagerly=eager)
    tfit = time.time()
    if log is not None:
        callbacks.append(_epoch_lines(log, epochs, t0))
    history = model.fit(_batches(x, batch_size, config.seed), epochs=epochs,
                        verbose=verbose, callbacks=callbacks)
    fit_seconds = time.time() - tfit
    steps = limit.steps if limit is not None else epochs * steps_per_epoch
    summary = {
        "mode": "cached_features" if cached else "end_to_end",
        "backbone": encoder.backbone,
        "catalog": prepared.report.to_dict(),
        "pairs": {"rows": n, "text_pairs": int(text_pair[idx].sum()),
                  "image_pairs": int(has_image[idx].sum())},
        "epochs_run": len(history.history.get("loss", [])),
        "steps": int(steps),
        "batch_size": batch_size,
        "loss": [float(v) for v in history.history.get("loss", [])],
        "temperature": float(1.0 / np.exp(min(float(model.logit_scale.numpy()), math.log(100)))),
        "feature_seconds": round(feature_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "total_seconds": round(time.time() - t0, 2),
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
    }
    encoder.metadata["training"] = summary
    _LOG.info("encoder trained: %s", {k: summary[k] for k in ("mode", "steps", "fit_seconds")})
    return encoder, summary

