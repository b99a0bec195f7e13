"""Recovery of planted programs (issue 22): is a planted program isolated by a unit, and named by its label?

On data from :func:`corelib.datasets.plant_programs` the answer is known: ``obs[f"planted_{name}"]`` marks the
cells and ``uns["planted"][name]`` the genes and term. For each program :func:`recovery` finds the unit (concept or
neuron) whose activation best separates the planted cells (AUROC) and reads whether that unit's enrichment label
is the planted term, or a term mostly made of planted genes, at a calibrated q-value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from corelib.tl.annotation import WEAK_Q
from corelib.tl.units import unit_activation

#: Columns of :func:`recovery`'s table.
RECOVERY_COLUMNS = [
    "program", "term", "n_cells", "unit", "auroc", "isolated", "label", "qval", "named", "term_rank",
    "recovered",
]  # fmt: skip

#: AUROC from which the best unit counts as isolating a program (issue 22).
ISOLATED_AUROC = 0.9

#: A label counts as the planted program when at least this share of its genes (in the universe) is planted.
PLANTED_SHARE = 0.5


def auroc(acts_NU: np.ndarray | sp.spmatrix, truth_N: np.ndarray) -> np.ndarray:
    """AUROC of every unit's activation for the cells ``truth_N`` (n_units,), ties counted as one half.

    The Mann-Whitney U statistic from average ranks, one unit (column) at a time: a sparse matrix is never
    densified whole. 0.5 for a constant unit.
    """
    truth_N = np.asarray(truth_N, dtype=bool)
    n_pos, n_neg = int(truth_N.sum()), int((~truth_N).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"Need planted and other cells, got {n_pos} planted of {len(truth_N)}.")
    acts = acts_NU.tocsc() if sp.issparse(acts_NU) else np.asarray(acts_NU)
    out = np.empty(acts.shape[1])
    for u in range(acts.shape[1]):
        ranks = rankdata(unit_activation(acts, u))
        out[u] = (ranks[truth_N].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def names_program(
    label: str, term: str, planted: Sequence[str], gene_sets: Mapping[str, Sequence[str]]
) -> bool:
    """Whether a unit's ``label`` names a planted program: it is the planted ``term`` (also as
    ``"<library>: <term>"``, from several libraries loaded together), or at least :data:`PLANTED_SHARE` of its
    genes (``gene_sets[label]``, within the universe) are planted genes."""
    if not label:
        return False
    if label == term or label.endswith(f": {term}"):
        return True
    members = set(gene_sets.get(label, ()))
    return bool(members) and len(members & set(planted)) / len(members) >= PLANTED_SHARE


def recovery(
    acts_NU: np.ndarray | sp.spmatrix,
    units_U: Sequence[int],
    obs: pd.DataFrame,
    planted: Mapping[str, Mapping],
    labels: pd.DataFrame,
    terms: pd.DataFrame,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    q: float = WEAK_Q,
) -> pd.DataFrame:
    """One row per planted program: its best unit, that unit's AUROC, label, q-value, and the verdict.

    Parameters
    ----------
    acts_NU
        Activations of the units (n_cells x n_units; concepts' sparse codes or neurons' embedding).
    units_U
        Unit id of each column.
    obs, planted
        ``adata.obs`` (with ``planted_<name>``) and ``adata.uns["planted"]`` of
        :func:`corelib.datasets.plant_programs`.
    labels, terms
        The per-unit and long term tables of :func:`corelib.tl.enrichment.gsea` or
        :func:`~corelib.tl.enrichment.ora` (``term``, ``qval``; ``unit, rank, term``).
    gene_sets
        The library restricted to the universe (``corelib.datasets.load_gene_sets(..., genes=...)``).
    q
        q-value below which a label counts (calibrated annotation: :data:`corelib.tl.annotation.WEAK_Q`).

    Returns
    -------
    DataFrame with :data:`RECOVERY_COLUMNS`: ``isolated`` (AUROC >= :data:`ISOLATED_AUROC`), ``named`` (the
    unit's label names the program at q < ``q``, :func:`names_program`), ``term_rank`` (rank of the planted term
    among the unit's terms, NaN when not listed), ``recovered`` (isolated and named).
    """
    units_U = np.asarray(units_U)
    rows = []
    for name, info in planted.items():
        au = auroc(acts_NU, obs[f"planted_{name}"].to_numpy())
        j = int(np.argmax(au))
        unit = units_U[j]
        row = labels.loc[unit] if unit in labels.index else pd.Series({"term": "", "qval": np.nan})
        listed = terms["term"].astype(str)
        mine = terms[
            (terms["unit"] == unit) & ((listed == info["term"]) | listed.str.endswith(f": {info['term']}"))
        ]
        label, qval = str(row["term"] if pd.notna(row["term"]) else ""), float(row["qval"])
        named = bool(qval < q) and names_program(label, info["term"], info["genes"], gene_sets)
        rows.append(
            {
                "program": name, "term": info["term"], "n_cells": int(info["n_cells"]), "unit": unit,
                "auroc": float(au[j]), "isolated": bool(au[j] >= ISOLATED_AUROC), "label": label, "qval": qval,
                "named": named, "term_rank": float(mine["rank"].iloc[0]) if len(mine) else np.nan,
                "recovered": bool(au[j] >= ISOLATED_AUROC) and named,
            }
        )  # fmt: skip
    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS).set_index("program")
