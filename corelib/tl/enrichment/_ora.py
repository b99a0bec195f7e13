"""Expression-matched over-representation of each unit's top attributed genes (issue 22).

Attribution scores follow a gene's mean expression (highly expressed genes change more when set to the
counterfactual's value), so a plain hypergeometric test of a unit's top genes names gene sets of highly
expressed genes by chance. As goseq does for gene length (Young et al. 2010), the null here lets each gene enter
the top ``n_top`` with a probability that depends on its expression: genes are put in ``n_bins`` bins of mean
expression, and ``p_b`` is the share of the bin's genes among the top genes of all units tested together. The
overlap of set S with a unit's top genes is then a sum of independent binomials, ``sum_b Bin(n_b(S), p_b)``,
whose exact upper tail is the p-value (computed for every set at once through its characteristic function).
With one expression bin this is the plain hypergeometric test with replacement (binomial).

P-values are floored at ``MIN_PVALUE`` (1e-10, as GSEA's); sets at the floor are ordered by fold enrichment. The unit's
label is its most significant set; the annotation (Bonferroni over the sets tested, then BH across
units) is the one of GSEA (:mod:`corelib.tl.annotation`), so the two methods share one calibrated rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.datasets._gene_sets import GO_BP, MAX_SIZE, MIN_SIZE, load_gene_sets
from corelib.tl.annotation import (
    annotation_levels,
    annotation_rates,
    benjamini_hochberg,
    check_mode,
    permute_gene_labels,
    unit_pvalues,
)
from corelib.tl.enrichment._ranking import MIN_PVALUE
from corelib.tl.enrichment._units import _check_scores

#: Columns of :func:`ora`'s per-unit table (those of GSEA that the annotation reads, and the overlap).
ORA_COLUMNS = [
    "term", "pval", "overlap", "expected", "set_size", "lead_genes", "n_lead", "n_sets_tested",
    "n_positive_genes", "pval_unit", "qval", "annotation", "reason",
]  # fmt: skip


def mean_log_expression(
    X_NG, genes: Iterable[str], *, target_sum: float = 1e4, chunk: int = 8192
) -> pd.Series:
    """Mean of ``log1p(counts per target_sum)`` per gene over all cells, in chunks of cells (sparse or dense).

    Returns
    -------
    pd.Series indexed by ``genes``: the expression the null of :func:`ora` is matched on.
    """
    total_G = np.zeros(X_NG.shape[1])
    for start in range(0, X_NG.shape[0], chunk):
        block = sp.csr_matrix(X_NG[start : start + chunk], dtype=np.float64)
        lib = np.asarray(block.sum(1)).ravel()
        block = sp.diags(target_sum / np.where(lib > 0, lib, 1.0)) @ block
        total_G += np.asarray(block.log1p().sum(0)).ravel()
    return pd.Series(
        total_G / max(1, X_NG.shape[0]), index=pd.Index(list(genes), name="gene"), name="mean_log"
    )


def expression_bins(mean_G: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Bin of each gene (n_genes,) by quantiles of its mean expression: ``n_bins`` bins of equal size."""
    order = np.argsort(np.asarray(mean_G, dtype=np.float64), kind="stable")
    bins = np.empty(len(order), dtype=np.int64)
    bins[order] = np.arange(len(order)) * n_bins // max(1, len(order))
    return bins


def top_indicator(scores_GU: np.ndarray, n_top: int) -> np.ndarray:
    """Boolean (n_genes x n_units): each unit's ``n_top`` highest positive scores (ties: lower gene first)."""
    order = np.argsort(-scores_GU, axis=0, kind="stable")[:n_top]
    top = np.zeros(scores_GU.shape, dtype=bool)
    np.put_along_axis(top, order, True, axis=0)
    return top & (scores_GU > 0)


