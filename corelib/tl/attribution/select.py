"""Which cells to attribute: prototypes (most active cells) and counterfactuals (Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from corelib.tl.neighbors import nearest
from corelib.tl.units import unit_activation

ATTRIBUTED = "attributed"


SKIPPED = "skipped"


# --------------------------------------------------------------------------------------------------------------
# Prototypes and counterfactuals (Eq. 1)
# --------------------------------------------------------------------------------------------------------------
def prototypes(acts_N: np.ndarray, n_prototypes: int = 10) -> np.ndarray:
    """The ``n_prototypes`` cells with the highest activation (ties: lower cell index first).

    Parameters
    ----------
    acts_N
        Activation of one unit in every cell (n_cells,).
    n_prototypes
        N_p.

    Returns
    -------
    Cell indices (n_p,), highest activation first.
    """
    neg_N = -np.asarray(acts_N)
    if n_prototypes >= len(neg_N):
        return np.argsort(neg_N, kind="stable")
    # Partial selection, O(n_cells): every cell tied with the n_p-th value, then a stable sort of those few.
    cut = np.partition(neg_N, n_prototypes - 1)[n_prototypes - 1]
    short = np.flatnonzero(neg_N <= cut)
    return short[np.argsort(neg_N[short], kind="stable")[:n_prototypes]]


def counterfactuals(
    emb_ND: np.ndarray | torch.Tensor,
    prototype_idx: np.ndarray,
    inactive_N: np.ndarray,
    n_counterfactuals: int = 3,
    *,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Counterfactuals of each prototype: its nearest non-activating cells in embedding space (paper Eq. 1).

    ``x_c = argmin_j { ||f(x_p) - f(x_j)||_2 : (psi o f)_i(x_j) = 0 }``, and the ``N_c`` nearest for robustness
    (ties: lower cell index first).

    Parameters
    ----------
    emb_ND
        Embeddings f(x) of all cells (n_cells x d).
    prototype_idx
        Prototype cell indices (n_p,).
    inactive_N
        Boolean (n_cells,): cells that do not activate the unit.
    n_counterfactuals
        N_c.
    chunk_size
        Cells per chunk of the search (:func:`corelib.tl.neighbors.nearest`): memory is O(n_p x chunk_size).

    Returns
    -------
    Cell indices (n_p x n_c), nearest first; the same as a float64 brute force (:func:`nearest`).
    """
    return nearest(emb_ND, prototype_idx, inactive_N, n_counterfactuals, chunk_size=chunk_size)


def unit_column(
    acts_NU: np.ndarray | sp.spmatrix, inactive_NU: np.ndarray | None, u: int
) -> tuple[np.ndarray, np.ndarray]:
    """One unit's activations (n_cells,) and non-activating cells (n_cells, boolean), never densifying N x U.

    Parameters
    ----------
    acts_NU
        Dense activations, or scipy sparse codes in CSC form (convert once with ``.tocsc()``).
    inactive_NU
        Boolean (n_cells x n_units), or None: the cells whose activation is exactly 0 (a sparse matrix's cells
        without a stored nonzero).
    u
        Column.
    """
    acts_N = unit_activation(acts_NU, u)
    return acts_N, (acts_N == 0 if inactive_NU is None else np.asarray(inactive_NU[:, u], dtype=bool))


def as_columns(matrix_NU: np.ndarray | sp.spmatrix) -> np.ndarray | sp.csc_matrix:
    """A sparse matrix as CSC (fast columns, converted once); a dense one unchanged."""
    return matrix_NU.tocsc() if sp.issparse(matrix_NU) else matrix_NU


@dataclass(frozen=True)
class Selection:
    """Prototypes and counterfactuals of every unit, and which units were skipped and why.

    Attributes
    ----------
    prototypes
        (n_units x n_p) cell indices; -1 for skipped units.
    counterfactuals
        (n_units x n_p x n_c) cell indices; -1 for skipped units.
    status
        DataFrame indexed by unit id: ``status`` ("attributed" / "skipped"), ``reason``, ``n_active``,
        ``n_inactive``.
    """

    prototypes: np.ndarray
    counterfactuals: np.ndarray
    status: pd.DataFrame


