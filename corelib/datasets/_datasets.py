"""Datasets: the bundled real data, reading a user's ``.h5ad``, and validation with errors that say the fix.

Every loader returns an :class:`~anndata.AnnData` with

- raw counts in ``.X`` (float32 CSR holding integers),
- gene symbols as ``var_names`` (unique; for a file whose ``var_names`` are Ensembl ids, ``gene_symbols_key`` names
  the ``var`` column holding the symbols, and the ids stay in ``var["feature_id"]``),
- the standard label column ``obs["cell_type"]`` (the original columns are kept),
- ``uns["dataset"]``: name, source and licence (and, from :func:`load`, the ``organism`` setting).

The bundled datasets are built in :mod:`corelib.datasets._bundled`, the planted one in
:mod:`corelib.datasets._planted`; :func:`corelib.datasets.validate` (in ``_checks``) is what every loader ends
with.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.datasets._bundled import load_pbmc3k, load_pbmc68k_reduced
from corelib.datasets._checks import LABEL_KEY, _missing_column_message, validate
from corelib.datasets._organism import check_organism, organism_mismatch
from corelib.datasets._planted import planted_pbmc3k

DATASETS: tuple[str, ...] = ("pbmc3k", "pbmc68k_reduced", "pbmc3k_planted")


def load_dataset(name: str = "pbmc3k") -> ad.AnnData:
    """Load a bundled dataset.

    Parameters
    ----------
    name
        ``"pbmc3k"`` (the default: 2,638 PBMCs x 2,000 genes, raw integer counts, 9 cell types in
        ``obs["classified"]``) or ``"pbmc68k_reduced"`` (700 PBMCs x 765 genes from scanpy, 10 sorted-cell
        labels in ``obs["bulk_labels"]``; its counts are APPROXIMATE: scanpy ships only log1p-normalised
        values rounded to 3 decimals, so counts are rebuilt as ``round(expm1(raw) * n_counts / 1e4)``), or
        ``"pbmc3k_planted"`` (pbmc3k with a GO BP program planted at fold change 3 in 10% of cells, the truth
        in ``obs``/``uns["planted"]``: :func:`corelib.datasets.planted_pbmc3k`).

    Returns
    -------
    AnnData with raw counts in ``.X`` (float32 CSR), gene symbols as ``var_names``, ``obs["cell_type"]``.
    """
    if name == "pbmc3k":
        adata = load_pbmc3k()
    elif name == "pbmc68k_reduced":
        adata = load_pbmc68k_reduced()
    elif name == "pbmc3k_planted":
        adata = planted_pbmc3k()
    else:
        raise ValueError(
            f"Unknown dataset {name!r}. Bundled datasets: {', '.join(DATASETS)}; "
            "for your own data pass the path of an .h5ad file to corelib.datasets.load / corelib.datasets.read."
        )
    validate(adata, counts=True, required_columns=(LABEL_KEY,))
    return adata


def read(
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    counts: bool = True,
    required_columns: Sequence[str] = (),
    label_key: str | None = None,
    gene_symbols_key: str | None = None,
    duplicate_symbols: str = "suffix",
    drop_empty_cells: bool = False,
    backed: bool = False,
) -> ad.AnnData:
    """Read a user's ``.h5ad`` file (or ``.zarr`` store) and validate it.

    Parameters
    ----------
    path
        An ``.h5ad`` file or a ``.zarr`` store (written by ``AnnData.write_zarr``).
    layer
        Where the expression lives (``adata.layers[layer]``); default ``.X``. The result has it in ``.X``, and
        ``uns["dataset"]["layer"]`` records where it came from.
    counts
        Require raw counts (non-negative integers), as scVI and the attribution need.
    required_columns
        ``obs`` columns that must exist (for example the metadata columns a notebook characterises).
    label_key
        If given and not ``"cell_type"``, copied to ``obs["cell_type"]`` so every notebook finds the labels.
    gene_symbols_key
        ``var`` column holding gene symbols (e.g. CELLxGENE's ``"feature_name"``), as scanpy's
        ``gene_symbols``: see :func:`use_gene_symbols`. None: ``var_names`` are the symbols already.
    duplicate_symbols
        Genes sharing a symbol (of ``gene_symbols_key``, else of ``var_names``): ``"suffix"`` makes the symbols
        unique (``LYZ-1``, with a warning; repeated ``var_names`` stay an error) or ``"sum"`` adds their counts
        into one gene per symbol (:func:`_sum_duplicate_symbols`; printed).
    drop_empty_cells
        Drop the cells without a single count (printed) instead of stopping with an error; in-memory data only.
    backed
        Leave the expression on disk: ``.X`` is a lazy dask array (chunks of :data:`BACKED_CHUNK` cells read
        from the file when sliced; ``corelib.encoders.embed`` reads it block by block), ``obs``/``var``/``uns``
        are in memory, and the value checks of :func:`validate` look at a seeded sample of cells.

    Returns
    -------
    The validated AnnData, expression in ``.X`` as float32 CSR (a lazy dask array of them when ``backed``).
    """
    if duplicate_symbols not in ("suffix", "sum"):
        raise ValueError(f"duplicate_symbols must be 'suffix' or 'sum', got {duplicate_symbols!r}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No such file: {path}. Pass the path of an .h5ad file or a bundled name ({', '.join(DATASETS)})."
        )
    if path.suffix not in (".h5ad", ".zarr"):
        raise ValueError(
            f"{path} is not an .h5ad file or .zarr store. Convert it with anndata (e.g. AnnData.write_h5ad) first."
        )
    try:
        adata = _read_lazy(path, layer) if backed else _read_in_memory(path)
    except OSError as err:
        raise ValueError(
            f"Cannot read {path} ({path.stat().st_size:,} bytes) as an {path.suffix} file: {err}. The file is "
            "truncated (an interrupted download or copy) or is not HDF5 at all: copy or download it again."
        ) from err
    if layer is not None and not backed:
        if layer not in adata.layers:
            raise ValueError(_missing_layer_message(layer, path, list(adata.layers)))
        adata.X = adata.layers[layer]
    if not backed:
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obs_names = adata.obs_names.astype(str)
    if duplicate_symbols == "sum":
        adata = _sum_duplicate_symbols(adata, gene_symbols_key)
    if gene_symbols_key is not None:
        use_gene_symbols(adata, gene_symbols_key)
    adata.var_names = adata.var_names.astype(str)
    if label_key and label_key != LABEL_KEY:
        if label_key not in adata.obs:
            raise ValueError(_missing_column_message(label_key, adata))
        adata.obs[LABEL_KEY] = adata.obs[label_key].astype("category")
    adata.uns["dataset"] = {"name": path.stem, "source": str(path.resolve()), "layer": layer or "X"}
    if drop_empty_cells:
        adata = _drop_empty_cells(adata)
    validate(adata, counts=counts, required_columns=required_columns)
    return adata


def _drop_empty_cells(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` without its cells that have no count (an in-memory copy), with a printed count."""
    if hasattr(adata.X, "compute"):
        raise ValueError(
            "drop_empty_cells needs the counts in memory, but the data are backed (read block by block): drop the "
            "empty cells from the file first (scanpy.pp.filter_cells(adata, min_counts=1)), or set backed: false."
        )
    keep = np.asarray(adata.X.sum(axis=1)).ravel() > 0
    if keep.all():
        return adata
    empty = adata.obs_names[~keep]
    print(
        f"drop_empty_cells: dropped {len(empty)} of {adata.n_obs} cells without a single count (e.g. "
        f"{', '.join(map(str, empty[:3]))})."
    )
    return adata[keep].copy()


#: Cells per chunk of a backed dataset's lazy ``X`` (:func:`read` with ``backed=True``).
BACKED_CHUNK = 8192


def _read_in_memory(path: Path) -> ad.AnnData:
    return ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)


