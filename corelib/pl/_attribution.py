"""Plots of attribution results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes
from corelib.tl.attribution.result import GENE_COUNT_BINS


def important_genes(counts: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Share of units by number of important genes, absolute and relative threshold (paper Fig. 2C).

    Parameters
    ----------
    counts
        From :func:`important_gene_counts`.
    ax
        Axes to draw on (default: a new figure).
    """
    ax = new_axes(ax, (5, 3.5))
    labels = ["0", "1-3", "4-10", "11-50", ">50"]
    shares = pd.DataFrame(
        {
            name: pd.cut(counts[col], GENE_COUNT_BINS, right=False, labels=labels).value_counts(
                normalize=True
            )
            for name, col in [
                ("score > threshold", "n_important"),
                ("relative to activation", "n_important_relative"),
            ]
        }
    ).loc[labels]
    bottom = np.zeros(shares.shape[1])
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(labels)))
    for label, color in zip(labels, colors, strict=True):
        ax.bar(shares.columns, shares.loc[label], bottom=bottom, color=color, label=f"{label} genes")
        bottom += shares.loc[label].to_numpy()
    ax.set_ylabel("fraction of units")
    ax.set_title(f"Important genes per unit (n={len(counts)})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return ax
