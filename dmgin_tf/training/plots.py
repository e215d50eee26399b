"""Training-curve PNG (matplotlib, Agg); skipped with a note where matplotlib is absent
(the JAX-only GPU host)."""
from __future__ import annotations

from typing import List, Optional


def plot_history(rows: List[dict], path: str, title: str = "") -> Optional[str]:
    """Loss and validation AUC/GAUC per epoch -> PNG at `path`; returns the path, or None
    when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("loss", "train loss"), ("val_logloss", "val logloss")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, [float("nan") if v is None else v for v in values], "o-", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("logloss")
    for key, label in (("val_auc", "val AUC"), ("val_gauc", "val GAUC")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax_auc.plot(epochs, [float("nan") if v is None else v for v in values], "o-", label=label)
    ax_auc.set_xlabel("epoch")
    ax_auc.set_ylabel("AUC")
    for ax in (ax_loss, ax_auc):
        if ax.get_legend_handles_labels()[0]:   # a run without validation has no AUC lines
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
