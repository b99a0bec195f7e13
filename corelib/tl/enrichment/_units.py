"""Attribution GSEA of every unit (paper 3.4): rank, prerank, label, annotate; locally or on Dask."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from corelib.cluster import map_chunks
from corelib.datasets._gene_sets import GO_BP, MAX_SIZE, MIN_SIZE, load_gene_sets
from corelib.tl.annotation import (
    annotation_levels,
    benjamini_hochberg,
    check_mode,
    permute_gene_labels,
    unit_pvalues,
)
from corelib.tl.enrichment._ranking import TERM_COLUMNS, _prerank, _stderr_silenced, rank_genes

if TYPE_CHECKING:
    from distributed import Client

#: Columns of the per-unit table and of the long table of terms.
UNIT_COLUMNS = [
    "term", "nes", "es", "pval", "fdr", "log2err", "set_size", "n_lead", "lead_genes",
    "n_sets_tested", "n_positive_genes", "pval_unit", "qval", "annotation", "reason",
]  # fmt: skip


def gsea_null(
    scores_GU: pd.DataFrame,
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    *,
    n_units: int | None = None,
    seed: int = 0,
    bins_G: np.ndarray | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Per-unit GSEA table of the gene-label permutation null (``permute_gene_labels``, then :func:`gsea`).

    ``seed`` seeds the unit sample, the permutations and GSEA; ``bins_G`` (expression bins,
    ``corelib.tl.enrichment.expression_bins``) makes it the expression-matched null; ``options`` go to
    :func:`gsea` (``annotation``, ``permutations``, ``n_jobs``...). Read it with
    :func:`corelib.tl.annotation.annotation_rates`: every annotation in it is by chance
    (:func:`corelib.tl.annotation.permute_gene_labels`).
    """
    permuted = permute_gene_labels(scores_GU, n_units=n_units, seed=seed, bins_G=bins_G)
    return gsea(permuted, gene_sets, seed=seed, **options).units


# ----------------------------------------------------------------------------------------------------------
# Every unit
# ----------------------------------------------------------------------------------------------------------
class GseaResult(NamedTuple):
    """Attribution GSEA of a set of units.

    Attributes
    ----------
    units
        One row per unit (index ``unit``, the score columns): the label ``term`` with ``nes, es, pval, fdr,
        log2err, set_size, n_lead, lead_genes``, ``n_sets_tested``, ``n_positive_genes``, ``pval_unit`` (the
        label's p adjusted for the sets tested), ``qval`` (Benjamini-Hochberg of ``pval_unit`` across the
        tested units), ``annotation`` (strong/weak/none; all three from :mod:`corelib.tl.annotation`) and
        ``reason`` (why a unit has no label; empty otherwise).
    terms
        Long table of each labelled unit's top positively enriched terms (columns ``unit, rank, term, nes,
        es, pval, fdr, log2err, set_size, lead_genes``; rank 1 is the label).
    """

    units: pd.DataFrame
    terms: pd.DataFrame


#: What :func:`_run_unit` returns for one unit.
_UnitResult = tuple[pd.DataFrame, int, str, int]


def _run_unit(values_G: np.ndarray, w: Mapping[str, Any]) -> _UnitResult:
    """Prerank one unit with the shared inputs ``w`` (``gene_sets, genes, permutations, seed, top_n``): its
    top ``w["top_n"]`` positive terms, the number of sets tested, a reason, and the number of sets fgsea gave
    no p-value. The caller silences stderr (:func:`_stderr_silenced`)."""
    ranking = rank_genes(pd.Series(values_G, index=w["genes"]), w["seed"])
    try:
        table = _prerank(ranking, w["gene_sets"], w["permutations"], w["seed"])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # a Rust panic in fgsea arrives as pyo3's PanicException (a BaseException)
        return pd.DataFrame(columns=TERM_COLUMNS[2:]), 0, f"fgsea failed: {type(err).__name__}: {err}", 0
    positive = table[(table["es"] > 0) & table["pval"].notna()]
    reason = "" if len(positive) else "no positively enriched gene set"
    return positive.head(w["top_n"]), len(table), reason, int(table["pval"].isna().sum())


