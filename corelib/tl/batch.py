"""Batch concepts: concepts whose activity marks a batch, and the embedding with them suppressed (issue 26).

Pedrocchi et al. (ICLR 2026) suppress batch-associated SAE features of scGPT, scFoundation and Geneformer to
reduce technical variation while keeping the biology. Here:

- :func:`batch_concepts` scores every concept by the AUROC of its activation for each batch against the other
  cells of its cell type (a concept that marks a cell type more common in one batch is not a batch concept),
  in the cell type where it is best (a technical shift moves each cell type its own way, and the SAE splits
  it by type) or pooled over types, against a permutation null of the batch labels;
- :func:`suppress_concepts` returns ``decode(u with the concepts zeroed) + (a - decode(u))``: the SAE's
  reconstruction without those concepts plus its residual, i.e. ``a - sum_{c in S} u_c D_c``; nothing else
  moves;
- :func:`remove_batch_concepts` does both on an AnnData (scanpy style);
- :func:`label_concepts` and :func:`random_concepts` give the nulls: the concepts most associated with cell
  type (suppressing them must cost biology), and random concepts of the same number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from corelib.tl.sae import TopKSAE, as_embeddings, sparse_decode

#: Default AUROC from which a concept counts as batch-associated, per statistic of :func:`batch_concepts` (it
#: must also beat the permutation null). Measured on the planted batch of ``benchmarks/batch_suppression.py``
#: (scVI, SAE c=500, k=32): within one cell type, concept 83 marks the batch with AUROC 0.966 (FCGR3A+
#: monocytes; 0.898 in CD14+), pooled over types no concept passes 0.71 (the pooled null's 99% quantile: 0.533,
#: the per-type one's 0.653, set by the small types). Suppressing the concepts from 0.8 / 0.7 / the null
#: alone per type (2 / 23 / 47) moves scib's batch score 0.574 -> 0.608 / 0.727 / 0.804 and the bio score
#: 0.691 -> 0.691 / 0.689 / 0.677 (random concepts: batch 0.578 / 0.581 / 0.573). 0.7 because on pbmc3k +
#: pbmc68k its 12 concepts already cost 0.04 of bio.
MIN_AUROC = {"per_stratum": 0.7, "pooled": 0.6}

#: Cells a batch and the rest of its cell type need for a per-stratum AUROC.
MIN_CELLS = 20

#: The one stratum of the cells when no cell types are given (every cell compared with every other).
ALL_CELLS = "all cells"


def _within_ranks(codes_NC: sp.csc_matrix, strata_N: np.ndarray, n_strata: int) -> tuple[np.ndarray, ...]:
    """Average ranks of the stored (non-zero) codes within their column and stratum, zeros ranked first.

    Returns ``(rank_nz, col_nz, row_nz, zero_rank_SC)``: each stored entry's rank (1-based, among its stratum's
    cells in its column, zeros included as ties below every positive value), its column and row, and the
    average rank of the zeros of each stratum and column.
    """
    n_cols = codes_NC.shape[1]
    col_nz = np.repeat(np.arange(n_cols), np.diff(codes_NC.indptr))
    row_nz, val_nz = codes_NC.indices, codes_NC.data
    stratum_nz = strata_N[row_nz]
    order = np.lexsort((val_nz, stratum_nz, col_nz))
    key = col_nz[order] * n_strata + stratum_nz[order]
    n_cells_S = np.bincount(strata_N, minlength=n_strata)
    nnz_SC = np.bincount(key, minlength=n_cols * n_strata).reshape(n_cols, n_strata).T
    zeros_SC = n_cells_S[:, None] - nnz_SC
    group_start = np.searchsorted(key, key, side="left")
    pos = np.arange(len(key)) - group_start + 1.0  # ordinal position among the group's non-zeros
    new_run = np.r_[True, (np.diff(key) != 0) | (np.diff(val_nz[order]) != 0)]  # a run of tied values
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(key)] - 1
    run = np.cumsum(new_run) - 1
    rank_sorted = (pos[starts][run] + pos[ends][run]) / 2 + zeros_SC[stratum_nz[order], col_nz[order]]
    rank_nz = np.empty_like(rank_sorted)
    rank_nz[order] = rank_sorted
    return rank_nz, col_nz, row_nz, (zeros_SC + 1) / 2


def _u_GC(
    ranks: tuple[np.ndarray, ...], levels_N: np.ndarray, strata_N: np.ndarray, n_levels: int, n_strata: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney U of every column for every group (stratum x level, ``g = s * n_levels + l``) against the
    other cells of its stratum, and each group's pair count: ``(u_GC, pairs_G)``."""
    rank_nz, col_nz, row_nz, zero_rank_SC = ranks
    n_cols = zero_rank_SC.shape[1]
    n_groups = n_strata * n_levels
    group_N = strata_N * n_levels + levels_N
    key = col_nz * n_groups + group_N[row_nz]
    rank_sum_GC = np.bincount(key, weights=rank_nz, minlength=n_cols * n_groups).reshape(n_cols, n_groups).T
    nnz_GC = np.bincount(key, minlength=n_cols * n_groups).reshape(n_cols, n_groups).T
    n_G = np.bincount(group_N, minlength=n_groups).astype(np.float64)
    stratum_G = np.repeat(np.arange(n_strata), n_levels)
    rank_sum_GC += (n_G[:, None] - nnz_GC) * zero_rank_SC[stratum_G]
    u_GC = rank_sum_GC - (n_G * (n_G + 1) / 2)[:, None]
    n_S = np.bincount(strata_N, minlength=n_strata)
    return u_GC, n_G * (n_S[stratum_G] - n_G)


