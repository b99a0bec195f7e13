"""Compiled CPU kernels of an SAE step (numba): the Top-K selection and the per-cell part of the loss."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def sparse_fit_rows(  # pragma: no cover - compiled
    vals_BK: np.ndarray,
    idx_BK: np.ndarray,
    W_dec_CD: np.ndarray,
    target_BD: np.ndarray,
    x_BD: np.ndarray,
    weight: float,
    g_enc_CD: np.ndarray,
    g_benc_C: np.ndarray,
    g_dec_CD: np.ndarray,
    decoded_BD: np.ndarray,
    g_err_BD: np.ndarray,
) -> float:
    """``L = ||sum_j ReLU(v_j) D[idx_j] - target||^2 / sst(target)`` of a batch in one pass over its cells.

    Writes the decode and ``weight * dL/d(decode)`` into ``decoded_BD`` and ``g_err_BD`` and adds ``weight``
    times the gradients with respect to the encoder columns (``g_enc_CD``, kept transposed), encoder bias and
    dictionary rows of the selected concepts; a concept selected at ``v <= 0`` carries no gradient. Sums of
    squares are accumulated in float64. Returns ``L``.
    """
    n_rows, k = vals_BK.shape
    d = W_dec_CD.shape[1]
    mean_D = np.zeros(d)
    for b in range(n_rows):
        for i in range(d):
            mean_D[i] += target_BD[b, i]
    mean_D /= max(n_rows, 1)
    sst = 0.0
    for b in range(n_rows):
        for i in range(d):
            dev = target_BD[b, i] - mean_D[i]
            sst += dev * dev
    sst = max(sst, 1e-12)
    scale = 2.0 * weight / sst
    sq_err = 0.0
    for b in range(n_rows):
        for i in range(d):
            decoded_BD[b, i] = 0.0
        for j in range(k):
            act = vals_BK[b, j]
            if act > 0:
                row = idx_BK[b, j]
                for i in range(d):
                    decoded_BD[b, i] += act * W_dec_CD[row, i]
        for i in range(d):
            err = decoded_BD[b, i] - target_BD[b, i]
            sq_err += err * err
            g_err_BD[b, i] = err * scale
        for j in range(k):
            act = vals_BK[b, j]
            if act <= 0:
                continue
            row = idx_BK[b, j]
            g_pre = W_dec_CD[row, 0] * g_err_BD[b, 0]
            for i in range(1, d):
                g_pre += W_dec_CD[row, i] * g_err_BD[b, i]
            g_benc_C[row] += g_pre
            for i in range(d):
                g_enc_CD[row, i] += g_pre * x_BD[b, i]
                g_dec_CD[row, i] += act * g_err_BD[b, i]
    return sq_err / sst


@numba.njit(nogil=True, cache=True)
def threshold_topk_rows(x_BC: np.ndarray, k: int, idx_BK: np.ndarray) -> None:  # pragma: no cover - compiled
    """Write the column indices of the k largest values of each row of ``x_BC`` into ``idx_BK``.

    Per row: the maximum of each block of 16 columns; the k-th largest of these maxima is a threshold t
    (k blocks hold a value >= t, so the k-th largest value is >= t); only blocks whose maximum reaches t are
    read again, their values >= t inserted into a descending array of k.
    """
    n_rows, n_cols = x_BC.shape
    n_blocks = (n_cols + 15) // 16
    block_max = np.empty(n_blocks, x_BC.dtype)
    top_v = np.empty(k, x_BC.dtype)
    top_i = np.empty(k, np.int64)
    for b in range(n_rows):
        row = x_BC[b]
        for g in range(n_blocks):
            m = row[16 * g]
            for j in range(16 * g + 1, min(16 * g + 16, n_cols)):
                m = max(m, row[j])
            block_max[g] = m
        n = 0
        for g in range(n_blocks):
            n = _insert(top_v, top_i, n, block_max[g], g)
        threshold = top_v[k - 1] if n == k else -np.inf
        n = 0
        for g in range(n_blocks):
            if block_max[g] < threshold:
                continue
            for j in range(16 * g, min(16 * g + 16, n_cols)):
                if row[j] >= threshold:
                    n = _insert(top_v, top_i, n, row[j], j)
        idx_BK[b] = top_i


@numba.njit(inline="always")
def _insert(
    top_v: np.ndarray, top_i: np.ndarray, n: int, value: float, index: int
) -> int:  # pragma: no cover
    """Insert ``(value, index)`` into the descending ``top_v[:n]`` (capacity k: the smallest drops out when
    full and ``value`` is larger); returns the new fill."""
    k = len(top_v)
    if n == k and value <= top_v[k - 1]:
        return n
    pos = n if n < k else k - 1
    while pos > 0 and top_v[pos - 1] < value:
        top_v[pos], top_i[pos] = top_v[pos - 1], top_i[pos - 1]
        pos -= 1
    top_v[pos], top_i[pos] = value, index
    return min(n + 1, k)
