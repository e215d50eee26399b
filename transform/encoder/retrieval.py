"""The encoder's retrieval check: title → description/category view recall@k on
held-out items.

For every held-out item with both views, the query is its title view and the
candidates are the *distinct* context views ("description. category") of the held-out
items; a query hits when its own context view is among the k nearest candidates
(cosine). Deduplicating candidates matters on MovieLens, where hundreds of movies
share a context like "Drama": identical texts are indistinguishable, so they count as
one candidate rather than as misses. Chance level is ≈ k / #candidates.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from transform.encoder.catalog import prepare_catalog
from transform.encoder.item_encoder import ItemEncoder, text_features
from transform.encoder.model import CONTEXT_VIEW, TITLE_VIEW, l2_normalize


def split_items(items, holdout_fraction: float = 0.2, seed: int = 0) -> Tuple[object, object]:
    """Random item split (items are not time-ordered) → `(train_df, heldout_df)`."""
    rng = np.random.default_rng(seed)
    mask = rng.random(len(items)) < holdout_fraction
    return items[~mask].reset_index(drop=True), items[mask].reset_index(drop=True)


def _view_vectors(encoder: ItemEncoder, inputs: dict, view: str, idx, projected: bool,
                  batch_size: int) -> np.ndarray:
    feats = text_features(encoder, inputs[f"{view}_token_ids"][idx],
                          inputs[f"{view}_padding_mask"][idx], batch_size)
    if projected:
        out = [np.asarray(encoder.model.project_text(feats[s:s + batch_size]))
               for s in range(0, len(feats), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, encoder.embedding_dim), np.float32)
    return np.asarray(l2_normalize(feats))


def view_recall(encoder: ItemEncoder, items, ks=(1, 10), projected: bool = True,
                batch_size: int = 256) -> Dict[str, float]:
    """Recall@k of title → context retrieval over `items` (see module doc).

    Args:
      encoder: the encoder to score.
      items: held-out catalog rows.
      ks: cut-offs.
      projected: True = the shared space (heads applied); False = the text tower's
        mean-pooled output, L2-normalised (e.g. "MiniLM frozen, no training").

    Returns:
      `{"queries": n, "candidates": m, "recall@k": ..., "mrr": ...}`.
    """
    from transform.encoder.catalog import item_texts
    from dmgin_tf import features as F
    prepared = prepare_catalog(items, encoder.preprocessor, encoder.config.image_size,
                               views=(TITLE_VIEW, CONTEXT_VIEW), with_images=False)
    idx = np.flatnonzero(prepared.inputs["text_pair"])
    rows = items.to_dict("records") if hasattr(items, "to_dict") else list(items)
    by_id = {str(r[F.ITEM_ID]): r for r in rows}
    contexts = [item_texts(by_id[i].get(F.TITLE), by_id[i].get(F.DESCRIPTION),
                           by_id[i].get(F.CATEGORY))[CONTEXT_VIEW] for i in prepared.item_ids[idx]]
    uniq, first, target = np.unique(np.array(contexts, dtype=object), return_index=True,
                                    return_inverse=True)
    q = _view_vectors(encoder, prepared.inputs, TITLE_VIEW, idx, projected, batch_size)
    c = _view_vectors(encoder, prepared.inputs, CONTEXT_VIEW, idx[first], projected, batch_size)
    sims = q @ c.T                                               # [n, m]
    own = sims[np.arange(len(idx)), target]
    rank = (sims > own[:, None]).sum(axis=1)                     # 0 = best
    out = {"queries": int(len(idx)), "candidates": int(len(uniq))}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(rank < k)) if len(idx) else 0.0
    out["mrr"] = float(np.mean(1.0 / (rank + 1))) if len(idx) else 0.0
    return out
