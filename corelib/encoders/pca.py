"""PCA of log-normalised expression: the linear baseline "model".

``forward`` runs the whole preprocessing in torch, so counts go in and attribution sees its effect:
``log1p(x / total(x) * 1e4)`` (scanpy's ``normalize_total`` + ``log1p``), centred, projected on the principal
axes. Fitting uses scikit-learn's PCA on the same log-normalised matrix, kept sparse.
"""

from __future__ import annotations

import warnings
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.utils.sparsefuncs import mean_variance_axis

from corelib.encoders.base import Encoder, gene_map, iter_blocks

#: scanpy's default ``normalize_total`` target used before log1p.
TARGET_SUM = 1e4


def log_normalise(x_BG: torch.Tensor, target_sum: float = TARGET_SUM) -> torch.Tensor:
    """``log1p(x / rowsum(x) * target_sum)``; cells with no counts stay zero (as in ``sc.pp.normalize_total``)."""
    total_B1 = x_BG.sum(dim=1, keepdim=True)
    scale_B1 = torch.where(total_B1 > 0, target_sum / total_B1.clamp_min(1e-12), torch.zeros_like(total_B1))
    return torch.log1p(x_BG * scale_B1)


class PcaEncoder(Encoder):
    """Counts ``x_BG`` -> log-normalise -> ``(x - mean_G) @ components_DG.T`` -> ``emb_BD``.

    Parameters
    ----------
    genes
        Genes of the fitted data, in input order.
    mean_G
        Mean of the log-normalised training data, shape ``(n_genes,)``.
    components_DG
        Principal axes, shape ``(n_comps x n_genes)``.
    name
        "pca", or "pca_random" for the random-axes control.
    """

    def __init__(
        self, genes: list[str], mean_G: torch.Tensor, components_DG: torch.Tensor, *, name: str = "pca"
    ) -> None:
        super().__init__(name=name, genes=genes, dim=components_DG.shape[0])
        self.register_buffer("mean_G", mean_G.float().clone())
        self.register_buffer("components_DG", components_DG.float().clone())

    def forward(self, x_BG: torch.Tensor) -> torch.Tensor:
        """Project counts ``x_BG`` (cells x genes) on the principal axes -> ``emb_BD``."""
        return (log_normalise(x_BG) - self.mean_G) @ self.components_DG.T

    def decoder_absent(self) -> str:
        """PCA is not a generative model of expression (see :meth:`corelib.encoders.Encoder.decoder_absent`)."""
        return (
            "PCA has no generative decoder: its linear inverse (mean + embedding @ axes) only projects back onto "
            "a plane of log-normalised values, not a model of expected expression that a moved embedding could "
            "be decoded with, so concept steering is shown for scVI only."
        )

    def random_control(self, seed: int) -> PcaEncoder:
        """Same genes and mean, random orthonormal axes drawn under ``seed`` (as ``fit(random_init=True)``)."""
        axes_DG = random_axes(len(self.genes), self.dim, seed)
        return PcaEncoder(self.genes, self.mean_G.cpu(), axes_DG, name="pca_random").eval()

    def config(self) -> dict[str, Any]:
        """Genes and name; the arrays live in the state dict."""
        return {"genes": self.genes, "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PcaEncoder:
        """Rebuild from :meth:`config` and the state dict (``mean_G``, ``components_DG``)."""
        return cls(config["genes"], tensors["mean_G"], tensors["components_DG"], name=config["name"])


def random_axes(n_genes: int, n_comps: int, seed: int) -> torch.Tensor:
    """Random orthonormal axes: the random-weight control of PCA (the Q of a seeded Gaussian matrix's QR).

    Parameters
    ----------
    n_genes
        Number of genes (the axes' length).
    n_comps
        Number of axes (embedding dimension), at most ``n_genes``.
    seed
        Seed of the Gaussian matrix.

    Returns
    -------
    axes_DG
        ``(n_comps x n_genes)`` float32, orthonormal rows.
    """
    q_GD, _ = torch.linalg.qr(torch.randn(n_genes, n_comps, generator=torch.Generator().manual_seed(seed)))
    return q_GD.T


def log_normalise_csr(counts: sp.csr_matrix, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """:func:`log_normalise` of a CSR matrix, staying sparse (zeros stay zeros), float32."""
    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    total_N = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel()
    scale_N = np.divide(target_sum, total_N, out=np.zeros_like(total_N), where=total_N > 0)
    counts.data = np.log1p(counts.data * np.repeat(scale_N, np.diff(counts.indptr)))
    return counts


def fit_cells(n_cells: int, max_cells: int | None, seed: int) -> np.ndarray:
    """The cells a PCA is fitted on: all of them, or a seeded uniform sample of ``max_cells`` (sorted)."""
    if max_cells is None or n_cells <= max_cells:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, size=max_cells, replace=False))


