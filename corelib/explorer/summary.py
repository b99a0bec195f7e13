"""One row per unit for browsing: top genes, metadata call, GSEA label, status."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from corelib.explorer.cards import (
    DEFAULT_RELATIVE_THRESHOLD,
    DEFAULT_THRESHOLD,
    RunData,
    _as_data,
    _composition,
    _row,
)
from corelib.runs import RunDir
from corelib.tl.units import _check_kind, active_cells, unit_activation, unit_name


def gsea_label(annotation: pd.Series) -> str:
    """The unit's GSEA label (top term) from its row of the per-unit GSEA table; ``""`` when it has none."""
    term = annotation.get("term", "") if len(annotation) else ""
    return "" if pd.isna(term) else str(term)


def unit_summary(run: RunDir | RunData, kind: str = "concept", *, n_genes: int = 5) -> pd.DataFrame:
    """One row per unit with attribution scores: what the search box and "next interesting" use.

    Parameters
    ----------
    run
        Run directory or loaded :class:`RunData`.
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
    _check_kind(kind)
    data = _as_data(run)
    if kind in data._summary:
        return data._summary[kind]
    scores = data.scores(kind)
    important = data.important_genes(kind, DEFAULT_THRESHOLD, DEFAULT_RELATIVE_THRESHOLD)
    acts_NU = data.activations[kind]
    rows = []
    for unit in data.units(kind):
        col = scores[unit]
        active = active_cells(unit_activation(acts_NU, unit), kind)
        first = data.metadata_keys[0] if data.metadata_keys else None
        comp = _composition(data.obs[first], active) if first else pd.Series(dtype=float)
        annotation = _row(data.gsea[kind], unit)
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
    table["search"] = (
        table[["name", "gsea_term", "top_genes", "metadata_label"]]
        .astype(str)
        .agg(" ".join, axis=1)
        .str.lower()
    )
    data._summary[kind] = table
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