def _auroc_LC(
    ranks: tuple[np.ndarray, ...], levels_N: np.ndarray, strata_N: np.ndarray, n_levels: int, n_strata: int
) -> np.ndarray:
    """AUROC of every column for every level against the other cells of its stratum, pooled over strata
    (levels x columns): the Mann-Whitney U summed over strata over the number of same-stratum pairs."""
    u_GC, pairs_G = _u_GC(ranks, levels_N, strata_N, n_levels, n_strata)
    u_LC = u_GC.reshape(n_strata, n_levels, -1).sum(axis=0)
    pairs_L = pairs_G.reshape(n_strata, n_levels).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return u_LC / pairs_L[:, None]


def _auroc_SLC(
    ranks: tuple[np.ndarray, ...],
    levels_N: np.ndarray,
    strata_N: np.ndarray,
    n_levels: int,
    n_strata: int,
    min_cells: int,
) -> np.ndarray:
    """AUROC of every column for every level within each stratum separately (strata x levels x columns);
    NaN where the level or the rest of its stratum has fewer than ``min_cells`` cells."""
    u_GC, _ = _u_GC(ranks, levels_N, strata_N, n_levels, n_strata)
    n_G = np.bincount(strata_N * n_levels + levels_N, minlength=n_strata * n_levels).astype(np.float64)
    rest_G = np.repeat(np.bincount(strata_N, minlength=n_strata), n_levels) - n_G
    pairs_G = np.where((n_G >= min_cells) & (rest_G >= min_cells), n_G * rest_G, np.nan)
    return (u_GC / pairs_G[:, None]).reshape(n_strata, n_levels, -1)


