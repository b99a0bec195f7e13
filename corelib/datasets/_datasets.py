"""Datasets: the bundled real data, reading a user's ``.h5ad``, and validation with errors that say the fix.

Every loader returns an :class:`~anndata.AnnData` with

- raw counts in ``.X`` (float32 CSR holding integers),
- gene symbols as ``var_names`` (unique; for a file whose ``var_names`` are Ensembl ids, ``gene_symbols_key`` names
  the ``var`` column holding the symbols, and the ids stay in ``var["feature_id"]``),
- the standard label column ``obs["cell_type"]`` (the original columns are kept),
- ``uns["dataset"]``: name, source and licence (and, from :func:`load`, the ``organism`` setting).

The bundled files live in ``corelib/datasets/`` (provenance and licences in ``SOURCES.md`` there):

``pbmc3k``
    10x Genomics 3k PBMCs (CC BY 4.0), 2,638 cells x 2,000 variable genes, raw UMI counts and 9 cell types,
    via the R package clustifyr (MIT).
``pbmc68k_reduced``
    The 700-cell subset of 10x's 68k PBMCs shipped inside scanpy, with 10 sorted-cell labels.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.datasets._organism import check_organism, organism_mismatch

DATASETS: tuple[str, ...] = ("pbmc3k", "pbmc68k_reduced", "pbmc3k_planted")
LABEL_KEY = "cell_type"


def _bundled(name: str) -> Path:
    """Path of a file in the package's ``datasets`` folder."""
    return Path(str(resources.files("corelib") / "datasets" / name))


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
        adata = _load_pbmc3k()
    elif name == "pbmc68k_reduced":
        adata = _load_pbmc68k_reduced()
    elif name == "pbmc3k_planted":
        from corelib.datasets._planted import planted_pbmc3k

        adata = planted_pbmc3k()
    else:
        raise ValueError(
            f"Unknown dataset {name!r}. Bundled datasets: {', '.join(DATASETS)}; "
            "for your own data pass the path of an .h5ad file to corelib.datasets.load / corelib.datasets.read."
        )
    validate(adata, counts=True, required_columns=(LABEL_KEY,))
    return adata


def _load_pbmc3k() -> ad.AnnData:
    """Build pbmc3k from the bundled count matrix, gene list and metadata."""
    X = sp.load_npz(_bundled("pbmc3k/counts_cells_x_genes.npz")).astype(np.float32).tocsr()
    with gzip.open(_bundled("pbmc3k/genes.txt.gz"), "rt") as fh:
        genes = [line.strip() for line in fh if line.strip()]
    obs = pd.read_csv(_bundled("pbmc3k/obs.csv.gz"), index_col=0)
    obs.index = obs.index.astype(str)
    for col in ("orig.ident", "RNA_snn_res.0.5", "seurat_clusters", "classified"):
        obs[col] = obs[col].astype(str).astype("category")
    obs[LABEL_KEY] = obs["classified"]
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene_symbol")))
    adata.obsm["X_umap_seurat"] = obs[["UMAP_1", "UMAP_2"]].to_numpy(np.float32)
    adata.uns["dataset"] = {
        "name": "pbmc3k",
        "source": "10x Genomics 3k PBMCs via clustifyr (pbmc_matrix_small, pbmc_meta)",
        "license": "CC BY 4.0 (data), MIT (clustifyr)",
        "counts": "exact: round(expm1(lognorm) * nCount_RNA / 1e4)",
    }
    return adata


def _load_pbmc68k_reduced() -> ad.AnnData:
    """Build pbmc68k_reduced from scanpy's shipped file, with approximate counts (see load_dataset)."""
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.to_adata()
    lognorm = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    counts = np.rint(np.expm1(lognorm) * src.obs["n_counts"].to_numpy()[:, None] / 1e4)
    obs = src.obs.copy()
    obs[LABEL_KEY] = obs["bulk_labels"].astype("category")
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(raw.var_names.astype(str), name="gene_symbol")),
    )
    adata.obsm["X_umap_scanpy"] = np.asarray(src.obsm["X_umap"], dtype=np.float32)
    adata.uns["dataset"] = {
        "name": "pbmc68k_reduced",
        "source": "10x Genomics 68k PBMCs, subset shipped by scanpy (scanpy.datasets.pbmc68k_reduced)",
        "license": "CC BY 4.0 (data), BSD-3-Clause (scanpy)",
        "counts": "approximate: round(expm1(raw) * n_counts / 1e4) from 3-decimal log1p values",
    }
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
        "counts layer (counts_layer, or stability_counts_layer for notebook 04's second dataset) to one of them, "
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


def looks_like_ensembl(genes: Iterable[str]) -> bool:
    """Whether gene names are Ensembl ids (more than 90% start with ``ENS``: ``ENSG``, ``ENSMUSG``, ...)."""
    genes = [str(g) for g in genes]
    return bool(genes) and np.mean([g.startswith("ENS") for g in genes]) > 0.9


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
            stacklevel=2,
        )
    return adata


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
