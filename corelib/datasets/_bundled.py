"""The bundled real data, built from the files shipped in ``corelib/datasets/`` (provenance and licences in
``SOURCES.md`` there):

``pbmc3k``
    10x Genomics 3k PBMCs (CC BY 4.0), 2,638 cells x 2,000 variable genes, raw UMI counts and 9 cell types,
    via the R package clustifyr (MIT).
``pbmc68k_reduced``
    The 700-cell subset of 10x's 68k PBMCs shipped inside scanpy, with 10 sorted-cell labels.

:func:`corelib.datasets.load_dataset` loads them by name (and validates them).
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.datasets._checks import LABEL_KEY

#: pbmc3k's and pbmc68k_reduced's cell types (``obs["cell_type"]``) in one coarse vocabulary, to compare the two
#: datasets cell type by cell type (e.g. batch concepts with the dataset as batch). 68k's bulk labels come from
#: correlation to sorted populations; CD34+ and Platelet have no counterpart in the other dataset and stay as
#: they are. :func:`coarse_cell_types` applies it.
COARSE = {
    "Naive CD4 T": "CD4 T", "Memory CD4 T": "CD4 T", "CD8 T": "CD8 T", "CD14+ Mono": "Mono",
    "FCGR3A+ Mono": "Mono", "B": "B", "NK": "NK", "DC": "DC", "Platelet": "Platelet",
    "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T", "CD14+ Monocyte": "Mono",
    "CD19+ B": "B", "CD56+ NK": "NK", "Dendritic": "DC", "CD34+": "CD34+",
}  # fmt: skip


def coarse_cell_types(labels_N: pd.Series | np.ndarray) -> np.ndarray:
    """Cell-type labels in the :data:`COARSE` vocabulary; a label it does not know stays as it is."""
    labels = pd.Series(np.asarray(labels_N).astype(str))
    return labels.map(COARSE).fillna(labels).to_numpy()


def bundled_path(name: str) -> Path:
    """Path of a file in the package's ``datasets`` folder."""
    return Path(str(resources.files("corelib") / "datasets" / name))


def load_pbmc3k() -> ad.AnnData:
    """Build pbmc3k from the bundled count matrix, gene list and metadata."""
    X = sp.load_npz(bundled_path("pbmc3k/counts_cells_x_genes.npz")).astype(np.float32).tocsr()
    with gzip.open(bundled_path("pbmc3k/genes.txt.gz"), "rt") as fh:
        genes = [line.strip() for line in fh if line.strip()]
    obs = pd.read_csv(bundled_path("pbmc3k/obs.csv.gz"), index_col=0)
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


def load_pbmc68k_reduced() -> ad.AnnData:
    """Build pbmc68k_reduced from scanpy's shipped file, with approximate counts (see :func:`corelib.datasets.load_dataset`)."""
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
