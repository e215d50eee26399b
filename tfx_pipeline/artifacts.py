"""Typed artifacts of our custom components (what flows between them in MLMD).

| artifact | produced by | payload under `uri` |
|---|---|---|
| `EncoderModel` | MultimodalEncoder | a versioned encoder dir (`transform.encoder.save_encoder`) |
| `ItemEmbeddings` | MultimodalEncoder | `embeddings/` Parquet (`item_id`, `embedding`) + `report.json` |
| `ItemGroups` | ItemGrouper | `item_groups.parquet` (`item_id`, `group_id` 2..), `centroids.npy` (cluster key), `report.md`, `grouping.json` |

Group ids follow docs/internals.md: 0 = padding, 1 = unknown, 2.. = groups; a k-means
cluster c (0-based, stable across retrains) is group id c + 2.
"""
from __future__ import annotations

import json
import os

from tfx.types.artifact import Artifact

# Type names follow KFP's schema-title rule (`<namespace>.<Name>`) and the span is an int
# *custom* property (`SPAN`, as TFX's SpanRangeStrategy reads it): the Kubeflow V2
# compiler accepts no typed properties on custom artifact types.
SPAN = "span"


class EncoderModel(Artifact):
    """Trained multimodal item encoder (or nothing when the mode is `external`/`skip`)."""
    TYPE_NAME = "dmgin.EncoderModel"


class ItemEmbeddings(Artifact):
    """item_id -> embedding table (from the encoder, or imported external embeddings)."""
    TYPE_NAME = "dmgin.ItemEmbeddings"


class ItemGroups(Artifact):
    """item -> interest group table, centroids and a report."""
    TYPE_NAME = "dmgin.ItemGroups"


GROUPS_FILE = "item_groups.parquet"
# What a trained model carries for the next run (training config, weights, item vocabulary),
# under <serving model>/assets.extra/ (tfx_pipeline.module.run_fn).
WARM_START_DIR = "dmgin_warmstart"
CENTROIDS_FILE = "centroids.npy"
GROUPING_INFO_FILE = "grouping.json"


def grouping_info(item_groups_uri: str) -> dict:
    """An ItemGroups artifact's `grouping.json` (key, span, kept / new ids, ...); {} when
    it has none."""
    path = os.path.join(item_groups_uri, GROUPING_INFO_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
