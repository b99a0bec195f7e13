"""Plot of concept steering (:mod:`corelib.tl.steering`)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from corelib.pl._utils import new_axes, nothing
from corelib.tl.steering import SteeringResult


def steering(
    result: SteeringResult | str,
    *,
    attributed: Sequence[str] = (),
    n_genes: int = 15,
    ax: Axes | None = None,
) -> Axes:
    """The ``n_genes`` most moved genes of a steered concept, as log2 fold-change bars.

    Parameters
    ----------
    result
        From :func:`corelib.tl.steering.steer` (or a card's ``steering``); a string (why steering is absent)
        draws an empty panel saying so.
    attributed
        Top attributed genes of the concept, best first: shared genes among the first ``n_genes`` of both are
        drawn in orange and counted in the title (which says so when there are none, and no bar is orange).
    n_genes
        Number of genes shown.
    ax
        Axes to draw on (default: a new figure).
    """
    ax = new_axes(ax, (4, 0.25 * max(n_genes, 4) + 0.8))
    if isinstance(result, str):
        return nothing(ax, f"no steering: {result}")
    shared = set(result.overlap(attributed, n_genes))
    top = result.top(n_genes).iloc[::-1]
    colors = ["#dd8452" if g in shared else "#4c72b0" for g in top["gene"]]
    ax.barh(top["gene"], top["log2fc"], color=colors)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.set_xlabel(f"log2 fold change of expected expression ({result.n_cells} prototypes)")
    title = f"steered by {result.amount:+g} x activation {result.activation:.3g}"
    if len(attributed):
        title += (
            f"\n{len(shared)}/{n_genes} also top {n_genes} attributed (orange)"
            if shared
            else f"\nnone also top {n_genes} attributed (no orange bar)"
        )
    ax.set_title(title, fontsize=10)
    return ax
