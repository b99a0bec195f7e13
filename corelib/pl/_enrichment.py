"""Plots of GSEA results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes
from corelib.tl.enrichment import ANNOTATIONS, STRONG_P, WEAK_P


def annotation_shares(units: Mapping[str, pd.DataFrame], *, ax: Axes | None = None) -> Axes:
    """Stacked bars of strong / weak / no annotation per group of units (paper Fig. 3A.b).

    Parameters
    ----------
    units
        Group name (e.g. ``"concepts"``, ``"neurons"``) -> :attr:`GseaResult.units` table (column
        ``annotation``). Skipped units count as "none".
    ax
        Axes to draw on; a new figure when omitted.

    Returns
    -------
    The Axes.
    """
    ax = new_axes(ax, (1.6 + 1.2 * len(units), 3.5))
    shares = pd.DataFrame(
        {name: t["annotation"].value_counts(normalize=True) for name, t in units.items()}, index=ANNOTATIONS
    ).fillna(0.0)
    colors = {"strong": "#1b7837", "weak": "#a6dba0", "none": "#d9d9d9"}
    bottom = np.zeros(shares.shape[1])
    for level in ANNOTATIONS[::-1]:
        label = {"strong": f"strong (p < {STRONG_P:g})", "weak": f"weak (p < {WEAK_P:g})"}.get(level, level)
        ax.bar(shares.columns, shares.loc[level], bottom=bottom, color=colors[level], label=label)
        bottom += shares.loc[level].to_numpy()
    for i, table in enumerate(units.values()):
        ax.text(i, 1.01, f"n={len(table)}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of units")
    ax.set_title("Attribution-based GSEA annotation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return ax


def top_terms(terms: pd.DataFrame, unit: Any, *, n: int = 10, ax: Axes | None = None) -> Axes:
    """Horizontal bars of -log10(p) for one unit's top terms, with the weak/strong thresholds.

    Parameters
    ----------
    terms
        :attr:`GseaResult.terms` (columns ``unit, rank, term, nes, pval``).
    unit
        The unit id.
    n
        Number of terms shown.
    ax
        Axes to draw on; a new figure when omitted.

    Returns
    -------
    The Axes.
    """
    rows = terms[terms["unit"] == unit].sort_values("rank").head(n)
    if rows.empty:
        raise ValueError(f"Unit {unit!r} has no enriched term in this table (skipped or nothing enriched).")
    ax = new_axes(ax, (7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, -np.log10(rows["pval"].astype(float)), color="#4575b4")
    ax.set_yticks(
        y, [f"{t}  (NES {v:.2f})" for t, v in zip(rows["term"], rows["nes"], strict=True)], fontsize=8
    )
    for p, style in [(WEAK_P, ":"), (STRONG_P, "--")]:
        ax.axvline(-np.log10(p), color="grey", linestyle=style, linewidth=1)
    ax.set_xlabel("-log10 p-value (fgsea multilevel)")
    ax.set_title(f"Top GSEA terms of unit {unit}")
    return ax
