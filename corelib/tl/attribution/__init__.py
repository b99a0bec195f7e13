"""Counterfactual occlusion attribution (Sec. 3.2, Eq. 2-3): which genes drive each concept or neuron."""

from __future__ import annotations

from corelib.tl.attribution.occlude import (
    aggregate_attributions,
    attribute_concepts,
    attribute_neurons,
    attribute_selected,
    occlusion,
)
from corelib.tl.attribution.perturb import PerturbationModel, concept_model, perturbation_model
from corelib.tl.attribution.result import (
    DIRECTIONS,
    GENE_COUNT_BINS,
    GENE_COUNT_LABELS,
    RELIABILITY_COLUMNS,
    RELIABILITY_TOP,
    RELIABLE_SPEARMAN,
    Attribution,
    check_direction,
    dense_rows,
    important_gene_counts,
    important_gene_shares,
    ranked_genes,
    sample_concepts,
    split_half_reliability,
    status_table,
    top_genes,
    unit_top_genes,
    worked_examples,
)
from corelib.tl.attribution.select import (
    ATTRIBUTED,
    SKIPPED,
    Selection,
    counterfactuals,
    prototypes,
    select_cells,
)
from corelib.tl.attribution.summary import reliability_summary, skip_reasons, top_gene_lists

__all__ = [
    "ATTRIBUTED",
    "Attribution",
    "GENE_COUNT_BINS",
    "GENE_COUNT_LABELS",
    "PerturbationModel",
    "DIRECTIONS",
    "RELIABILITY_COLUMNS",
    "RELIABILITY_TOP",
    "RELIABLE_SPEARMAN",
    "SKIPPED",
    "Selection",
    "aggregate_attributions",
    "attribute_selected",
    "attribute_concepts",
    "attribute_neurons",
    "check_direction",
    "concept_model",
    "counterfactuals",
    "dense_rows",
    "important_gene_counts",
    "important_gene_shares",
    "occlusion",
    "perturbation_model",
    "prototypes",
    "ranked_genes",
    "reliability_summary",
    "sample_concepts",
    "select_cells",
    "skip_reasons",
    "split_half_reliability",
    "status_table",
    "top_gene_lists",
    "top_genes",
    "unit_top_genes",
    "worked_examples",
]
