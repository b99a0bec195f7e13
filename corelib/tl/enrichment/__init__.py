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

Gene set libraries are data: :mod:`corelib.datasets` loads them (re-exported here). Modules: ``_ranking`` (one
unit: ranking and prerank), ``_units`` (every unit, annotation, threads or Dask).
"""

from __future__ import annotations

from corelib.datasets._gene_sets import (
    GO_BP,
    MAX_SIZE,
    MIN_SIZE,
    available_libraries,
    load_gene_sets,
)
from corelib.tl.enrichment._ora import (
    ORA_COLUMNS,
    expression_bins,
    mean_log_expression,
    ora,
    ora_shares,
    top_indicator,
)
from corelib.tl.enrichment._ranking import MIN_PVALUE, TERM_COLUMNS, WEIGHT_FLOOR, prerank, rank_genes
from corelib.tl.enrichment._units import UNIT_COLUMNS, GseaResult, gsea, gsea_null

__all__ = [
    "GO_BP",
    "MAX_SIZE",
    "MIN_PVALUE",
    "MIN_SIZE",
    "ORA_COLUMNS",
    "TERM_COLUMNS",
    "UNIT_COLUMNS",
    "WEIGHT_FLOOR",
    "GseaResult",
    "available_libraries",
    "expression_bins",
    "gsea",
    "gsea_null",
    "load_gene_sets",
    "mean_log_expression",
    "ora",
    "ora_shares",
    "prerank",
    "rank_genes",
    "top_indicator",
]
