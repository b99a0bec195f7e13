"""Notebook 04's cross-dataset study: one shared encoder, an SAE per dataset, matched dictionaries.

The computation is :func:`corelib.encoders.train_shared_scvi` (the shared scVI) and
:mod:`corelib.tl.cross_dataset` (comparison, matching, attribution of the matched pairs); this module caches
the encoder and the SAEs and writes the tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from corelib import datasets
from corelib.encoders import embed_datasets, restore, save
from corelib.encoders.shared import SHARED_ARCH, train_shared_scvi
from corelib.runs.cache import Provenance, cached, reusable
from corelib.runs.steps.stability import train_or_load_sae
from corelib.tl.cross_dataset import (
    CrossDataset,
    attribute_matched,
    compare_datasets,
    heldout_cells,
    matched_pair_genes,
    matching_summary,
)
from corelib.tl.sae.training import TrainConfig
from corelib.tl.sampling import describe_sample, sample_obs
from corelib.tl.stability import shared_genes

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "SHARED_ARCH",
    "CrossDataset",
    "CrossDatasetStudy",
    "attribute_matched",
    "cross_dataset",
    "cross_dataset_study",
    "embed_datasets",
    "matched_pair_genes",
    "shared_scvi_encoder",
    "training_cells",
]


def shared_scvi_encoder(
    adata_a: Any,
    adata_b: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    n_latent: int = 10,
    epochs: int = 50,
    max_cells: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """One scVI trained on two datasets over their shared genes, ``dataset`` as batch covariate, cached.

    The paper compares SAEs trained on two datasets embedded by the same model. Two small datasets rarely
    share a model's gene list, so this trains one ``scvi.model.SCVI`` on both over their shared genes
    (:func:`corelib.tl.stability.shared_genes`, :func:`corelib.encoders.train_shared_scvi`: the batch enters
    the decoder only, so both datasets land in one space). The result is a ``corelib.encoders`` scVI encoder
    (posterior mean of z), usable by ``corelib.encoders.embed`` and by the attribution.

    Parameters
    ----------
    adata_a, adata_b
        Raw counts in ``.X`` and gene symbols as ``var_names``.
    names
        Batch labels of the two datasets.
    n_latent
        Embedding dimension.
    epochs
        scVI training epochs.
    max_cells
        Train on a seeded sample of at most this many cells of each dataset (an atlas: scVI's epochs grow with
        the cells, and the shared space needs no more); None: every cell. Every cell is embedded either way.
    seed
        ``scvi.settings.seed``, and the seed of the sample.
    cache_dir
        If given, the encoder is saved there (``corelib.encoders.save``: safetensors + JSON) with its
        provenance (:func:`corelib.runs.cached`), and reused when made from the same cells and settings.
    overwrite
        Retrain a cached encoder made from other inputs instead of raising ``StaleOutputError``.
    device
        Training device ("auto": CUDA when available).
    progress
        Show scvi-tools' progress bar.

    Returns
    -------
    ``(encoder, info)`` with ``info`` = ``n_shared_genes``, ``n_genes_a``, ``n_genes_b``, ``n_latent``,
    ``epochs``, ``reused``.
    """
    genes = shared_genes(adata_a, adata_b)
    adata_a = training_cells(adata_a, max_cells, seed, names[0])
    adata_b = training_cells(adata_b, max_cells, seed, names[1])
    info = {
        "n_shared_genes": len(genes),
        "n_genes_a": int(adata_a.n_vars),
        "n_genes_b": int(adata_b.n_vars),
        "n_latent": int(n_latent),
        "epochs": int(epochs),
        "n_train_cells": [int(adata_a.n_obs), int(adata_b.n_obs)],
    }

    def train() -> Any:
        adatas = {names[0]: adata_a, names[1]: adata_b}
        return train_shared_scvi(
            adatas, genes, n_latent=n_latent, epochs=epochs, seed=seed, device=device, progress=progress
        )

    if cache_dir is None:
        return train(), {**info, "reused": False}
    inputs = Provenance.of(
        {
            "data_a": adata_a,
            "data_b": adata_b,
            "names": list(names),
            "n_latent": int(n_latent),
            "epochs": int(epochs),
            "seed": int(seed),
        }
    )
    reused = reusable([cache_dir], inputs, overwrite=overwrite)
    encoder = cached(
        train,
        [Path(cache_dir)],
        inputs,
        save=save,
        load=lambda path: restore(path, device="cpu"),
        overwrite=overwrite,
    )
    return encoder, {**info, "reused": reused}


def training_cells(adata: Any, max_cells: int | None, seed: int, name: str) -> Any:
    """``adata``, or a view of a seeded uniform sample of ``max_cells`` of its cells
    (:func:`corelib.tl.sampling.sample_obs`, printed)."""
    sample = sample_obs(adata, max_cells, seed=seed)
    if sample is not adata:
        what = describe_sample(sample.n_obs, adata.n_obs, max_cells, seed, None)
        print(f"Shared scVI trained on {what} of {name}.")
    return sample


def cross_dataset(
    embeddings: Mapping[str, np.ndarray],
    n_concepts: int,
    k: int,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    **train_options: Any,
) -> CrossDataset:
    """Train one SAE per dataset on the same encoder's embeddings, then R^2 across datasets and matching.

    Parameters
    ----------
    embeddings
        ``{dataset: embeddings (n_cells x d)}``, two datasets, one encoder.
    n_concepts, k, seed
        SAE size, sparsity and seed (the selected SAE's); the second dataset's SAE gets ``seed + 1``, so that
        the two do not share their random initialisation.
    cache_dir
        SAEs are saved as ``<cache_dir>/<dataset>/`` and reused (:func:`train_or_load_sae`).
    overwrite
        Retrain cached SAEs made from other inputs.
    train_options
        Passed to ``corelib.tl.sae.train``. Its ``holdout_fraction`` / ``split_seed`` (defaults of
        ``corelib.tl.sae.train``) also choose the held-out cells on which every SAE is evaluated.

    Returns
    -------
    :class:`corelib.tl.cross_dataset.CrossDataset` (:func:`corelib.tl.cross_dataset.compare_datasets`).
    """
    if len(embeddings) != 2:
        raise ValueError(
            f"cross_dataset compares two datasets; got {len(embeddings)} ({', '.join(map(str, embeddings))})."
        )
    holdout = train_options.get("holdout_fraction", TrainConfig.holdout_fraction)
    heldout = heldout_cells(embeddings, holdout, train_options.get("split_seed", 0))
    saes = {}
    # seed and seed + 1: two SAEs sharing their random initialisation would match partly because of it
    for j, (name, emb) in enumerate(embeddings.items()):
        path = Path(cache_dir) / name if cache_dir is not None else None
        saes[name] = train_or_load_sae(
            emb, n_concepts, k, seed=seed + j, path=path, overwrite=overwrite, **train_options
        )
    return compare_datasets(saes, embeddings, heldout)


class CrossDatasetStudy(NamedTuple):
    """Everything of the cross-dataset comparison of notebook 04 (empty tables when it was skipped).

    Attributes
    ----------
    info
        Shared-encoder facts (:func:`shared_scvi_encoder`) and the dataset names; ``skipped`` holds the reason
        when there was no second dataset.
    r2
        :func:`corelib.tl.stability.cross_dataset_r2` (Fig. 4A).
    matching
        :meth:`corelib.tl.stability.Matching.to_frame` of the two dictionaries (Fig. 4B), best first.
    summary
        :func:`corelib.tl.cross_dataset.matching_summary` of it, with ``chance_mean_cosine``.
    pairs
        :func:`corelib.tl.cross_dataset.matched_pair_genes` (Fig. 4C).
    adatas, embeddings
        ``{dataset: AnnData}`` and ``{dataset: embedding (cells x d)}`` by the shared encoder (empty when
        skipped): what later sections of notebook 04 reuse (:func:`corelib.runs.steps.batch.batch_study`).
    """

    info: dict[str, Any]
    r2: pd.DataFrame
    matching: pd.DataFrame
    summary: dict[str, float]
    pairs: pd.DataFrame
    adatas: dict[str, Any]
    embeddings: dict[str, np.ndarray]


def cross_dataset_study(
    run: Any,
    adata: Any,
    other: str | os.PathLike | None,
    sae_settings: Mapping[str, Any],
    *,
    other_layer: str | None = None,
    n_latent: int = 10,
    encoder_epochs: int = 50,
    encoder_max_cells: int | None = None,
    n_pairs: int = 5,
    n_genes: int = 10,
    attribution_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> CrossDatasetStudy:
    """Paper 4.4 across datasets: shared scVI, one SAE per dataset, R^2 across datasets, matching, top genes.

    Parameters
    ----------
    run
        The run directory; writes ``run.path("stability", ...)``: ``encoder/`` (the shared scVI),
        ``cross_sae/<dataset>/``, ``cross_r2.csv``, ``cross_matching.csv``, ``cross_pairs.csv``,
        ``cross_info.json``.
    adata
        Dataset A (raw counts; ``uns["dataset"]["name"]`` names it).
    other
        Dataset B: a bundled name or an ``.h5ad`` path (``corelib.datasets.load``, gene symbols as ``var_names``);
        None skips the comparison (printed, with empty tables).
    sae_settings
        :func:`selected_sae`: the SAE size, k, seed and training options used for both datasets.
    other_layer
        The layer of dataset B holding raw counts (None: ``.X``).
    n_latent, encoder_epochs, encoder_max_cells
        The shared scVI's embedding size, training epochs and training cells per dataset
        (:func:`shared_scvi_encoder`'s ``max_cells``).
    n_pairs, n_genes
        Best-matched pairs attributed and shown, top genes per concept.
    attribution_options
        Passed to ``corelib.tl.attribution.attribute_concepts`` (``n_prototypes``, ``n_counterfactuals``).
    seed, device, progress
        Seed of the shared scVI; device and progress bars of the SAEs and the attribution.
    """
    if other is None:
        reason = "stability_dataset is None: no second dataset, the cross-dataset comparison is skipped."
        print(reason)
        # the columns of Matching.to_frame, so that readers of the skipped table find them
        matching = pd.DataFrame({"concept_1": [], "concept_2": [], "cosine": []})
        return CrossDatasetStudy({"skipped": reason}, pd.DataFrame(), matching, {}, pd.DataFrame(), {}, {})
    name_a = str(adata.uns.get("dataset", {}).get("name", "A"))
    # notebook 01's organism setting holds for both datasets
    organism = adata.uns.get("dataset", {}).get("organism", "human")
    adata_b = datasets.load(other, layer=other_layer, organism=organism)
    name_b = str(adata_b.uns.get("dataset", {}).get("name", "B"))
    if name_b == name_a:
        name_b = f"{name_b} (B)"
    encoder, info = shared_scvi_encoder(
        adata,
        adata_b,
        names=(name_a, name_b),
        n_latent=n_latent,
        epochs=encoder_epochs,
        max_cells=encoder_max_cells,
        seed=seed,
        cache_dir=run.path("stability", "encoder"),
        overwrite=run.overwrite,
        device=device,
        progress=progress,
    )
    adatas = {name_a: adata, name_b: adata_b}
    emb = embed_datasets(encoder, adatas, progress=progress)
    train = {**sae_settings["train"], "device": device, "progress": progress}
    cross = cross_dataset(
        emb,
        sae_settings["n_concepts"],
        sae_settings["k"],
        seed=sae_settings["seed"],
        cache_dir=run.path("stability", "cross_sae"),
        overwrite=run.overwrite,
        **train,
    )
    attr_a, attr_b = attribute_matched(
        encoder,
        cross,
        adatas,
        emb,
        n_pairs=n_pairs,
        progress=progress,
        device=device,
        **dict(attribution_options or {}),
    )
    pairs = matched_pair_genes(cross.matching, attr_a, attr_b, n_pairs=n_pairs, n_genes=n_genes)
    pairs = pairs.rename(
        columns={
            "concept_1": f"concept ({name_a})",
            "concept_2": f"concept ({name_b})",
            "top_genes_1": f"top genes ({name_a})",
            "top_genes_2": f"top genes ({name_b})",
        }
    )
    summary = matching_summary(cross, seed=seed)
    info = {
        **info,
        "dataset_a": name_a,
        "dataset_b": name_b,
        "n_cells_a": adata.n_obs,
        "n_cells_b": adata_b.n_obs,
    }
    matching = cross.matching.to_frame()
    run.write_json("cross_info", {**info, "matching": summary})
    run.write_table("stability", cross.r2, "cross_r2.csv", index=False)
    run.write_table("cross_matching", matching, index=False)
    run.write_table("cross_pairs", pairs, index=False)
    return CrossDatasetStudy(info, cross.r2, matching, summary, pairs, adatas, emb)
