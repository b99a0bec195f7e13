"""SAE metrics (R^2, dead concepts), encoding cells, and choosing an SAE from a sweep table."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from corelib.tl.sae.model import ForwardOutput, TopKSAE, as_embeddings


def _sse(a_BD: Tensor, recon_BD: Tensor) -> Tensor:
    """Sum of squared errors."""
    return (a_BD - recon_BD).pow(2).sum()


def _sst(a_BD: Tensor) -> Tensor:
    """Total sum of squares around the per-dimension mean."""
    return (a_BD - a_BD.mean(0)).pow(2).sum()


def r2_score(a_ND: Tensor, recon_ND: Tensor) -> float:
    """``R^2 = 1 - sum((a - a')^2) / sum((a - mean_per_dim(a))^2)`` (per-dimension mean, so that an uncentred embedding's offset is not
    counted as explained).

    The mean is taken per dimension: a scalar mean (as in some SAE libraries) gives a different, wrong number
    for uncentred embeddings such as scGPT's L2-normalised ones.
    """
    return float(1.0 - _sse(a_ND.double(), recon_ND.double()) / _sst(a_ND.double()))


@torch.no_grad()
def _batched(sae: TopKSAE, x_ND: Tensor, batch_size: int) -> Iterable[tuple[Tensor, ForwardOutput]]:
    """Yield (batch, forward output) over ``x_ND`` on the model's device."""
    dev = sae.W_dec_CD.device
    for i in range(0, x_ND.shape[0], batch_size):
        a_BD = x_ND[i : i + batch_size].to(dev)
        yield a_BD, sae(a_BD)


#: :func:`encode` shows a progress bar by default from this many cells on.
PROGRESS_CELLS = 100_000


@torch.no_grad()
def encode(
    sae: TopKSAE, embeddings: object, *, batch_size: int = 8192, progress: bool | None = None
) -> sp.csr_matrix:
    """Concept activations of cells, in batches, as a sparse matrix: never a dense cells x concepts array.

    Peak memory is the k kept values and indices per cell plus one batch (batch x c pre-activations).

    Parameters
    ----------
    sae
        A trained model.
    embeddings
        Cells x d.
    batch_size
        Cells per forward pass.
    progress
        Show a progress bar; default: from :data:`PROGRESS_CELLS` cells on.

    Returns
    -------
    codes (n_cells x n_concepts), float32 CSR with sorted indices and at most k stored entries per row, all
    > 0 (concepts selected by the Top-K whose ReLU gave 0 are not stored).
    """
    x_ND = as_embeddings(embeddings, d_in=sae.cfg.d_in)
    n_cells = x_ND.shape[0]
    dev = sae.W_dec_CD.device
    starts = range(0, n_cells, batch_size)
    show = n_cells >= PROGRESS_CELLS if progress is None else progress
    values, indices, row_nnz = [], [], []
    for i in tqdm(starts, total=len(starts), desc="encode", disable=not show):
        acts_BK, idx_BK = sae.encode_topk(x_ND[i : i + batch_size].to(dev))
        idx_BK, order_BK = idx_BK.sort(dim=1)
        acts_BK = acts_BK.gather(1, order_BK)
        kept_BK = acts_BK > 0
        values.append(acts_BK[kept_BK].cpu().numpy())
        indices.append(idx_BK[kept_BK].to(torch.int32).cpu().numpy())
        row_nnz.append(kept_BK.sum(1).cpu().numpy())
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_nnz or [np.zeros(0, np.int64)]))])
    data = np.concatenate(values) if values else np.zeros(0, np.float32)
    index = np.concatenate(indices) if indices else np.zeros(0, np.int32)
    return sp.csr_matrix((data, index, indptr), shape=(n_cells, sae.cfg.n_concepts))