def select_cells(
    acts_NU: np.ndarray | sp.spmatrix,
    emb_ND: np.ndarray | torch.Tensor,
    inactive_NU: np.ndarray | None = None,
    *,
    units: Sequence[int] | None = None,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    exclude_NU: np.ndarray | sp.spmatrix | None = None,
    progress: bool = True,
) -> Selection:
    """Choose prototypes (top activations) and counterfactuals (Eq. 1) for every unit, or skip it.

    A unit is skipped, with the reason recorded, when fewer cells activate it than ``n_prototypes`` (a dead
    or rare concept) or fewer cells do not activate it than ``n_counterfactuals`` (a concept active
    everywhere). Works one unit at a time: a sparse ``acts_NU`` is never densified.

    Parameters
    ----------
    acts_NU
        Unit activations of all cells (n_cells x n_units), dense or scipy sparse (CSR or CSC).
    emb_ND
        Embeddings of all cells (n_cells x d), for the distances of Eq. 1.
    inactive_NU
        Boolean (n_cells x n_units): cells that do not activate each unit (neurons:
        ``corelib.tl.units.neuron_inactive``); default: activation exactly 0 (concepts).
    units
        Unit ids, one per column (default 0..n_units-1), used in the status table.
    n_prototypes, n_counterfactuals
        N_p and N_c.
    exclude_NU
        Boolean, same shape, dense or sparse: active cells that may not be prototypes of each unit (e.g. the
        prototypes of an attribution, to pick held-out ones); the count of active cells leaves them out.
    progress
        Show a progress bar.
    """
    n_cells, n_units = acts_NU.shape
    shapes = {"inactive": inactive_NU, "exclude": exclude_NU}
    shapes = {name: m.shape for name, m in shapes.items() if m is not None}
    if emb_ND.shape[0] != n_cells or any(shape != acts_NU.shape for shape in shapes.values()):
        raise ValueError(
            f"acts ({acts_NU.shape}), emb ({tuple(emb_ND.shape)}) and {shapes} must describe the same cells "
            "in the same order; pass arrays computed from the same AnnData."
        )
    if n_prototypes < 1 or n_counterfactuals < 1:
        raise ValueError(
            f"n_prototypes and n_counterfactuals must be >= 1, got {n_prototypes}, {n_counterfactuals}."
        )
    acts_NU, exclude_NU = as_columns(acts_NU), None if exclude_NU is None else as_columns(exclude_NU)
    units = np.arange(n_units) if units is None else np.asarray(units)
    protos = np.full((n_units, n_prototypes), -1)
    cfs = np.full((n_units, n_prototypes, n_counterfactuals), -1)
    rows = []
    for u in tqdm(range(n_units), desc="prototypes", disable=not progress):
        acts_N, inactive = unit_column(acts_NU, inactive_NU, u)
        excluded = np.zeros(n_cells, bool) if exclude_NU is None else unit_column(exclude_NU, None, u)[0]
        excluded = excluded.astype(bool) & ~inactive
        n_active, n_inactive = int((~inactive).sum() - excluded.sum()), int(inactive.sum())
        reason = ""
        if n_active < n_prototypes:
            left = f" left after excluding {int(excluded.sum())}" if excluded.any() else ""
            reason = f"{n_active} active cells{left}, fewer than n_prototypes={n_prototypes}"
        elif n_inactive < n_counterfactuals:
            reason = f"{n_inactive} non-activating cells, fewer than n_counterfactuals={n_counterfactuals}"
        else:
            protos[u] = prototypes(np.where(inactive | excluded, -np.inf, acts_N), n_prototypes)
            cfs[u] = counterfactuals(emb_ND, protos[u], inactive, n_counterfactuals)
        rows.append((units[u], SKIPPED if reason else ATTRIBUTED, reason, n_active, n_inactive))
    status = pd.DataFrame(rows, columns=["unit", "status", "reason", "n_active", "n_inactive"]).set_index(
        "unit"
    )
    return Selection(protos, cfs, status)
