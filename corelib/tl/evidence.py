"""How much evidence a concept (or neuron) carries: the order in which the explorer and the atlas show units.

Four measurements, each one the interpretation already made (no new statistics):

* **specificity**: how much of the unit's active cells belong to one label of the first metadata column
  (``cell_type``), as a conservative estimate: the 95% Wilson lower bound of that share
  (:func:`wilson_lower`), so that 10 of 15 cells (67%, bound 42%) does not beat 300 of 400 (75%, bound 71%).
* **reliability**: the attribution's split-half Spearman (:func:`corelib.tl.attribution.split_half_reliability`,
  stored as ``Attribution.reliability["split_half"]``): does the gene list come back with the other half of
  the prototypes?
* **label**: the GSEA label's ``qval`` (set-adjusted, then Benjamini-Hochberg across units;
  :mod:`corelib.tl.annotation`), counted as ``-log10 q`` when the label is significant (q < ``WEAK_Q``, 0.05)
  and as 0 otherwise: a q of 0.6 is no label, whatever the q of the others.
* **DEG genes**: how many genes the top-activating cells express differently from their counterfactuals
  (the rows of the DEG baseline, which keeps the genes with adjusted p below its cut-off).

:func:`evidence_score` combines them by their ranks (the mean percentile over the units, a Borda count): no
piece of evidence outweighs another by its scale, and a piece the data lacks for every unit (no metadata
column, no stored reliability, no GSEA, no DEG table) is left out rather than counted as zero.

**Batch concepts** (issue 26) are marked, not ranked: with a batch key, :func:`join_batch_marks` adds the table of
:func:`corelib.tl.batch.batch_concepts` to the metadata calls, :func:`unit_evidence` reads it back
(``batch_mark``, ``batch_auroc``) and a card says :func:`batch_mark`. The score leaves it out: a concept that marks
a batch within a cell type is as well evidenced a reading as any other (it is the concept to remove, and the user
who looks for it must find it where its evidence puts it); the mark, a column of its own, lets a user set such
concepts apart, and a run without a batch key is ordered exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from corelib.tl.annotation import WEAK_Q
from corelib.tl.cards import ConceptData, composition
from corelib.tl.units import active_cells, unit_activation

#: The evidence columns of :func:`unit_evidence` that :func:`evidence_score` ranks, each higher = more evidence.
EVIDENCE = ("specificity", "reliability", "label_evidence", "n_deg")

#: Normal quantile of the Wilson bound (95%, two-sided).
Z_95 = 1.959964

#: How a card's batch mark starts (:func:`batch_mark`).
BATCH_MARK = "batch concept: "

#: Columns of :func:`corelib.tl.batch.batch_concepts`' table (with :func:`with_batch_rule`) -> their names among
#: the metadata calls (:func:`join_batch_marks`).
BATCH_COLUMNS = {
    "batch": "batch",
    "auroc": "batch_auroc",
    "stratum": "batch_stratum",
    "associated": "batch_concept",
    "null_auroc": "batch_null_auroc",
}


def wilson_lower(share: np.ndarray | float, n: np.ndarray | float, z: float = Z_95) -> np.ndarray:
    """Lower end of the Wilson score interval of a proportion ``share`` observed in ``n`` trials (0 when n = 0)."""
    share, n = np.asarray(share, dtype=float), np.asarray(n, dtype=float)
    safe = np.maximum(n, 1.0)
    centre = share + z * z / (2 * safe)
    spread = z * np.sqrt(share * (1 - share) / safe + z * z / (4 * safe * safe))
    return np.where(n > 0, np.clip((centre - spread) / (1 + z * z / safe), 0.0, 1.0), 0.0)


def label_evidence(qval: pd.Series) -> pd.Series:
    """``-log10 q`` of a significant label (q < ``WEAK_Q``), 0 for a label that is not; NaN stays NaN."""
    q = qval.astype(float)
    return pd.Series(np.where(q < WEAK_Q, -np.log10(q.clip(lower=1e-300)), 0.0), index=q.index).where(
        q.notna()
    )


def with_batch_rule(table: pd.DataFrame, rule: Mapping[str, float] | None = None) -> pd.DataFrame:
    """:func:`corelib.tl.batch.batch_concepts`' table with its rule as columns (``null_auroc``, ``min_auroc``,
    from ``rule``, default its ``attrs``), which a file would otherwise lose."""
    rule = table.attrs if rule is None else rule
    return table.assign(null_auroc=rule["null_auroc"], min_auroc=rule["min_auroc"])


def join_batch_marks(metadata: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The metadata calls of the concepts (one row per concept) with the :data:`BATCH_COLUMNS` of a
    :func:`with_batch_rule` table beside them; ``metadata`` as it is when ``table`` is empty (no batch key)."""
    if table.empty:
        return metadata
    marks = table[list(BATCH_COLUMNS)].rename(columns=BATCH_COLUMNS).set_axis(table.index.astype(int))
    return marks if metadata.empty else metadata.join(marks)


def batch_mark(batch: object, auroc: float, stratum: object, null_auroc: float) -> str:
    """A batch concept's mark: ``"batch concept: AUROC 0.97 for batch B within FCGR3A+ Mono (null 0.65)"``
    (``stratum`` empty or NaN: the AUROC is pooled over cell types)."""
    where = f"within {stratum}" if isinstance(stratum, str) and stratum else "pooled over cell types"
    null = f" (null {null_auroc:.2f})" if pd.notna(null_auroc) else ""
    return f"{BATCH_MARK}AUROC {auroc:.2f} for batch {batch} {where}{null}"


