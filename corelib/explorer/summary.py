"""One row per unit for browsing: top genes, metadata call, GSEA label, status."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from corelib.explorer.data import Source, as_data
from corelib.tl.cards import (
    DEFAULT_RELATIVE_THRESHOLD,
    DEFAULT_THRESHOLD,
    ConceptData,
    check_kind,
    composition,
    gsea_label,
    table_row,
)
from corelib.tl.units import active_cells, unit_activation, unit_name


def unit_summary(source: Source, kind: str = "concept", *, n_genes: int = 5) -> pd.DataFrame:
    """One row per unit with attribution scores: what the search box and "next interesting" use.

    Parameters
    ----------
    source
        The loaded :class:`~corelib.tl.cards.ConceptData` (the summary is computed once per data and
        ``n_genes``), a run directory or an AnnData.
    kind
        ``"concept"`` or ``"neuron"``.
    n_genes
        Number of top genes listed in ``top_genes``.

    Returns
    -------
    DataFrame indexed by unit id with columns ``name``, ``top_genes`` (space separated), ``gsea_term``,
    ``metadata_label`` (top label of the first metadata column), ``n_important``, ``n_active``, ``search``
    (lower-case text matched by the search box).
    """
    check_kind(kind)
    data = as_data(source)
    return data.cached(("unit_summary", kind, n_genes), lambda: _summary(data, kind, n_genes))


def _summary(data: ConceptData, kind: str, n_genes: int) -> pd.DataFrame:
    scores = data.scores(kind)
    important = data.important_genes(kind, DEFAULT_THRESHOLD, DEFAULT_RELATIVE_THRESHOLD)
    acts_NU = data.activations.get(kind)  # None: no units of this kind, so no rows
    rows = []
    for unit in data.units(kind):
        col = scores[unit]
        active = active_cells(unit_activation(acts_NU, unit), kind)
        first = data.metadata_keys[0] if data.metadata_keys else None
        comp = composition(data.obs[first], active) if first else pd.Series(dtype=float)
        annotation = table_row(data.gsea[kind], unit)
        rows.append(
            {
                "unit": unit,
                "name": unit_name(kind, unit),
                "top_genes": " ".join(col.nlargest(n_genes).index.astype(str)),
                "gsea_term": gsea_label(annotation),
                "metadata_label": str(comp.index[0]) if len(comp) else "",
                "n_important": int(important.loc[unit, "n_important"]),
                "n_active": int(active.sum()),
            }
        )
    table = pd.DataFrame(
        rows, columns=["unit", "name", "top_genes", "gsea_term", "metadata_label", "n_important", "n_active"]
    ).set_index("unit")
    if table.empty:  # no unit of this kind has attribution scores
        return table.assign(search=pd.Series(dtype=str))
    table["search"] = (
        table[["name", "gsea_term", "top_genes", "metadata_label"]]
        .astype(str)
        .agg(" ".join, axis=1)
        .str.lower()
    )
    return table


def search_units(summary: pd.DataFrame, query: str) -> list[int]:
    """Units whose summary matches every word of ``query`` (id, GSEA term, top gene or metadata label).

    An exact unit name (``"C12"``) matches only that unit.
    """
    words = str(query).lower().split()
    if not words:
        return list(summary.index)
    exact = summary.index[summary["name"].str.lower() == " ".join(words)]
    if len(exact):
        return list(exact)
    mask = np.ones(len(summary), dtype=bool)
    for word in words:
        mask &= summary["search"].str.contains(word, regex=False).to_numpy()
    return list(summary.index[mask])


def interesting_order(summary: pd.DataFrame, exclude: Sequence[int] = ()) -> list[int]:
    """Units in the order "next interesting" visits them: most important genes first, then most active cells.

    Parameters
    ----------
    summary
        Output of :func:`unit_summary`.
    exclude
        Units to skip (e.g. the ones the rater already labelled).
    """
    order = summary.sort_values(["n_important", "n_active"], ascending=False, kind="stable")
    return [u for u in order.index if u not in set(exclude)]
