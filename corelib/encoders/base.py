"""The encoder protocol shared by every model, gene alignment, and the safetensors + JSON checkpoint format.

An :class:`Encoder` maps expression for the model's own gene list, in expression space (raw counts, BEFORE the
model's own preprocessing), to cell embeddings. Keeping the preprocessing inside ``forward`` is what lets the
attribution perturb one gene's count and see the model's full response (paper section 3.2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from corelib._io import atomic_path, atomic_write

#: File names of an encoder checkpoint directory (written by :func:`save`, read by :func:`restore`).
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "encoder.json"


@dataclass(frozen=True)
class LinearHead:
    """An encoder written as ``rest(preprocess(x_BG) @ weight.T + bias)``.

    The first layer is linear in the elementwise-preprocessed expression, so changing one gene changes the
    first-layer output by one column of ``weight``: attribution can update ``h`` instead of recomputing it.

    Attributes
    ----------
    preprocess
        Elementwise function applied to expression ``x_BG`` (e.g. ``torch.log1p``).
    weight
        First-layer weight, shape ``(h x m)`` (hidden units x model genes).
    bias
        First-layer bias, shape ``(h,)``.
    rest
        Function from the first-layer output ``h_BH`` to the embedding ``emb_BD``.
    """

    preprocess: Callable[[torch.Tensor], torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor
    rest: Callable[[torch.Tensor], torch.Tensor]


class Encoder(nn.Module):
    """A model's cell encoder: expression for ``genes`` (counts, before preprocessing) -> embedding.

    Subclasses implement :meth:`forward` and, for the checkpoint format, :meth:`config` and
    :meth:`from_config`. Instances are returned in eval mode (no dropout, BatchNorm running statistics).

    Parameters
    ----------
    name
        Short model name ("scvi", "scgpt", "pca"; "_random" suffix for random-weight controls); embeddings are
        stored in ``obsm[f"X_{name}"]``.
    genes
        The model's gene list, in input order (the columns of ``x_BG``).
    dim
        Embedding dimension.
    var_key
        Column of ``adata.var`` holding identifiers that match ``genes`` (None: ``adata.var_names``).
    min_overlap
        Default minimum gene overlap for :func:`align` (a float: fraction of ``genes``; an int: a gene count).
    """

    #: There are weights to run cells through (a precomputed embedding's record has none).
    has_model = True

    def __init__(
        self,
        *,
        name: str,
        genes: Sequence[str],
        dim: int,
        var_key: str | None = None,
        min_overlap: float | int = 0.5,
    ) -> None:
        super().__init__()
        self.name = name
        self.genes = [str(g) for g in genes]
        self.dim = int(dim)
        self.var_key = var_key
        self.min_overlap = min_overlap

    @property
    def device(self) -> torch.device:
        """The device holding the encoder's tensors."""
        for t in self.state_dict(keep_vars=True).values():
            return t.device
        return torch.device("cpu")

    def forward(self, x_BG: torch.Tensor) -> torch.Tensor:
        """Embed a batch: ``x_BG`` (cells x model genes, raw expression) -> ``emb_BD`` (cells x dim)."""
        raise NotImplementedError

    def random_control(self, seed: int) -> Encoder:
        """The random-weight ("dead salmon") control of this encoder.

        Parameters
        ----------
        seed
            Seed of the random weights.

        Returns
        -------
        A new encoder of the same class, architecture and genes, with weights drawn under ``seed`` and the
        name's "_random" suffix (CPU, eval mode).
        """
        raise NotImplementedError

    def linear_head(self) -> LinearHead | None:
        """The first layer as a :class:`LinearHead`, or None when the first layer is not of that form."""
        return None

    def decoder_absent(self) -> str | None:
        """Why :meth:`decode` is not available for this encoder (a sentence for the user), or None when it is."""
        return f"the {self.name} encoder has no generative decoder from its embedding back to expression."

    def decode(self, emb_BD: torch.Tensor) -> torch.Tensor:
        """Expected expression that the model's own generative path makes of embeddings.

        Parameters
        ----------
        emb_BD
            Embeddings (batch x dim), in the space :meth:`forward` returns.

        Returns
        -------
        ``expr_BG`` (batch x genes, ``genes`` order): expected expression per cell, normalised to sum to 1.

        Raises
        ------
        ValueError
            The encoder has no decoder; the message is :meth:`decoder_absent`.
        """
        raise ValueError(self.decoder_absent())

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description from which :meth:`from_config` rebuilds the module."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Encoder:
        """Rebuild an encoder from :meth:`config` and its state dict."""
        raise NotImplementedError


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-draw every parameter of ``module`` with its layers' default initialisation, seeded.

    This is the "dead salmon" control: the same architecture with untrained weights. BatchNorm running
    statistics are reset too (mean 0, variance 1).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in module.modules():
            reset = getattr(layer, "reset_parameters", None) or getattr(layer, "_reset_parameters", None)
            if reset is not None:
                reset()


