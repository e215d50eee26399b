"""Tiny catalogs and a tiny encoder config shared by the encoder/embedding tests."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from transform.encoder.config import EncoderConfig

TINY = dict(text_backbone="scratch", vocabulary_size=300, sequence_length=64,
            scratch_layers=1, scratch_hidden_dim=32, scratch_heads=2,
            scratch_intermediate_dim=64, image_size=16, image_filters=(8, 16),
            projection_dim=16, projection_hidden_dim=32, epochs=2, batch_size=4, seed=0)


def tiny_config(**changes) -> EncoderConfig:
    return EncoderConfig.from_dict({**TINY, **changes})


def png_bytes(color, size=20, fmt="PNG") -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), tuple(color))
    # a diagonal stripe so images are not constant
    px = img.load()
    for i in range(size):
        px[i, i] = (255 - color[0], 255 - color[1], 255 - color[2])
    img.save(buf, fmt)
    return buf.getvalue()


def tiny_items() -> pd.DataFrame:
    """8 items: 3 with images (PNG/JPEG), the rest text-only; all valid rows."""
    return pd.DataFrame({
        "item_id": [f"i{k}" for k in range(8)],
        "title": ["Toy Story (1995)", "Heat (1995)", "Up (2009)", "Cars (2006)",
                  "Alien (1979)", "Fargo (1996)", "Jaws (1975)", "Brave (2012)"],
        "description": ["pixar, toys", "robbery, los angeles", "balloon, old man", "race",
                        "space, monster", "snow, crime", "shark, beach", "scotland, bear"],
        "category": ["Animation|Children", "Action|Crime", "Animation|Adventure",
                     "Animation|Comedy", "Horror|Sci-Fi", "Crime|Drama", "Thriller",
                     "Animation|Fantasy"],
        "image": [png_bytes((200, 30, 30)), None, png_bytes((30, 200, 30), fmt="JPEG"), None,
                  png_bytes((30, 30, 200)), None, None, None],
    })


def bad_items(tmp_path) -> pd.DataFrame:
    """One row per bad-row kind, plus two good rows (one image given as a file path)."""
    path = tmp_path / "img.png"
    path.write_bytes(png_bytes((10, 120, 240)))
    return pd.DataFrame({
        "item_id": ["ok1", "notext", "broken", "huge", "", "ok2", "missingpath"],
        "title": ["Good movie", None, "Broken image", "Huge " + "word " * 5000, "no id", "Path image",
                  "Missing file"],
        "description": ["fine", "", "bytes", "text", "x", "image by path", "y"],
        "category": ["Drama", None, "Drama", "Drama", "Drama", "Comedy", "Drama"],
        "image": [None, None, b"\x89PNG not really an image", None, None, str(path),
                  str(tmp_path / "nope.png")],
    })


_SHARED = {}


def shared_encoder():
    """One tiny scratch encoder per test process (building one costs ~10 s on CI).

    Tests may train it further; none relies on its exact weights.
    """
    if "enc" not in _SHARED:
        from transform.encoder import build_encoder
        from transform.encoder.train import training_corpus
        _SHARED["enc"] = build_encoder(tiny_config(), corpus=training_corpus(tiny_items()))
    return _SHARED["enc"]
