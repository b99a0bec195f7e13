"""Plots of one concept card and of the blinded study's result."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, new_axes_row, nothing
from corelib.tl.cards import CardData
from corelib.tl.evidence import unit_batch_mark


def gene_bars(card: CardData, *, ax: Axes | None = None) -> Axes:
    """Top attributed genes as horizontal bars, the importance threshold as a dashed line (static version).

    The hover descriptions are in :func:`corelib.explorer.html.gene_bars_svg`; this one is for papers and PDFs.
    Returns the Axes.
    """
    ax = new_axes(ax, (4, 0.25 * max(len(card.genes), 4) + 0.8))
    if card.genes.empty:
        return nothing(
            ax, f"{card.name}: no attributed genes ({card.absent.get('attribution', card.status)})"
        )
    genes = card.genes.iloc[::-1]
    ax.barh(genes["gene"], genes["score"], color="#4c72b0")
    ax.axvline(card.threshold, color="0.4", ls="--", lw=1)
    ax.set_xlabel("attribution score")
    ax.set_title(f"{card.name}: {card.n_important} genes > {card.threshold:g}")
    return ax


def umap(
    card: CardData, *, clip_negative: bool = False, colorbar: bool = True, ax: Axes | None = None
) -> Axes:
    """Activation of the unit on the UMAP of the embedding; active cells drawn on top. Returns the Axes.

    The attribution's prototypes (triangles) and counterfactuals (open circles) are marked.

    ``clip_negative`` shows negative activations (neurons) as 0 and ``colorbar=False`` hides the scale:
    both are used in the blinded study, where the sign and scale of a neuron would give its identity away.
    """
    ax = new_axes(ax, (3.2, 3))
    if card.umap is None:
        return nothing(ax, f"no UMAP: {card.absent.get('umap', 'the data has none')}")
    values = np.clip(card.activation, 0, None) if clip_negative else card.activation
    order = np.argsort(values, kind="stable")
    points = ax.scatter(
        card.umap[order, 0],
        card.umap[order, 1],
        c=values[order],
        s=3,
        cmap="viridis",
        linewidths=0,
        rasterized=True,
    )
    if colorbar:
        ax.figure.colorbar(points, ax=ax, shrink=0.8, label="activation")
    cf, proto = card.umap[card.counterfactuals], card.umap[card.prototypes]
    ax.scatter(
        cf[:, 0], cf[:, 1], s=22, facecolors="none", edgecolors="k", linewidths=0.8, label="counterfactuals"
    )
    ax.scatter(proto[:, 0], proto[:, 1], s=26, marker="^", color="#d62728", label="prototypes")
    if len(proto):
        ax.legend(loc="lower left", fontsize=6, frameon=False, handletextpad=0.2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("activation on the UMAP")
    return ax


def histogram(card: CardData, *, ax: Axes | None = None) -> Axes:
    """Histogram of the unit's activation over all cells (log counts). Returns the Axes."""
    ax = new_axes(ax, (3.2, 3))
    ax.hist(card.activation, bins=40, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("cells")
    ax.set_title(f"{card.n_active} active cells")
    return ax


def composition(card: CardData, column: str, *, n_labels: int = 8, ax: Axes | None = None) -> Axes:
    """Labels of ``column`` among the unit's active cells, as fractions. Returns the Axes."""
    if column not in card.composition:
        raise ValueError(f"No composition for {column!r}; the card has {', '.join(card.composition)}.")
    ax = new_axes(ax, (3.5, 0.25 * n_labels + 0.8))
    comp = card.composition[column].head(n_labels).iloc[::-1]
    ax.barh(comp.index.astype(str), comp.to_numpy(), color="#55a868")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of active cells ({column})")
    return ax


def card(card: CardData, *, axes: Sequence[Axes] | None = None) -> list[Axes]:
    """A static figure of a card (for reports and papers): top genes, UMAP, histogram, composition.

    The composition panel shows the first metadata column. A batch concept (``batch_key``: notebook 03's marks
    among its metadata calls) carries its mark as the figure's title, as on the explorer's card. Three or four
    panels, so it takes and returns a list of Axes (default: a new figure).
    """
    panels = 4 if card.composition else 3
    # tall enough for one readable gene label per bar
    axes = new_axes_row(axes, panels, (3.6 * panels, max(3.4, 0.2 * len(card.genes) + 1.2)))
    mark = unit_batch_mark(card.metadata)
    if mark:
        axes[0].figure.suptitle(f"{card.name}: {mark}", fontsize=9, color="#9a3412")
    gene_bars(card, ax=axes[0])
    umap(card, ax=axes[1])
    histogram(card, ax=axes[2])
    if card.composition:
        composition(card, next(iter(card.composition)), ax=axes[3])
    return axes


def interpretability(table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Concepts vs neurons interpretability by expert answers, one stacked bar per (rater, kind) (Fig. 3A.a).

    Parameters
    ----------
    table
        Output of :func:`interpretability_table`.
    ax
        Axes to draw on (a new figure when None).

    Returns
    -------
    The Axes.
    """
    ax = new_axes(ax, (5.5, 0.45 * len(table) + 1.6))
    if table.empty:
        return nothing(ax, "no answers yet: label the study items first")
    colors = {"yes": "#2a9d8f", "partly": "#e9c46a", "no": "#bbbbbb"}
    names = [f"{rater}: {kind}s (n={n})" for (rater, kind), n in table["n"].items()]
    left = np.zeros(len(table))
    for answer in table.columns.drop("n"):  # the answers, in the order of the choices
        ax.barh(names, table[answer].to_numpy(), left=left, color=colors[answer], label=answer)
        left += table[answer].to_numpy()
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of items")
    # above the bars (below them it covered the x-axis label on short tables); constrained layout makes room
    ax.legend(title="interpretable?", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return ax
