"""What every plot shares: a new Axes when none is given, wrapped tick labels, an empty panel that says why."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the Axes of a new figure of ``figsize`` inches."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def new_axes_row(axes: Sequence[Axes] | None, n: int, figsize: tuple[float, float]) -> list[Axes]:
    """``axes`` (checked to hold ``n`` panels), or a new figure with one row of ``n`` Axes."""
    if axes is None:
        _, grid = plt.subplots(1, n, figsize=figsize, layout="constrained", squeeze=False)
        return list(grid[0])
    axes = list(axes)
    if len(axes) != n:
        raise ValueError(f"This plot draws {n} panels; got {len(axes)} Axes.")
    return axes


def wrapped(labels: Iterable[object], width: int = 12) -> list[str]:
    """Tick labels broken into lines of at most ``width`` characters (at spaces), so that neighbours stay apart
    without rotating them."""
    return [textwrap.fill(str(label), width, break_long_words=False) for label in labels]


def nothing(ax: Axes, message: str) -> Axes:
    """An empty panel saying why there is nothing to plot."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()
    return ax