def _log_normalised_rows(adata: ad.AnnData, rows: np.ndarray, layer: str | None) -> sp.csr_matrix:
    """Log-normalised counts of ``rows`` (sorted) as CSR, read block by block (a backed file stays on disk)."""
    genes = list(adata.var_names.astype(str))
    genes_map = gene_map(adata, genes, min_overlap=1.0)
    blocks = []
    for start, block in iter_blocks(adata, genes_map, layer=layer):
        stop = start + block.shape[0]
        inside = rows[(rows >= start) & (rows < stop)] - start
        blocks.append(log_normalise_csr(sp.csr_matrix(block)[inside]))
    return sp.vstack(blocks, format="csr")


def fit(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    n_comps: int = 50,
    seed: int = 0,
    random_init: bool = False,
    max_cells: int | None = None,
) -> PcaEncoder:
    """Fit PCA on ``log1p(normalize_total(counts, 1e4))`` of a dataset, without densifying it.

    The log-normalised counts stay sparse and scikit-learn's ARPACK solver centres them implicitly, so memory
    is that of the sparse matrix, never ``n_cells x n_genes`` dense (``docs/decisions.md``, "Atlas scale:
    embedding").

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or ``layers[layer]``; in memory or backed (read block by block).
    layer
        Layer with the counts (None: ``X``).
    n_comps
        Number of principal components (embedding dimension).
    seed
        Random state of the solver, of the cell sample, and of the axes when ``random_init``.
    random_init
        Control: replace the fitted axes by random orthonormal ones (same mean), named "pca_random".
    max_cells
        Fit on a seeded uniform sample of this many cells (:func:`fit_cells`; a warning says so) when the
        dataset has more; None: all cells.

    Returns
    -------
    The fitted encoder (CPU, eval mode).
    """
    genes = list(adata.var_names.astype(str))
    rows = fit_cells(adata.n_obs, max_cells, seed)
    limit = min(len(rows), len(genes)) - 1
    if not 1 <= n_comps <= limit:
        raise ValueError(
            f"n_comps={n_comps} but a {len(rows)} x {len(genes)} matrix allows 1..{limit}; "
            "lower model_options.n_comps."
        )
    if len(rows) < adata.n_obs:
        warnings.warn(
            f"PCA fitted on a seeded sample of {len(rows):,} of the {adata.n_obs:,} cells (max_cells={max_cells}, "
            f"seed={seed}); every cell is then embedded.",
            stacklevel=2,
        )
    logn = _log_normalised_rows(adata, rows, layer)
    if random_init:
        mean_G = torch.from_numpy(mean_variance_axis(logn, axis=0)[0])  # the fitted PCA's mean_
        return PcaEncoder(genes, mean_G, random_axes(len(genes), n_comps, seed), name="pca_random").eval()
    pca = PCA(n_components=n_comps, svd_solver="arpack", random_state=seed).fit(logn)
    mean_G, components_DG = (torch.from_numpy(np.ascontiguousarray(a)) for a in (pca.mean_, pca.components_))
    return PcaEncoder(genes, mean_G, components_DG).eval()