def _read_lazy(path: Path, layer: str | None) -> ad.AnnData:
    """``obs``, ``var`` and ``uns`` in memory; the expression (``X`` or ``layers[layer]``) as a lazy dask array."""
    import h5py
    import zarr
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    store = h5py.File(path, "r") if path.suffix == ".h5ad" else zarr.open_group(path, mode="r")
    layers = list(store["layers"]) if "layers" in store else []
    if layer is not None and layer not in layers:
        raise ValueError(_missing_layer_message(layer, path, layers))
    element = store["X"] if layer is None else store["layers"][layer]
    n_vars = element.attrs["shape"][1] if "shape" in element.attrs else element.shape[1]
    X = read_elem_lazy(element, chunks=(BACKED_CHUNK, int(n_vars)))
    parts = {key: read_elem(store[key]) for key in ("obs", "var", "uns", "obsm") if key in store}
    return ad.AnnData(X=X, obs=parts["obs"], var=parts["var"], uns=parts.get("uns"), obsm=parts.get("obsm"))


def _missing_layer_message(layer: str, path: Path, layers: Sequence[str]) -> str:
    return (
        f"Layer {layer!r} not found in {path.name}; available layers: {', '.join(layers) or 'none'}. Set the "
        "counts layer (counts_layer, or stability_counts_layer for the stability step's second dataset) to one of them, "
        "or to null to use .X."
    )


