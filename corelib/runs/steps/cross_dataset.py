"""Notebook 04's cross-dataset study: one shared encoder, an SAE per dataset, matched dictionaries."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from corelib.device import resolve_device
from corelib.runs.steps.stability import train_or_load_sae
from corelib.tl.attribution.result import unit_top_genes
from corelib.tl.sampling import describe_sample, subsample_cells
from corelib.tl.stability import (
    Matching,
    chance_matching,
    cross_dataset_r2,
    match_dictionaries,
    shared_genes,
    summarize_matching,
)

#: Architecture of the shared scVI: scvi-tools' SCVI defaults (one hidden layer of 128), unlike the 2-layer
#: encoder trained for one dataset (:data:`corelib.encoders.scvi.DEFAULT_ARCH`); ``n_latent`` is the run's.
SHARED_ARCH = {"n_layers": 1, "n_hidden": 128}


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
    """One scVI trained on two datasets over their shared genes, ``dataset`` as batch covariate.

    The paper compares SAEs trained on two datasets embedded by the same model. Two small datasets rarely
    share a model's gene list, so this trains one ``scvi.model.SCVI`` on the concatenation of both over their
    shared genes, with the dataset as batch key and ``encode_covariates=False`` (scvi-tools' default): the
    batch enters the decoder only, so a cell's embedding depends on its expression alone and both datasets
    land in one space. The result is a ``corelib.encoders`` scVI encoder (posterior mean of z), usable by
    ``corelib.encoders.embed`` and by the attribution.

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
    from corelib import encoders
    from corelib.encoders import scvi as scvi_encoder
    from corelib.runs.cache import Provenance, cached, reusable

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
        import anndata as ad

        both = ad.concat(
            [adata_a[:, genes], adata_b[:, genes]], label="dataset", keys=list(names), index_unique="-"
        )
        model = scvi_encoder.train(
            both,
            batch_key="dataset",
            seed=seed,
            epochs=epochs,
            device=resolve_device(device),
            progress=progress,
            **SHARED_ARCH,
            n_latent=n_latent,
        )
        return scvi_encoder.from_model(model)

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
        save=encoders.save,
        load=lambda path: encoders.restore(path, device="cpu"),
        overwrite=overwrite,
    )
    return encoder, {**info, "reused": reused}


def training_cells(adata: Any, max_cells: int | None, seed: int, name: str) -> Any:
    """``adata``, or a view of a seeded uniform sample of ``max_cells`` of its cells (printed)."""
    cells = subsample_cells(adata.n_obs, max_cells, seed=seed)
    if len(cells) == adata.n_obs:
        return adata
    print(
        f"Shared scVI trained on {describe_sample(len(cells), adata.n_obs, max_cells, seed, None)} of {name}."
    )
    return adata[cells]


def embed_datasets(
    encoder: Any, adatas: Mapping[str, Any], *, progress: bool = True
) -> dict[str, np.ndarray]:
    """Embed several datasets with one encoder (``corelib.encoders.embed`` on copies: inputs stay untouched)."""
    from corelib.encoders import embed

    return {name: embed(encoder, a.copy(), progress=progress) for name, a in adatas.items()}


