"""A forest plot of the claims table: each claim's value beside what it is compared with and its null."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from corelib.pl._utils import new_axes

#: Colour of each verdict of :data:`corelib.tl.claims.VERDICTS` (the value's marker and the claim's name).
VERDICT_COLORS = {
    "holds": "#1b7837",
    "at the margin": "#b8860b",
    "fails": "#c0392b",
    "no power": "#6c757d",
    "not measured": "#adb5bd",
}

#: The three arms of a row, top to bottom: (mean column, std column, marker, face colour or None for the
#: verdict's, vertical offset).
ARMS = (
    ("value", "std", "o", None, 0.22),
    ("comparison_value", "comparison_std", "s", "white", 0.0),
    ("null_value", "null_std", "D", "0.6", -0.22),
)


def claims_forest(claims: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """One row per claim: this run's value, what it is compared with and its null, each mean ± std over seeds.

    The value is a filled circle in its verdict's colour (:data:`VERDICT_COLORS`), the comparison an open
    square, the null a grey diamond; the names of the comparison and the null are written right of the axes.
    A claim not measured keeps its row, which says so.

    Parameters
    ----------
    claims
        :func:`corelib.tl.claims.evaluate_claims` (or ``07_claims/claims.csv`` read with ``index_col="claim"``).
    ax
        Axes to draw on (default: a new figure sized to the number of claims).

    Returns
    -------
    The Axes; its y ticks are the claims, top to bottom in the table's order.
    """
    ax = new_axes(ax, (7.5, 0.5 * len(claims) + 1.1))
    y = np.arange(len(claims))[::-1].astype(float)
    for row_y, (_, r) in zip(y, claims.iterrows(), strict=True):
        color = VERDICT_COLORS.get(str(r["verdict"]), "black")
        if pd.isna(r["value"]):
            ax.text(0.01, row_y, "not measured", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
            continue
        for value, std, marker, face, offset in ARMS:
            ax.errorbar(
                r[value], row_y + offset, xerr=0.0 if pd.isna(r[std]) else r[std], fmt=marker, color=color,
                markerfacecolor=face or color, ecolor=color, capsize=2, markersize=5, lw=1,
            )  # fmt: skip
        where = f"vs {r['comparison']}; null: {r['null']}"
        ax.text(
            1.02, row_y, textwrap.fill(where, 40), transform=ax.get_yaxis_transform(), va="center", fontsize=7
        )
    ax.set_yticks(y, [f"{name}\n({r['verdict']})" for name, r in claims.iterrows()], fontsize=8)
    for label, verdict in zip(ax.get_yticklabels(), claims["verdict"], strict=True):
        label.set_color(VERDICT_COLORS.get(str(verdict), "black"))
    ax.set_ylim(-0.6, len(claims) - 0.4)
    ax.grid(axis="x", color="0.9", lw=0.8)
    ax.set_xlabel("mean ± std over seeds")
    handles = [
        Line2D([], [], marker=marker, ls="", color="0.2", markerfacecolor=face or "0.2", label=label)
        for (*_, marker, face, _), label in zip(ARMS, ("this run", "compared with", "null"), strict=True)
    ]
    ax.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=8
    )
    return ax