def _binomial_sum_tail(count_SB: np.ndarray, p_B: np.ndarray) -> np.ndarray:
    """``tail_ST[s, t] = P(sum_b Bin(count[s, b], p[b]) >= t)`` for every set s and ``t = 0..T`` (0 at T).

    The sum takes the values 0..T-1 with ``T = max_s sum_b count[s, b] + 1``; its pmf is the inverse DFT of
    the product of the binomials' characteristic functions on T points (exact: no value of the sum aliases).
    Float rounding leaves errors near 1e-16 on each pmf value, far below the floor. It depends on the sets and
    the bins' probabilities only, so :func:`ora` computes it once for all units (:func:`_tail_pvalues`).
    """
    size = int(count_SB.sum(1).max()) + 1
    omega_T = np.exp(-2j * np.pi * np.arange(size) / size)
    log_BT = np.log((1 - p_B)[:, None] + p_B[:, None] * omega_T[None, :])
    pmf_ST = np.fft.ifft(np.exp(count_SB @ log_BT), axis=1).real
    tail_ST = np.cumsum(np.clip(pmf_ST, 0, None)[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([tail_ST, np.zeros((len(tail_ST), 1))], axis=1)  # beyond the support: 0


def _tail_pvalues(tail_ST: np.ndarray, observed_S: np.ndarray) -> np.ndarray:
    """P(overlap >= observed[s]) of every set from :func:`_binomial_sum_tail`, floored at :data:`MIN_PVALUE`."""
    p = tail_ST[np.arange(len(observed_S)), np.clip(observed_S, 0, tail_ST.shape[1] - 1)]
    return np.clip(np.where(observed_S <= 0, 1.0, p), MIN_PVALUE, 1.0)


def ora(
    scores_GU: pd.DataFrame,
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    *,
    mean_expression: pd.Series | None = None,
    n_top: int = 50,
    n_bins: int = 20,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    top_n: int = 10,
    annotation: str = "calibrated",
    organism: str = "human",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Expression-matched over-representation of each unit's top ``n_top`` positively attributed genes.

    Parameters
    ----------
    scores_GU
        Attribution scores, genes x units (gene names as index: the universe). All-NaN columns: not attributed.
    gene_sets
        Library name, ``.gmt`` path or dict (:func:`corelib.datasets.load_gene_sets`).
    mean_expression
        Mean log-normalised expression per gene (index: genes), for the expression-matched null (module
        docstring); ``None`` uses one bin (the plain test).
    n_top
        Top genes per unit (genes with a positive score only).
    n_bins
        Expression bins (equal numbers of genes).
    min_size, max_size
        Set size bounds within the universe.
    top_n
        Terms kept per unit in the long table.
    annotation
        ``"calibrated"`` or ``"paper"`` (:func:`corelib.tl.annotation.annotation_levels`).
    organism
        ``"human"`` or ``"mouse"``: the species of the genes, which the human libraries are matched to
        (:func:`corelib.datasets.load_gene_sets`).

    Returns
    -------
    ``(units, terms)``: one row per unit with :data:`ORA_COLUMNS` (the label, its p-value, the overlap and
    its expectation under the null, the overlapping genes in ``lead_genes``), and the long table of each
    unit's ``top_n`` terms (``unit, rank, term, pval, overlap, expected, set_size, lead_genes``).
    """
    _check_scores(scores_GU)
    check_mode(annotation)
    if n_top < 1 or n_bins < 1:
        raise ValueError(f"n_top and n_bins must be >= 1, got {n_top} and {n_bins}.")
    genes = pd.Index(scores_GU.index.astype(str))
    sets = load_gene_sets(gene_sets, genes=genes, min_size=min_size, max_size=max_size, organism=organism)
    values_GU = scores_GU.to_numpy(dtype=np.float64)
    tested_U = ~np.isnan(values_GU).all(axis=0) & (np.nan_to_num(values_GU) > 0).any(axis=0)
    top_GU = top_indicator(np.nan_to_num(values_GU, nan=0.0), n_top) & tested_U[None, :]
    if mean_expression is None:
        bins_G = np.zeros(len(genes), dtype=np.int64)
    else:
        mean = mean_expression.reindex(genes)
        if mean.isna().any():
            raise ValueError(
                f"mean_expression lacks {int(mean.isna().sum())} of the scored genes (e.g. "
                f"{', '.join(genes[mean.isna().to_numpy()][:3])}); pass one value per gene of scores_GU."
            )
        bins_G = expression_bins(mean.to_numpy(), n_bins)
    n_b = np.bincount(bins_G, minlength=bins_G.max() + 1).astype(float)
    hits_B = np.bincount(bins_G, weights=top_GU.sum(1), minlength=len(n_b))
    p_B = np.clip(hits_B / (n_b * max(1, tested_U.sum())), 0.0, 1.0)
    terms = list(sets)
    gene_pos = {g: i for i, g in enumerate(genes)}
    member_GS = sp.csr_matrix(
        (
            np.ones(sum(len(v) for v in sets.values())),
            (
                [gene_pos[g] for t in terms for g in sets[t]],
                np.repeat(np.arange(len(terms)), [len(sets[t]) for t in terms]),
            ),
        ),
        shape=(len(genes), len(terms)),
    )
    count_SB = (member_GS.T @ sp.csr_matrix((np.ones(len(genes)), (np.arange(len(genes)), bins_G)))).toarray()
    expected_S = count_SB @ p_B
    overlap_SU = np.asarray((member_GS.T @ sp.csr_matrix(top_GU.astype(float))).todense()).astype(int)
    tail_ST = _binomial_sum_tail(count_SB, p_B) if terms else None
    rows, tables = [], []
    for j, unit in enumerate(scores_GU.columns):
        row: dict = dict.fromkeys(ORA_COLUMNS, np.nan) | {"term": "", "lead_genes": "", "reason": ""}
        row.update(
            n_sets_tested=len(terms) if tested_U[j] else 0, n_positive_genes=int((values_GU[:, j] > 0).sum())
        )
        if not tested_U[j]:
            row["reason"] = (
                "not attributed" if np.isnan(values_GU[:, j]).all() else "no positive attribution score"
            )
        elif not terms:
            row["reason"], row["n_sets_tested"] = f"no gene set has {min_size}..{max_size} genes", 0
        else:
            p_S = _tail_pvalues(tail_ST, overlap_SU[:, j])
            order = np.lexsort((-overlap_SU[:, j] / np.maximum(expected_S, 1e-12), p_S))[:top_n]
            top_genes = set(genes[top_GU[:, j]])
            table = pd.DataFrame(
                {
                    "unit": unit, "rank": np.arange(1, len(order) + 1), "term": [terms[s] for s in order],
                    "pval": p_S[order], "overlap": overlap_SU[order, j], "expected": expected_S[order],
                    "set_size": [len(sets[terms[s]]) for s in order],
                    "lead_genes": [";".join(g for g in sets[terms[s]] if g in top_genes) for s in order],
                }
            )  # fmt: skip
            tables.append(table)
            best = table.iloc[0]
            row.update(
                {c: best[c] for c in ("term", "pval", "overlap", "expected", "set_size", "lead_genes")}
            )
            row["n_lead"] = int(best["overlap"])
        rows.append(row)
    units = pd.DataFrame(rows, columns=ORA_COLUMNS, index=pd.Index(scores_GU.columns, name="unit"))
    units["pval_unit"] = unit_pvalues(units)
    units["qval"] = benjamini_hochberg(units["pval_unit"])
    units["annotation"] = annotation_levels(units, annotation)
    long = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["unit", "rank", "term"])
    return units, long


def ora_shares(
    scores: Mapping[str, pd.DataFrame],
    mean_expression: pd.Series,
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    *,
    seed: int = 0,
    n_bins: int = 20,
    **options,
) -> pd.DataFrame:
    """Share of units annotated by :func:`ora` (calibrated, q < 0.05), beside its two nulls.

    Parameters
    ----------
    scores
        Kind (``"concepts"``, ``"neurons"``) -> attribution scores (genes x units).
    mean_expression
        Mean log expression per gene (:func:`mean_log_expression`): the test's matching and the binned null's.
    gene_sets, options
        As in :func:`ora`.
    seed
        Seed of the permutations.
    n_bins
        Expression bins of the test and of the matched null.

    Returns
    -------
    DataFrame indexed by kind: ``real``, ``permuted genes`` (every gene label shuffled) and ``expression-matched``
    (labels shuffled within expression bins, :func:`corelib.tl.annotation.permute_gene_labels`).
    """
    rows = {}
    for kind, scores_GU in scores.items():
        bins_G = expression_bins(mean_expression.reindex(scores_GU.index.astype(str)).to_numpy(), n_bins)
        tables = {
            "real": scores_GU,
            "permuted genes": permute_gene_labels(scores_GU, seed=seed),
            "expression-matched": permute_gene_labels(scores_GU, seed=seed, bins_G=bins_G),
        }
        rows[kind] = {
            name: float(
                annotation_rates(
                    ora(table, gene_sets, mean_expression=mean_expression, n_bins=n_bins, **options)[0]
                )["any"]
            )
            for name, table in tables.items()
        }
    return pd.DataFrame.from_dict(rows, orient="index")
