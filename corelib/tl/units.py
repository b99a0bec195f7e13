"""Units (concepts and neurons): their names, when they are active, and the log-normalisation of counts."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Counts per cell after normalisation (scanpy's ``normalize_total`` convention, 10^4).
TARGET_SUM = 1e4


def neuron_inactive(emb_ND: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """Cells where a neuron counts as "not active": at or below its ``quantile`` over cells.

    Neurons are dense (an activation of exactly 0, the concepts' rule in Eq. 1, almost never happens) and
    not always centred (scGPT embeddings are L2-normalised), so the counterfactual pool of a neuron is the
    cells in its lower ``quantile`` (default: below the median). Prototypes are its highest values.

    Returns
    -------
    Boolean (n_cells x d).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}; 0.5 means 'below the median'.")
    return emb_ND <= np.quantile(emb_ND, quantile, axis=0, keepdims=True)


KINDS: tuple[str, ...] = ("concept", "neuron")


_PREFIX = {"concept": "C", "neuron": "N"}


def unit_name(kind: str, unit: int) -> str:
    """Display name of a unit: ``C12`` for concept 12, ``N3`` for neuron 3."""
    _check_kind(kind)
    return f"{_PREFIX[kind]}{int(unit)}"


def unit_names(kind: str, units: Sequence[int]) -> list[str]:
    """:func:`unit_name` of each unit."""
    return [unit_name(kind, u) for u in units]


def parse_unit(name: str) -> tuple[str, int]:
    """Inverse of :func:`unit_name`: ``"C12"`` -> ``("concept", 12)``."""
    text = str(name).strip()
    for kind, prefix in _PREFIX.items():
        if text[:1].upper() == prefix and text[1:].isdigit():
            return kind, int(text[1:])
    raise ValueError(f"{name!r} is not a unit name; use C<number> for a concept or N<number> for a neuron.")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not valid; use one of {', '.join(KINDS)}.")


def active_cells(activation_N: np.ndarray, kind: str) -> np.ndarray:
    """Cells that activate a unit, by notebook 03's metadata rule (paper 3.1): a concept is active where its
    activation is > 0; a neuron has no natural zero, so its active cells are its top 10%
    (:func:`neuron_activity`).

    Returns
    -------
    Boolean (n_cells,).
    """
    _check_kind(kind)
    if kind == "concept":
        return activation_N > 0
    return neuron_activity(np.asarray(activation_N, dtype=float)[:, None])[:, 0]


def unit_activation(acts_NU: np.ndarray | sp.spmatrix, unit: int) -> np.ndarray:
    """One unit's activations over all cells (n_cells,), dense, from a dense or sparse (best CSC) matrix."""
    if sp.issparse(acts_NU) and acts_NU.format == "csc":  # the column's stored values, no indexing copy
        lo, hi = acts_NU.indptr[unit], acts_NU.indptr[unit + 1]
        acts_N = np.zeros(acts_NU.shape[0], dtype=acts_NU.dtype)
        acts_N[acts_NU.indices[lo:hi]] = acts_NU.data[lo:hi]
        return acts_N
    if sp.issparse(acts_NU):
        return acts_NU[:, [unit]].toarray()[:, 0]
    return np.asarray(acts_NU[:, unit])


def as_matrix(x: object, name: str) -> np.ndarray | sp.csr_matrix:
    """A 2-D finite array, CSR when ``x`` is sparse (never densified), or a clear error."""
    x = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_cells x n_units), got shape {x.shape}.")
    values = x.data if sp.issparse(x) else x
    if x.dtype != bool and not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values; recompute it or drop those cells.")
    return x


def neuron_activity(emb_ND: np.ndarray, quantile: float = 0.9) -> np.ndarray:
    """Which cells activate each neuron: those strictly above the neuron's ``quantile`` over cells.

    Parameters
    ----------
    emb_ND
        Embeddings (n_cells x d).
    quantile
        Per-dimension quantile in (0, 1); 0.9 makes about 10% of the cells active for every neuron.

    Returns
    -------
    Boolean activity (n_cells x d), usable as ``codes`` in :func:`characterize` and :func:`composition`.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}.")
    emb_ND = as_matrix(emb_ND, "emb_ND")
    return emb_ND > np.quantile(emb_ND, quantile, axis=0)


def log_normalise(counts: ad.AnnData | object, genes: Sequence[str] | None = None) -> ad.AnnData:
    """``log1p(x_ng / sum_g x_ng * 10^4)`` per cell: scanpy's standard ``normalize_total`` + ``log1p``.

    The one log-normalisation of counts for tables (DEG, cell-cycle scores, markers); the PCA encoder applies
    the same formula to tensors inside its forward pass (``corelib.encoders.pca.log_normalise``).

    Parameters
    ----------
    counts
        An AnnData with raw counts in ``.X`` (copied, not changed), or a counts matrix (n_cells x m, dense or
        sparse, stored as float32 CSR) with the m gene names in ``genes``.
    genes
        Gene names of a counts matrix; not used with an AnnData.

    Returns
    -------
    A cells x genes AnnData of log-normalised values.
    """
    if isinstance(counts, ad.AnnData):
        out = counts.copy()
    else:
        if genes is None:
            raise ValueError("A counts matrix needs its gene names: pass genes=...")
        out = ad.AnnData(
            sp.csr_matrix(counts, dtype=np.float32), var=pd.DataFrame(index=pd.Index(genes, dtype=str))
        )
    import scanpy as sc

    sc.pp.normalize_total(out, target_sum=TARGET_SUM)
    sc.pp.log1p(out)
    return out