def _run_chunk(w: dict[str, Any], values_GU: np.ndarray) -> list[_UnitResult]:
    """:func:`_run_unit` of every column of ``values_GU``, in a Dask task."""
    with _stderr_silenced():
        return [_run_unit(values_G, w) for values_G in values_GU.T]


def _skip_reason(values_G: np.ndarray, n_sets: int, min_size: int, max_size: int) -> str:
    """Why a unit cannot be labelled before running GSEA, or ``""``."""
    if np.isnan(values_G).all():
        return "not attributed (all scores NaN)"
    if not np.any(values_G):
        return "all attribution scores are zero"
    if values_G.max() <= 0:
        return "no positive attribution score"
    if n_sets == 0:
        return f"no gene set has {min_size}..{max_size} genes among the ranked genes"
    return ""


def _check_scores(scores_GU: pd.DataFrame) -> None:
    """Validate the gene x unit score table; a clear error naming the fix."""
    if not isinstance(scores_GU, pd.DataFrame):
        raise TypeError(
            f"scores_GU must be a pandas DataFrame (genes as index, units as columns), not "
            f"{type(scores_GU).__name__}; wrap an array with pd.DataFrame(scores, index=genes, columns=units)."
        )
    if scores_GU.index.has_duplicates:
        dup = scores_GU.index[scores_GU.index.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"Duplicate gene names in scores_GU.index (e.g. {', '.join(map(str, dup))}); make them unique first."
        )
    if scores_GU.columns.has_duplicates:
        raise ValueError("Duplicate unit ids in scores_GU.columns; make them unique first.")
    if len(scores_GU) < 2:
        raise ValueError(f"Need at least 2 genes to rank, got {len(scores_GU)}.")
    values = scores_GU.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        raise ValueError("scores_GU contains infinite values; replace them with finite scores.")
    nan = np.isnan(values)
    partial = nan.any(axis=0) & ~nan.all(axis=0)
    if partial.any():
        units = scores_GU.columns[partial][:5].tolist()
        raise ValueError(
            f"Units {', '.join(map(str, units))} have NaN scores for some genes only; fill them (e.g. "
            "scores.fillna(0)) or drop those genes. A unit whose scores are all NaN is skipped as not attributed."
        )


