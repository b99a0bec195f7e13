"""Plots of GSEA results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes
from corelib.tl.annotation import ANNOTATIONS, STRONG_P, STRONG_Q, WEAK_P, WEAK_Q, annotation_rates


def annotation_shares(
    units: Mapping[str, pd.DataFrame],
    *,
    null: Mapping[str, pd.DataFrame] | None = None,
    annotation: str | None = "calibrated",
    ax: Axes | None = None,
) -> Axes:
    """Stacked bars of strong / weak / no annotation per group of units, beside its permuted-label null.

    Parameters
    ----------
    units
        Group name (e.g. ``"concepts"``, ``"neurons"``) -> :attr:`GseaResult.units` table. Skipped units
        count as "none".
    null
        Optional group name -> :attr:`GseaResult.units` of the same units with permuted gene labels
        (:func:`corelib.tl.annotation.permute_gene_labels`): drawn hatched beside the group's bar, to read
        each share against the share reached by chance.
    annotation
        Mode of :func:`corelib.tl.annotation.annotation_levels` (``"calibrated"``: q-values, ``"paper"``:
        raw p thresholds, paper Fig. 3A.b); ``None`` reads the tables' ``annotation`` column.
    ax
        Axes to draw on; a new figure when omitted.

    Returns
    -------
    The Axes.
    """
    null = dict(null or {})
    unknown = set(null) - set(units)
    if unknown:
        raise ValueError(f"null has groups {sorted(unknown)} that are not in units ({sorted(units)}).")
    bars = [(name, i, t, False) for i, (name, t) in enumerate(units.items())]
    bars += [(name, i, null[name], True) for i, name in enumerate(units) if name in null]
    width = 0.38 if null else 0.8
    ax = new_axes(ax, (1.6 + (2.0 if null else 1.2) * len(units), 3.5))
    colors = {"strong": "#1b7837", "weak": "#a6dba0", "none": "#d9d9d9"}
    thresholds = {
        "calibrated": {"strong": f"q < {STRONG_Q:g}", "weak": f"q < {WEAK_Q:g}"},
        "paper": {"strong": f"p < {STRONG_P:g}", "weak": f"p < {WEAK_P:g}"},
    }.get(annotation or "", {})
    ticks, labels = [], []
    for name, i, table, permuted in bars:
        x = i + (width / 2 if permuted else -width / 2) * bool(null)
        rates = annotation_rates(table, annotation)
        shares = {"strong": rates["strong"], "weak": rates["weak"], "none": 1.0 - rates["any"]}
        bottom = 0.0
        for level in ANNOTATIONS[::-1]:
            label = f"{level} ({thresholds[level]})" if level in thresholds else level
            ax.bar(
                x, shares[level], width, bottom=bottom, color=colors[level], hatch="//" if permuted else None,
                edgecolor="white", label=None if permuted or i else label,
            )  # fmt: skip
            bottom += shares[level]
        ax.text(x, 1.01, f"n={len(table)}", ha="center", va="bottom", fontsize=8)
        ticks.append(x)
        labels.append(f"{name}\npermuted" if permuted else str(name))
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of units")
    mode = f" ({annotation})" if annotation else ""
    ax.set_title(f"Attribution-based GSEA annotation{mode}" + (" vs permuted gene labels" if null else ""))
    handles, names = ax.get_legend_handles_labels()  # strong on top, as in the bars
    ax.legend(
        handles[::-1], names[::-1], loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8
    )
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
