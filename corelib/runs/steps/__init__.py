"""What composes ``corelib.tl`` with the run directory: cached sweeps, encoders, notebook 04 and 05 steps."""

from __future__ import annotations

from corelib.runs.steps import batch, batch_marks, claims, interpret
from corelib.runs.steps.batch import BatchStudy, batch_study
from corelib.runs.steps.cross_dataset import (
    CrossDataset,
    CrossDatasetStudy,
    attribute_matched,
    cross_dataset,
    cross_dataset_study,
    embed_datasets,
    matched_pair_genes,
    shared_scvi_encoder,
)
from corelib.runs.steps.embed import embed_cells, load_encoder, restore_encoder, umap_cells
from corelib.runs.steps.probes import load_attribution, model_genes, save_probe_results, save_top_units
from corelib.runs.steps.sae import (
    HISTORY_FILE,
    METRICS_FILE,
    attribution_path,
    embeddings_fingerprint,
    encode_sweep,
    load_histories,
    load_sae,
    sweep,
)
from corelib.runs.steps.stability import (
    random_control,
    random_control_embeddings,
    sae_fitter,
    selected_concept_matches,
    selected_sae,
    stability_methods,
    train_or_load_sae,
)

__all__ = [
    "BatchStudy",
    "batch",
    "batch_marks",
    "batch_study",
    "claims",
    "embed_cells",
    "CrossDataset",
    "CrossDatasetStudy",
    "HISTORY_FILE",
    "METRICS_FILE",
    "attribute_matched",
    "attribution_path",
    "cross_dataset",
    "cross_dataset_study",
    "embed_datasets",
    "embeddings_fingerprint",
    "encode_sweep",
    "interpret",
    "load_attribution",
    "load_encoder",
    "load_histories",
    "load_sae",
    "matched_pair_genes",
    "model_genes",
    "random_control",
    "random_control_embeddings",
    "restore_encoder",
    "sae_fitter",
    "save_probe_results",
    "save_top_units",
    "selected_concept_matches",
    "selected_sae",
    "shared_scvi_encoder",
    "stability_methods",
    "sweep",
    "train_or_load_sae",
    "umap_cells",
]
