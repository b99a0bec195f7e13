"""Compute: arrays or AnnData in, tables or result objects out. No run directory, no matplotlib.

On an AnnData, :func:`train_sae`, :func:`attribute` and :func:`annotate` read and write documented slots
(scanpy style); the subpackages hold the methods they call, on arrays.
"""

from __future__ import annotations

from corelib.tl import (
    annotation,
    attribution,
    baselines,
    batch,
    cards,
    claims,
    concepts,
    cross_dataset,
    deg,
    enrichment,
    evidence,
    integration,
    neighbors,
    probe_labels,
    probes,
    recovery,
    sae,
    sampling,
    spectrum,
    stability,
    steering,
    units,
)
from corelib.tl._anndata import annotate, attribute, characterize, rank_genes, train_sae

__all__ = [
    "annotate",
    "annotation",
    "attribute",
    "attribution",
    "baselines",
    "batch",
    "characterize",
    "cards",
    "claims",
    "concepts",
    "cross_dataset",
    "deg",
    "enrichment",
    "evidence",
    "integration",
    "neighbors",
    "probe_labels",
    "probes",
    "rank_genes",
    "recovery",
    "sae",
    "sampling",
    "spectrum",
    "stability",
    "steering",
    "train_sae",
    "units",
]
