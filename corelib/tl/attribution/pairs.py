"""Eq. 2 over many (prototype, counterfactual) pairs: each distinct perturbed cell evaluated once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from corelib.tl.attribution.perturb import PerturbationModel


class _Uses(NamedTuple):
    """Who uses each distinct (prototype, counterfactual) pair, grouped by pair: uses ``ptr[j]:ptr[j + 1]``.

    Attributes
    ----------
    ptr_J
        (pairs + 1,) offsets.
    unit_V, proto_V, cf_V
        Where each use's scores go: unit, prototype rank, counterfactual rank.
    col_V
        Output column of the model for each use.
    """

    ptr_J: torch.Tensor
    unit_V: torch.Tensor
    proto_V: torch.Tensor
    cf_V: torch.Tensor
    col_V: torch.Tensor


def _pair_scores(
    model: PerturbationModel,
    base_QU: torch.Tensor,
    x_QM: torch.Tensor,
    proto_J: np.ndarray,
    cf_JM: Callable[[torch.Tensor], torch.Tensor],
    uses: _Uses,
    shape: tuple[int, int, int],
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """Eq. 2 for every gene that differs in each (prototype, counterfactual) pair, for every use of the pair.

    Each distinct perturbed cell (prototype, gene, counterfactual value) is evaluated once, however many
    counterfactuals or units share it, and only the output entries its uses read (``model.entries``).

    Parameters
    ----------
    proto_J
        Prototype slot (row of ``x_QM``) of each pair, sorted: a prototype's pairs are evaluated together.
    cf_JM
        Function of pair indices -> their counterfactual cells (len x m).
    shape
        (units, n_p, n_c) of the result.

    Returns
    -------
    Scores (units x n_p x n_c x m); genes equal in a pair are exactly 0.
    """
    n_genes, dev = x_QM.shape[1], x_QM.device
    scores = torch.zeros(*shape, n_genes, dtype=base_QU.dtype, device=dev)
    with tqdm(total=len(proto_J), desc="occlusion", unit="pair", disable=not progress) as bar:
        for chunk in _prototype_chunks(proto_J, max(1, 64 * batch_size // n_genes)):
            pairs = torch.arange(chunk.start, chunk.stop, device=dev)
            slot_J = torch.as_tensor(proto_J[chunk], device=dev)
            x_cf = cf_JM(pairs)
            local_R, gene_R = torch.nonzero(x_QM[slot_J] != x_cf, as_tuple=True)
            bar.update(len(pairs))
            if not len(local_R):
                continue
            slot_R, value_R = slot_J[local_R], x_cf[local_R, gene_R]
            cell_R, first_B = _distinct(slot_R * n_genes + gene_R, value_R)
            row_E, use_E = _expand_uses(pairs[local_R], uses.ptr_J)
            cell_E, col_E = cell_R[row_E], uses.col_V[use_E]
            out_E = _entries_batched(
                model, slot_R[first_B], gene_R[first_B], value_R[first_B], cell_E, col_E, batch_size
            )
            target = (uses.unit_V[use_E], uses.proto_V[use_E], uses.cf_V[use_E], gene_R[row_E])
            scores[target] = base_QU[slot_R[row_E], col_E] - out_E
    return scores


def _prototype_chunks(proto_J: np.ndarray, size: int) -> Iterator[slice]:
    """Runs of about ``size`` consecutive pairs (sorted by prototype) that keep each prototype's pairs together."""
    edges = np.append(np.flatnonzero(np.diff(proto_J, prepend=-1)), len(proto_J))
    start = 0
    while start < len(proto_J):
        fits = edges[(edges > start) & (edges <= start + size)]
        stop = int(fits[-1]) if len(fits) else int(edges[edges > start][0])
        yield slice(start, stop)
        start = stop


def _distinct(key_R: torch.Tensor, value_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct (key, value) rows: the distinct row of each row (r,) and the first row of each distinct one."""
    order = torch.argsort(value_R, stable=True)
    order = order[torch.argsort(key_R[order], stable=True)]
    key, value = key_R[order], value_R[order]
    new = torch.ones_like(key, dtype=torch.bool)
    new[1:] = (key[1:] != key[:-1]) | (value[1:] != value[:-1])
    distinct_R = torch.empty_like(key)
    distinct_R[order] = torch.cumsum(new, 0) - 1
    return distinct_R, order[new]


def _expand_uses(pair_R: torch.Tensor, ptr_J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (row, use) of rows whose pair has several uses (most pairs have one): row and use indices."""
    first_R, count_R = ptr_J[pair_R], ptr_J[pair_R + 1] - ptr_J[pair_R]
    rows = [torch.nonzero(count_R > extra).squeeze(1) for extra in range(int(count_R.max()))]
    return torch.cat(rows), torch.cat([first_R[r] + extra for extra, r in enumerate(rows)])


def _entries_batched(
    model: PerturbationModel,
    slot_B: torch.Tensor,
    gene_B: torch.Tensor,
    value_B: torch.Tensor,
    cell_E: torch.Tensor,
    col_E: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """``model.entries`` over ``batch_size`` perturbed cells at a time."""
    order = torch.argsort(cell_E)
    starts = torch.arange(0, len(slot_B) + batch_size, batch_size, device=cell_E.device)
    bounds = torch.searchsorted(cell_E[order], starts).tolist()
    out_E = torch.empty(len(cell_E), dtype=model.dtype, device=cell_E.device)
    for b, start in enumerate(starts[:-1].tolist()):
        e = order[bounds[b] : bounds[b + 1]]
        cells = slice(start, start + batch_size)
        out_E[e] = model.entries(slot_B[cells], gene_B[cells], value_B[cells], cell_E[e] - start, col_E[e])
    return out_E
