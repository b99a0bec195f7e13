"""Deletion curves: how fast a unit's activation falls as its genes are deleted, per gene order (appendix C)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats
import torch
from tqdm.auto import tqdm

from corelib.tl.attribution import (
    ATTRIBUTED,
    Attribution,
    PerturbationModel,
    Selection,
    dense_rows,
    select_cells,
)
from corelib.tl.attribution.select import as_columns

CURVE_COLUMNS = ["unit", "order", "step", "activation", "std", "n_genes"]


def attribution_orders(attr: Attribution) -> dict[int, np.ndarray]:
    """Gene indices of each attributed unit, highest attribution score first (C_i of Eq. 3)."""
    return {
        int(u): np.argsort(-attr.scores[:, j], kind="stable")
        for j, u in enumerate(attr.units)
        if attr.attributed[j]
    }


def deg_orders(attr: Attribution, deg: pd.DataFrame) -> dict[int, np.ndarray]:
    """Gene indices of each attributed unit in DEG order, from the long table of :func:`deg_units`."""
    position = {g: i for i, g in enumerate(attr.genes)}
    by_unit = {int(u): t.sort_values("rank")["gene"] for u, t in deg.groupby("unit")}
    return {
        int(u): np.array([position[g] for g in by_unit.get(int(u), [])], dtype=np.int64)
        for j, u in enumerate(attr.units)
        if attr.attributed[j]
    }


def random_orders(attr: Attribution, *, seed: int = 0) -> dict[int, np.ndarray]:
    """A seeded random gene order per attributed unit: the null of the deletion curves.

    Each unit's permutation depends on ``seed`` and the unit id only, not on which other units are attributed.
    """
    return {
        int(u): np.random.default_rng([seed, int(u)]).permutation(len(attr.genes))
        for j, u in enumerate(attr.units)
        if attr.attributed[j]
    }


# --------------------------------------------------------------------------------------------------------------
# Deletion curves
# --------------------------------------------------------------------------------------------------------------
def held_out_pairs(
    attr: Attribution,
    acts_NU: np.ndarray | sp.spmatrix,
    emb_ND: np.ndarray | torch.Tensor,
    inactive_NU: np.ndarray | None = None,
    *,
    progress: bool = True,
) -> Selection:
    """(Prototype, counterfactual) pairs that the attribution did not use, to measure deletion curves out of sample.

    For every attributed unit, the next ``N_p`` most active cells after the attribution's own prototypes, and
    the ``N_c`` nearest non-activating cells of each (Eq. 1, as :func:`corelib.tl.attribution.select_cells`).
    A counterfactual may also be one of the attribution's: the nearest inactive cells of neighbouring
    prototypes often coincide.

    Parameters
    ----------
    attr
        The attribution (its prototypes are excluded; ``N_p`` and ``N_c`` are its own).
    acts_NU, emb_ND, inactive_NU
        Activations of all units (column = unit id; dense or scipy sparse), embeddings and non-activating
        cells (default: activation exactly 0), as given to the attribution.

    Returns
    -------
    Selection over the attributed units; a unit with fewer than ``N_p`` active cells besides the
    attribution's prototypes is skipped with the reason.
    """
    units = attr.units[attr.attributed].astype(np.int64)  # no unit attributed: an empty float array
    rows = np.flatnonzero(attr.attributed)
    _, n_p, n_c = attr.counterfactuals.shape
    protos_UP = attr.prototypes[rows]
    columns_UP = np.broadcast_to(np.arange(len(units))[:, None], protos_UP.shape)
    exclude_NU = sp.csc_matrix(
        (np.ones(protos_UP.size, bool), (protos_UP.ravel(), columns_UP.ravel())),
        shape=(len(emb_ND), len(units)),
    )
    return select_cells(
        as_columns(acts_NU)[:, units],
        emb_ND,
        None if inactive_NU is None else inactive_NU[:, units],
        units=units,
        n_prototypes=n_p,
        n_counterfactuals=n_c,
        exclude_NU=exclude_NU,
        progress=progress,
    )


def deletion_curves(
    model: PerturbationModel,
    X_NM,
    pairs: Selection | Attribution,
    orders: Mapping[str, Mapping[int, np.ndarray]],
    *,
    n_steps: int = 50,
    batch_size: int = 4096,
    progress: bool = True,
) -> pd.DataFrame:
    """Deletion curves of every attributed unit for each gene order (paper appendix C, Fig. 8).

    Parameters
    ----------
    model
        ``corelib.tl.attribution.perturbation_model(encoder, readout)`` whose output columns are the unit ids.
    X_NM
        Raw counts of all cells (encoder gene order).
    pairs
        Prototypes and counterfactuals to perturb, with a status table indexed by unit id: an Attribution (the
        pairs it was computed from: in-sample) or :func:`held_out_pairs`.
    orders
        Order name (e.g. "attribution", "deg") -> unit id -> gene indices, most important first.
    n_steps
        Genes deleted (the curve has ``n_steps + 1`` points, step 0 = the prototype).
    batch_size
        Perturbed cells per forward pass.
    progress
        Show a progress bar.

    Returns
    -------
    Long DataFrame: ``unit``, ``order``, ``step``, ``activation`` (mean over the N_p x N_c pairs of the
    activation divided by the prototype's), ``std`` (over pairs), ``n_genes`` (genes available in the order);
    no rows when no unit has pairs.
    """
    units = pairs.status.index.to_numpy()
    keep = np.flatnonzero(pairs.status["status"].to_numpy() == ATTRIBUTED)
    if not len(keep):
        return pd.DataFrame(columns=CURVE_COLUMNS)
    _, n_p, n_c = pairs.counterfactuals.shape
    proto_cells, proto_slot = np.unique(pairs.prototypes[keep], return_inverse=True)
    proto_slot = proto_slot.reshape(len(keep), n_p)
    # An empty order (no DEG gene) deletes nothing: its curve is 1 by construction and is not computed.
    runs = [(name, j) for name in orders for j in keep if len(orders[name][int(units[j])])]
    per_batch = max(1, batch_size // ((n_steps + 1) * n_p * n_c))
    curves_PS = {job: np.ones((n_p * n_c, n_steps + 1), dtype=np.float32) for job in product(orders, keep)}
    with torch.no_grad():
        base_QU = model.prepare(
            torch.as_tensor(dense_rows(X_NM, proto_cells), device=model.device, dtype=model.dtype)
        )
        for start in tqdm(range(0, len(runs), per_batch), desc="deletion curves", disable=not progress):
            batch = runs[start : start + per_batch]
            genes_RK, values_RK, slot_R, unit_R = [], [], [], []
            for name, j in batch:
                k = np.searchsorted(keep, j)
                order = np.full(n_steps, -1, dtype=np.int64)
                chosen = np.asarray(orders[name][int(units[j])])[:n_steps]
                order[: len(chosen)] = chosen
                cf_PCM = dense_rows(X_NM, pairs.counterfactuals[j].ravel())
                genes_RK.append(np.broadcast_to(order, (n_p * n_c, n_steps)))
                values_RK.append(cf_PCM[:, order.clip(0)])
                slot_R.append(np.repeat(proto_slot[k], n_c))
                unit_R.append(np.full(n_p * n_c, units[j]))
            t = {
                k: torch.as_tensor(np.concatenate(v), device=model.device)
                for k, v in dict(genes=genes_RK, values=values_RK, slot=slot_R, unit=unit_R).items()
            }
            out_RSU = model.prefixes(t["slot"], t["genes"], t["values"].to(model.dtype))
            act_RS = (
                out_RSU[torch.arange(len(t["unit"])), :, t["unit"]] / base_QU[t["slot"], t["unit"]][:, None]
            )
            act_BPS = act_RS.reshape(len(batch), n_p * n_c, n_steps + 1).cpu().numpy()
            curves_PS.update(zip(batch, act_BPS, strict=True))
    return pd.DataFrame(
        [
            (units[j], name, step, mean, std, min(n_steps, len(orders[name][int(units[j])])))
            for (name, j), a_PS in curves_PS.items()
            for step, mean, std in zip(range(n_steps + 1), a_PS.mean(0), a_PS.std(0), strict=True)
        ],
        columns=CURVE_COLUMNS,
    )


def deletion_auc(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each deletion curve, normalised by the number of steps (1 = no effect, lower = faster fall).

    Returns
    -------
    DataFrame indexed by unit, one column per order.
    """

    def area(curve: pd.DataFrame) -> float:
        y = curve.sort_values("step")["activation"].to_numpy()
        return float(np.trapezoid(y) / (len(y) - 1))

    return curves.groupby(["unit", "order"]).apply(area, include_groups=False).unstack("order")


def deletion_table(
    model: PerturbationModel,
    X_NM,
    pair_sets: Mapping[str, Selection | Attribution],
    orders: Mapping[str, Mapping[int, np.ndarray]],
    **options,
) -> pd.DataFrame:
    """:func:`deletion_curves` of several sets of pairs (e.g. "held-out", "in-sample") as one table.

    Returns
    -------
    The curves of each set with a ``pairs`` column naming it, in the order of ``pair_sets``.
    """
    return pd.concat(
        [
            deletion_curves(model, X_NM, pairs, orders, **options).assign(pairs=name)
            for name, pairs in pair_sets.items()
        ],
        ignore_index=True,
    )


def compare_auc(
    curves: pd.DataFrame, first: str = "attribution", second: str = "deg", *, min_genes: int = 0
) -> pd.Series:
    """Does the ``first`` order's deletion curve fall faster than the ``second``'s? (paper appendix C claim)

    A unit whose order has no gene at all (no DEG gene passes the cut-off) has a curve flat at 1 by
    construction: it is counted apart (``n_empty``) and never compared.

    Parameters
    ----------
    curves
        From :func:`deletion_curves` (one set of pairs).
    first, second
        Order names.
    min_genes
        Keep only units whose orders both have at least this many genes. A unit with few DEG genes has a DEG
        curve that stops falling early, which favours attribution; ``min_genes=n_steps`` compares full-length
        curves only.

    Returns
    -------
    Series: ``n_units`` compared, ``n_empty`` (units left out because an order is empty), the fraction of
    compared units where the first is lower, the mean AUC of each order, the mean paired difference (first -
    second) and the two-sided Wilcoxon signed-rank p-value of the difference (NaN with fewer than 2 units).
    """
    n_genes = curves.groupby(["unit", "order"])["n_genes"].first().unstack("order")
    n_genes = n_genes.reindex(columns=[first, second])
    empty = (n_genes == 0).any(axis=1)
    keep = n_genes.index[~empty & (n_genes >= min_genes).all(axis=1)]
    auc = deletion_auc(curves).reindex(index=keep, columns=[first, second]).dropna()
    diff = auc[first] - auc[second]
    pval = scipy.stats.wilcoxon(diff).pvalue if len(diff) > 1 and (diff != 0).any() else np.nan
    return pd.Series(
        {
            "n_units": len(diff),
            "n_empty": int(empty.sum()),
            f"fraction_{first}_lower": (diff < 0).mean() if len(diff) else np.nan,
            f"auc_{first}": auc[first].mean(),
            f"auc_{second}": auc[second].mean(),
            "mean_difference": diff.mean(),
            "wilcoxon_p": pval,
        }
    )


def deletion_summary(
    curves: pd.DataFrame, first: str = "attribution", against: Sequence[str] = ("deg", "random")
) -> pd.DataFrame:
    """:func:`compare_auc` of ``first`` against each other order, for each set of pairs.

    Parameters
    ----------
    curves
        From :func:`deletion_table` (a ``pairs`` column).

    Returns
    -------
    One row per (``pairs``, ``against``) order, the fields of :func:`compare_auc` as columns.
    """
    summary = {
        (name, second): compare_auc(group, first, second)
        for name, group in curves.groupby("pairs", sort=False)
        for second in against
    }
    columns = ["n_units", "n_empty", f"fraction_{first}_lower"] + [f"auc_{o}" for o in (first, *against)]
    table = pd.DataFrame(
        list(summary.values()), index=pd.MultiIndex.from_tuples(list(summary), names=["pairs", "against"])
    )
    table = table.reindex(columns=[*columns, "mean_difference", "wilcoxon_p"])
    return table.astype({"n_units": int, "n_empty": int})