@torch.no_grad()
def metrics(sae: TopKSAE, embeddings: object, *, batch_size: int = 8192) -> dict:
    """Reconstruction and sparsity of a model on cells, in one pass.

    Returns
    -------
    dict with ``r2`` (:func:`r2_score`, per-dimension mean), ``l0`` (mean number of non-zero concepts per
    cell), ``n_active`` (concepts that fire on at least one cell), ``dead_fraction`` (1 - n_active / c) and
    ``n_cells``.
    """
    x_ND = as_embeddings(embeddings, d_in=sae.cfg.d_in)
    n = x_ND.shape[0]
    if n < 2:
        raise ValueError(f"metrics needs at least 2 cells, got {n}.")
    return metrics_of_blocks(sae, _batched(sae, x_ND, batch_size), x_ND.double().mean(0), n)


@torch.no_grad()
def metrics_of_blocks(
    sae: TopKSAE, outputs: Iterable[tuple[Tensor, ForwardOutput]], mean_D: Tensor, n: int
) -> dict:
    """:func:`metrics` from (batch, forward output) pairs covering ``n`` cells whose per-dimension mean is
    ``mean_D`` (float64): also used for cells streamed from disk."""
    sse = sst = l0 = 0.0
    fired_C = torch.zeros(sae.cfg.n_concepts, dtype=torch.bool)
    for a_BD, out in outputs:
        sse += float(_sse(a_BD.double(), out.recon_BD.double()))
        sst += float((a_BD.double() - mean_D.to(a_BD.device)).pow(2).sum())
        nz_BK = out.top_acts_BK > 0
        l0 += float(nz_BK.sum())
        fired_C[out.top_idx_BK[nz_BK].cpu()] = True
    n_active = int(fired_C.sum())
    return {
        "r2": 1.0 - sse / sst,
        "l0": l0 / n,
        "n_active": n_active,
        "dead_fraction": 1.0 - n_active / sae.cfg.n_concepts,
        "n_cells": n,
    }


def split_metrics(
    sae: TopKSAE, x_train: Tensor, x_held: Tensor, *, measure: Callable[[TopKSAE, Any], dict] = metrics
) -> dict:
    """:func:`metrics` on training and held-out cells, keys suffixed ``_train`` / ``_heldout``; ``measure``
    replaces :func:`metrics` for other cell containers (cells on disk: ``corelib.tl.sae.data.streamed_metrics``).
    """
    out = {}
    for split, x in (("train", x_train), ("heldout", x_held)):
        m = (
            measure(sae, x)
            if len(x) > 1
            else dict.fromkeys(("r2", "l0", "n_active", "dead_fraction"), math.nan)
        )
        out.update({f"{key}_{split}": value for key, value in m.items()})
    return out


# ----------------------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------------------
def sae_name(n_concepts: int, k: int, seed: int = 0) -> str:
    """Folder name of a sweep point, e.g. ``c500_k8_s0``."""
    return f"c{n_concepts}_k{k}_s{seed}"


def grid(
    n_concepts: Sequence[int], k: Sequence[int], seeds: Sequence[int] = (0,)
) -> list[tuple[int, int, int]]:
    """Sweep points ``(n_concepts, k, seed)``: ``n_concepts`` and ``k`` paired element-wise, times ``seeds``."""
    if len(n_concepts) != len(k):
        raise ValueError(
            f"n_concepts ({len(n_concepts)} values) and k ({len(k)} values) are paired element-wise: give "
            "lists of the same length, e.g. n_concepts=[100, 250, 500, 1000], k=[2, 4, 8, 16]."
        )
    return [(int(c), int(kk), int(s)) for s in seeds for c, kk in zip(n_concepts, k, strict=True)]


def _closest_expansion(sweep_table: pd.DataFrame, expansion: float) -> pd.DataFrame:
    """The rows whose c/d is closest to ``expansion`` on a log scale."""
    dist = (np.log(sweep_table["expansion"]) - np.log(expansion)).abs().round(9)
    return sweep_table[dist == dist.min()]


def _first(rows: pd.DataFrame, keys: Sequence[str]) -> str:
    """Name of the first row after sorting by ``keys`` (``r2`` sorts by decreasing held-out R^2)."""
    order = pd.DataFrame({"k": rows["k"], "seed": rows["seed"], "r2": -rows["r2_heldout"]})
    return str(order.sort_values(list(keys), kind="stable").index[0])


