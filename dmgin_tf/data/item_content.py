"""Frozen item content vectors for the models: the catalog embedding, by model item id.

The multimodal encoder's catalog embedding (`dmgin encoder embed`, or your own through
`dmgin encoder import`) is keyed by the catalog's item id strings; the models index
items by model item id (catalog position + the reserved ids 0 = padding, 1 = unknown).
`item_content_table` lines the two up, so `model.item_content_dim` > 0 models can add
what an item *is* to what its id has learned — the path for items with few or no
training interactions.

Numpy only at use time (the table is a plain `[V, C]` array), so the JAX-only GPU host
loads the same `item_content.npy` the bundle ships.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dmgin_tf.errors import DataError
from dmgin_tf.features import NUM_RESERVED_IDS

ITEM_CONTENT_FILE = "item_content.npy"
MIN_COVERAGE = 0.5     # below this share of the catalog, the table is likely the wrong one


def item_content_table(catalog_item_ids: Sequence[str], embedding_ids: Sequence[str],
                       vectors: np.ndarray) -> np.ndarray:
    """float32 `[len(catalog) + NUM_RESERVED_IDS, C]`: row `NUM_RESERVED_IDS + i` is the
    vector of catalog item i; rows 0/1 and catalog items without a vector are zeros.

    Args:
        catalog_item_ids: `[N]` item id strings in catalog order (`items.parquet`).
        embedding_ids: `[E]` item ids of the embedding table. vectors: `[E, C]`.

    Raises:
        DataError: shapes disagree, non-finite vectors, duplicated embedding ids, or
            fewer than `MIN_COVERAGE` of the catalog items have a vector.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    embedding_ids = np.asarray([str(i) for i in embedding_ids], dtype=object)
    if vectors.ndim != 2 or len(vectors) != len(embedding_ids):
        raise DataError(f"item content: vectors of shape {vectors.shape} for "
                        f"{len(embedding_ids)} embedding ids; expected [ids, dim]")
    if not np.all(np.isfinite(vectors)):
        bad = embedding_ids[~np.all(np.isfinite(vectors), axis=1)][:3]
        raise DataError(f"item content: non-finite vectors for item_id {list(bad)}")
    import pandas as pd
    index = pd.Index(embedding_ids)
    if not index.is_unique:
        dup = index[index.duplicated()][:3]
        raise DataError(f"item content: item_id {list(dup)} appear more than once in the "
                        "embedding table")
    catalog = np.asarray([str(i) for i in catalog_item_ids], dtype=object)
    pos = index.get_indexer(catalog)
    found = pos >= 0
    if len(catalog) and found.mean() < MIN_COVERAGE:
        raise DataError(f"item content: only {int(found.sum())} of {len(catalog)} catalog "
                        f"items have a vector (e.g. item_id {catalog[~found][:3].tolist()} "
                        "are missing); is the embedding table of this catalog?")
    table = np.zeros((len(catalog) + NUM_RESERVED_IDS, vectors.shape[1]), np.float32)
    table[NUM_RESERVED_IDS:][found] = vectors[pos[found]]
    return table


def load_item_content(items_path: str, embeddings_path: str) -> np.ndarray:
    """`item_content_table` from a catalog (`items.parquet`) and an embedding table
    (`dmgin encoder embed|import` output, or its `embeddings/` directory)."""
    import pandas as pd
    from dmgin_tf.features import ITEM_ID
    from transform.embedding import read_embeddings
    items = pd.read_parquet(items_path, columns=[ITEM_ID])
    ids, vectors = read_embeddings(embeddings_path)
    return item_content_table(items[ITEM_ID].astype(str).tolist(), ids, vectors)
