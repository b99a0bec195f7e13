"""Exact k-nearest-neighbour search among a subset of cells, streamed in chunks of cells (paper Eq. 1 at scale),
and the UMAP of an embedding (:func:`umap_cells`, on a seeded sample of an atlas).

Memory is O((n_query + d) x chunk), never O(n_query x n_cells): candidate cells are read chunk by chunk, a screen
keeps a running top list per query, and the short list is ranked again with exact float64 distances.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import torch

from corelib.tl.sampling import describe_sample, subsample_cells

#: Entries of one query x chunk distance block (float32): 2^24 = 64 MiB.
BLOCK_ELEMENTS = 2**24

#: Bound on the relative error of the float32 screen, per embedding dimension: the GEMM form
#: ``|q|^2 + |c|^2 - 2 q.c`` in float32 errs by at most about (d + 3) unit roundoffs of ``|q|^2 + |c|^2``
#: (Higham, dot products), plus the rounding of float64 inputs to float32; 2 x (d + 8) leaves a margin.
_ROUNDOFF = 2.0**-24


def nearest(
    emb_ND: np.ndarray | torch.Tensor,
    query_idx: np.ndarray,
    candidate_N: np.ndarray,
    k: int,
    *,
    chunk_size: int | None = None,
) -> np.ndarray:
    """The ``k`` nearest candidate cells of each query cell (L2), exact, ties broken by lower cell index.

    The result equals a float64 brute force (all distances, stable sort). A float32 GEMM screen over chunks of
    cells keeps the ``k + margin`` best per query; those are ranked again with float64 distances
    ``sqrt(sum((q - c)^2))``, and a query whose margin does not provably hold every cell that could enter its
    top ``k`` (many cells within float32 rounding of its k-th distance, e.g. duplicates) is searched again
    with a wider margin. Runs on the device of ``emb_ND`` (a CUDA tensor stays on its GPU).

    Parameters
    ----------
    emb_ND
        Embeddings of all cells (n_cells x d), numpy or torch; never copied as a whole.
    query_idx
        Query cell indices (n_query,).
    candidate_N
        Boolean (n_cells,): the cells that may be returned.
    k
        Neighbours per query (at most the number of candidates).
    chunk_size
        Cells per chunk; default ``BLOCK_ELEMENTS // max(n_query, d)`` (at least 1,024).

    Returns
    -------
    Cell indices (n_query x k), nearest first.
    """
    emb = torch.as_tensor(emb_ND)
    candidate_N = np.asarray(candidate_N, dtype=bool)
    query_idx = np.asarray(query_idx, dtype=np.int64)
    n_candidates = int(candidate_N.sum())
    if candidate_N.shape != (len(emb),) or not 1 <= k <= n_candidates:
        raise ValueError(
            f"candidate_N ({candidate_N.shape}) must have one entry per cell ({len(emb)}) and at least k={k} "
            f"candidates (has {n_candidates}); pass fewer neighbours or more candidate cells."
        )
    # a chunk's distance block (n_query x chunk) and its candidates' copy (chunk x d) both stay <= BLOCK_ELEMENTS
    chunk = chunk_size or max(1024, BLOCK_ELEMENTS // max(1, len(query_idx), emb.shape[1]))
    mask = torch.as_tensor(candidate_N, device=emb.device)
    out = np.empty((len(query_idx), k), dtype=np.int64)
    todo, margin = np.arange(len(query_idx)), max(k, 16)
    while len(todo):
        keep = min(k + margin, n_candidates)
        screened = _screen(emb, query_idx[todo], mask, keep, chunk)
        best_QK, proven_Q = _rerank(emb, query_idx[todo], screened, k, exhaustive=keep == n_candidates)
        out[todo[proven_Q]] = best_QK[proven_Q]
        todo, margin = todo[~proven_Q], margin * 8
    return out


def _screen(
    emb: torch.Tensor, query_idx: np.ndarray, mask: torch.Tensor, keep: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` nearest candidates of each query by float32 GEMM distance^2: (distances^2, indices)."""
    q_QD = emb[torch.as_tensor(query_idx, device=emb.device)].float()
    best_d = torch.empty((len(q_QD), 0), device=emb.device)
    best_i = torch.empty((len(q_QD), 0), dtype=torch.int64, device=emb.device)
    for start in range(0, len(emb), chunk):
        idx_C = start + torch.nonzero(mask[start : start + chunk]).flatten()
        c_CD = emb[idx_C].float()  # this chunk's candidates only
        # |c|^2 - 2 q.c: the distance^2 less |q|^2, which does not change a query's order (added below).
        d_QC = torch.addmm((c_CD * c_CD).sum(1), q_QD, c_CD.T, alpha=-2)
        d_QK, pos_QK = torch.topk(d_QC, min(keep, len(idx_C)), dim=1, largest=False)
        best_d, pos = torch.topk(
            torch.cat([best_d, d_QK], 1), min(keep, best_d.shape[1] + len(idx_C)), 1, False
        )
        best_i = torch.gather(torch.cat([best_i, idx_C[pos_QK]], 1), 1, pos)
    return (best_d + (q_QD * q_QD).sum(1, keepdim=True)).clamp_(min=0), best_i


