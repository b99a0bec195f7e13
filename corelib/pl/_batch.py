"""Plots of batch concepts: the embedding before and after suppressing them."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, nothing

#: The panels' colourings: ``obs`` column and the legend's title.
COLOURS = (("dataset", "dataset (batch)"), ("cell_type", "cell type"))
#: The panels' title of each embedding (:data:`corelib.runs.steps.batch.UMAP_EMBEDDINGS`).
TITLES = {"uncorrected": "uncorrected", "batch concepts": "batch concepts suppressed"}


def batch_umaps(umap: pd.DataFrame, *, axes: Sequence[Axes] | None = None) -> list[Axes]:
    """UMAPs of the embedding before and after suppressing the batch concepts, coloured by dataset and by cell
    type (2 x 2 panels: a row per embedding, a column per colouring). Returns the list of the 4 Axes.

    Parameters
    ----------
    umap
        :class:`corelib.runs.steps.batch.BatchStudy`'s ``umap``: ``embedding``, ``dataset``, ``cell_type``,
        ``umap_1``, ``umap_2`` (an empty table draws one panel saying that nothing was measured).
    axes
        4 Axes (row by row), or None for a new figure.
    """
    if umap.empty:
        return [
            nothing(
                new_axes(None if axes is None else axes[0], (4.5, 1.5)),
                "no batch concepts measured in this run",
            )
        ]
    if axes is None:
        _, grid = plt.subplots(2, 2, figsize=(8, 6.4), layout="constrained")
        axes = list(grid.ravel())
    axes = list(axes)
    if len(axes) != 4:
        raise ValueError(f"This plot draws 4 panels; got {len(axes)} Axes.")
    embeddings = list(dict.fromkeys(umap["embedding"]))
    for row, embedding in enumerate(embeddings[:2]):
        cells = umap[umap["embedding"] == embedding].sample(frac=1.0, random_state=0)  # no dataset on top
        for col, (key, title) in enumerate(COLOURS):
            ax = axes[2 * row + col]
            order = sorted(umap[key].astype(str).unique())
            sns.scatterplot(
                cells,
                x="umap_1",
                y="umap_2",
                hue=key,
                hue_order=order,
                s=3,
                linewidth=0,
                rasterized=True,
                legend=row == 0,
                ax=ax,
            )
            ax.set(xticks=[], yticks=[], xlabel="", ylabel="")
            ax.set_title(f"{TITLES.get(embedding, embedding)}, by {title}")
            if row == 0:
                ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, markerscale=2)
    return axes