def gsea(
    scores_GU: pd.DataFrame,
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    *,
    permutations: int = 1000,
    seed: int = 0,
    n_jobs: int | None = None,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    top_n: int = 10,
    annotation: str = "calibrated",
    progress: bool = True,
    client: Client | None = None,
    organism: str = "human",
) -> GseaResult:
    """Attribution-based GSEA of every unit (paper 3.4): rank genes by attribution, prerank, label.

    Parameters
    ----------
    scores_GU
        Attribution scores, genes x units (gene names as index: the model's genes, which are the universe;
        unit ids as columns). A column of NaN marks a unit that was not attributed.
    gene_sets
        Library name, ``.gmt`` path or dict (see :func:`load_gene_sets`); restricted to ``scores_GU.index``
        and filtered by ``min_size``/``max_size`` here.
    permutations
        Random gene sets per size for fgsea's NES normalisation (p-values are multilevel, not limited by it).
    seed
        Seed of the tie order and of fgsea; every unit uses it, so results do not depend on ``n_jobs``.
    n_jobs
        Threads (default: the number of CPUs). fgsea runs without the GIL, so threads scale like processes
        without their start-up (imports) or copies of the gene sets.
    min_size, max_size
        Gene set size bounds within the ranked genes.
    top_n
        Terms kept per unit in :attr:`GseaResult.terms`.
    annotation
        ``"calibrated"`` (q-values over sets and units) or ``"paper"`` (raw p thresholds): see
        :func:`corelib.tl.annotation.annotation_levels`. ``pval_unit`` and ``qval`` are there in both modes.
    progress
        Show a progress bar over units.
    client
        A ``dask.distributed`` client (:func:`corelib.cluster.dask_client`): chunks of units run on its workers
        (a task gets its units' scores, every worker the gene sets once) instead of ``n_jobs`` local threads.
    organism
        ``"human"`` or ``"mouse"``: the species of the genes, which the human libraries are matched to
        (:func:`load_gene_sets`).

    Returns
    -------
    GseaResult
        ``units`` (one row per unit, label and annotation, or the reason it has none) and ``terms`` (top
        ``top_n`` positively enriched terms per unit).
    """
    _check_scores(scores_GU)
    check_mode(annotation)
    if permutations < 1 or top_n < 1:
        raise ValueError(f"permutations and top_n must be >= 1, got {permutations} and {top_n}.")
    genes = pd.Index(scores_GU.index.astype(str))
    sets = load_gene_sets(gene_sets, genes=genes, min_size=min_size, max_size=max_size, organism=organism)
    values_GU = scores_GU.to_numpy(dtype=np.float64)
    units = list(scores_GU.columns)
    reasons = [_skip_reason(values_GU[:, j], len(sets), min_size, max_size) for j in range(len(units))]
    todo = [j for j, r in enumerate(reasons) if not r]
    n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(todo)))
    w = dict(gene_sets=sets, genes=genes, permutations=int(permutations), seed=int(seed), top_n=top_n)
    done: dict[int, _UnitResult] = {}
    if client is not None:
        bar = tqdm(total=len(todo), desc="GSEA", unit="unit", disable=not progress)
        for js, part in map_chunks(client, _run_chunk, todo, lambda js: (values_GU[:, js],), w, bar=bar):
            done.update(zip(js, part, strict=True))
        bar.close()
    else:
        # fgsea runs without the GIL: threads share the inputs and start at once (no worker processes).
        with _stderr_silenced() as stderr, ThreadPoolExecutor(n_jobs) as pool:
            bar = tqdm(total=len(todo), desc="GSEA", unit="unit", disable=not progress, file=stderr)
            futures = {pool.submit(_run_unit, values_GU[:, j], w): j for j in todo}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update()
            bar.close()
    _warn_missing_pvalues(done)
    result = _assemble(units, values_GU, reasons, done)
    table = result.units
    table["pval_unit"] = unit_pvalues(table)
    table["qval"] = benjamini_hochberg(table["pval_unit"])
    table["annotation"] = annotation_levels(table, annotation)
    return result


def _warn_missing_pvalues(done: Mapping[int, _UnitResult]) -> None:
    """One warning for all the gene sets fgsea gave no p-value (it prints a note per unit otherwise)."""
    missing = [d[3] for d in done.values() if d[3]]
    if missing:
        warnings.warn(
            f"GSEA: {sum(missing)} gene-set tests in {len(missing)} of {len(done)} units have no p-value: "
            "fewer than 10 random sets of the same size scored with the same sign (unbalanced attribution "
            "scores). Such a set is never a unit's label; more `permutations` may give it a p-value.",
            stacklevel=3,
        )


def _assemble(
    units: list[Any],
    values_GU: np.ndarray,
    reasons: list[str],
    done: Mapping[int, _UnitResult],
) -> GseaResult:
    """Per-unit rows and the long term table from the workers' results, in the units' order."""
    rows, tables = [], []
    for j, unit in enumerate(units):
        row: dict[str, Any] = dict.fromkeys(UNIT_COLUMNS, np.nan)
        row.update(term="", lead_genes="", annotation="none", reason=reasons[j], n_sets_tested=0)
        row["n_positive_genes"] = int((values_GU[:, j] > 0).sum())
        if j in done:
            top, row["n_sets_tested"], row["reason"], _ = done[j]
            if not top.empty:
                best = top.iloc[0]
                row.update({k: best[k] for k in ["term", "nes", "es", "pval", "fdr", "log2err", "set_size"]})
                row["lead_genes"] = best["lead_genes"]
                row["n_lead"] = len(best["lead_genes"].split(";")) if best["lead_genes"] else 0
                tables.append(top.assign(unit=unit, rank=np.arange(1, len(top) + 1)))
        rows.append(row)
    table = pd.DataFrame(rows, columns=UNIT_COLUMNS, index=pd.Index(units, name="unit"))
    terms = (
        pd.concat(tables, ignore_index=True)[TERM_COLUMNS] if tables else pd.DataFrame(columns=TERM_COLUMNS)
    )
    return GseaResult(units=table, terms=terms)