class CrossDataset(NamedTuple):
    """SAEs trained on two datasets embedded by one encoder, and how they compare (paper Fig. 4A-B).

    Attributes
    ----------
    saes
        ``{dataset: TopKSAE}``.
    heldout
        ``{dataset: indices of its held-out cells}`` (``corelib.tl.sae.split_cells``).
    r2
        :func:`cross_dataset_r2` on the held-out cells.
    matching
        :func:`match_dictionaries` of the first dataset's dictionary against the second's.
    """

    saes: dict[str, Any]
    heldout: dict[str, np.ndarray]
    r2: pd.DataFrame
    matching: Matching


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
    :class:`CrossDataset`.
    """
    from corelib.tl import sae as sae_mod

    if len(embeddings) != 2:
        raise ValueError(
            f"cross_dataset compares two datasets; got {len(embeddings)} ({', '.join(map(str, embeddings))})."
        )
    holdout = train_options.get("holdout_fraction", sae_mod.TrainConfig.holdout_fraction)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1) to evaluate on held-out cells; got {holdout}.")
    split_seed = train_options.get("split_seed", 0)
    saes, heldout = {}, {}
    # seed and seed + 1: two SAEs sharing their random initialisation would match partly because of it
    for j, (name, emb) in enumerate(embeddings.items()):
        path = Path(cache_dir) / name if cache_dir is not None else None
        saes[name] = train_or_load_sae(
            np.asarray(emb), n_concepts, k, seed=seed + j, path=path, overwrite=overwrite, **train_options
        )
        heldout[name] = sae_mod.split_cells(len(emb), holdout, split_seed)[1]
    r2 = cross_dataset_r2(saes, {name: np.asarray(e)[heldout[name]] for name, e in embeddings.items()})
    first, second = saes.values()
    return CrossDataset(saes, heldout, r2, match_dictionaries(first.dictionary, second.dictionary))


def attribute_matched(
    encoder: Any,
    cross: CrossDataset,
    adatas: Mapping[str, Any],
    embeddings: Mapping[str, np.ndarray],
    *,
    n_pairs: int = 5,
    progress: bool = True,
    **options: Any,
) -> tuple[Any, Any]:
    """Counterfactual attribution (``corelib.tl.attribution.attribute_concepts``) of the best-matched concepts.

    Only the concepts of the ``n_pairs`` best-matched pairs are attributed, each on its own dataset.

    Parameters
    ----------
    encoder
        The shared encoder both datasets were embedded with.
    cross
        From :func:`cross_dataset`.
    adatas, embeddings
        The two datasets (raw counts) and their embeddings, keyed like ``cross.saes``.
    n_pairs
        Pairs to attribute, highest cosine first.
    progress
        Progress bars.
    options
        Passed to ``attribute_concepts`` (``n_prototypes``, ``n_counterfactuals``, ``device``, ...).

    Returns
    -------
    ``(attribution of the first dataset's concepts, attribution of the second's)``.
    """
    from corelib.encoders import align
    from corelib.tl.attribution import attribute_concepts

    pairs = cross.matching.to_frame().head(n_pairs)
    out = []
    for (name, model), column in zip(cross.saes.items(), ("concept_1", "concept_2"), strict=True):
        X, _ = align(adatas[name], encoder.genes, var_key=encoder.var_key, min_overlap=1)
        out.append(
            attribute_concepts(
                encoder,
                model,
                X,
                np.asarray(embeddings[name]),
                concepts=pairs[column].to_numpy(),
                progress=progress,
                **options,
            )
        )
    return out[0], out[1]


def matched_pair_genes(
    matching: Matching, attr_1: Any, attr_2: Any, *, n_pairs: int = 5, n_genes: int = 10
) -> pd.DataFrame:
    """The best-matched concept pairs with their top attributed genes side by side (paper Fig. 4C).

    Parameters
    ----------
    matching
        From :func:`match_dictionaries`.
    attr_1, attr_2
        ``corelib.tl.attribution.Attribution`` of the first and the second dictionary's concepts (e.g. from
        :func:`attribute_matched`); a concept they do not cover gets an empty gene list.
    n_pairs
        Number of pairs (highest cosine first).
    n_genes
        Top genes per concept.

    Returns
    -------
    Columns ``concept_1``, ``concept_2``, ``cosine``, ``top_genes_1``, ``top_genes_2``, ``shared_genes``,
    ``n_shared``.
    """
    out = []
    for r in matching.to_frame().head(n_pairs).itertuples(index=False):
        g1 = unit_top_genes(attr_1, int(r.concept_1), n_genes)
        g2 = unit_top_genes(attr_2, int(r.concept_2), n_genes)
        shared = [g for g in g1 if g in set(g2)]
        out.append(
            {
                "concept_1": int(r.concept_1),
                "concept_2": int(r.concept_2),
                "cosine": float(r.cosine),
                "top_genes_1": ", ".join(g1),
                "top_genes_2": ", ".join(g2),
                "shared_genes": ", ".join(shared),
                "n_shared": len(shared),
            }
        )
    return pd.DataFrame(out)


class CrossDatasetStudy(NamedTuple):
    """Everything of the cross-dataset comparison of notebook 04 (empty tables when it was skipped).

    Attributes
    ----------
    info
        Shared-encoder facts (:func:`shared_scvi_encoder`) and the dataset names; ``skipped`` holds the reason
        when there was no second dataset.
    r2
        :func:`cross_dataset_r2` (Fig. 4A).
    matching
        :meth:`Matching.to_frame` of the two dictionaries (Fig. 4B), best first.
    summary
        :func:`summarize_matching` of it, with ``chance_mean_cosine``.
    pairs
        :func:`matched_pair_genes` (Fig. 4C).
    """

    info: dict[str, Any]
    r2: pd.DataFrame
    matching: pd.DataFrame
    summary: dict[str, float]
    pairs: pd.DataFrame


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
    from corelib import datasets

    if other is None:
        reason = "stability_dataset is None: no second dataset, the cross-dataset comparison is skipped."
        print(reason)
        # the columns of Matching.to_frame, so that readers of the skipped table find them
        matching = pd.DataFrame({"concept_1": [], "concept_2": [], "cosine": []})
        return CrossDatasetStudy({"skipped": reason}, pd.DataFrame(), matching, {}, pd.DataFrame())
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
    d = cross.saes[name_a].cfg
    summary = {
        **summarize_matching(cross.matching.cosine),
        "chance_mean_cosine": chance_matching(d.n_concepts, d.n_concepts, d.d_in, seed=seed)["mean_cosine"],
    }
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
    return CrossDatasetStudy(info, cross.r2, matching, summary, pairs)
