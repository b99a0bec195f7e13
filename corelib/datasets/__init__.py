"""Bundled datasets and reading, checking and describing a user's AnnData."""

from __future__ import annotations

from corelib.datasets._datasets import (
    DATASETS,
    LABEL_KEY,
    cell_cycle_genes,
    describe_genes,
    gene_descriptions,
    load,
    load_dataset,
    looks_like_ensembl,
    read,
    use_gene_symbols,
    validate,
)

__all__ = [
    "DATASETS",
    "LABEL_KEY",
    "cell_cycle_genes",
    "describe_genes",
    "gene_descriptions",
    "load",
    "load_dataset",
    "looks_like_ensembl",
    "read",
    "use_gene_symbols",
    "validate",
]
