"""What every plot shares: a new Axes when none is given, an empty panel that says why, and the check that no
two labels of a figure overlap."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text


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


def nothing(ax: Axes, message: str) -> Axes:
    """An empty panel saying why there is nothing to plot."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()
    return ax


def _tick_texts(axis: Axis) -> list[Text]:
    """The tick labels an axis draws: visible, non-empty, at a tick inside the view interval."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) * 1e-9
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    return [
        label
        for tick in ticks
        if tick.get_visible() and low - span <= tick.get_loc() <= high + span
        for label in (tick.label1, tick.label2)
        if label.get_visible() and label.get_text()
    ]


def _drawn_texts(fig: Figure) -> list[tuple[str, Artist]]:
    """Every text a figure draws, by kind: titles and texts, tick and axis labels, legends (one box each)."""
    items: list[tuple[str, Artist]] = []
    for parent in [fig, *(ax for ax in fig.axes if ax.get_visible())]:
        items += [("text", a) for a in parent.get_children() if isinstance(a, Text)]
        items += [("legend", a) for a in parent.get_children() if isinstance(a, Legend)]
        if isinstance(parent, Axes) and parent.axison:
            for axis in (parent.xaxis, parent.yaxis):
                if axis.get_visible():
                    items += [("tick label", t) for t in _tick_texts(axis)]
                    items.append(("axis label", axis.label))
    return [
        (kind, a)
        for kind, a in items
        if a.get_visible() and (not isinstance(a, Text) or a.get_text().strip())
    ]


def overlapping_texts(fig: Figure, *, tolerance_px: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts of a figure whose rendered boxes overlap (labels that cannot be read).

    Draws the figure, then compares the window extents of every visible, non-empty tick label, axis label,
    title, text and legend (a legend counts as one box) with every other.

    Parameters
    ----------
    fig
        The figure.
    tolerance_px
        Overlaps up to this many pixels, in width or height, do not count (boxes that touch).

    Returns
    -------
    One ``("<kind> '<text>'", "<kind> '<text>'")`` pair per overlap; empty when every label is clear.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(kind, a, a.get_window_extent(renderer)) for kind, a in _drawn_texts(fig)]
    pairs = []
    for i, (kind_a, a, box_a) in enumerate(boxes):
        for kind_b, b, box_b in boxes[i + 1 :]:
            width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if width > tolerance_px and height > tolerance_px:
                pairs.append((_describe(kind_a, a), _describe(kind_b, b)))
    return pairs


def _describe(kind: str, artist: Artist) -> str:
    """``"<kind> '<text>'"`` of a drawn text (a legend by its first entry)."""
    if isinstance(artist, Legend):
        texts = [t.get_text() for t in artist.get_texts()]
        return f"legend {texts[:1]!r}"
    return f"{kind} {artist.get_text()!r}"
