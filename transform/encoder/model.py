"""The multimodal item encoder: two towers, projection heads, symmetric InfoNCE.

CLIP-style training (Radford et al. 2021) adapted to catalogs where images are
optional (docs/design.md: Data formats):

* items with an image: image ↔ full text ("title. description. category");
* items with a title and a description/category: title ↔ "description. category"
  (two text views of the same item), so text-only catalogs train too.

Both terms are symmetric InfoNCE with one learnable temperature; a term whose rows are
all absent in a batch contributes 0. The item embedding used downstream is
`normalize(text(full) [+ image])` in the shared space, `[N, projection_dim]`.
"""
from __future__ import annotations

import math

import keras
from keras import ops

# Names of the text views (model input keys are `<view>_token_ids`, `<view>_padding_mask`
# or, on the cached-feature path, `<view>_features`).
TITLE_VIEW = "title"
CONTEXT_VIEW = "context"      # description + category
FULL_VIEW = "full"            # title + description + category: the item's text
TEXT_VIEWS = (TITLE_VIEW, CONTEXT_VIEW, FULL_VIEW)
IMAGE = "image"
HAS_IMAGE = "has_image"
TEXT_PAIR = "text_pair"       # [B] bool: both title and context views are non-empty
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clip on the learnable inverse temperature


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, eps) along `axis` (keras.ops, any backend)."""
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), epsilon ** 2))
    return x / norm


def contrastive_loss(a, b, logit_scale, valid=None):
    """Symmetric InfoNCE between paired rows of `a` and `b`.

    Args:
      a, b: `[B, D]` L2-normalised embeddings; row i of `a` pairs with row i of `b`.
      logit_scale: scalar, log of the inverse temperature (logits = exp(s) · a·bᵀ).
      valid: optional `[B]` bool; invalid rows are neither queries nor negatives.

    Returns:
      Scalar float32: ½ (CE(a→b) + CE(b→a)) averaged over valid rows; 0 when no row is
      valid.
    """
    a, b = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
    scale = ops.exp(ops.minimum(ops.cast(logit_scale, a.dtype), MAX_LOGIT_SCALE))
    logits = scale * ops.matmul(a, ops.transpose(b))                 # [B, B]
    n = ops.shape(logits)[0]
    if valid is None:
        valid = ops.ones((n,), dtype="bool")
    validf = ops.cast(valid, logits.dtype)
    # Invalid columns get -1e9 so they never act as negatives.
    col_penalty = (1.0 - validf) * -1e9
    diag = ops.diagonal(logits)
    lse_rows = ops.logsumexp(logits + col_penalty[None, :], axis=1)   # a → b
    lse_cols = ops.logsumexp(logits + col_penalty[:, None], axis=0)   # b → a
    per_row = 0.5 * ((lse_rows - diag) + (lse_cols - diag))
    count = ops.sum(validf)
    return ops.sum(per_row * validf) / ops.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="dmgin_tf")
class ProjectionHead(keras.layers.Layer):
    """Tower output → shared space: linear + residual GELU MLP, then L2 normalisation.

    Args:
      output_dim: D of the shared space.
      hidden_dim: width of the MLP branch.

    Call: `[B, H]` → `[B, D]` float32, unit norm rows.
    """

    def __init__(self, output_dim: int, hidden_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = int(output_dim)
        self.hidden_dim = int(hidden_dim)
        self.linear = keras.layers.Dense(self.output_dim, name="linear")
        self.hidden = keras.layers.Dense(self.hidden_dim, activation="gelu", name="hidden")
        self.out = keras.layers.Dense(self.output_dim, name="out")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.linear.build(input_shape)
        self.hidden.build(input_shape)
        self.out.build((input_shape[0], self.hidden_dim))
        self.built = True

    def call(self, x):
        x = self.norm(x)
        return l2_normalize(self.linear(x) + self.out(self.hidden(x)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, hidden_dim=self.hidden_dim)
        return config


@keras.saving.register_keras_serializable(package="dmgin_tf")
class MultimodalEncoder(keras.Model):
    """Text tower + image tower + projection heads + learnable temperature.

    Args:
      text_tower: `TextTower` (`[B, L]` tokens → `[B, H_t]`).
      image_tower: `ImageTower` (`[B, S, S, 3]` → `[B, H_i]`).
      projection_dim, projection_hidden_dim: shared space D and head MLP width.
      temperature_init: initial softmax temperature (CLIP: 0.07).

    Call arguments (`inputs` dict, every entry optional):
      `<view>_token_ids` `[B, L]` int32 + `<view>_padding_mask` `[B, L]` bool, or
      `<view>_features` `[B, H_t]` (cached tower output) for view in `TEXT_VIEWS`;
      `image` `[B, S, S, 3]` float32; `has_image` `[B]` bool; `text_pair` `[B]` bool.

    Returns:
      dict: each present view → `[B, D]` unit vectors, plus the masks passed through.
      `compute_loss` turns that into the contrastive objective, so `fit` trains it on
      any Keras backend.
    """

    def __init__(self, text_tower, image_tower, projection_dim: int = 128,
                 projection_hidden_dim: int = 256, temperature_init: float = 0.07, **kwargs):
        super().__init__(**kwargs)
        self.text_tower = text_tower
        self.image_tower = image_tower
        self.projection_dim = int(projection_dim)
        self.projection_hidden_dim = int(projection_hidden_dim)
        self.temperature_init = float(temperature_init)
        self.text_head = ProjectionHead(projection_dim, projection_hidden_dim, name="text_head")
        self.image_head = ProjectionHead(projection_dim, projection_hidden_dim, name="image_head")
        self.logit_scale = self.add_weight(
            name="logit_scale", shape=(),
            initializer=keras.initializers.Constant(math.log(1.0 / temperature_init)))

    # -- pieces used by training, embedding and the retrieval check -------------------
    def text_features(self, token_ids, padding_mask, training=None):
        """`[B, L]` tokens → `[B, H_t]` tower output (before the head)."""
        return self.text_tower(token_ids, padding_mask, training=training)

    def project_text(self, features):
        """`[B, H_t]` → `[B, D]` unit vectors."""
        return self.text_head(features)

    def encode_image(self, images, training=None):
        """`[B, S, S, 3]` → `[B, D]` unit vectors."""
        return self.image_head(self.image_tower(images, training=training))

    def item_embedding(self, full_token_ids, full_padding_mask, images=None, has_image=None):
        """The catalog embedding: `normalize(text + image)` where an image exists.

        Returns `[B, D]` float32 unit vectors.
        """
        emb = self.project_text(self.text_features(full_token_ids, full_padding_mask,
                                                   training=False))
        if images is not None and has_image is not None:
            img = self.encode_image(images, training=False)
            emb = emb + img * ops.cast(has_image, emb.dtype)[:, None]
        return l2_normalize(emb)

    # -- Keras model API ---------------------------------------------------------------
    def call(self, inputs, training=None):
        out = {}
        for view in TEXT_VIEWS:
            if f"{view}_features" in inputs:
                feats = inputs[f"{view}_features"]
            elif f"{view}_token_ids" in inputs:
                feats = self.text_features(inputs[f"{view}_token_ids"],
                                           inputs[f"{view}_padding_mask"], training=training)
            else:
                continue
            out[view] = self.project_text(feats)
        if IMAGE in inputs:
            out[IMAGE] = self.encode_image(inputs[IMAGE], training=training)
        for key in (HAS_IMAGE, TEXT_PAIR):
            if key in inputs:
                out[key] = inputs[key]
        return out

    def contrastive_losses(self, outputs):
        """`(text_loss, image_loss)` scalars from `call` outputs (0 where absent)."""
        zero = ops.zeros((), dtype="float32")
        text_loss = image_loss = zero
        if TITLE_VIEW in outputs and CONTEXT_VIEW in outputs:
            text_loss = contrastive_loss(outputs[TITLE_VIEW], outputs[CONTEXT_VIEW],
                                         self.logit_scale, outputs.get(TEXT_PAIR))
        if IMAGE in outputs and FULL_VIEW in outputs:
            image_loss = contrastive_loss(outputs[IMAGE], outputs[FULL_VIEW],
                                          self.logit_scale, outputs.get(HAS_IMAGE))
        return text_loss, image_loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        text_loss, image_loss = self.contrastive_losses(y_pred)
        return text_loss + image_loss

    def get_config(self):
        return {
            "name": self.name,
            "text_tower": keras.saving.serialize_keras_object(self.text_tower),
            "image_tower": keras.saving.serialize_keras_object(self.image_tower),
            "projection_dim": self.projection_dim,
            "projection_hidden_dim": self.projection_hidden_dim,
            "temperature_init": self.temperature_init,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["text_tower"] = keras.saving.deserialize_keras_object(config["text_tower"])
        config["image_tower"] = keras.saving.deserialize_keras_object(config["image_tower"])
        return cls(**config)
