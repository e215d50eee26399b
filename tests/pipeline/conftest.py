"""Shared state of the pipeline tests: one tiny real slice and one pipeline root per
module, so later tests reuse earlier runs' cached components and MLMD history."""
from __future__ import annotations

import os

import pytest

from dmgin_tf.config import Config

# Tiny everything: 30 Taobao users of the embedded sample, a small model, one epoch.
TINY = {
    "data": {"dataset": "taobao", "max_history": 64},
    "grouping": {"key": "category"},
    "model": {"history_length": 32, "max_groups": 8, "max_per_group": 4, "embedding_dim": 8,
              "num_heads": 2, "inter_layers": 1, "mlp_units": [16], "attention_units": [16]},
    "train": {"epochs": 3, "batch_size": 128, "jit_compile": False,
              "early_stopping_patience": 0},
    "beam": {"direct_num_workers": 1, "direct_running_mode": "in_memory"},
    # min_auc: a model trained on random labels scores ~0.5; the real slice gives ~0.7.
    "pipeline": {"name": "dmgin-test", "min_auc": 0.6, "max_auc_drop": 0.05,
                 "max_gauc_drop": 0.05},
}
USERS = 30


def tiny_config() -> Config:
    return Config.from_dict(TINY)


@pytest.fixture(scope="session")
def spans(tmp_path_factory):
    """data_root with span-1 (first 70% of the slice's time range) and span-2 (all)."""
    from tfx_pipeline.runner import prepare_span, split_into_spans
    base = tmp_path_factory.mktemp("pipeline_data")
    converted = prepare_span(tiny_config(), str(base / "converted"), 0)
    data_root = str(base / "spans")
    split_into_spans(converted, data_root, [0.7, 1.0], max_users=USERS)
    return data_root


@pytest.fixture(scope="session")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline_run")
    return {"pipeline_root": str(base / "pipeline"), "serving_base": str(base / "serving")}


def served_versions(serving_base: str, name: str = "dmgin") -> list:
    path = os.path.join(serving_base, name)
    return sorted(int(v) for v in os.listdir(path) if v.isdigit()) if os.path.isdir(path) else []