def unit_batch_mark(calls: pd.Series) -> str:
    """The :func:`batch_mark` of a concept from its row of metadata calls joined with batch marks
    (:func:`join_batch_marks`); ``""`` when it marks no batch or the row has no batch marks."""
    marked = calls.get("batch_concept", False)
    if pd.isna(marked) or not bool(marked):
        return ""
    return batch_mark(calls["batch"], calls["batch_auroc"], calls["batch_stratum"], calls["batch_null_auroc"])


def batch_marks(metadata: pd.DataFrame, units: Sequence[int] | None = None) -> pd.DataFrame:
    """``batch_mark`` (:func:`unit_batch_mark`) and ``batch_auroc`` (NaN for a concept that marks no batch) of
    ``units`` (default every concept of ``metadata``), from metadata calls joined with batch marks
    (:func:`join_batch_marks`); no rows when they hold none."""
    if "batch_concept" not in metadata:
        return pd.DataFrame({"batch_mark": pd.Series(dtype=str), "batch_auroc": pd.Series(dtype=float)})
    rows = metadata.reindex(metadata.index if units is None else units)
    text = [unit_batch_mark(row) for _, row in rows.iterrows()]
    marked = pd.Series([bool(t) for t in text], index=rows.index)
    return pd.DataFrame(
        {"batch_mark": text, "batch_auroc": rows["batch_auroc"].where(marked)}, index=rows.index
    )


def unit_evidence(data: ConceptData, kind: str) -> pd.DataFrame:
    """The evidence of every attributed unit of ``kind``.

    Returns
    -------
    DataFrame indexed by unit id: ``n_active``; ``top_label`` (most common label of the first metadata
    column among the active cells, ``""`` without one), ``top_share`` (its share of the active cells) and
    ``label_share_all`` (its share of all cells); ``specificity`` (Wilson lower bound of ``top_share``),
    ``reliability`` (split-half Spearman), ``label_q`` (GSEA ``qval``), ``label_evidence`` and ``n_deg``.
    A measurement the data lacks is NaN. With batch marks among the metadata calls (:func:`join_batch_marks`),
    also ``batch_mark`` and ``batch_auroc`` (:func:`batch_marks`).
    """
    units = data.units(kind)
    acts_NU = data.activations.get(kind)
    column = data.metadata_keys[0] if data.metadata_keys else None
    labels = data.obs[column].astype(str) if column else None
    rows = []
    for unit in units:
        active = active_cells(unit_activation(acts_NU, unit), kind)
        comp = composition(labels, active) if labels is not None else pd.Series(dtype=float)
        top = str(comp.index[0]) if len(comp) else ""
        rows.append(
            {
                "unit": unit,
                "n_active": int(active.sum()),
                "top_label": top,
                "top_share": float(comp.iloc[0]) if len(comp) else np.nan,
                "label_share_all": float((labels == top).mean()) if top else np.nan,
            }
        )
    table = pd.DataFrame(
        rows, columns=["unit", "n_active", "top_label", "top_share", "label_share_all"]
    ).set_index("unit")
    table["specificity"] = wilson_lower(table["top_share"].fillna(0.0), table["n_active"])
    table.loc[table["top_share"].isna(), "specificity"] = np.nan
    attr = data.attribution.get(kind)
    reliability = attr.reliability if attr is not None else None
    table["reliability"] = (
        reliability["split_half"].reindex(table.index).astype(float)
        if reliability is not None and "split_half" in reliability
        else np.nan
    )
    gsea = data.gsea.get(kind, pd.DataFrame())
    table["label_q"] = gsea["qval"].reindex(table.index).astype(float) if "qval" in gsea else np.nan
    table["label_evidence"] = label_evidence(table["label_q"])
    deg = data.deg.get(kind, pd.DataFrame())
    counts = deg.groupby("unit").size() if "unit" in deg else None
    table["n_deg"] = counts.reindex(table.index).fillna(0).astype(int) if counts is not None else np.nan
    metadata = data.metadata.get(kind, pd.DataFrame())
    return table.join(batch_marks(metadata, table.index)) if "batch_concept" in metadata else table


def evidence_score(evidence: pd.DataFrame) -> pd.Series:
    """Each unit's mean percentile rank over the :data:`EVIDENCE` columns (1 = first on every one).

    A unit missing a measurement that other units have ranks last on it; a column missing for every unit
    is left out. Ties share their mean rank. Without any evidence column, every unit scores NaN.
    """
    present = [c for c in EVIDENCE if c in evidence and evidence[c].notna().any()]
    if not present:
        return pd.Series(np.nan, index=evidence.index, name="evidence")
    ranks = [evidence[c].astype(float).fillna(-np.inf).rank(pct=True) for c in present]
    return pd.concat(ranks, axis=1).mean(axis=1).rename("evidence")


def evidence_order(evidence: pd.DataFrame, exclude: Sequence[int] = ()) -> list[int]:
    """Unit ids by decreasing evidence (:func:`evidence_score`), then more active cells, then lower id.

    ``evidence`` needs ``n_active`` and the evidence columns (``evidence``, when present, is used as it is);
    units in ``exclude`` are left out.
    """
    score = evidence["evidence"] if "evidence" in evidence else evidence_score(evidence)
    keys = pd.DataFrame(
        {"score": score.fillna(-np.inf), "n_active": evidence["n_active"], "id": evidence.index},
        index=evidence.index,
    )
    order = keys.sort_values(["score", "n_active", "id"], ascending=[False, False, True], kind="stable")
    skip = set(int(u) for u in exclude)
    return [int(u) for u in order.index if int(u) not in skip]
