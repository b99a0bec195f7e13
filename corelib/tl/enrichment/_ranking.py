"""One unit's prerank: its ranking (:func:`rank_genes`) and fgsea multilevel on it (:func:`prerank`)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TextIO

import numpy as np
import pandas as pd
from gseapy.gse import fgsea_rs

#: Lowest ranking weight, relative to the largest |score| (see :func:`rank_genes`).
WEIGHT_FLOOR = 1e-4

#: Per-rank decrement of the ranking weights, relative to the largest |score| (no two weights equal).
_TIE_STEP = 1e-12

#: Smallest p-value resolved (fgsea's ``eps``): smaller ones are reported as this bound. Far below the strong
#: threshold; resolving 1e-35 instead costs ~15x more time on a strongly enriched set.
MIN_PVALUE = 1e-10

#: MCMC sample size per level of the multilevel procedure (fgsea's default).
_SAMPLE_SIZE = 101


#: Columns of the long table of terms (:attr:`corelib.tl.enrichment.GseaResult.terms`).
TERM_COLUMNS = ["unit", "rank", "term", "nes", "es", "pval", "fdr", "log2err", "set_size", "lead_genes"]


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
    with _stderr_silenced():  # fgsea's notes on NaN p-values / log2err: counted by gsea(), kept in the table
        return _prerank(ranking, gene_sets, permutations, seed)


def _prerank(
    ranking: pd.Series, gene_sets: Mapping[str, Sequence[str]], permutations: int, seed: int
) -> pd.DataFrame:
    """:func:`prerank` without silencing stderr (the caller does, once for many units)."""
    genes = ranking.index.astype(str).tolist()
    result = fgsea_rs(
        genes, ranking.tolist(), dict(gene_sets), 1.0, 1, len(genes), _SAMPLE_SIZE, int(permutations),
        MIN_PVALUE, 1, int(seed),
    )  # fmt: skip
    s = result.summaries
    hits = [np.asarray(x.hits) for x in s]
    table = pd.DataFrame(
        {
            "term": [x.term for x in s], "es": [x.es for x in s], "nes": [x.nes for x in s],
            "pval": [x.pval for x in s], "fdr": [x.fdr for x in s], "log2err": [x.log2err for x in s],
            "set_size": [len(h) for h in hits],
        }
    )  # fmt: skip
    order = _label_order(table)
    table = table.iloc[order].reset_index(drop=True)
    names, abs_w = np.asarray(genes, dtype=object), np.abs(ranking.to_numpy())
    table["lead_genes"] = [
        _leading_edge(names, abs_w, np.sort(hits[i])) if es > 0 else ""
        for i, es in zip(order, table["es"], strict=True)
    ]
    return table


def _label_order(table: pd.DataFrame) -> np.ndarray:
    """Row positions in label order: ES > 0 with a p-value first, by p ascending then NES descending."""
    eligible = ((table["es"] > 0) & table["pval"].notna()).to_numpy()
    keys = (table["term"].to_numpy(), -table["nes"].to_numpy(), table["pval"].to_numpy(), ~eligible)
    return np.lexsort(keys)


def _leading_edge(names: np.ndarray, abs_w: np.ndarray, hits: np.ndarray) -> str:
    """Genes of a positively enriched set ranked at or before the running-sum maximum (``;``-joined).

    The running sum only rises at a hit, so its maximum is right after one: after the j-th hit (0-based) it
    is ``sum_{i <= j} |w| / sum |w| - (hits[j] - j) / (n_genes - |S|)``.
    """
    hit_w = abs_w[hits]
    run = np.cumsum(hit_w) / hit_w.sum() - (hits - np.arange(len(hits))) / (len(abs_w) - len(hits))
    return ";".join(names[hits[: int(np.argmax(run)) + 1]])


#: Depth of nested or concurrent :func:`_stderr_silenced` blocks and the saved stderr descriptor.
_SILENCED: dict[str, int] = {"depth": 0, "saved": -1}
_SILENCED_LOCK = threading.Lock()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[TextIO]:
    """Send what compiled code writes to file descriptor 2 (stderr) to the null device for the block.

    Safe across threads (the first block to enter redirects, the last to leave restores); yields a stream on
    the real stderr (for a progress bar).
    """
    with _SILENCED_LOCK:
        if _SILENCED["depth"] == 0:
            sys.stderr.flush()
            _SILENCED["saved"], null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        _SILENCED["depth"] += 1
    stream = open(_SILENCED["saved"], "w", closefd=False)  # noqa: SIM115 (closed below, fd kept)
    try:
        yield stream
    finally:
        stream.close()
        with _SILENCED_LOCK:
            _SILENCED["depth"] -= 1
            if _SILENCED["depth"] == 0:
                os.dup2(_SILENCED["saved"], 2)
                os.close(_SILENCED["saved"])
