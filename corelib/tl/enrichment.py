"""Attribution-based gene set enrichment (paper 3.4): label every concept and neuron with a GO process.

For each unit the genes are ranked by their counterfactual attribution score and GSEA prerank
(Subramanian et al. 2005) tests every gene set S at the top of that ranking. With weights ``w_g`` in rank
order, the running sum over the first i genes is::

    P_hit(S, i)  = sum_{g in S, g <= i} |w_g| / sum_{g in S} |w_g|
    P_miss(S, i) = #{g not in S, g <= i} / (n_genes - |S|)
    ES(S)        = the max-magnitude value of P_hit - P_miss,   NES = ES / mean ES of same-size random sets

P-values come from fgsea's multilevel method (adaptive multilevel splitting, Korotkevich et al. 2021, via
``gseapy.gse.fgsea_rs``), resolved down to :data:`MIN_PVALUE`: a permutation p-value could never go below
``1 / permutations`` and so never reach the strong threshold. The unit's label is its most significant
positively enriched set (smallest p, ties by larger NES): with sparse scores ES saturates near 1 for any set
holding one strongly attributed gene, while the p-value still separates them. The unit's annotation (strong /
weak / none: calibrated q-values by default, or the paper's raw p thresholds) and the gene-label permutation
null are in :mod:`corelib.tl.annotation`; :func:`gsea_null` runs GSEA on that null.

:func:`rank_genes` orders genes by decreasing score with ties in a seeded random order (alphabetical runs
such as RPL* would form spurious sets), raises weights below ``WEIGHT_FLOOR * max|w|`` to that floor (fgsea
fails on all-zero random sets) and makes all weights distinct. Gene sets are filtered by size within the
ranking's genes (``MIN_SIZE``..``MAX_SIZE``): a set of m genes holding only the top gene reaches
p ~ m / n_genes. Every unit runs with the same seed, so its result depends neither on ``n_jobs`` nor on the
other units. The measurements behind these choices are in ``docs/decisions.md``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from gseapy.gse import fgsea_rs
from tqdm.auto import tqdm

from corelib.cluster import map_chunks
from corelib.tl.annotation import (
    annotation_levels,
    benjamini_hochberg,
    check_mode,
    permute_gene_labels,
    unit_pvalues,
)

if TYPE_CHECKING:
    from distributed import Client

#: Default gene set library (shipped offline by the ``pyenrichr`` package).
GO_BP = "GO_Biological_Process_2023"

#: Default gene set size bounds, counted within the ranking's genes (see the module docstring).
MIN_SIZE = 15
MAX_SIZE = 500

#: Lowest ranking weight, relative to the largest |score| (see :func:`rank_genes`).
WEIGHT_FLOOR = 1e-4

#: Per-rank decrement of the ranking weights, relative to the largest |score| (no two weights equal).
_TIE_STEP = 1e-12

#: Smallest p-value resolved (fgsea's ``eps``): smaller ones are reported as this bound. Far below the strong
#: threshold; resolving 1e-35 instead costs ~15x more time on a strongly enriched set.
MIN_PVALUE = 1e-10

#: MCMC sample size per level of the multilevel procedure (fgsea's default).
_SAMPLE_SIZE = 101

#: Columns of the per-unit table and of the long table of terms.
UNIT_COLUMNS = [
    "term", "nes", "es", "pval", "fdr", "log2err", "set_size", "n_lead", "lead_genes",
    "n_sets_tested", "n_positive_genes", "pval_unit", "qval", "annotation", "reason",
]  # fmt: skip


TERM_COLUMNS = ["unit", "rank", "term", "nes", "es", "pval", "fdr", "log2err", "set_size", "lead_genes"]


# ----------------------------------------------------------------------------------------------------------
# Gene sets
# ----------------------------------------------------------------------------------------------------------
def _pyenrichr_data() -> Path:
    """The folder of gene set libraries inside the installed ``pyenrichr`` package (found, not imported)."""
    spec = importlib.util.find_spec("pyenrichr")
    if spec is None or spec.origin is None:
        raise ImportError("The pyenrichr package is not installed; install it (pip install pyenrichr).")
    return Path(spec.origin).parent / "data"


def available_libraries() -> list[str]:
    """Names of the gene set libraries that ``pyenrichr`` ships offline (e.g. ``GO_Biological_Process_2023``)."""
    return sorted(p.name for p in _pyenrichr_data().iterdir() if p.is_file() and "." not in p.name)


def _read_gmt(path: Path) -> dict[str, list[str]]:
    """Parse a GMT(-like) file: ``term <tab> description <tab> gene <tab> gene ...`` per line."""
    sets: dict[str, list[str]] = {}
    with open(path) as fh:
        for line in fh:
            fields = line.rstrip("\n\r").split("\t")
            if len(fields) < 3 or not fields[0]:
                continue
            # Enrichr writes "GENE,1.0" in weighted libraries; keep the symbol.
            sets[fields[0]] = [g.split(",")[0].strip() for g in fields[2:] if g.strip()]
    if not sets:
        raise ValueError(f"{path} holds no gene set; expected lines 'term<TAB>description<TAB>gene<TAB>...'.")
    return sets


def load_gene_sets(
    library: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    *,
    genes: Sequence[str] | None = None,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
) -> dict[str, list[str]]:
    """Load gene sets offline, restricted to a gene universe and filtered by size.

    Parameters
    ----------
    library
        A library name shipped by ``pyenrichr`` (see :func:`available_libraries`; default GO Biological
        Process 2023), a path to a ``.gmt`` file, or a dict ``term -> genes``.
    genes
        The gene universe (the model's genes, i.e. the ranking's index). Set members are matched to it
        exactly, then case-insensitively (Enrichr symbols are upper case), and renamed to the universe's
        spelling. ``None`` keeps the sets as read, without the size filter.
    min_size, max_size
        Keep sets with ``min_size <= |set within genes| <= max_size`` (and smaller than the universe).

    Returns
    -------
    dict
        ``term -> sorted list of genes`` (of ``genes`` when given). Possibly empty when no set passes the
        filter; :func:`gsea` then reports a reason for every unit instead of failing.
    """
    if isinstance(library, Mapping):
        raw = {str(k): [str(g) for g in v] for k, v in library.items()}
        if not raw:
            raise ValueError("The gene set dict is empty; pass term -> list of genes.")
    elif isinstance(library, str | os.PathLike):
        path = Path(library)
        if path.is_file():
            raw = _read_gmt(path)
        elif isinstance(library, str) and library in available_libraries():
            raw = _read_gmt(_pyenrichr_data() / library)
        else:
            raise ValueError(
                f"Unknown gene set library {str(library)!r}: not a file and not one of the libraries shipped "
                f"offline by pyenrichr: {', '.join(available_libraries())}. Pass one of these names, a .gmt "
                "path, or a dict term -> genes."
            )
    else:
        raise TypeError(
            f"library must be a library name, a .gmt path or a dict term -> genes, not {type(library).__name__}."
        )
    if genes is None:
        return {term: sorted(set(members)) for term, members in raw.items()}
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"Need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}.")
    universe = [str(g) for g in genes]
    lookup = {g.upper(): g for g in reversed(universe)} | {g: g for g in universe}
    out = {}
    for term, members in raw.items():
        hits = sorted({lookup[m] if m in lookup else lookup.get(m.upper(), "") for m in members} - {""})
        if min_size <= len(hits) <= max_size and len(hits) < len(universe):
            out[term] = hits
    return out


# ----------------------------------------------------------------------------------------------------------
# One ranking
# ----------------------------------------------------------------------------------------------------------
def rank_genes(scores_G: pd.Series, seed: int = 0) -> pd.Series:
    """The prerank input of one unit: genes by decreasing score, random tie order, floored weights.

    Parameters
    ----------
    scores_G
        Attribution score per gene (gene names as index), finite.
    seed
        Seed of the tie order.

    Returns
    -------
    pd.Series
        The genes in ranking order (index) with their GSEA weights: the score, or
        ``WEIGHT_FLOOR * max|score|`` where ``|score|`` is below it (exact zeros included), minus
        ``rank * 1e-12 * max|score|`` so that no two are equal. Strictly decreasing.
    """
    values = scores_G.to_numpy(dtype=np.float64)
    shuffle = np.random.default_rng(seed).permutation(len(values))
    order = shuffle[np.argsort(-values[shuffle], kind="stable")]
    ranked = values[order]
    top = np.abs(ranked).max()
    # Raising |score| < floor to +floor keeps the order: those genes sit between scores >= floor and <= -floor.
    weights = np.where(np.abs(ranked) < WEIGHT_FLOOR * top, WEIGHT_FLOOR * top, ranked)
    # A step of 1e-12 * top per rank makes every weight distinct (changes of at most n_genes * 1e-12 of the
    # top score), so a tool that sorts the ranking again (gseapy.prerank does, with an unstable sort) keeps
    # the seeded tie order.
    weights = weights - np.arange(len(weights)) * (_TIE_STEP * top)
    return pd.Series(weights, index=scores_G.index[order], name=scores_G.name)


def prerank(
    ranking: pd.Series, gene_sets: Mapping[str, Sequence[str]], *, permutations: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """fgsea-multilevel prerank of one ranking against gene sets (one thread).

    Parameters
    ----------
    ranking
        Output of :func:`rank_genes`: genes (index) in ranking order with their weights.
    gene_sets
        ``term -> genes``, already restricted to the ranking's genes and size-filtered
        (:func:`load_gene_sets` with ``genes=ranking.index``).
    permutations
        Random gene sets per set size for the NES normalisation (fgsea's ``nPermSimple``). The p-values come
        from the multilevel procedure and are not limited by it.
    seed
        fgsea's random seed.

    Returns
    -------
    pd.DataFrame
        One row per tested set, in label order (positively enriched first, by p-value then NES): columns
        ``term, es, nes, pval, fdr, log2err, set_size, lead_genes`` (leading-edge genes, ``;``-joined, empty
        for negatively enriched sets).
    """
    genes = ranking.index.astype(str).tolist()
    with _stderr_silenced():  # fgsea's notes on NaN p-values / log2err: counted by gsea(), kept in the table
        result = fgsea_rs(
            genes, ranking.tolist(), dict(gene_sets), 1.0, 1, len(genes), _SAMPLE_SIZE,
            int(permutations), MIN_PVALUE, 1, int(seed),
        )  # fmt: skip
    rows = [
        {
            "term": s.term, "es": s.es, "nes": s.nes, "pval": s.pval, "fdr": s.fdr,
            "log2err": s.log2err, "set_size": len(s.hits), "hits": s.hits,
        }
        for s in result.summaries
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=[*TERM_COLUMNS[2:-1], "hits"])
    table = _label_order(table)
    table["lead_genes"] = [
        _leading_edge(genes, ranking.to_numpy(), hits) if es > 0 else ""
        for es, hits in zip(table["es"], table.pop("hits"), strict=True)
    ]
    return table.reset_index(drop=True)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send what compiled code writes to file descriptor 2 (stderr) to the null device for the block."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _label_order(table: pd.DataFrame) -> pd.DataFrame:
    """Sort prerank rows for labelling: ES > 0 with a p-value first, by p ascending then NES descending."""
    eligible = (table["es"] > 0) & table["pval"].notna()
    key = pd.DataFrame({"x": ~eligible, "p": table["pval"], "n": -table["nes"], "t": table["term"]})
    return table.loc[key.sort_values(["x", "p", "n", "t"], na_position="last").index]


def _leading_edge(genes: list[str], weights: np.ndarray, hits: Sequence[int]) -> str:
    """Genes of a positively enriched set ranked at or before the running-sum maximum (``;``-joined)."""
    hits = np.sort(np.asarray(hits))
    in_set = np.zeros(len(genes), dtype=bool)
    in_set[hits] = True
    step_hit = np.where(in_set, np.abs(weights), 0.0) / np.abs(weights[hits]).sum()
    step_miss = np.where(in_set, 0.0, 1.0 / (len(genes) - len(hits)))
    peak = int(np.argmax(np.cumsum(step_hit - step_miss)))
    return ";".join(genes[i] for i in hits[hits <= peak])


def gsea_null(
    scores_GU: pd.DataFrame,
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    *,
    n_units: int | None = None,
    seed: int = 0,
    **options: Any,
) -> pd.DataFrame:
    """Per-unit GSEA table of the gene-label permutation null (``permute_gene_labels``, then :func:`gsea`).

    ``seed`` seeds the unit sample, the permutations and GSEA; ``options`` go to :func:`gsea` (``annotation``,
    ``permutations``, ``n_jobs``...). Read it with :func:`corelib.tl.annotation.annotation_rates`: every
    annotation in it is by chance (:func:`corelib.tl.annotation.permute_gene_labels`).
    """
    permuted = permute_gene_labels(scores_GU, n_units=n_units, seed=seed)
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
_WORKER: dict[str, Any] = {}


def _init_worker(shared: dict[str, Any]) -> None:
    """Give a worker process the shared inputs (``gene_sets, genes, permutations, seed, top_n``) once."""
    _WORKER.update(shared)


def _run_unit(values_G: np.ndarray, w: dict[str, Any] = _WORKER) -> _UnitResult:
    """Prerank one unit with the shared inputs ``w``: its top ``w["top_n"]`` positive terms, the number of sets
    tested, a reason, and the number of sets fgsea gave no p-value."""
    ranking = rank_genes(pd.Series(values_G, index=w["genes"]), w["seed"])
    try:
        table = prerank(ranking, w["gene_sets"], permutations=w["permutations"], seed=w["seed"])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # a Rust panic in fgsea arrives as pyo3's PanicException (a BaseException)
        return pd.DataFrame(columns=TERM_COLUMNS[2:]), 0, f"fgsea failed: {type(err).__name__}: {err}", 0
    positive = table[(table["es"] > 0) & table["pval"].notna()]
    reason = "" if len(positive) else "no positively enriched gene set"
    return positive.head(w["top_n"]), len(table), reason, int(table["pval"].isna().sum())


def _run_chunk(w: dict[str, Any], values_GU: np.ndarray) -> list[_UnitResult]:
    """:func:`_run_unit` of every column of ``values_GU``, in a Dask task."""
    return [_run_unit(values_G, w) for values_G in values_GU.T]


def _worker_context() -> multiprocessing.context.BaseContext:
    """Process start method for the workers: a fork server where available, else spawn.

    Workers must not be forked from a notebook kernel that holds torch/OpenMP threads; a fork server is a
    clean single-threaded process that imports this module once (per session) and forks workers cheaply,
    whereas spawn pays the gseapy import (seconds) in every worker of every call.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


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
        Worker processes (default: the number of CPUs); 1 runs in this process.
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
        (a task gets its units' scores, every worker the gene sets once) instead of ``n_jobs`` local processes.

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
    sets = load_gene_sets(gene_sets, genes=genes, min_size=min_size, max_size=max_size)
    values_GU = scores_GU.to_numpy(dtype=np.float64)
    units = list(scores_GU.columns)
    reasons = [_skip_reason(values_GU[:, j], len(sets), min_size, max_size) for j in range(len(units))]
    todo = [j for j, r in enumerate(reasons) if not r]
    n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(todo)))
    w = dict(gene_sets=sets, genes=genes, permutations=int(permutations), seed=int(seed), top_n=top_n)
    done: dict[int, _UnitResult] = {}
    bar = tqdm(total=len(todo), desc="GSEA", unit="unit", disable=not progress)
    if client is not None:
        for js, part in map_chunks(client, _run_chunk, todo, lambda js: (values_GU[:, js],), w, bar=bar):
            done.update(zip(js, part, strict=True))
    elif n_jobs == 1:
        for j in todo:
            done[j] = _run_unit(values_GU[:, j], w)
            bar.update()
    else:
        ctx = _worker_context()
        try:
            with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_init_worker, initargs=[w]) as pool:
                futures = {pool.submit(_run_unit, values_GU[:, j]): j for j in todo}
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update()
        except BrokenProcessPool as err:
            raise RuntimeError(
                "GSEA worker processes died. In a script, call gsea() under `if __name__ == '__main__':` "
                "(worker processes re-import the main module); otherwise pass n_jobs=1."
            ) from err
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