def use_gene_symbols(adata: ad.AnnData, key: str) -> None:
    """Make the gene symbols of ``adata.var[key]`` the ``var_names``, in place, keeping the former names.

    Everything that needs symbols (GSEA gene sets, gene descriptions, cell-cycle genes, the genes of a model
    trained here or of scGPT) reads ``var_names``. The former ``var_names`` (typically Ensembl ids) go to
    ``var["feature_id"]`` unless that column exists: it is the column ``corelib.encoders`` matches a model with
    Ensembl genes against (the CELLxGENE Census scVI), so such a model still finds its genes. Symbols shared by
    several ids are made unique (``SYMBOL-1``, as scanpy's ``var_names_make_unique``).

    Parameters
    ----------
    adata
        The dataset; its ``var_names`` and ``var`` are changed.
    key
        The ``var`` column holding gene symbols (e.g. ``"feature_name"``).
    """
    symbols = _symbols(adata, key)
    if "feature_id" not in adata.var:
        adata.var["feature_id"] = adata.var_names.astype(str)
    repeated = symbols[symbols.duplicated()]
    if len(repeated):
        warnings.warn(
            f"gene_symbols_key {key!r}: {len(repeated)} of {len(symbols)} genes repeat a symbol already used (e.g. "
            f"{', '.join(map(str, repeated.unique()[:3]))}); they become SYMBOL-1, SYMBOL-2..., which no gene set "
            "or gene description knows. To count them as one gene, set duplicate_symbols: sum in the params file "
            "(corelib.datasets.load(..., duplicate_symbols='sum')): their counts are then summed per symbol.",
            stacklevel=2,
        )
    adata.var_names = symbols
    adata.var_names_make_unique()


def _symbols(adata: ad.AnnData, key: str | None) -> pd.Index:
    """The gene symbols: ``var[key]`` (an error naming the columns when there is none), else ``var_names``."""
    if key is None:
        return pd.Index(adata.var_names.astype(str))
    if key not in adata.var:
        raise ValueError(
            f"gene_symbols_key {key!r} is not a column of adata.var; its columns: "
            f"{', '.join(map(str, adata.var.columns)) or 'none'}. Set gene_symbols_key to the column holding "
            "gene symbols."
        )
    return pd.Index(adata.var[key].astype(str).to_numpy())


def _sum_duplicate_symbols(adata: ad.AnnData, key: str | None) -> ad.AnnData:
    """One gene per symbol (``var[key]``, else ``var_names``): the counts of the genes sharing it summed.

    ``X`` is multiplied by a sparse genes x symbols indicator, so a CSR matrix stays CSR (never densified) and
    a backed (lazy) ``X`` is summed block by block as it is read. Each symbol keeps the ``var`` row and the
    name of its first gene; ``layers``, ``varm`` and ``varp`` are dropped (only the counts in ``X`` are summed;
    a normalised layer cannot be). What was done is printed.
    """
    symbols = _symbols(adata, key)
    if symbols.is_unique:
        return adata
    codes, uniques = pd.factorize(symbols)
    first = np.unique(codes, return_index=True)[1]
    indicator_GS = sp.csr_matrix(
        (np.ones(adata.n_vars, adata.X.dtype), (np.arange(adata.n_vars), codes)),
        shape=(adata.n_vars, len(uniques)),
    )
    X = adata.X
    if hasattr(X, "compute"):
        summed = X.map_blocks(
            lambda block: block @ indicator_GS,
            chunks=(X.chunks[0], (len(uniques),)),
            dtype=X.dtype,
            meta=X._meta,
        )
    else:
        summed = X @ indicator_GS
    dropped = [
        f"{name} ({', '.join(getattr(adata, name))})"
        for name in ("layers", "varm", "varp")
        if getattr(adata, name)
    ]
    repeated = symbols[symbols.duplicated(keep=False)]
    print(
        f"duplicate_symbols sum: {len(repeated)} genes share a symbol with another gene (e.g. "
        f"{', '.join(repeated.unique()[:3])}); each symbol's counts are summed into one gene: {adata.n_vars} -> "
        f"{len(uniques)} genes, each with the var row of its first gene."
        + (f" Dropped, as only X is summed: {'; '.join(dropped)}." if dropped else "")
    )
    return ad.AnnData(
        X=summed,
        obs=adata.obs,
        var=adata.var.iloc[first].copy(),
        uns=adata.uns,
        obsm=adata.obsm,
        obsp=adata.obsp,
    )