def select(
    sweep_table: pd.DataFrame,
    *,
    expansion: float = 10.0,
    name: str | None = None,
    min_r2: float | None = None,
) -> dict:
    """Choose the SAE that later notebooks use, by a stated rule.

    Parameters
    ----------
    sweep_table
        Output of :func:`corelib.runs.steps.sweep`.
    expansion
        Wanted c/d: only the SAEs whose c/d is closest to it on a log scale compete.
    name
        An explicit SAE name instead (must be in the table); rule "name".
    min_r2
        Rule "min_r2": among those SAEs with k < d, the sparsest (smallest k) whose held-out R^2 reaches
        ``min_r2`` (ties: lowest seed, then best R^2); when none does, the one with the best held-out R^2, and
        ``meets_min_r2`` is False. SAEs with k >= d do not compete: with d active concepts a code can rewrite
        any cell in a basis of the embedding, so R^2 near 1 says nothing about sparse structure. None: rule
        "expansion", the lowest seed, then the best held-out R^2.

    Returns
    -------
    ``{"sae", "n_concepts", "k", "seed", "expansion", "r2_heldout", "dead_fraction_train", "rule",
    "min_r2", "meets_min_r2", "reason"}``, what ``run.path("sae_selected")`` stores; ``reason`` says in one
    sentence why this SAE was chosen.
    """
    if name is not None:
        if name not in sweep_table.index:
            raise ValueError(
                f"selected_sae={name!r} is not in the sweep; choose one of {', '.join(sweep_table.index)}."
            )
        rule, reason = "name", f"{name} was named explicitly (selected_sae)."
    else:
        rows = _closest_expansion(sweep_table, expansion)
        c_over_d = f"c/d = {float(rows['expansion'].iloc[0]):g} (closest to {expansion:g})"
        if min_r2 is None:
            rule, name = "expansion", _first(rows, ["seed", "r2"])
            reason = f"{name} has {c_over_d} (lowest seed, then best held-out R^2)."
        else:
            rule = "min_r2"
            rows = rows[rows["k"] < rows["d_in"]]
            if rows.empty:
                raise ValueError(
                    f"every SAE with {c_over_d} has k >= d = {int(sweep_table['d_in'].iloc[0])}; add points "
                    "with k < d to the k-sweep (k_sweep)."
                )
            reaching = rows[rows["r2_heldout"] >= min_r2]
            if len(reaching):
                name = _first(reaching, ["k", "seed", "r2"])
                reason = f"{name} is the sparsest SAE with {c_over_d} and k < d whose held-out R^2 reaches {min_r2:g}."
            else:
                name = _first(rows, ["r2", "seed"])
                reason = (
                    f"no SAE with {c_over_d} and k < d reaches held-out R^2 {min_r2:g}: {name} has the best held-out "
                    f"R^2 of them ({float(rows.loc[name, 'r2_heldout']):.3f})."
                )
    row = sweep_table.loc[name]
    meets = None if min_r2 is None else bool(row["r2_heldout"] >= min_r2)
    out = {"sae": str(name), **{key: int(row[key]) for key in ("n_concepts", "k", "seed")}}
    out.update({key: float(row[key]) for key in ("expansion", "r2_heldout", "dead_fraction_train")})
    min_r2 = None if min_r2 is None else float(min_r2)
    return {**out, "rule": rule, "min_r2": min_r2, "meets_min_r2": meets, "reason": reason}


def paper_table(sweep_table: pd.DataFrame, *, dataset: str, model: str) -> pd.DataFrame:
    """The sweep in the layout of the paper's Table 3: dataset, model, c, k, lr, epochs, R^2, active concepts.

    R^2 is on held-out cells; active concepts fire on at least one training cell.
    """
    return pd.DataFrame(
        {
            "Dataset": dataset,
            "Model": model,
            "c": sweep_table["n_concepts"],
            "k": sweep_table["k"],
            "seed": sweep_table["seed"],
            "lr": sweep_table["lr"],
            "Epochs": sweep_table["epochs"],
            "R2 (held-out)": sweep_table["r2_heldout"].round(3),
            "Active concepts": sweep_table["n_active_train"].astype(int),
        }
    ).reset_index(drop=True)
