"""A precomputed cell embedding (``obsm``) checked before anything is trained on it (:func:`check_embedding`).

CELLxGENE Census and most atlases ship embeddings (scVI, Geneformer, UCE, scGPT) in ``obsm`` without the model
that made them; ``model: precomputed`` runs the pipeline on such a key.
"""

from __future__ import annotations

import anndata as ad
import numpy as np

#: Rows read at a time when checking a (possibly memory-mapped) embedding for NaN and infinite values.
BLOCK_ROWS = 65_536


def check_embedding(adata: ad.AnnData, key: str) -> tuple[int, int]:
    """Check ``adata.obsm[key]`` as an embedding of every cell; raise a ``ValueError`` naming the fix.

    Checks: the key exists (the message lists the keys there are), the array is 2-D and numeric with one row
    per cell of ``obs`` and at least two dimensions, every value is finite (read in blocks of
    :data:`BLOCK_ROWS` rows), and not every cell has the same embedding.

    Returns
    -------
    ``(n_cells, dim)``.
    """
    if key not in adata.obsm:
        there = ", ".join(map(repr, adata.obsm)) or "none"
        raise ValueError(
            f"embedding_key {key!r} is not in the dataset's obsm (keys there: {there}). Set embedding_key in the "
            "params file to the obsm key holding the embedding, e.g. embedding_key: X_scvi."
        )
    emb_ND = adata.obsm[key]
    shape = getattr(emb_ND, "shape", ())
    if len(shape) != 2 or not np.issubdtype(np.asarray(emb_ND[:1]).dtype, np.number):
        raise ValueError(
            f"obsm[{key!r}] is not a numeric cells x dimensions array (shape {shape}, type "
            f"{type(emb_ND).__name__}). Store the embedding as a 2-D float array, one row per cell."
        )
    n_cells, dim = shape
    if n_cells != adata.n_obs:
        raise ValueError(
            f"obsm[{key!r}] has {n_cells} rows and obs has {adata.n_obs} cells: write the embedding of exactly "
            "these cells, in obs order."
        )
    if dim < 2:
        raise ValueError(f"obsm[{key!r}] has {dim} dimension(s); an SAE needs an embedding of at least 2.")
    n_bad, lo_D, hi_D = 0, np.full(dim, np.inf), np.full(dim, -np.inf)
    for start in range(0, n_cells, BLOCK_ROWS):
        block_BD = np.asarray(emb_ND[start : start + BLOCK_ROWS], dtype=np.float64)
        finite_BD = np.isfinite(block_BD)
        n_bad += int(finite_BD.size - finite_BD.sum())
        lo_D = np.minimum(lo_D, np.where(finite_BD, block_BD, np.inf).min(axis=0))
        hi_D = np.maximum(hi_D, np.where(finite_BD, block_BD, -np.inf).max(axis=0))
    if n_bad:
        raise ValueError(
            f"obsm[{key!r}] holds {n_bad} NaN or infinite values. Drop or re-embed those cells first (e.g. "
            f"adata = adata[np.isfinite(adata.obsm[{key!r}]).all(axis=1)].copy())."
        )
    if np.all(lo_D == hi_D):
        raise ValueError(f"obsm[{key!r}] is the same for every cell: it carries nothing to learn from.")
    return n_cells, dim