def load(
    dataset: str | os.PathLike,
    *,
    layer: str | None = None,
    counts: bool = True,
    required_columns: Sequence[str] = (),
    label_key: str | None = None,
    gene_symbols_key: str | None = None,
    duplicate_symbols: str = "suffix",
    drop_empty_cells: bool = False,
    backed: bool = False,
    organism: str = "human",
) -> ad.AnnData:
    """Load a bundled dataset by name or read an ``.h5ad`` / ``.zarr`` path (what the params file's ``dataset`` says).

    Parameters are those of :func:`read`; ``layer``, ``label_key``, ``gene_symbols_key``, ``duplicate_symbols``,
    ``drop_empty_cells`` and ``backed`` apply to files only (the bundled datasets need none of them).
    ``organism`` (``"human"`` or ``"mouse"``) is recorded in ``uns["dataset"]["organism"]``; symbols written
    like the other organism's warn with the fix (:mod:`corelib.datasets._organism`).
    """
    check_organism(organism)
    if str(dataset) in DATASETS:
        adata = load_dataset(str(dataset))
        validate(adata, counts=counts, required_columns=required_columns)
    elif str(dataset).endswith((".h5ad", ".zarr")):
        adata = read(
            dataset,
            layer=layer,
            counts=counts,
            required_columns=required_columns,
            label_key=label_key,
            gene_symbols_key=gene_symbols_key,
            duplicate_symbols=duplicate_symbols,
            drop_empty_cells=drop_empty_cells,
            backed=backed,
        )
    else:
        raise ValueError(
            f"dataset={dataset!r} is neither a bundled dataset ({', '.join(DATASETS)}) nor an .h5ad or .zarr path."
        )
    adata.uns["dataset"]["organism"] = organism
    mismatch = organism_mismatch(adata.var_names, organism)
    if mismatch:
        warnings.warn(
            f"{adata.uns['dataset']['name']}: {mismatch} Gene sets, cell-cycle genes and gene descriptions are "
            "matched to the data's symbols under this setting.",
            stacklevel=_caller_level(),
        )
    return adata


def load_from_settings(settings: Mapping[str, Any], *, required_columns: Sequence[str] = ()) -> ad.AnnData:
    """Load the cells as notebook 01 does, from the params file's data settings: :func:`load` of ``dataset``.

    Notebook 01 passes its parameters (``globals()``); the pipeline's pre-flight (:mod:`corelib.runs.preflight`)
    passes the same settings before any notebook runs, so both load the data the same way.

    Parameters
    ----------
    settings
        ``dataset``, ``counts_layer`` (:func:`load`'s ``layer``), ``label_key``, ``metadata_keys`` (``obs``
        columns that must exist), ``gene_symbols_key``, and optionally ``duplicate_symbols``,
        ``drop_empty_cells``, ``backed`` and ``organism`` (:func:`load`'s defaults when absent). Other keys are
        ignored.
    required_columns
        ``obs`` columns that must exist besides ``metadata_keys``.
    """
    return load(
        settings["dataset"],
        layer=settings["counts_layer"],
        label_key=settings["label_key"],
        required_columns=list(dict.fromkeys([*settings["metadata_keys"], *required_columns])),
        gene_symbols_key=settings["gene_symbols_key"],
        duplicate_symbols=settings.get("duplicate_symbols", "suffix"),
        drop_empty_cells=bool(settings.get("drop_empty_cells", False)),
        backed=bool(settings.get("backed", False)),
        organism=settings.get("organism", "human"),
    )


def _caller_level() -> int:
    """The ``stacklevel`` that makes a warning of the function calling this name the first caller outside this
    module: the user's call to :func:`load` or to :func:`load_from_settings` alike."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level
