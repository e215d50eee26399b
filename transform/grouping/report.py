"""Grouping report: group sizes (table + histogram PNG), example titles per group, and
purity against the items' category, as Markdown.

Purity = Σ_g (items of g's most common category) / items with a category — 1.0 when
every group is category-pure; a category-blind random grouping scores about the share
of the most common category per group. Reported next to the number of categories so it
can be read (K groups over C categories cannot be purer than allowed by sizes).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pandas as pd

from dmgin_tf.features import CATEGORY, ITEM_ID, TITLE

GROUP_ID = "group_id"
REPORT_MD = "report.md"
SIZES_PNG = "group_sizes.png"


def purity(groups: pd.Series, categories: pd.Series) -> float:
    """Weighted purity of `groups` w.r.t. `categories` (aligned Series; empty/NaN
    categories are ignored). NaN when no item has a category."""
    df = pd.DataFrame({"g": groups.to_numpy(), "c": categories.to_numpy()})
    df = df[df["c"].notna() & (df["c"].astype(str).str.len() > 0)]
    if df.empty:
        return float("nan")
    top = df.groupby(["g", "c"]).size().groupby(level=0).max()
    return float(top.sum() / len(df))


def write_report(output_dir: str, groups: pd.DataFrame, items: Optional[pd.DataFrame] = None,
                 *, title: str = "Interest grouping", examples_per_group: int = 5,
                 groups_shown: int = 20, facts: Optional[dict] = None) -> str:
    """Writes ``report.md`` and ``group_sizes.png`` into `output_dir`; returns the md path.

    Args:
      groups: DataFrame ``item_id``, ``group_id`` (one row per item).
      items: optional canonical items (``item_id``, ``title``, ``category``) for example
        titles and purity.
      facts: extra key → value lines (iterations, inertia, runner, ...).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    sizes = groups.groupby(GROUP_ID).size().sort_values(ascending=False)
    lines = [f"# {title}", ""]
    lines += [f"- items: {len(groups)}", f"- non-empty groups: {len(sizes)}",
              f"- group size min / median / max: {int(sizes.min())} / "
              f"{float(sizes.median()):g} / {int(sizes.max())}"]
    for key, value in (facts or {}).items():
        lines.append(f"- {key}: {value}")
    merged = groups
    if items is not None and ITEM_ID in items.columns:
        cols = [c for c in (ITEM_ID, TITLE, CATEGORY) if c in items.columns]
        merged = groups.merge(items[cols].drop_duplicates(ITEM_ID), on=ITEM_ID, how="left")
        if CATEGORY in merged.columns:
            p = purity(merged[GROUP_ID], merged[CATEGORY])
            n_cat = merged[CATEGORY].replace("", np.nan).nunique()
            lines.append(f"- purity vs category: {p:.3f} ({n_cat} categories)")
    lines += ["", f"![group sizes]({SIZES_PNG})", "",
              f"## Largest {min(groups_shown, len(sizes))} groups", ""]
    has_titles = TITLE in merged.columns and merged[TITLE].fillna("").str.len().gt(0).any()
    has_cat = CATEGORY in merged.columns
    header = "| group | items |" + (" top category (share) |" if has_cat else "") + \
        (" example titles |" if has_titles else " example items |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for g, n in sizes.head(groups_shown).items():
        sub = merged[merged[GROUP_ID] == g]
        row = f"| {g} | {n} |"
        if has_cat:
            vc = sub[CATEGORY].replace("", np.nan).dropna().value_counts()
            row += (f" {vc.index[0]} ({vc.iloc[0] / len(sub):.0%}) |" if len(vc) else " – |")
        col = TITLE if has_titles else ITEM_ID
        ex = [str(t).replace("|", "/")[:60] for t in sub[col].fillna("").head(examples_per_group)]
        row += " " + "; ".join(ex) + " |"
        lines.append(row)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sizes.to_numpy(), bins=min(50, max(5, len(sizes) // 2)))
    ax.set_xlabel("items per group")
    ax.set_ylabel("groups")
    ax.set_title(f"{len(sizes)} groups, {len(groups)} items")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, SIZES_PNG), dpi=100)
    plt.close(fig)
    path = os.path.join(output_dir, REPORT_MD)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
