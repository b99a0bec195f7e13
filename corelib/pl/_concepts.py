"""Plots of metadata characterisation."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes
from corelib.tl.concepts import MIXED, NOT_ENOUGH


def call_shares(summary: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Stacked horizontal bars of call shares per SAE (paper Fig. 2B) from :func:`summarize_calls`."""
    calls = [c for c in summary.columns if c != "n_units"]
    ax = new_axes(ax, (7, 0.5 * len(summary) + 1.5))
    left = np.zeros(len(summary))
    colors = plt.get_cmap("tab10")
    for i, call in enumerate(calls):
        color = "lightgrey" if call == NOT_ENOUGH else ("darkgrey" if call == MIXED else colors(i))
        ax.barh(summary.index.astype(str), summary[call], left=left, label=call, color=color)
        left += summary[call].to_numpy()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of units")
    ax.invert_yaxis()
    ax.legend(frameon=False, bbox_to_anchor=(1.0, 1.0), loc="upper left", fontsize="small")
    return ax
