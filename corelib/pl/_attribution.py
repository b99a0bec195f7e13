"""Plots of attribution results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, wrapped


def important_genes(shares: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Stacked bars of the share of units by number of important genes, one bar per threshold (Fig. 2C).

    Parameters
    ----------
    shares
        From :func:`corelib.tl.attribution.important_gene_shares` (bins x thresholds).
    ax
        Axes to draw on (default: a new figure).
    """
    ax = new_axes(ax, (5, 3.5))
    bottom = np.zeros(shares.shape[1])
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(shares)))
    x = range(shares.shape[1])
    for label, color in zip(shares.index, colors, strict=True):
        ax.bar(x, shares.loc[label], bottom=bottom, color=color, label=f"{label} genes")
        bottom += shares.loc[label].to_numpy()
    ax.set_xticks(x, wrapped(shares.columns))
    ax.set_ylabel("fraction of units")
    ax.set_title(f"Important genes per unit (n={shares.attrs.get('n_units', '?')})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return ax