def _statistic_LC(
    ranks: tuple[np.ndarray, ...],
    levels_N: np.ndarray,
    strata_N: np.ndarray,
    n_levels: int,
    n_strata: int,
    min_cells: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The batch statistic of every level and column, and the stratum where it is reached (levels x columns):
    pooled over strata (``min_cells`` None; stratum -1), or the best AUROC within one stratum."""
    if min_cells is None:
        auroc_LC = _auroc_LC(ranks, levels_N, strata_N, n_levels, n_strata)
        return auroc_LC, np.full(auroc_LC.shape, -1)
    auroc_SLC = _auroc_SLC(ranks, levels_N, strata_N, n_levels, n_strata, min_cells)
    stratum_LC = np.argmax(np.nan_to_num(auroc_SLC, nan=-1.0), axis=0)
    return np.take_along_axis(auroc_SLC, stratum_LC[None], axis=0)[0], stratum_LC


def _strata(labels_N: Sequence | None, n_cells: int) -> pd.Categorical:
    """The strata of the cells: their cell types, or one stratum :data:`ALL_CELLS`."""
    return pd.Categorical(
        np.full(n_cells, ALL_CELLS) if labels_N is None else np.asarray(labels_N).astype(str)
    )


def _codes(levels: pd.Categorical, codes_NC: Any) -> sp.csc_matrix:
    codes = sp.csc_matrix(codes_NC, dtype=np.float64)
    if codes.shape[0] != len(levels):
        raise ValueError(
            f"codes have {codes.shape[0]} cells but the labels {len(levels)}: pass the same cells."
        )
    codes.sum_duplicates()
    return codes


def concept_auroc(codes_NC: Any, labels_N: Sequence, *, strata_N: Sequence | None = None) -> pd.DataFrame:
    """AUROC of every concept's activation for each label against the other cells (ties count one half).

    Parameters
    ----------
    codes_NC
        Concept activations (cells x concepts), dense or sparse; never densified.
    labels_N
        A label per cell (batch, cell type...).
    strata_N
        Optional strata (e.g. cell types): each cell is compared only with the cells of its stratum, and the
        U statistics and pair counts are summed over strata (strata holding one label only add nothing).

    Returns
    -------
    Concepts x labels table of AUROCs (NaN for a label without a comparison).
    """
    levels = pd.Categorical(np.asarray(labels_N).astype(str))
    strata = _strata(strata_N, len(levels))
    codes = _codes(levels, codes_NC)
    n_strata, n_levels = len(strata.categories), len(levels.categories)
    ranks = _within_ranks(codes, strata.codes.astype(np.int64), n_strata)
    auroc_LC = _auroc_LC(
        ranks, levels.codes.astype(np.int64), strata.codes.astype(np.int64), n_levels, n_strata
    )
    return pd.DataFrame(auroc_LC.T, columns=pd.Index(levels.categories, name="label")).rename_axis("concept")


def _permuted_within(levels_N: np.ndarray, strata_N: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The labels shuffled among the cells of each stratum."""
    out = levels_N.copy()
    for s in np.unique(strata_N):
        idx = np.flatnonzero(strata_N == s)
        out[idx] = levels_N[rng.permutation(idx)]
    return out


def batch_concepts(
    codes_NC: Any,
    batch_N: Sequence,
    *,
    labels_N: Sequence | None = None,
    statistic: Literal["per_stratum", "pooled"] = "per_stratum",
    min_cells: int = MIN_CELLS,
    min_auroc: float | None = None,
    n_permutations: int = 100,
    alpha: float = 0.01,
    seed: int = 0,
) -> pd.DataFrame:
    """Which concepts mark a batch: AUROC per batch within cell types, a permutation null, and the call.

    The statistic of a concept is its best batch AUROC (a batch against the other cells of a cell type):
    ``"per_stratum"`` takes the best cell type (those with ``min_cells`` cells in the batch and in the rest),
    ``"pooled"`` sums the Mann-Whitney U over the cell types. A gene-wise technical shift moves each cell type
    its own way, and the SAE splits it by type: a concept that marks batch B among monocytes only is diluted
    by the types where it is silent when pooled. A concept is *batch-associated* when its statistic is at
    least ``min_auroc`` and above the ``1 - alpha`` quantile of its null: the largest statistic of any concept
    and batch after shuffling the batch labels among the cells of each cell type (``n_permutations`` times;
    the best of several types has the larger null, mostly set by the smallest type). AUROC, unlike the share
    of a concept's active cells in one batch, does not depend on the batches' sizes or the concept's
    frequency, and within cell types a concept of a type that one batch has more of is not a batch concept.

    Parameters
    ----------
    codes_NC
        Concept activations (cells x concepts), e.g. ``obsm["X_concepts"]`` (sparse stays sparse).
    batch_N
        The batch of each cell.
    labels_N
        Cell types (the strata); None compares every cell with every other (one stratum, :data:`ALL_CELLS`).
    statistic
        ``"per_stratum"`` (best cell type) or ``"pooled"`` (over cell types).
    min_cells
        Cells a batch and the rest of its cell type need for ``"per_stratum"`` (default :data:`MIN_CELLS`).
    min_auroc
        The effect size a batch concept needs (default :data:`MIN_AUROC` of the statistic).
    n_permutations, alpha, seed
        The null: shuffles, its quantile, and the seed of the shuffles (0 permutations: no null).

    Returns
    -------
    One row per concept (index ``concept``): ``batch`` (the batch it marks best), ``auroc`` (its statistic),
    ``stratum`` (the cell type of a per-stratum statistic, "" pooled), ``n_active``, ``associated`` (bool),
    then ``auroc_<batch>`` for every batch, sorted by ``auroc`` (descending). ``attrs`` holds ``statistic``,
    ``null_auroc`` (the null quantile), ``min_auroc``, ``n_permutations``.
    """
    levels = pd.Categorical(np.asarray(batch_N).astype(str))
    if len(levels.categories) < 2:
        raise ValueError(f"Need at least two batches, got {list(levels.categories)}.")
    if statistic not in MIN_AUROC:
        raise ValueError(f"statistic must be one of {list(MIN_AUROC)}, got {statistic!r}.")
    min_auroc = MIN_AUROC[statistic] if min_auroc is None else min_auroc
    strata = _strata(labels_N, len(levels))
    codes = _codes(levels, codes_NC)
    strata_N, levels_N = strata.codes.astype(np.int64), levels.codes.astype(np.int64)
    n_strata, n_levels = len(strata.categories), len(levels.categories)
    ranks = _within_ranks(codes, strata_N, n_strata)
    cells = min_cells if statistic == "per_stratum" else None
    auroc_LC, stratum_LC = _statistic_LC(ranks, levels_N, strata_N, n_levels, n_strata, cells)
    if np.isnan(auroc_LC).all():
        raise ValueError(f"No cell type has {min_cells} cells in a batch and in the rest: lower min_cells.")
    rng = np.random.default_rng(seed)
    null_P = np.array(
        [
            np.nanmax(
                _statistic_LC(
                    ranks, _permuted_within(levels_N, strata_N, rng), strata_N, n_levels, n_strata, cells
                )[0]
            )
            for _ in range(n_permutations)
        ]
    )
    null_auroc = float(np.quantile(null_P, 1 - alpha)) if n_permutations else float("nan")
    best_C = np.nanargmax(np.nan_to_num(auroc_LC, nan=-1.0), axis=0)
    best_auroc_C = auroc_LC[best_C, np.arange(auroc_LC.shape[1])]
    best_stratum_C = stratum_LC[best_C, np.arange(auroc_LC.shape[1])]
    table = pd.DataFrame(
        {
            "batch": np.asarray(levels.categories)[best_C],
            "auroc": best_auroc_C,
            "stratum": np.append(strata.categories.astype(str), "")[best_stratum_C],  # -1 (pooled): ""
            "n_active": np.diff(codes.indptr),
            "associated": (best_auroc_C >= min_auroc)
            & (best_auroc_C > null_auroc if n_permutations else True),
        }
    ).rename_axis("concept")
    for i, level in enumerate(levels.categories):
        table[f"auroc_{level}"] = auroc_LC[i]
    table = table.sort_values("auroc", ascending=False, kind="stable")
    table.attrs = {
        "statistic": statistic,
        "null_auroc": null_auroc,
        "min_auroc": float(min_auroc),
        "n_permutations": n_permutations,
    }
    return table


def label_concepts(codes_NC: Any, labels_N: Sequence, n: int) -> np.ndarray:
    """The ``n`` concepts that mark a cell type best (largest AUROC of any type against the other cells)."""
    best_C = concept_auroc(codes_NC, labels_N).max(axis=1).to_numpy()
    return np.argsort(-best_C, kind="stable")[:n]


def random_concepts(n_concepts: int, n: int, seed: int, *, exclude: Sequence[int] = ()) -> np.ndarray:
    """``n`` concepts drawn without replacement (seeded) among those not in ``exclude``: the random null."""
    pool = np.setdiff1d(np.arange(n_concepts), np.asarray(exclude, dtype=np.int64))
    return np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))


