"""Versioned encoder directories: `save_encoder` / `load_encoder`.

Layout (one version per sub-directory, like TF Serving's `<base>/<version>/`)::

    <base>/<version>/
        manifest.json        format, version, created_at (UTC), backbone, embedding_dim,
                             sequence_length, model config, training summary
        encoder_config.json  the `EncoderConfig` used
        vocab.txt            WordPiece vocabulary, one token per line (id = line number)
        model.weights.h5     all weights (Keras 3 `.weights.h5`)

`load_encoder(<base>)` picks the highest version; `load_encoder(<base>/<version>)` a
given one. A version directory is written under a temporary name and renamed, so a
reader never sees a half-written encoder. Loading needs neither MiniLM nor network:
the architecture comes from the manifest, the weights from the `.weights.h5` file.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import time
from typing import Optional

from dmgin_tf.errors import DmginError
from transform.encoder.config import EncoderConfig
from transform.encoder.item_encoder import ItemEncoder, build_model

FORMAT = "dmgin-item-encoder"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG_FILE = "encoder_config.json"
VOCAB_FILE = "vocab.txt"
WEIGHTS_FILE = "model.weights.h5"


def save_encoder(encoder: ItemEncoder, base_dir, version: Optional[int] = None) -> pathlib.Path:
    """Writes `encoder` as a new version under `base_dir`; returns the version dir.

    Args:
      encoder: the encoder to save.
      base_dir: parent directory (created).
      version: integer version; default = current Unix time, bumped past existing ones.
    """
    base = pathlib.Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    existing = list_versions(base)
    if version is None:
        version = max([int(time.time())] + [v + 1 for v in existing])
    elif version in existing:
        raise DmginError(f"{base / str(version)}: encoder version {version} already exists")
    tmp = base / f".tmp-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": int(version),
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backbone": encoder.backbone,
            "embedding_dim": encoder.embedding_dim,
            "sequence_length": encoder.config.sequence_length,
            "vocabulary_size": len(encoder.preprocessor.vocabulary),
            "model": encoder.model.get_config(),
            "training": encoder.metadata.get("training", {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        (tmp / CONFIG_FILE).write_text(json.dumps(encoder.config.to_dict(), indent=1))
        with open(tmp / VOCAB_FILE, "w", encoding="utf-8") as f:
            for token in encoder.preprocessor.vocabulary:
                f.write(token + "\n")
        encoder.model.save_weights(str(tmp / WEIGHTS_FILE))
        target = base / str(version)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    encoder.metadata.update(version=int(version), created_at=manifest["created_at"],
                            path=str(target))
    return target


def list_versions(base_dir) -> list:
    """Sorted integer versions of complete encoders under `base_dir`."""
    base = pathlib.Path(base_dir)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir()
                  if p.name.isdigit() and (p / MANIFEST).is_file())


def resolve_version_dir(path) -> pathlib.Path:
    """`path` itself if it holds a manifest, else its highest version sub-directory."""
    path = pathlib.Path(path)
    if (path / MANIFEST).is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise DmginError(f"{path}: no encoder found (expected {MANIFEST} or "
                         f"<version>/{MANIFEST} written by `dmgin encoder train`)")
    return path / str(versions[-1])


def load_encoder(path) -> ItemEncoder:
    """Loads an encoder saved by `save_encoder` (a base dir → its latest version)."""
    from transform.encoder import image_tower, model, text_tower  # noqa: F401  (registers classes)
    from transform.encoder.text_tower import TextPreprocessor

    vdir = resolve_version_dir(path)
    manifest = json.loads((vdir / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise DmginError(f"{vdir / MANIFEST}: format={manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DmginError(f"{vdir / MANIFEST}: format_version={manifest['format_version']} is "
                         f"newer than this dmgin-tf reads ({FORMAT_VERSION})")
    config = EncoderConfig.from_dict(json.loads((vdir / CONFIG_FILE).read_text()))
    with open(vdir / VOCAB_FILE, encoding="utf-8") as f:
        vocabulary = [line.rstrip("\n") for line in f]
    net = model.MultimodalEncoder.from_config(manifest["model"])
    build_model(net, config)
    net.load_weights(str(vdir / WEIGHTS_FILE))
    preprocessor = TextPreprocessor(vocabulary, config.sequence_length, lowercase=True)
    metadata = {k: manifest[k] for k in ("version", "created_at", "training") if k in manifest}
    metadata["path"] = str(vdir)
    return ItemEncoder(net, preprocessor, config, manifest["backbone"], metadata)