def _var_ids(adata: ad.AnnData, var_key: str | None) -> np.ndarray:
    if var_key is None:
        return np.asarray(adata.var_names, dtype=str)
    if var_key not in adata.var.columns:
        raise ValueError(
            f"adata.var has no column {var_key!r} holding the model's gene identifiers; available columns: "
            f"{', '.join(map(str, adata.var.columns)) or 'none'}. Set model_options: {{gene_id_column: <column>}} "
            "in the params file (null: var_names)."
        )
    return np.asarray(adata.var[var_key], dtype=str)


def _duplicates(names: Sequence[str]) -> list[str]:
    values, counts = np.unique(np.asarray(names, dtype=str), return_counts=True)
    return values[counts > 1].tolist()


@dataclass(frozen=True)
class GeneMap:
    """Where each of a model's genes sits in a dataset: built once, applied to any block of cells.

    Attributes
    ----------
    data_idx
        Columns of the dataset holding model genes.
    model_idx
        The model-gene position of each of them.
    n_genes
        Number of model genes (the width of :meth:`apply`'s output).
    n_missing
        Model genes absent from the dataset (their columns are zero).
    """

    data_idx: np.ndarray
    model_idx: np.ndarray
    n_genes: int
    n_missing: int

    def is_identity(self, n_data_genes: int) -> bool:
        """Whether the dataset's genes are exactly the model's, in the same order (no reordering needed)."""
        return n_data_genes == self.n_genes == len(self.data_idx) and bool(
            np.array_equal(self.data_idx, self.model_idx)
            and np.array_equal(self.model_idx, np.arange(self.n_genes))
        )

    def apply(self, X: Any) -> np.ndarray | sp.csr_matrix:
        """Reorder a block of cells ``X`` (cells x dataset genes) to ``cells x model genes``, float32.

        CSR in, CSR out; dense in, dense out. Values are checked (:func:`check_values`).
        """
        check_values(X)
        if self.is_identity(X.shape[1]):
            # a copy, as the reordering makes one: callers may change the result in place
            return (
                sp.csr_matrix(X, dtype=np.float32, copy=True)
                if sp.issparse(X)
                else np.array(X, dtype=np.float32)
            )
        if sp.issparse(X):
            selector = sp.csr_matrix(
                (np.ones(len(self.model_idx), dtype=np.float32), (self.data_idx, self.model_idx)),
                shape=(X.shape[1], self.n_genes),
            )
            return (sp.csr_matrix(X, dtype=np.float32) @ selector).tocsr()
        out = np.zeros((X.shape[0], self.n_genes), dtype=np.float32)
        out[:, self.model_idx] = np.asarray(X, dtype=np.float32)[:, self.data_idx]
        return out


def check_values(X: Any) -> None:
    """Raise a ``ValueError`` when a block of expression holds NaN or negative values (encoders take counts)."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    if np.isnan(values).any():
        raise ValueError(
            "the expression matrix contains NaN; remove or impute those entries before embedding."
        )
    if (values < 0).any():
        raise ValueError(
            "the expression matrix has negative values; encoders take raw counts: pass layer='counts' (or the "
            "layer holding raw counts) instead of scaled/centred data."
        )


def gene_map(
    adata: ad.AnnData,
    genes: Sequence[str],
    *,
    var_key: str | None = None,
    min_overlap: float | int = 0.5,
) -> GeneMap:
    """Match a model's gene list to a dataset's genes (reads ``var`` only: works on backed AnnData).

    Parameters are those of :func:`align`; raises its errors about duplicates and too small an overlap.
    """
    ids = _var_ids(adata, var_key)
    for what, names in (("adata", ids), ("the model's gene list", genes)):
        dup = _duplicates(names)
        if dup:
            raise ValueError(
                f"{len(dup)} duplicate gene names in {what} (e.g. {', '.join(dup[:5])}); make them unique first, "
                "e.g. adata.var_names_make_unique() or aggregate duplicated genes."
            )
    position = {g: i for i, g in enumerate(ids)}
    model_idx = np.array([j for j, g in enumerate(genes) if g in position], dtype=np.int64)
    data_idx = np.array([position[genes[j]] for j in model_idx], dtype=np.int64)
    n_found, n_genes = len(model_idx), len(genes)
    if isinstance(min_overlap, int | np.integer):
        needed = int(min_overlap)
    elif 0 < min_overlap <= 1:
        needed = int(np.ceil(min_overlap * n_genes))
    else:
        raise ValueError(f"min_overlap={min_overlap!r}: use a fraction in (0, 1] or an integer gene count.")
    if n_found < max(needed, 1):
        raise ValueError(
            f"only {n_found} of the model's {n_genes} genes are in adata (need at least {needed}). Check the gene "
            f"identifiers: the model uses e.g. {', '.join(map(str, genes[:3]))}, adata has e.g. "
            f"{', '.join(ids[:3])} (gene symbols vs Ensembl ids?). Pass the adata.var column that holds matching "
            "ids (params: model_options: {gene_id_column: <column>}; var_key here), or lower min_overlap if the "
            "dataset really measures few genes."
        )
    return GeneMap(data_idx, model_idx, n_genes, n_genes - n_found)


def counts_matrix(adata: ad.AnnData, layer: str | None = None) -> Any:
    """``adata.X`` or ``adata.layers[layer]``, in memory or backed (rows are read by slicing)."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"adata has no layer {layer!r}; available layers: {', '.join(adata.layers) or 'none'}. Use layer=None "
            "for X."
        )
    return adata.layers[layer]


