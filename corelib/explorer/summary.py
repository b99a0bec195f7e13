"""One row per unit for browsing: top genes, metadata label, GSEA label, evidence; and the order of browsing.

:func:`unit_summary` is what the explorer's search box, its "next interesting" button, its first card and the
atlas' overview table read; :func:`interesting_order` ranks the units by evidence
(:mod:`corelib.tl.evidence`), and :func:`describe_first_card` says in words why the first one comes first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from corelib.explorer.data import Source, as_data
from corelib.tl.attribution import RELIABLE_SPEARMAN
from corelib.tl.cards import (
    DEFAULT_RELATIVE_THRESHOLD,
    DEFAULT_THRESHOLD,
    ConceptData,
    check_kind,
    gsea_label,
    table_row,
    table_rows,
)
from corelib.tl.evidence import evidence_order, evidence_score, unit_evidence
from corelib.tl.units import unit_name

#: Genes of each list (top attributed, DEG) that the search box matches: as many as a card's bar chart shows.
N_SEARCH_GENES = 20


def unit_summary(source: Source, kind: str = "concept", *, n_genes: int = 5) -> pd.DataFrame:
    """One row per unit with attribution scores: what the search box, "next interesting" and the atlas use.

    Parameters
    ----------
    source
        The loaded :class:`~corelib.tl.cards.ConceptData` (the summary is computed once per data and
        ``n_genes``), a run directory or an AnnData.
    kind
        ``"concept"`` or ``"neuron"``.
    n_genes
        Number of genes listed in ``top_genes`` and ``deg_genes``.

    Returns
    -------
    DataFrame indexed by unit id with columns ``name``, ``top_genes`` (top attributed, space separated),
    ``deg_genes`` (first DEG genes), ``gsea_term``, ``metadata_label`` (top label of the first metadata
    column among the active cells), ``n_important``, ``n_active``, the evidence of
    :func:`corelib.tl.evidence.unit_evidence` (``top_share``, ``label_share_all``, ``specificity``,
    ``reliability``, ``label_q``, ``label_evidence``, ``n_deg``; with batch marks ``batch_mark`` and
    ``batch_auroc``), ``evidence`` (its score) and ``search`` (lower-case text the search box matches: the name,
    GSEA term, metadata label, the top :data:`N_SEARCH_GENES` attributed and DEG genes, and the batch mark: "batch"
    finds the batch concepts).
    """
    check_kind(kind)
    data = as_data(source)
    return data.cached(("unit_summary", kind, n_genes), lambda: _summary(data, kind, n_genes))


def _summary(data: ConceptData, kind: str, n_genes: int) -> pd.DataFrame:
    scores = data.scores(kind)
    important = data.important_genes(kind, DEFAULT_THRESHOLD, DEFAULT_RELATIVE_THRESHOLD)
    deg = data.deg.get(kind, pd.DataFrame())
    rows = []
    for unit in data.units(kind):
        top = list(scores[unit].nlargest(N_SEARCH_GENES).index.astype(str)) if unit in scores else []
        deg_rows = table_rows(deg, unit)
        deg_genes = list(deg_rows["gene"].astype(str).head(N_SEARCH_GENES)) if "gene" in deg_rows else []
        rows.append(
            {
                "unit": unit,
                "name": unit_name(kind, unit),
                "top_genes": " ".join(top[:n_genes]),
                "deg_genes": " ".join(deg_genes[:n_genes]),
                "gsea_term": gsea_label(table_row(data.gsea[kind], unit)),
                "n_important": int(important.loc[unit, "n_important"]) if unit in important.index else None,
                "genes": " ".join(top + deg_genes),
            }
        )
    columns = ["unit", "name", "top_genes", "deg_genes", "gsea_term", "n_important", "genes"]
    table = pd.DataFrame(rows, columns=columns).set_index("unit")
    evidence = unit_evidence(data, kind).rename(columns={"top_label": "metadata_label"})
    table = table.join(evidence)
    table["evidence"] = evidence_score(table)
    if table.empty:  # no unit of this kind has attribution scores
        return table.drop(columns="genes").assign(search=pd.Series(dtype=str))
    searched = [
        "name",
        "gsea_term",
        "metadata_label",
        "genes",
        *(["batch_mark"] if "batch_mark" in table else []),
    ]
    table["search"] = table[searched].astype(str).agg(" ".join, axis=1).str.lower()
    return table.drop(columns="genes")


def search_units(summary: pd.DataFrame, query: str) -> list[int]:
    """Units whose summary matches every word of ``query`` (id, GSEA term, metadata label, or one of the top
    attributed or DEG genes).

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
    """Units in the order "next interesting", the explorer's first card and the atlas show them: most evidence
    first (:func:`corelib.tl.evidence.evidence_order`: cell-type specificity, attribution reliability, GSEA
    label q and DEG genes, by their mean rank), then most active cells.

    Parameters
    ----------
    summary
        Output of :func:`unit_summary`.
    exclude
        Units to skip (e.g. the ones the rater already labelled).
    """
    return evidence_order(summary, exclude)


def describe_first_card(summary: pd.DataFrame) -> str:
    """Which unit the explorer opens on and why, in a few sentences from the summary's evidence.

    ``summary``: output of :func:`unit_summary`.
    """
    order = interesting_order(summary)
    if not order:
        return "No unit has attribution scores, so the explorer opens on no card."
    row = summary.loc[order[0]]
    parts = [
        f"The explorer opens on {row['name']}, first of {len(order)} by evidence "
        f"(mean percentile {row['evidence']:.2f} over the evidence below)."
    ]
    if row["metadata_label"]:
        parts.append(
            f"{row['top_share']:.0%} of its {row['n_active']} active cells are {row['metadata_label']} "
            f"(at least {row['specificity']:.0%} at 95% confidence; {row['label_share_all']:.0%} of all cells)."
        )
    parts.append(
        f"Its top attributed genes: {', '.join(row['top_genes'].split())}."
        if row["top_genes"]
        else "It has no attributed genes: the genes below are correlational (DEG), not attributed."
    )
    if pd.notna(row["n_deg"]):
        deg = ", ".join(row["deg_genes"].split())
        parts.append(
            f"Its top-activating cells differ from their counterfactuals in {int(row['n_deg'])} genes"
            + (f" (first {deg})." if deg else ".")
        )
    if pd.notna(row["reliability"]):
        steady = (
            "the gene list comes back with the other half of the prototypes"
            if row["reliability"] >= RELIABLE_SPEARMAN
            else f"below {RELIABLE_SPEARMAN}: the attributed gene list varies with the prototypes drawn"
        )
        parts.append(f"Its attribution's split-half reliability is {row['reliability']:.2f} ({steady}).")
    if row.get("batch_mark"):
        parts.append(f"It is a {row['batch_mark']}: it marks a batch rather than biology.")
    if pd.notna(row["label_q"]):
        significant = "significant" if row["label_evidence"] > 0 else "not significant"
        parts.append(f"Its GSEA label {row['gsea_term']!r} has q = {row['label_q']:.2g} ({significant}).")
    return " ".join(parts)
