"""Bundled datasets, gene set libraries, planted ground truth, the bundled pretrained demo encoder, and reading and
checking a user's AnnData (and a precomputed embedding in its ``obsm``)."""

from __future__ import annotations

from corelib.datasets._bundled import COARSE, coarse_cell_types
from corelib.datasets._checks import LABEL_KEY, looks_like_ensembl, validate
from corelib.datasets._datasets import (
    DATASETS,
    load,
    load_dataset,
    load_from_settings,
    read,
    use_gene_symbols,
)
from corelib.datasets._embedding import check_embedding
from corelib.datasets._gene_sets import GO_BP, MAX_SIZE, MIN_SIZE, available_libraries, load_gene_sets
from corelib.datasets._genes import cell_cycle_genes, describe_genes, gene_descriptions
from corelib.datasets._organism import ORGANISMS
from corelib.datasets._planted import (
    DEFAULT_TERMS,
    Program,
    gene_set_program,
    plant_batch,
    plant_programs,
    planted_pbmc3k,
)
from corelib.datasets._pretrained import (
    BUNDLED_PREFIX,
    RECORD_FILE,
    pretrained,
    pretrained_names,
    pretrained_record,
    resolve_bundled,
    sha256_file,
)

__all__ = [
    "COARSE",
    "coarse_cell_types",
    "BUNDLED_PREFIX",
    "RECORD_FILE",
    "pretrained",
    "pretrained_names",
    "pretrained_record",
    "resolve_bundled",
    "sha256_file",
    "DATASETS",
    "DEFAULT_TERMS",
    "GO_BP",
    "MAX_SIZE",
    "MIN_SIZE",
    "ORGANISMS",
    "Program",
    "available_libraries",
    "gene_set_program",
    "load_gene_sets",
    "plant_batch",
    "plant_programs",
    "planted_pbmc3k",
    "LABEL_KEY",
    "check_embedding",
    "cell_cycle_genes",
    "describe_genes",
    "gene_descriptions",
    "load",
    "load_dataset",
    "load_from_settings",
    "looks_like_ensembl",
    "read",
    "use_gene_symbols",
    "validate",
]