def suppress_concepts(
    sae: TopKSAE, emb_ND: Any, concepts: Sequence[int], *, batch_size: int = 8192
) -> np.ndarray:
    """The embedding with concepts suppressed: ``decode(u, concepts zeroed) + (a - decode(u))``.

    That is ``a - sum_{c in concepts} u_c D_c``: the SAE's reconstruction loses those concepts' contributions
    and keeps its residual, so everything the concepts do not carry stays. Streams ``batch_size`` cells at a
    time (only their k selected concepts: no cells x concepts array).

    Parameters
    ----------
    sae
        The SAE trained on this embedding.
    emb_ND
        Cells x d.
    concepts
        Concept indices to suppress.
    batch_size
        Cells per block.

    Returns
    -------
    float32 cells x d.
    """
    x_ND = as_embeddings(emb_ND, d_in=sae.cfg.d_in)
    concepts = np.asarray(concepts, dtype=np.int64)
    if concepts.size and (concepts.min() < 0 or concepts.max() >= sae.cfg.n_concepts):
        raise ValueError(f"Concept indices must be in 0..{sae.cfg.n_concepts - 1}, got {concepts.tolist()}.")
    dev = sae.W_dec_CD.device
    drop_C = torch.zeros(sae.cfg.n_concepts, dtype=torch.bool, device=dev)
    drop_C[torch.as_tensor(concepts, device=dev)] = True
    out = x_ND.numpy().copy()
    with torch.no_grad():
        for i in range(0, x_ND.shape[0], batch_size):
            acts_BK, idx_BK = sae.encode_topk(x_ND[i : i + batch_size].to(dev))
            dropped_BD = sparse_decode(acts_BK * drop_C[idx_BK], idx_BK, sae.W_dec_CD)
            out[i : i + batch_size] -= dropped_BD.cpu().numpy()
    return out


