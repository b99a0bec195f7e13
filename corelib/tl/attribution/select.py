"""Which cells to attribute: prototypes (most active cells) and counterfactuals (Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

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
    return np.argsort(-np.asarray(acts_N), kind="stable")[:n_prototypes]


def counterfactuals(
    emb_ND: np.ndarray | torch.Tensor,
    prototype_idx: np.ndarray,
    inactive_N: np.ndarray,
    n_counterfactuals: int = 3,
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

    Returns
    -------
    Cell indices (n_p x n_c), nearest first.
    """
    emb = torch.as_tensor(emb_ND)
    candidates = np.flatnonzero(inactive_N)
    dist_PK = torch.cdist(emb[prototype_idx].double(), emb[candidates].double())
    order_PK = np.argsort(dist_PK.cpu().numpy(), axis=1, kind="stable")[:, :n_counterfactuals]
    return candidates[order_PK]


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
    acts_NU: np.ndarray,
    emb_ND: np.ndarray,
    inactive_NU: np.ndarray,
    *,
    units: Sequence[int] | None = None,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    exclude_NU: np.ndarray | None = None,
    progress: bool = True,
) -> Selection:
    """Choose prototypes (top activations) and counterfactuals (Eq. 1) for every unit, or skip it.

    A unit is skipped, with the reason recorded, when fewer cells activate it than ``n_prototypes`` (a dead
    or rare concept) or fewer cells do not activate it than ``n_counterfactuals`` (a concept active
    everywhere).

    Parameters
    ----------
    acts_NU
        Unit activations of all cells (n_cells x n_units).
    emb_ND
        Embeddings of all cells (n_cells x d), for the distances of Eq. 1.
    inactive_NU
        Boolean (n_cells x n_units): cells that do not activate each unit (concepts: activation exactly 0).
    units
        Unit ids, one per column (default 0..n_units-1), used in the status table.
    n_prototypes, n_counterfactuals
        N_p and N_c.
    exclude_NU
        Boolean, same shape: active cells that may not be prototypes of each unit (e.g. the prototypes of an
        attribution, to pick held-out ones); the count of active cells leaves them out.
    progress
        Show a progress bar.
    """
    n_cells, n_units = acts_NU.shape
    exclude_NU = np.zeros(acts_NU.shape, dtype=bool) if exclude_NU is None else np.asarray(exclude_NU, bool)
    if emb_ND.shape[0] != n_cells or not inactive_NU.shape == exclude_NU.shape == acts_NU.shape:
        raise ValueError(
            f"acts ({acts_NU.shape}), emb ({emb_ND.shape}), inactive ({inactive_NU.shape}) and exclude "
            f"({exclude_NU.shape}) must describe the same cells in the same order; pass arrays computed from "
            "the same AnnData."
        )
    if n_prototypes < 1 or n_counterfactuals < 1:
        raise ValueError(
            f"n_prototypes and n_counterfactuals must be >= 1, got {n_prototypes}, {n_counterfactuals}."
        )
    units = np.arange(n_units) if units is None else np.asarray(units)
    protos = np.full((n_units, n_prototypes), -1)
    cfs = np.full((n_units, n_prototypes, n_counterfactuals), -1)
    rows = []
    for u in tqdm(range(n_units), desc="prototypes", disable=not progress):
        inactive, excluded = inactive_NU[:, u], exclude_NU[:, u] & ~inactive_NU[:, u]
        n_active, n_inactive = int((~inactive).sum() - excluded.sum()), int(inactive.sum())
        reason = ""
        if n_active < n_prototypes:
            left = f" left after excluding {int(excluded.sum())}" if excluded.any() else ""
            reason = f"{n_active} active cells{left}, fewer than n_prototypes={n_prototypes}"
        elif n_inactive < n_counterfactuals:
            reason = f"{n_inactive} non-activating cells, fewer than n_counterfactuals={n_counterfactuals}"
        else:
            protos[u] = prototypes(np.where(inactive | excluded, -np.inf, acts_NU[:, u]), n_prototypes)
            cfs[u] = counterfactuals(emb_ND, protos[u], inactive, n_counterfactuals)
        rows.append((units[u], SKIPPED if reason else ATTRIBUTED, reason, n_active, n_inactive))
    status = pd.DataFrame(rows, columns=["unit", "status", "reason", "n_active", "n_inactive"]).set_index(
        "unit"
    )
    return Selection(protos, cfs, status)
