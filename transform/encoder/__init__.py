"""Multimodal item encoder (docs/encoder.md): text tower (MiniLM or scratch BERT), image tower,
projection heads, CLIP-style contrastive training, save/load and batch embedding.

Public API::

    from transform.encoder import (EncoderConfig, build_encoder, train_encoder,
                                   save_encoder, load_encoder, embed_items)
"""
from transform.encoder.config import EncoderConfig
from transform.encoder.item_encoder import (ItemEncoder, build_encoder, embed_items,
                                            embed_items_with_report)

__all__ = ["EncoderConfig", "ItemEncoder", "build_encoder", "embed_items",
           "embed_items_with_report", "train_encoder", "save_encoder", "load_encoder"]


def __getattr__(name):  # lazy: train/io pull in more of Keras
    if name == "train_encoder":
        from transform.encoder.train import train_encoder
        return train_encoder
    if name in ("save_encoder", "load_encoder"):
        from transform.encoder import io
        return getattr(io, name)
    raise AttributeError(name)