def iter_blocks(
    adata: ad.AnnData, genes_map: GeneMap, *, layer: str | None = None, block_size: int = 8192
) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start, block)``: consecutive blocks of cells, aligned by ``genes_map``, read one at a time.

    On a backed AnnData (a lazy dask ``X``, from ``corelib.datasets.read(..., backed=True)``, or anndata's
    ``backed="r"``) only the block's rows are read from disk, so memory does not grow with ``n_obs``.
    """
    X = counts_matrix(adata, layer)
    for start in range(0, adata.n_obs, block_size):
        block = X[start : start + block_size]
        yield start, genes_map.apply(block.compute() if hasattr(block, "compute") else block)


def align(
    adata: ad.AnnData,
    genes: Sequence[str],
    *,
    layer: str | None = None,
    var_key: str | None = None,
    min_overlap: float | int = 0.5,
) -> tuple[np.ndarray | sp.csr_matrix, int]:
    """Reorder a dataset's expression to a model's gene list, filling genes it lacks with zeros.

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or in ``layers[layer]`` (in memory: :func:`iter_blocks` reads a
        backed file block by block).
    genes
        The model's gene list (e.g. ``encoder.genes``).
    layer
        Layer with the counts (None: ``X``).
    var_key
        Column of ``adata.var`` with identifiers matching ``genes`` (None: ``var_names``), e.g. "feature_id"
        for a model that uses Ensembl ids.
    min_overlap
        Minimum number of model genes found in ``adata``: a float in (0, 1] is a fraction of ``len(genes)``,
        an int is a count.

    Returns
    -------
    X_cells_x_modelgenes
        Expression ``(n_cells x len(genes))``, CSR if the input is sparse, else a float32 ndarray.
    n_missing
        How many model genes were absent from ``adata`` (their columns are zero).

    Raises
    ------
    ValueError
        Duplicate gene names, missing layer, NaN or negative values, or too small an overlap.
    """
    X = counts_matrix(adata, layer)
    genes_map = gene_map(adata, genes, var_key=var_key, min_overlap=min_overlap)
    return genes_map.apply(X), genes_map.n_missing


def save(encoder: Encoder, directory: str | os.PathLike) -> Path:
    """Write ``encoder`` as ``encoder.safetensors`` (state dict) + ``encoder.json`` (config), atomically.

    Parameters
    ----------
    encoder
        The encoder to save.
    directory
        Target directory (created).

    Returns
    -------
    The directory.
    """
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    config = {"class": type(encoder).__name__, "config": encoder.config()}
    with atomic_write(directory / CONFIG_FILE) as fh:  # written last: its presence marks a finished cache
        json.dump(config, fh, indent=1)
    return directory


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Read a directory written by :func:`save`: ``(config, tensors)``, or None if it holds no finished cache."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).exists() or not (directory / WEIGHTS_FILE).exists():
        return None
    config = json.loads((directory / CONFIG_FILE).read_text())
    return config, load_file(str(directory / WEIGHTS_FILE))


def checkpoint_genes(directory: str | os.PathLike) -> list[str] | None:
    """The genes of the encoder saved in ``directory`` (:func:`save`), or None when it holds no finished one."""
    found = read_checkpoint(directory)
    return None if found is None else list(found[0]["config"]["genes"])
