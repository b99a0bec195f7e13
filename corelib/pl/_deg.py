"""Plots of deletion curves."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, nothing
from corelib.tl.deg import deletion_auc


def deletion_curves(curves: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Mean and standard deviation over units of the deletion curves, one line per order (paper Fig. 8).

    Parameters
    ----------
    curves
        From :func:`deletion_curves`.
    ax
        Axes to draw on (default: a new figure).
    """
    ax = new_axes(ax, (5, 3.5))
    if curves.empty:
        return nothing(ax, "no attributed unit: no deletion curve")
    auc = deletion_auc(curves).mean()
    for name, df in curves.groupby("order", sort=False):
        stats = df.groupby("step")["activation"].agg(["mean", "std"])
        ax.plot(stats.index, stats["mean"], label=f"{name} order (mean AUC {auc[name]:.3f})")
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("genes set to counterfactual values")
    ax.set_ylabel("activation / prototype activation")
    ax.set_title(f"Deletion curves ({curves['unit'].nunique()} units)")
    ax.legend()
    return ax
