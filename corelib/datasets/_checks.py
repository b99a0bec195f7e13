"""Checks every dataset passes before a model sees it, with errors that name the fix (:func:`validate`).

Every loader of :mod:`corelib.datasets` ends with them; they know nothing of where the data came from.
"""

from __future__ import annotations

from collections.abc import Iterable

import anndata as ad
import numpy as np
import scipy.sparse as sp

#: The standard label column every loader fills (``obs["cell_type"]``).
LABEL_KEY = "cell_type"


def looks_like_ensembl(genes: Iterable[str]) -> bool:
    """Whether gene names are Ensembl ids (more than 90% start with ``ENS``: ``ENSG``, ``ENSMUSG``, ...)."""
    genes = [str(g) for g in genes]
    return bool(genes) and np.mean([g.startswith("ENS") for g in genes]) > 0.9


def validate(adata: ad.AnnData, *, counts: bool = True, required_columns: Iterable[str] = ()) -> None:
    """Check an AnnData before any model sees it; raise a ``ValueError`` naming the problem and the fix.

    Checks: not empty, gene symbols (not Ensembl ids) as unique gene names, finite values, non-negative values,
    integer values and no cell without counts (when ``counts``), and that every column of ``required_columns``
    exists in ``obs``.
    The values of a backed (lazy) ``X`` are checked on a seeded sample of cells (:func:`_value_sample`);
    ``corelib.encoders.embed`` checks every block it reads for NaN and negative values.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"The data are empty ({adata.n_obs} cells x {adata.n_vars} genes). Check the file and any filtering."
        )
    if looks_like_ensembl(adata.var_names):
        raise ValueError(_ensembl_message(adata))
    dup = adata.var_names[adata.var_names.duplicated()]
    if len(dup):
        raise ValueError(
            f"{len(dup)} duplicate gene names (e.g. {', '.join(map(str, dup[:5]))}). Make them unique with "
            "adata.var_names_make_unique(), or set duplicate_symbols: sum in the params file "
            "(corelib.datasets.load(..., duplicate_symbols='sum')) to sum the counts of genes sharing a name."
        )
    values = _value_sample(adata.X)
    if not np.all(np.isfinite(values)):
        n_bad = int(np.sum(~np.isfinite(values)))
        raise ValueError(
            f"The expression matrix holds {n_bad} NaN or infinite values. Remove or impute them first."
        )
    if counts:
        if values.size and values.min() < 0:
            raise ValueError(
                "The expression matrix has negative values, so it is not raw counts (was it scaled?). "
                "Pass the raw counts, e.g. counts_layer='counts'."
            )
        if not np.all(values == np.round(values)):
            raise ValueError(
                "The expression matrix has non-integer values, but this model needs raw counts (was it "
                "normalised or log-transformed?). Point counts_layer at the layer with raw integer counts."
            )
        _check_empty_cells(adata)
    for col in required_columns:
        if col not in adata.obs:
            raise ValueError(_missing_column_message(col, adata))


def _check_empty_cells(adata: ad.AnnData) -> None:
    """Cells without a single count (in memory; a backed matrix is checked block by block when embedded)."""
    if not (isinstance(adata.X, np.ndarray) or sp.issparse(adata.X)):
        return
    empty = np.flatnonzero(np.asarray(adata.X.sum(axis=1)).ravel() == 0)
    if len(empty):
        raise ValueError(
            f"{len(empty)} of {adata.n_obs} cells have no counts at all (e.g. "
            f"{', '.join(map(str, adata.obs_names[empty[:3]]))}): every model embeds them identically. Drop them: "
            "set drop_empty_cells: true in the params file (corelib.datasets.load(..., drop_empty_cells=True)), "
            "or filter the file first (scanpy.pp.filter_cells(adata, min_counts=1))."
        )


def _value_sample(X: object, n_windows: int = 8, window: int = 1024, seed: int = 0) -> np.ndarray:
    """The values :func:`validate` checks: all of an in-memory matrix; of a lazy (backed) one, ``n_windows``
    seeded windows of ``window`` consecutive cells (contiguous reads are cheap on disk)."""
    if not hasattr(X, "compute"):
        return X.data if sp.issparse(X) else np.asarray(X).ravel()
    n_cells = X.shape[0]
    starts = np.random.default_rng(seed).integers(0, max(n_cells - window, 0) + 1, size=n_windows)
    blocks = [X[start : start + window].compute() for start in np.unique(starts)]
    return np.concatenate([b.data if sp.issparse(b) else np.asarray(b).ravel() for b in blocks])


def _ensembl_message(adata: ad.AnnData) -> str:
    """Error text for a dataset whose ``var_names`` are Ensembl ids."""
    name = adata.uns.get("dataset", {}).get("name", "the dataset")
    columns = ", ".join(map(str, adata.var.columns)) or "none"
    return (
        f"The gene names (var_names) of {name} are Ensembl ids (e.g. {', '.join(adata.var_names[:3])}), but gene "
        "sets (GSEA), gene descriptions and cell-cycle genes are gene symbols. Name the adata.var column holding "
        f"the symbols in the params file, e.g. `gene_symbols_key: feature_name` (columns of adata.var: {columns}); "
        "the Ensembl ids stay in var['feature_id'] for models that need them."
    )


def _missing_column_message(col: str, adata: ad.AnnData) -> str:
    """Error text for a metadata column that is not in ``adata.obs``."""
    return (
        f"Metadata column {col!r} is not in adata.obs; available columns: {', '.join(map(str, adata.obs.columns))}. "
        "Fix label_key / metadata_keys in the params file."
    )