def remove_batch_concepts(
    adata: ad.AnnData,
    sae: TopKSAE,
    batch_key: str,
    *,
    label_key: str | None = None,
    key_added: str = "concepts",
    **options: Any,
) -> pd.DataFrame:
    """Find the concepts that mark ``obs[batch_key]`` and write the embedding without them (scanpy style).

    Parameters
    ----------
    adata
        With the embedding and codes of :func:`corelib.tl.train_sae` (``uns[key_added]["params"]["use_rep"]``,
        ``obsm[f"X_{key_added}"]``).
    sae
        The SAE that made the codes.
    batch_key, label_key
        ``obs`` columns of the batch and (optional) cell types (the strata of :func:`batch_concepts`).
    key_added
        As in :func:`corelib.tl.train_sae`.
    options
        Passed to :func:`batch_concepts` (``statistic``, ``min_cells``, ``min_auroc``, ``n_permutations``,
        ``alpha``, ``seed``).

    Returns
    -------
    The :func:`batch_concepts` table. Writes ``obsm[f"{use_rep}_corrected"]`` (:func:`suppress_concepts`)
    and ``uns[key_added]["batch"]``: ``batch_key``, ``label_key``, ``concepts`` (suppressed), ``null_auroc``,
    ``min_auroc`` and the table.
    """
    if key_added not in adata.uns or f"X_{key_added}" not in adata.obsm:
        raise KeyError(
            f"No concepts under {key_added!r}: run cl.tl.train_sae(adata, ..., key_added={key_added!r})."
        )
    missing = [k for k in (batch_key, label_key) if k is not None and k not in adata.obs]
    if missing:
        raise KeyError(f"adata.obs has no {', '.join(map(repr, missing))}; it has {', '.join(adata.obs)}.")
    labels = None if label_key is None else adata.obs[label_key].to_numpy()
    table = batch_concepts(
        adata.obsm[f"X_{key_added}"], adata.obs[batch_key].to_numpy(), labels_N=labels, **options
    )
    concepts = np.sort(table.index[table["associated"]].to_numpy())
    use_rep = adata.uns[key_added]["params"]["use_rep"]
    adata.obsm[f"{use_rep}_corrected"] = suppress_concepts(sae, adata.obsm[use_rep], concepts)
    adata.uns[key_added]["batch"] = {
        "batch_key": batch_key,
        "label_key": label_key or "",
        "concepts": concepts,
        "null_auroc": table.attrs["null_auroc"],
        "min_auroc": table.attrs["min_auroc"],
        "table": table.set_axis(table.index.astype(str)),
    }
    return table
