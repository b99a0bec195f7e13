"""One scVI encoder for several datasets: trained on their shared genes, the dataset as batch covariate.

Comparing the SAEs of two datasets (paper 4.4) needs both embedded by the same model; two small datasets rarely
share a model's gene list, so :func:`train_shared_scvi` trains one ``scvi.model.SCVI`` on their shared genes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import torch

from corelib.device import resolve_device
from corelib.encoders.scvi import ScviEncoder, from_model, train

#: Architecture of the shared scVI: scvi-tools' SCVI defaults (one hidden layer of 128), unlike the 2-layer
#: encoder trained for one dataset (:data:`corelib.encoders.scvi.DEFAULT_ARCH`); ``n_latent`` is the caller's.
SHARED_ARCH = {"n_layers": 1, "n_hidden": 128}


def train_shared_scvi(
    adatas: Mapping[str, ad.AnnData],
    genes: Sequence[str],
    *,
    n_latent: int = 10,
    epochs: int | None = 50,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> ScviEncoder:
    """One scVI trained on several datasets over their shared genes, the dataset as batch covariate.

    The datasets are concatenated over ``genes`` (cells renamed ``<cell>-<dataset>``) with the dataset in
    ``obs["dataset"]`` as batch key and scvi-tools' ``encode_covariates=False``: the batch enters the decoder
    only, so a cell's embedding depends on its expression alone and every dataset lands in one space. The
    architecture is :data:`SHARED_ARCH` with ``n_latent``.

    Parameters
    ----------
    adatas
        ``{dataset name: cells x genes}``, raw counts in ``X`` and every gene of ``genes`` in the ``var_names``.
    genes
        The shared gene space (e.g. :func:`corelib.tl.stability.shared_genes`), in the encoder's order.
    n_latent
        Embedding dimension.
    epochs
        scVI training epochs (:func:`corelib.encoders.scvi.train`).
    seed
        ``scvi.settings.seed``.
    device
        Training device ("auto": CUDA when available).
    progress
        Show scvi-tools' progress bar.

    Returns
    -------
    The encoder (:func:`corelib.encoders.scvi.from_model`: posterior mean of z), for
    :func:`corelib.encoders.embed` and the attribution.
    """
    genes = list(genes)
    both = ad.concat(
        [a[:, genes] for a in adatas.values()], label="dataset", keys=list(adatas), index_unique="-"
    )
    model = train(
        both,
        batch_key="dataset",
        seed=seed,
        epochs=epochs,
        device=resolve_device(device),
        progress=progress,
        **SHARED_ARCH,
        n_latent=n_latent,
    )
    return from_model(model)