def _rerank(
    emb: torch.Tensor,
    query_idx: np.ndarray,
    screened: tuple[torch.Tensor, torch.Tensor],
    k: int,
    *,
    exhaustive: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 order of the screened lists, and which queries it provably covers.

    A cell c left out of a query's list has a float32 distance^2 of at least the list's largest, ``A``; the
    screen errs by at most ``g (|q|^2 + |c|^2) * 2 <= g (6 |q|^2 + 4 d^2)`` (as ``|c|^2 <= 2|q|^2 + 2 d^2``), so
    its exact distance^2 is at least ``(A - 6 g |q|^2) / (1 + 4 g)``. When that exceeds the k-th exact
    distance^2 of the list, no cell left out can enter (or tie into) the top ``k``.
    """
    screened_QK, idx_QK = screened
    q_QD = emb[torch.as_tensor(query_idx, device=emb.device)].double()
    d2_QK = ((emb[idx_QK].double() - q_QD[:, None, :]) ** 2).sum(-1).cpu().numpy()
    qq_Q = (q_QD * q_QD).sum(1).cpu().numpy()
    idx_QK = idx_QK.cpu().numpy()
    order = np.lexsort((idx_QK, np.sqrt(d2_QK)), axis=1)[:, :k]
    kth_Q = np.take_along_axis(d2_QK, order[:, -1:], 1)[:, 0]
    g = 2 * (emb.shape[1] + 8) * _ROUNDOFF
    bound_Q = (screened_QK.amax(1).double().cpu().numpy() - 6 * g * qq_Q) / (1 + 4 * g)
    return np.take_along_axis(idx_QK, order, 1), exhaustive | (bound_Q > kth_Q * (1 + 1e-12))


def umap_cells(
    adata: ad.AnnData,
    *,
    use_rep: str,
    max_cells: int | None = 50_000,
    stratify_key: str | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """``sc.pp.neighbors`` + ``sc.tl.umap`` of the embedding, on a seeded sample above ``max_cells`` cells.

    Up to ``max_cells`` cells the UMAP is computed on ``adata`` itself (as scanpy does). Above it, on a seeded
    sample stratified by ``obs[stratify_key]`` (:func:`corelib.tl.sampling.subsample_cells`): the neighbour
    graph and the layout do not scale to an atlas and a plot shows no more. The cells outside the sample get
    NaN coordinates in ``obsm["X_umap"]``; ``uns["umap_sample"]`` records what was done, and it is printed.

    Returns
    -------
    The cells with a UMAP, to plot: ``adata`` itself, or a small AnnData of the sample (its ``obs`` and
    embedding).
    """
    import scanpy as sc

    labels = adata.obs[stratify_key].to_numpy() if stratify_key else None
    cells = subsample_cells(adata.n_obs, max_cells, seed=seed, labels=labels)
    sample = len(cells) < adata.n_obs
    shown = adata
    if sample:
        emb = np.asarray(adata.obsm[use_rep][cells])
        shown = ad.AnnData(obs=adata.obs.iloc[cells].copy(), obsm={use_rep: emb})
    sc.pp.neighbors(shown, use_rep=use_rep, random_state=seed)
    sc.tl.umap(shown, random_state=seed)
    if sample:
        umap_N2 = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
        umap_N2[cells] = shown.obsm["X_umap"]
        adata.obsm["X_umap"] = umap_N2
    what = describe_sample(len(cells), adata.n_obs, max_cells, seed, stratify_key)
    if sample:
        adata.uns["umap_sample"] = {"n_cells": len(cells), "max_cells": max_cells, "seed": seed}
        what += ". The other cells have no UMAP coordinates (NaN)"
    print(f"UMAP of {what}.")
    return shown
