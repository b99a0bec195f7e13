"""The run's encoder: trained or loaded once (notebook 01), restored by later notebooks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corelib import encoders
from corelib.runs.cache import provenance_path, record_provenance
from corelib.runs.layout import RunDir
from corelib.tl.neighbors import umap_cells

if TYPE_CHECKING:
    import anndata as ad
    import numpy as np

__all__ = ["cells_input", "embed_cells", "load_encoder", "restore_encoder", "umap_cells"]


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
    embedding_key: str | None = None,
) -> Any:
    """The run's encoder: built once by :func:`corelib.encoders.load`, then read back from ``encoder``.

    Its provenance is the dataset's content (:func:`cells_input`), the model, the content of ``model_path`` and the settings; a
    later call with other ones stops with :class:`StaleOutputError` (or retrains, under ``overwrite``).
    Parameters are those of :func:`corelib.encoders.load` (``options`` = its ``**options``). With model
    "precomputed" the "encoder" is a record of ``adata.obsm[embedding_key]``, and the key and the embedding's
    content are inputs too.
    """
    options = dict(options or {})
    inputs = {
        "data": cells_input(adata),
        "model": str(model).lower(),
        "model_path": Path(model_path).resolve() if model_path is not None else None,
        "random_init": bool(random_init),
        "seed": int(seed),
        "model_options": options,
    }
    if embedding_key is not None:  # only then: the provenance of model runs stays as it was
        inputs |= {"embedding_key": embedding_key, "embedding": adata.obsm.get(embedding_key)}
    return run.cached(
        lambda: encoders.load(
            model,
            adata=adata,
            path=model_path,
            trust_pickle=trust_pickle,
            random_init=random_init,
            seed=seed,
            device=device,
            embedding_key=embedding_key,
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
    run.check_made_from("embedded", encoder=run.fingerprint("encoder"))
    return encoders.restore(run.path("encoder"), device=device)


def embed_cells(run: RunDir, encoder: Any, adata: ad.AnnData, *, progress: bool = True) -> np.ndarray:
    """Embed every cell with :func:`corelib.encoders.embed` straight into the run's ``embeddings`` store.

    The ``(n_cells x dim)`` float32 ``.npy`` is written block by block through a memory map (the cells may be
    backed, ``corelib.datasets.read(..., backed=True)``), so memory does not grow with the number of cells;
    its provenance names the encoder's record and the cells. Returns the store as a read-only memory map, also
    in ``adata.obsm``.
    """
    path = run.path("embeddings")
    provenance_path(path).unlink(missing_ok=True)
    emb = encoders.embed(encoder, adata, out=path, progress=progress)
    record_provenance(path, {"encoder": run.fingerprint("encoder"), "cells": adata.obs_names})
    return emb
