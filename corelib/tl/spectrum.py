"""How many directions an embedding uses: the variance spectrum of its cells (notebook 07 reads the random
encoder's reconstruction against it)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def variance_shares(emb_ND: np.ndarray) -> np.ndarray:
    """(d,) the share of the cells' total variance along each principal direction, largest first."""
    centred_ND = np.asarray(emb_ND, dtype=np.float64) - np.mean(emb_ND, axis=0)
    eig_D = np.clip(np.linalg.eigvalsh(centred_ND.T @ centred_ND)[::-1], 0.0, None)
    return eig_D / eig_D.sum()


def effective_rank(emb_ND: np.ndarray) -> float:
    """The participation ratio of the variance spectrum, ``(sum l)^2 / sum l^2``: d when the cells spread
    equally along d directions, 1 when they lie on a line."""
    shares_D = variance_shares(emb_ND)
    return float(1.0 / np.sum(shares_D**2))


def spectrum_table(embeddings: Mapping[str, np.ndarray], top: int = 10) -> pd.DataFrame:
    """One row per embedding: its dimension, :func:`effective_rank`, and the share of variance in its first
    principal direction and its first ``top`` ones."""
    rows = {}
    for name, emb_ND in embeddings.items():
        shares_D = variance_shares(emb_ND)
        rows[name] = {
            "dim": len(shares_D),
            "effective_rank": effective_rank(emb_ND),
            "top1_share": float(shares_D[0]),
            f"top{top}_share": float(shares_D[:top].sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("embedding")
