"""Image tower: a small convolutional net trained from scratch, plus per-row decoding.

Neither shipped dataset has images (docs/design.md: Data formats), so the tower is small (three strided
conv blocks, ~0.1 M parameters at the default widths) and trained only on the items
that carry an image; the others skip the image loss. Decoding is per row and never
raises: broken bytes or a missing file give `None`, which the caller counts.
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np


def decode_image(value, image_size: int) -> Optional[np.ndarray]:
    """Decodes one catalog `image` cell to `[S, S, 3]` float32 in [0, 1], or None.

    Args:
      value: encoded image bytes (PNG/JPEG/GIF/BMP...), a file path (str, or UTF-8
        bytes that are not an image), or None/empty.
      image_size: S; the image is resized (aspect ratio not kept) to S × S.

    Returns:
      The array, or None when there is no image or it cannot be decoded/read.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return _decode_bytes(_read_path(value), image_size)
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
        return None
    value = bytes(value)
    arr = _decode_bytes(value, image_size)
    if arr is None and len(value) <= _MAX_PATH_BYTES:
        # The canonical `image` column is binary, so a path stored there arrives as
        # UTF-8 bytes (pandas → Parquet does this): try it as a path.
        try:
            arr = _decode_bytes(_read_path(value.decode("utf-8")), image_size)
        except UnicodeDecodeError:
            return None
    return arr


_MAX_PATH_BYTES = 4096


def _read_path(path: str) -> Optional[bytes]:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError):  # missing file, directory, NUL in name
        return None


def _decode_bytes(value: Optional[bytes], image_size: int) -> Optional[np.ndarray]:
    if not value:
        return None
    import io
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(value)) as img:
            img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


@keras.saving.register_keras_serializable(package="dmgin_tf")
class ImageTower(keras.layers.Layer):
    """Strided conv blocks + global average pooling.

    Args:
      filters: channels of each conv block (each halves the spatial size).
      image_size: S of the square input.

    Call arguments:
      images: `[B, S, S, 3]` float32 in [0, 1].

    Returns:
      `[B, filters[-1]]` float32.

    Example:
    >>> ImageTower(filters=(8, 16), image_size=32)(np.zeros((2, 32, 32, 3))).shape
    (2, 16)
    """

    def __init__(self, filters: Sequence[int] = (32, 64, 128), image_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.image_size = int(image_size)
        self.blocks = []
        for i, f in enumerate(self.filters):
            self.blocks.append(keras.layers.Conv2D(f, 3, strides=2, padding="same",
                                                   name=f"conv_{i}"))
            self.blocks.append(keras.layers.LayerNormalization(name=f"norm_{i}"))
            self.blocks.append(keras.layers.Activation("gelu", name=f"act_{i}"))
        self.pool = keras.layers.GlobalAveragePooling2D()

    @property
    def output_dim(self) -> int:
        return self.filters[-1]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.blocks:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, images, training=None):
        x = (images - 0.5) * 2.0  # centre pixel values
        for layer in self.blocks:
            x = layer(x)
        return self.pool(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), image_size=self.image_size)
        return config


def load_images(values: Sequence, image_size: int):
    """Decodes a column of image cells.

    Returns:
      `(images [N, S, S, 3] float32, has_image [N] bool, broken [N] bool)`; rows without
      a usable image are zeros with `has_image=False`; `broken` marks cells that held
      something (bytes or a path) that could not be decoded or read.
    """
    n = len(values)
    images = np.zeros((n, image_size, image_size, 3), dtype=np.float32)
    has = np.zeros((n,), dtype=bool)
    broken = np.zeros((n,), dtype=bool)
    for i, v in enumerate(values):
        present = v is not None and not (isinstance(v, float) and np.isnan(v)) and len(v) > 0
        if not present:
            continue
        arr = decode_image(v, image_size)
        if arr is None:
            broken[i] = True
        else:
            images[i] = arr
            has[i] = True
    return images, has, broken

