"""The run's encoder: trained or loaded once (notebook 01), restored by later notebooks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from corelib.runs.cache import provenance_path, record_provenance
from corelib.runs.layout import RunDir


def load_encoder(
    run: RunDir,
    adata: ad.AnnData,
    *,
    model: str,
    model_path: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    random_init: bool = False,
    seed: int = 0,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The run's encoder: built once by :func:`corelib.encoders.load`, then read back from ``encoder``.

    Its provenance is the dataset's content (:func:`cells_input`), the model, the content of ``model_path`` and the settings; a
    later call with other ones stops with :class:`StaleOutputError` (or retrains, under ``overwrite``).
    Parameters are those of :func:`corelib.encoders.load` (``options`` = its ``**options``).
    """
    from corelib import encoders

    options = dict(options or {})
    inputs = {
        "data": cells_input(adata),
        "model": str(model).lower(),
        "model_path": Path(model_path).resolve() if model_path is not None else None,
        "random_init": bool(random_init),
        "seed": int(seed),
        "model_options": options,
    }
    return run.cached(
        lambda: encoders.load(
            model,
            adata=adata,
            path=model_path,
            trust_pickle=trust_pickle,
            random_init=random_init,
            seed=seed,
            device=device,
            **options,
        ),
        "encoder",
        inputs=inputs,
        load=lambda path: encoders.restore(path, device=device),
        save=encoders.save,
    )


def cells_input(adata: ad.AnnData) -> Any:
    """What identifies the cells as a cache input: the AnnData, or for a backed one (lazy ``X``, never loaded
    here) the content of its file and the layer read (``uns["dataset"]``)."""
    if not hasattr(adata.X, "compute"):
        return adata
    dataset = adata.uns["dataset"]
    return {"file": Path(dataset["source"]), "layer": dataset["layer"], "cells": adata.obs_names}


def restore_encoder(run: RunDir, *, device: str = "auto") -> Any:
    """The encoder that embedded the run's cells (notebook 01), checked against the embedding's record."""
    from corelib import encoders

    run.check_made_from("embedded", encoder=run.fingerprint("encoder"))
    return encoders.restore(run.path("encoder"), device=device)


def embed_cells(run: RunDir, encoder: Any, adata: ad.AnnData, *, progress: bool = True) -> np.ndarray:
    """Embed every cell with :func:`corelib.encoders.embed` straight into the run's ``embeddings`` store.

    The ``(n_cells x dim)`` float32 ``.npy`` is written block by block through a memory map (the cells may be
    backed, ``corelib.datasets.read(..., backed=True)``), so memory does not grow with the number of cells;
    its provenance names the encoder's record and the cells. Returns the store as a read-only memory map, also
    in ``adata.obsm``.
    """
    from corelib import encoders

    path = run.path("embeddings")
    provenance_path(path).unlink(missing_ok=True)
    emb = encoders.embed(encoder, adata, out=path, progress=progress)
    record_provenance(path, {"encoder": run.fingerprint("encoder"), "cells": adata.obs_names})
    return emb


def umap_cells(
    adata: ad.AnnData,
    *,
    use_rep: str,
    max_cells: int | None = 50_000,
    stratify_key: str | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """``sc.pp.neighbors`` + ``sc.tl.umap`` of the embedding, on a seeded sample above ``max_cells`` cells.

    Up to ``max_cells`` cells the UMAP is computed on ``adata`` itself (as scanpy does). Above it, on a seeded
    sample stratified by ``obs[stratify_key]`` (:func:`corelib.tl.sampling.subsample_cells`): the neighbour
    graph and the layout do not scale to an atlas and a plot shows no more. The cells outside the sample get
    NaN coordinates in ``obsm["X_umap"]``; ``uns["umap_sample"]`` records what was done, and it is printed.

    Returns
    -------
    The cells with a UMAP, to plot: ``adata`` itself, or a small AnnData of the sample (its ``obs`` and
    embedding).
    """
    import scanpy as sc

    from corelib.tl.sampling import describe_sample, subsample_cells

    labels = adata.obs[stratify_key].to_numpy() if stratify_key else None
    cells = subsample_cells(adata.n_obs, max_cells, seed=seed, labels=labels)
    sample = len(cells) < adata.n_obs
    shown = adata
    if sample:
        emb = np.asarray(adata.obsm[use_rep][cells])
        shown = ad.AnnData(obs=adata.obs.iloc[cells].copy(), obsm={use_rep: emb})
    sc.pp.neighbors(shown, use_rep=use_rep, random_state=seed)
    sc.tl.umap(shown, random_state=seed)
    if sample:
        umap_N2 = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
        umap_N2[cells] = shown.obsm["X_umap"]
        adata.obsm["X_umap"] = umap_N2
    what = describe_sample(len(cells), adata.n_obs, max_cells, seed, stratify_key)
    if sample:
        adata.uns["umap_sample"] = {"n_cells": len(cells), "max_cells": max_cells, "seed": seed}
        what += ". The other cells have no UMAP coordinates (NaN)"
    print(f"UMAP of {what}.")
    return shown
