"""Seeded cell samples for the steps that do not scale to every cell of an atlas (display, baselines).

A sample is always stated where it is used (printed, and recorded next to the result): nothing is subsampled in
silence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def subsample_cells(n_cells: int, max_cells: int | None, *, seed: int = 0, labels: Any = None) -> np.ndarray:
    """Indices (sorted) of at most ``max_cells`` of ``n_cells`` cells, seeded, stratified by ``labels``.

    Parameters
    ----------
    n_cells
        Number of cells.
    max_cells
        Sample size; None, or ``n_cells <= max_cells``: every cell (``arange(n_cells)``).
    seed
        Seed of the draw.
    labels
        Optional per-cell labels (``n_cells``): each label keeps its share of the cells (proportional
        allocation, remainders to the largest fractional parts, at least one cell per label); None: uniform.

    Returns
    -------
    Sorted ``int64`` indices.
    """
    if max_cells is None or n_cells <= max_cells:
        return np.arange(n_cells)
    if max_cells < 1:
        raise ValueError(f"max_cells must be a positive number of cells or None, got {max_cells}.")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n_cells, size=max_cells, replace=False))
    codes_N = pd.factorize(np.asarray(labels), use_na_sentinel=False)[0]
    if len(codes_N) != n_cells:
        raise ValueError(f"labels has {len(codes_N)} entries for {n_cells} cells.")
    sizes_L = np.bincount(codes_N)
    quota_L = _allocate(sizes_L, max_cells)
    order_N = rng.permutation(n_cells)
    ranked_N = order_N[np.argsort(codes_N[order_N], kind="stable")]  # per label, a random order of its cells
    starts_L = np.concatenate([[0], np.cumsum(sizes_L)[:-1]])
    return np.sort(np.concatenate([ranked_N[s : s + q] for s, q in zip(starts_L, quota_L, strict=True)]))


def sample_obs(adata: Any, max_cells: int | None, *, seed: int = 0, stratify_key: str | None = None) -> Any:
    """``adata`` itself, or a view of a seeded sample of ``max_cells`` of its cells (:func:`subsample_cells`).

    Parameters
    ----------
    adata
        Cells x genes.
    max_cells
        Sample size; None, or at most ``max_cells`` cells: ``adata`` itself.
    seed
        Seed of the draw.
    stratify_key
        ``obs`` column whose labels keep their share of the cells; None: uniform.
    """
    labels = adata.obs[stratify_key].to_numpy() if stratify_key else None
    cells = subsample_cells(adata.n_obs, max_cells, seed=seed, labels=labels)
    return adata if len(cells) == adata.n_obs else adata[cells]


def _allocate(sizes_L: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` cells over labels in proportion to ``sizes_L`` (largest remainders), at least one each."""
    exact_L = sizes_L * total / sizes_L.sum()
    quota_L = np.maximum(np.floor(exact_L).astype(np.int64), 1)
    left = total - int(quota_L.sum())
    if left > 0:
        quota_L[np.argsort(-(exact_L - np.floor(exact_L)), kind="stable")[:left]] += 1
    return np.minimum(quota_L, sizes_L)


def describe_sample(
    n_shown: int, n_cells: int, max_cells: int | None, seed: int, stratified_by: str | None
) -> str:
    """One sentence saying which cells a step used (every cell, or the seeded sample)."""
    if n_shown == n_cells:
        return f"all {n_cells:,} cells"
    by = f", stratified by {stratified_by!r}" if stratified_by else ", uniform"
    return f"a seeded sample of {n_shown:,} of the {n_cells:,} cells (max_cells={max_cells}, seed={seed}{by})"
