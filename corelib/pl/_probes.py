"""Plots of probe results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, new_axes_row, nothing
from corelib.tl.probes import ProbeResult


def confusion(
    results: Mapping[str, ProbeResult], *, normalize: bool = True, axes: Sequence[Axes] | None = None
) -> list[Axes]:
    """Confusion matrices summed over seeds, one panel per feature set (paper Fig. 10).

    One Axes per feature set, so it takes and returns a list of Axes (default: a new figure).

    Parameters
    ----------
    results
        ``{"concepts": ProbeResult, "neurons": ProbeResult}``.
    normalize
        Show row fractions (recall per true class) instead of counts.
    """

    if not results:
        return [nothing(new_axes(None, (4, 1)), "no probe results (skipped)")]
    n = len(results)
    k = len(next(iter(results.values())).classes)
    axes = new_axes_row(axes, n, (1.2 + 0.55 * k * n + 1.5 * n, 0.55 * k + 1.8))
    for ax, (name, r) in zip(axes, results.items(), strict=True):
        m = r.confusion.sum(axis=0).astype(float)
        if normalize:
            m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                f"{v:.2f}" if normalize else f"{int(v)}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > 0.6 * m.max() else "black",
            )
        ax.set_xticks(range(len(r.classes)), r.classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(r.classes)), r.classes, fontsize=8)
        s = r.summary()
        ax.set_title(f"{name}: acc {s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f}", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    axes[0].figure.colorbar(im, ax=axes, shrink=0.8)
    return axes


def top_units(tables: Mapping[str, pd.DataFrame], *, axes: Sequence[Axes] | None = None) -> list[Axes]:
    """Horizontal bars of the top-coefficient units per class, labelled with their top genes (paper Fig. 5).

    Marker genes among the top genes are marked with ``*``. One column per feature set (``{"concepts":
    top_units(...), "neurons": top_units(...)}``): it takes and returns one Axes per feature set.
    """

    if not tables:
        return [nothing(new_axes(None, (4, 1)), "no probe results (skipped)")]
    n = len(tables)
    height = max(len(t) for t in tables.values())
    axes = new_axes_row(axes, n, (7 * n, 0.45 * height + 1))
    for ax, (name, t) in zip(axes, tables.items(), strict=True):
        t = t.iloc[::-1]
        ax.barh(range(len(t)), t["coef_mean"], xerr=t["coef_std"], color=_class_colors(t["class"]), capsize=2)
        ax.set_yticks(range(len(t)), [_unit_label(r) for r in t.itertuples(index=False)], fontsize=7)
        ax.set_xlabel("logistic-regression coefficient (mean ± std over splits)")
        ax.set_title(name, fontsize=10)
    return axes


def _unit_label(row: Any) -> str:
    """``"S | C12: GENE1, GENE2*"``: class, unit and top genes with markers starred."""
    genes = getattr(row, "top_genes", "") or ""
    marked = set(str(getattr(row, "marker_genes", "") or "").split(", "))
    genes = ", ".join(f"{g}*" if g in marked else g for g in genes.split(", ")[:6] if g)
    return f"{row[0]} | {row.feature}" + (f": {genes}" if genes else "")


def _class_colors(classes: pd.Series) -> list[Any]:
    """One tab10 colour per class, in order of appearance."""
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    lookup = {c: palette(i % 10) for i, c in enumerate(dict.fromkeys(classes))}
    return [lookup[c] for c in classes]
