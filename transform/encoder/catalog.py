"""Catalog rows → encoder inputs, per row, never crashing on a bad row.

Bad rows are handled one by one and counted in a `CatalogReport`:

* ``no_item_id``     – empty/missing item id: dropped (nothing to key the vector by);
* ``no_text``        – title, description and category all empty: embedded from the
  empty token sequence ``[CLS] [SEP]`` (one shared vector), excluded from training;
* ``truncated_text`` – the text is longer than `sequence_length` tokens (or
  `sequence_length × 16` characters): cut, embedded from its beginning;
* ``bad_image``      – image bytes/path that cannot be decoded or read: the image is
  dropped and the item is embedded from its text.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import numpy as np

from dmgin_tf import features as F
from transform.encoder.image_tower import load_images
from transform.encoder.model import CONTEXT_VIEW, FULL_VIEW, HAS_IMAGE, IMAGE, TEXT_PAIR, TITLE_VIEW

REASONS = ("no_item_id", "no_text", "truncated_text", "bad_image")
MAX_SAMPLES = 5  # item ids kept per reason in the report


@dataclasses.dataclass
class CatalogReport:
    """Row counts of one pass over a catalog; `merge` adds another pass (batches)."""
    rows: int = 0
    embedded: int = 0
    with_image: int = 0
    counts: Dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in REASONS})
    samples: Dict[str, List[str]] = dataclasses.field(
        default_factory=lambda: {r: [] for r in REASONS})

    def add(self, reason: str, item_ids: Sequence[str]) -> None:
        self.counts[reason] += len(item_ids)
        room = MAX_SAMPLES - len(self.samples[reason])
        if room > 0:
            self.samples[reason].extend(str(i) for i in item_ids[:room])

    def merge(self, other: "CatalogReport") -> "CatalogReport":
        self.rows += other.rows
        self.embedded += other.embedded
        self.with_image += other.with_image
        for r in REASONS:
            self.add(r, other.samples[r])
            self.counts[r] += other.counts[r] - len(other.samples[r])
        return self

    def to_dict(self) -> dict:
        return {"rows": self.rows, "embedded": self.embedded, "with_image": self.with_image,
                "counts": dict(self.counts), "samples": {k: list(v) for k, v in self.samples.items()}}


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def join_nonempty(parts: Sequence[str]) -> str:
    return ". ".join(p for p in parts if p)


def item_texts(title, description, category) -> Dict[str, str]:
    """The three text views of one item (empty strings where absent).

    >>> item_texts("Heat (1995)", "", "Action|Crime")["full"]
    'Heat (1995). Action|Crime'
    """
    t, d, c = _clean(title), _clean(description), _clean(category)
    return {TITLE_VIEW: t, CONTEXT_VIEW: join_nonempty([d, c]), FULL_VIEW: join_nonempty([t, d, c])}


@dataclasses.dataclass
class PreparedCatalog:
    """Encoder inputs for N kept rows.

    Attributes:
      item_ids: `[N]` object (str).
      inputs: dict of model inputs: `<view>_token_ids` `[N, L]` int32,
        `<view>_padding_mask` `[N, L]` bool for each requested view; `image`
        `[N, S, S, 3]` float32 and `has_image` `[N]` bool when images were requested;
        `text_pair` `[N]` bool (title and context both non-empty).
      has_text: `[N]` bool (False = `no_text` row).
      report: counts per reason.
      row_reasons: one list of bad-row reasons per *input* row (dropped rows included),
        so a distributed caller can write them out row by row.
      kept: `[N]` int, input row index of each kept row.
    """
    item_ids: np.ndarray
    inputs: Dict[str, np.ndarray]
    has_text: np.ndarray
    report: CatalogReport
    row_reasons: List[List[str]] = dataclasses.field(default_factory=list)
    kept: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))


def prepare_catalog(items, preprocessor, image_size: int,
                    views: Sequence[str] = (FULL_VIEW,), with_images: bool = True) -> PreparedCatalog:
    """Tokenizes and decodes a catalog (pandas DataFrame or list of row dicts).

    Args:
      items: rows with `item_id` and any of `title`, `description`, `category`, `image`
        (missing columns count as empty).
      preprocessor: `TextPreprocessor`.
      image_size: S for decoded images.
      views: which text views to tokenize (`FULL_VIEW` for embedding; all three for
        training).
      with_images: decode the `image` column.
    """
    rows = items.to_dict("records") if hasattr(items, "to_dict") else list(items)
    report = CatalogReport(rows=len(rows))
    raw_ids = [_clean(r.get(F.ITEM_ID)) for r in rows]
    keep = [i for i, iid in enumerate(raw_ids) if iid]
    if len(keep) < len(rows):
        report.add("no_item_id", [f"row {i}" for i, iid in enumerate(raw_ids) if not iid])
    rows = [rows[i] for i in keep]
    item_ids = np.array([raw_ids[i] for i in keep], dtype=object)

    texts = [item_texts(r.get(F.TITLE), r.get(F.DESCRIPTION), r.get(F.CATEGORY)) for r in rows]
    has_text = np.array([bool(t[FULL_VIEW]) for t in texts], dtype=bool)
    report.add("no_text", list(item_ids[~has_text]))
    inputs: Dict[str, np.ndarray] = {}
    truncated = np.zeros(len(rows), dtype=bool)
    for view in views:
        ids, mask, cut = preprocessor([t[view] for t in texts])
        inputs[f"{view}_token_ids"], inputs[f"{view}_padding_mask"] = ids, mask
        truncated |= cut
    report.add("truncated_text", list(item_ids[truncated]))
    inputs[TEXT_PAIR] = np.array([bool(t[TITLE_VIEW]) and bool(t[CONTEXT_VIEW]) for t in texts])
    if with_images:
        images, has_image, broken = load_images([r.get(F.IMAGE) for r in rows], image_size)
        inputs[IMAGE], inputs[HAS_IMAGE] = images, has_image
        report.add("bad_image", list(item_ids[broken]))
        report.with_image = int(has_image.sum())
    report.embedded = len(rows)
    row_reasons: List[List[str]] = [[] for _ in raw_ids]
    for i, iid in enumerate(raw_ids):
        if not iid:
            row_reasons[i].append("no_item_id")
    flags = {"no_text": ~has_text, "truncated_text": truncated}
    if with_images:
        flags["bad_image"] = broken
    for reason, mask in flags.items():
        for j in np.flatnonzero(mask):
            row_reasons[keep[j]].append(reason)
    return PreparedCatalog(item_ids, inputs, has_text, report, row_reasons,
                           np.asarray(keep, dtype=np.int64))
