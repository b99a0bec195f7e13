"""The label-overlap check: which texts of a drawn figure cover each other (issue 25: readable labels).

Each text is measured where the renderer put it: its window extent, and for a rotated text the rotated
rectangle inside that extent (two labels at 45 degrees have overlapping extents long before their letters
touch). Two outlines overlap when no axis separates them (the separating-axis test for convex polygons).
"""

from __future__ import annotations

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text


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


def _outline_42(artist: Artist, renderer: RendererBase) -> np.ndarray:
    """The 4 corners (display pixels) of what an artist draws: its extent, or for a text rotated by other than
    a multiple of 90 degrees, its upright box turned about the extent's centre."""
    box = artist.get_window_extent(renderer)
    corners_42 = np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    if not isinstance(artist, Text) or artist.get_rotation() % 90 == 0:
        return corners_42
    upright = Text(
        text=artist.get_text(),
        fontproperties=artist.get_fontproperties(),
        linespacing=artist.get_linespacing(),
    )
    upright.set_figure(artist.figure)
    width, height = upright.get_window_extent(renderer).size
    angle = np.deg2rad(artist.get_rotation())
    rotation_22 = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    half_42 = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [width / 2, height / 2]
    return corners_42.mean(axis=0) + half_42 @ rotation_22.T


def _overlap(a_42: np.ndarray, b_42: np.ndarray, tolerance: float) -> bool:
    """Whether two convex quadrilaterals overlap by more than ``tolerance`` pixels along every axis that
    could separate them (the normals of their edges)."""
    for corners in (a_42, b_42):
        edges = np.diff(corners, axis=0, append=corners[:1])
        for normal in edges[:, ::-1] * [1, -1]:
            length = np.hypot(*normal)
            if length == 0:
                continue
            pa, pb = a_42 @ (normal / length), b_42 @ (normal / length)
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tolerance:
                return False
    return True


def _describe(kind: str, artist: Artist) -> str:
    """``"<kind> '<text>'"`` of a drawn text (a legend by its first entry)."""
    if isinstance(artist, Legend):
        return f"legend {[t.get_text() for t in artist.get_texts()][:1]!r}"
    return f"{kind} {artist.get_text()!r}"


def overlapping_texts(fig: Figure, *, tolerance_px: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts of a figure that cover each other (labels that cannot be read).

    Draws the figure, then compares where every visible, non-empty tick label, axis label, title, text and
    legend (one box) was drawn with every other.

    Parameters
    ----------
    fig
        The figure.
    tolerance_px
        Overlaps up to this many pixels deep do not count (boxes that touch).

    Returns
    -------
    One ``("<kind> '<text>'", "<kind> '<text>'")`` pair per overlap; empty when every label is clear.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    items = [(kind, a, _outline_42(a, renderer)) for kind, a in _drawn_texts(fig)]
    return [
        (_describe(kind_a, a), _describe(kind_b, b))
        for i, (kind_a, a, outline_a) in enumerate(items)
        for kind_b, b, outline_b in items[i + 1 :]
        if _overlap(outline_a, outline_b, tolerance_px)
    ]
