"""Tests of corelib.tl.neighbors: the chunked exact kNN against a float64 brute force (scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import corelib as cl
from corelib.tl.neighbors import nearest


def brute_force(emb_ND: np.ndarray, query_idx: np.ndarray, candidate_N: np.ndarray, k: int) -> np.ndarray:
    """All float64 distances and a stable sort: ties go to the lower cell index."""
    cells = np.flatnonzero(candidate_N)
    dist = scipy.spatial.distance.cdist(
        emb_ND[query_idx].astype(np.float64), emb_ND[cells].astype(np.float64)
    )
    return cells[np.argsort(dist, axis=1, kind="stable")[:, :k]]


@pytest.fixture(scope="module")
def pbmc3k_pca():
    """PCA (20 components) of the bundled pbmc3k cells, log-normalised, on the 500 most variable genes."""
    counts = cl.datasets.load_dataset("pbmc3k").X.toarray().astype(np.float64)
    x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    x = x[:, np.argsort(-x.var(0), kind="stable")[:500]]
    x -= x.mean(0)
    _, vectors = np.linalg.eigh(x.T @ x)  # ascending eigenvalues: the last 20 are the top components
    return (x @ vectors[:, -20:]).astype(np.float32)


def test_nearest_equals_brute_force_on_pbmc3k_pca(pbmc3k_pca):
    rng = np.random.default_rng(0)
    candidate = rng.random(len(pbmc3k_pca)) < 0.7
    query = rng.choice(len(pbmc3k_pca), 40, replace=False)
    ref = brute_force(pbmc3k_pca, query, candidate, 25)
    for chunk in (None, 97, 5000):  # default, chunks smaller than k's share of cells, one chunk
        np.testing.assert_array_equal(nearest(pbmc3k_pca, query, candidate, 25, chunk_size=chunk), ref)
    got = nearest(torch.as_tensor(pbmc3k_pca), query, candidate, 25, chunk_size=300)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("seed", range(6))
def test_nearest_breaks_exact_ties_by_lower_index_across_chunks(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    # Integer points drawn from few values, repeated: many exact ties, in float32 and float64 alike.
    emb = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)[rng.integers(0, n // 4, n)]
    candidate = rng.random(n) < 0.6
    query = rng.integers(0, n, 9)
    k = int(min(candidate.sum(), 40))  # k larger than a chunk
    got = nearest(emb, query, candidate, k, chunk_size=7)
    np.testing.assert_array_equal(got, brute_force(emb, query, candidate, k))


def test_nearest_all_candidates_tied_gives_the_lowest_indices():
    emb = np.zeros((100, 4), dtype=np.float32)
    candidate = np.arange(100) % 3 == 0
    got = nearest(emb, np.array([1, 2]), candidate, 30, chunk_size=8)
    np.testing.assert_array_equal(got, np.tile(np.flatnonzero(candidate)[:30], (2, 1)))


def test_nearest_float64_input_and_large_offsets_stay_exact():
    """Far from the origin, float32 rounding of |q|^2 + |c|^2 swamps small distances: the re-rank fixes it."""
    rng = np.random.default_rng(3)
    emb = 1e4 + rng.normal(scale=1e-3, size=(300, 5))
    candidate = rng.random(300) < 0.5
    query = np.arange(10)
    got = nearest(emb, query, candidate, 4, chunk_size=32)
    np.testing.assert_array_equal(got, brute_force(emb, query, candidate, 4))


class _LargestOutput(TorchDispatchMode):
    """Records the most elements of any tensor a torch operation returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_nearest_never_builds_a_query_by_cells_matrix_nor_copies_all_candidates():
    n, d, n_query, chunk = 5000, 8, 4, 100
    rng = np.random.default_rng(0)
    emb = torch.as_tensor(rng.normal(size=(n, d)), dtype=torch.float32)  # the input, made outside the mode
    candidate = rng.random(n) < 0.9
    query = np.arange(n_query)
    with _LargestOutput() as mode:
        got = nearest(emb, query, candidate, 3, chunk_size=chunk)
    np.testing.assert_array_equal(got, brute_force(emb.numpy(), query, candidate, 3))
    # The candidate mask (n) is the largest thing: no n_query x n distances, no n_candidates x d copy.
    assert mode.largest <= n < min(n_query * n, candidate.sum() * d)


def test_default_chunks_of_a_wide_embedding_stay_within_the_block(monkeypatch):
    """Few queries (one unit's prototypes) on a wide embedding: the candidates' copy (chunk x d) is bounded too,
    not only the query x chunk distances (a 10-query search once copied every candidate of a 1M x 512 atlas)."""
    block = 2**17
    monkeypatch.setattr(cl.tl.neighbors, "BLOCK_ELEMENTS", block)
    n, d = 20_000, 64
    rng = np.random.default_rng(0)
    emb = torch.as_tensor(rng.normal(size=(n, d)), dtype=torch.float32)
    candidate, query = rng.random(n) < 0.9, np.arange(2)
    with _LargestOutput() as mode:
        got = nearest(emb, query, candidate, 3)
    np.testing.assert_array_equal(got, brute_force(emb.numpy(), query, candidate, 3))
    assert mode.largest <= block < candidate.sum() * d


def test_nearest_rejects_too_few_candidates():
    with pytest.raises(ValueError, match="at least k=3 candidates"):
        nearest(np.zeros((5, 2)), np.array([0]), np.array([1, 1, 0, 0, 0], bool), 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nearest_on_a_cuda_tensor_equals_brute_force(pbmc3k_pca):
    rng = np.random.default_rng(1)
    candidate = rng.random(len(pbmc3k_pca)) < 0.5
    query = rng.choice(len(pbmc3k_pca), 30, replace=False)
    got = nearest(torch.as_tensor(pbmc3k_pca).cuda(), query, candidate, 10, chunk_size=256)
    np.testing.assert_array_equal(got, brute_force(pbmc3k_pca, query, candidate, 10))
