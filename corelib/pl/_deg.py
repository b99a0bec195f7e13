"""Plots of deletion curves."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, nothing
from corelib.tl.deg import deletion_auc


def deletion_curves(curves: pd.DataFrame, *, pairs: str | None = None, ax: Axes | None = None) -> Axes:
    """Mean and standard deviation over units of the deletion curves, one line per order (paper Fig. 8).

    Units with an empty order (no DEG gene passed the cut-off: a curve flat at 1 by construction) are left
    out of every line, as :func:`corelib.tl.deg.compare_auc` leaves them out, and an order empty for every unit
    is not drawn; the title says so.

    Parameters
    ----------
    curves
        From :func:`corelib.tl.deg.deletion_curves`, or :func:`corelib.tl.deg.deletion_table`.
    pairs
        The set of pairs to draw when ``curves`` has a ``pairs`` column (default: the first).
    ax
        Axes to draw on (default: a new figure).
    """
    ax = new_axes(ax, (5, 3.5))
    if curves.empty:
        return nothing(ax, "no attributed unit: no deletion curve")
    if "pairs" in curves:
        pairs = curves["pairs"].iloc[0] if pairs is None else pairs
        curves = curves[curves["pairs"] == pairs]
    has_genes = curves.groupby(["order", "unit"])["n_genes"].first().gt(0).unstack("unit")
    gone = has_genes.index[~has_genes.any(axis=1)]  # an order empty for every unit is not drawn at all
    empty = has_genes.columns[~has_genes.drop(gone).all(axis=0)]
    curves = curves[~curves["unit"].isin(empty) & ~curves["order"].isin(gone)]
    auc = deletion_auc(curves).mean()
    for name, df in curves.groupby("order", sort=False):
        stats = df.groupby("step")["activation"].agg(["mean", "std"])
        style = {"color": "grey", "ls": "--"} if name == "random" else {}
        ax.plot(stats.index, stats["mean"], label=f"{name} order (mean AUC {auc[name]:.3f})", **style)
        ax.fill_between(
            stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2, **style
        )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("genes set to counterfactual values")
    ax.set_ylabel("activation / prototype activation")
    where = f", {pairs} pairs" if pairs else ""
    left_out = f"; {len(empty)} with an empty order left out" if len(empty) else ""
    left_out += "".join(f"; {name} order empty for every unit" for name in gone)
    ax.set_title(f"Deletion curves ({curves['unit'].nunique()} units{where}{left_out})", fontsize=9)
    ax.legend()
    return ax
