"""Differential expression between a unit's prototypes and counterfactuals, and deletion curves (Sec. 4.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.stats
import torch
from tqdm.auto import tqdm

from corelib.tl.attribution import Attribution, PerturbationModel, counterfactuals, dense_rows, prototypes

#: Adjusted p-value cut-off of the DEG order (paper appendix C).
PVAL_CUTOFF = 5e-3


def deg_cells(
    acts_N: np.ndarray, emb_ND: np.ndarray, inactive_N: np.ndarray, *, max_cells: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """The two groups of the DEG baseline: top-activating cells and their counterfactual cells.

    Parameters
    ----------
    acts_N
        The concept's activation in every cell.
    emb_ND
        Embeddings, for the distances of Eq. 1.
    inactive_N
        Boolean: cells that do not activate the concept.
    max_cells
        Cap on each group (paper: 1000).

    Returns
    -------
    ``(top, counterfactual)`` cell indices: up to ``max_cells`` active cells, highest first, and the distinct
    nearest non-activating cells of those (Eq. 1 with N_c = 1), in the order of their first top cell.
    """
    top = prototypes(np.where(inactive_N, -np.inf, acts_N), min(max_cells, int((~inactive_N).sum())))
    nearest = counterfactuals(emb_ND, top, inactive_N, 1)[:, 0]
    _, first = np.unique(nearest, return_index=True)
    return top, nearest[np.sort(first)][:max_cells]


def deg_table(
    lognorm: ad.AnnData, top: np.ndarray, counterfactual: np.ndarray, *, method: str = "t-test"
) -> pd.DataFrame:
    """Differential expression of the top-activating cells against the counterfactual cells.

    Parameters
    ----------
    lognorm
        From :func:`corelib.tl.units.log_normalise`.
    top, counterfactual
        Cell indices of the two groups (:func:`deg_cells`).
    method
        ``sc.tl.rank_genes_groups`` method ("t-test", scanpy's default, or "wilcoxon", ...).

    Returns
    -------
    DataFrame indexed by gene: ``logfoldchange`` (log2, top vs counterfactual), ``score``, ``pval``,
    ``pval_adj`` (Benjamini-Hochberg).
    """
    sub = lognorm[np.concatenate([top, counterfactual])].copy()
    sub.obs["group"] = pd.Categorical(["top"] * len(top) + ["counterfactual"] * len(counterfactual))
    sc.tl.rank_genes_groups(
        sub, "group", groups=["top"], reference="counterfactual", method=method, use_raw=False
    )
    df = sc.get.rank_genes_groups_df(sub, group="top").set_index("names")
    df.index.name = "gene"
    return df.rename(
        columns={
            "logfoldchanges": "logfoldchange",
            "scores": "score",
            "pvals": "pval",
            "pvals_adj": "pval_adj",
        }
    )[["logfoldchange", "score", "pval", "pval_adj"]]


def deg_order(table: pd.DataFrame, *, pval_cutoff: float = PVAL_CUTOFF) -> pd.Index:
    """Genes of the DEG baseline, most important first: |log fold change| among ``pval_adj <= pval_cutoff``."""
    sig = table[table["pval_adj"] <= pval_cutoff]
    return sig.index[np.argsort(-sig["logfoldchange"].abs().to_numpy(), kind="stable")]


def deg_units(
    lognorm: ad.AnnData,
    acts_NU: np.ndarray,
    emb_ND: np.ndarray,
    inactive_NU: np.ndarray,
    units: Sequence[int],
    *,
    max_cells: int = 1000,
    method: str = "t-test",
    pval_cutoff: float = PVAL_CUTOFF,
    progress: bool = True,
) -> pd.DataFrame:
    """DEG baseline of many units as one long table (significant genes only, in DEG order).

    Parameters
    ----------
    lognorm
        From :func:`corelib.tl.units.log_normalise`.
    acts_NU
        Unit activations of all cells (column = unit id): concept codes, or the embedding for neurons.
    emb_ND
        Embeddings of all cells.
    inactive_NU
        Boolean, same shape: cells that do not activate each unit (concepts: ``codes == 0``; neurons:
        ``corelib.tl.attribution.neuron_inactive``).
    units
        Unit ids (e.g. the attributed ones).
    max_cells, method, pval_cutoff
        See :func:`deg_cells`, :func:`deg_table`, :func:`deg_order`.
    progress
        Show a progress bar.

    Returns
    -------
    DataFrame with columns ``unit``, ``rank`` (1 = first in DEG order), ``gene``, ``logfoldchange``, ``score``,
    ``pval``, ``pval_adj``, ``n_top``, ``n_counterfactual``. A concept with fewer than 2 cells in either group
    has no rows.
    """
    parts = []
    for c in tqdm(units, desc="DEG", disable=not progress):
        top, cf = deg_cells(acts_NU[:, c], emb_ND, inactive_NU[:, c], max_cells=max_cells)
        if min(len(top), len(cf)) < 2:  # no variance estimate: the concept gets no DEG genes
            continue
        table = deg_table(lognorm, top, cf, method=method)
        sig = table.loc[deg_order(table, pval_cutoff=pval_cutoff)].reset_index()
        sig.insert(0, "unit", c)
        sig.insert(1, "rank", np.arange(1, len(sig) + 1))
        parts.append(sig.assign(n_top=len(top), n_counterfactual=len(cf)))
    columns = [
        "unit",
        "rank",
        "gene",
        "logfoldchange",
        "score",
        "pval",
        "pval_adj",
        "n_top",
        "n_counterfactual",
    ]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


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


def deletion_curves(
    model: PerturbationModel,
    X_NM,
    attr: Attribution,
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
    attr
        Attribution whose prototypes and counterfactuals are perturbed.
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
    no rows when no unit was attributed.
    """
    keep = np.flatnonzero(attr.attributed)
    if not len(keep):
        return pd.DataFrame(columns=["unit", "order", "step", "activation", "std", "n_genes"])
    _, n_p, n_c = attr.counterfactuals.shape
    proto_cells, proto_slot = np.unique(attr.prototypes[keep], return_inverse=True)
    proto_slot = proto_slot.reshape(len(keep), n_p)
    jobs = [(name, j) for name in orders for j in keep]
    per_batch = max(1, batch_size // ((n_steps + 1) * n_p * n_c))
    rows = []
    with torch.no_grad():
        base_QU = model.prepare(
            torch.as_tensor(dense_rows(X_NM, proto_cells), device=model.device, dtype=model.dtype)
        )
        for start in tqdm(range(0, len(jobs), per_batch), desc="deletion curves", disable=not progress):
            batch = jobs[start : start + per_batch]
            genes_RK, values_RK, slot_R, unit_R = [], [], [], []
            for name, j in batch:
                k = np.searchsorted(keep, j)
                order = np.full(n_steps, -1, dtype=np.int64)
                chosen = np.asarray(orders[name][int(attr.units[j])])[:n_steps]
                order[: len(chosen)] = chosen
                cf_PCM = dense_rows(X_NM, attr.counterfactuals[j].ravel())
                genes_RK.append(np.broadcast_to(order, (n_p * n_c, n_steps)))
                values_RK.append(cf_PCM[:, order.clip(0)])
                slot_R.append(np.repeat(proto_slot[k], n_c))
                unit_R.append(np.full(n_p * n_c, attr.units[j]))
            t = {
                k: torch.as_tensor(np.concatenate(v), device=model.device)
                for k, v in dict(genes=genes_RK, values=values_RK, slot=slot_R, unit=unit_R).items()
            }
            out_RSU = model.prefixes(t["slot"], t["genes"], t["values"].to(model.dtype))
            act_RS = (
                out_RSU[torch.arange(len(t["unit"])), :, t["unit"]] / base_QU[t["slot"], t["unit"]][:, None]
            )
            act_BPS = act_RS.reshape(len(batch), n_p * n_c, n_steps + 1).cpu().numpy()
            for (name, j), a_PS in zip(batch, act_BPS, strict=True):
                n_genes = min(n_steps, len(orders[name][int(attr.units[j])]))
                rows.append(
                    pd.DataFrame(
                        {
                            "unit": attr.units[j],
                            "order": name,
                            "step": np.arange(n_steps + 1),
                            "activation": a_PS.mean(0),
                            "std": a_PS.std(0),
                            "n_genes": n_genes,
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


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


def compare_auc(
    curves: pd.DataFrame, first: str = "attribution", second: str = "deg", *, min_genes: int = 0
) -> pd.Series:
    """Does the ``first`` order's deletion curve fall faster than the ``second``'s? (paper appendix C claim)

    Parameters
    ----------
    curves
        From :func:`deletion_curves`.
    first, second
        Order names.
    min_genes
        Keep only units whose orders both have at least this many genes. A unit with few significant DEG
        genes has a DEG curve that stops falling early, which favours attribution; ``min_genes=n_steps``
        compares full-length curves only.

    Returns
    -------
    Series: mean AUC of each order, the mean paired difference (first - second), the fraction of units where
    the first is lower, the number of units, and the two-sided Wilcoxon signed-rank p-value of the
    difference (NaN with fewer than 2 units); NaN and 0 units without curves.
    """
    if curves.empty:
        return pd.Series({f"auc_{first}": np.nan, f"auc_{second}": np.nan, "n_units": 0})
    n_genes = curves.groupby(["unit", "order"])["n_genes"].first().unstack("order")
    keep = n_genes.index[(n_genes[[first, second]] >= min_genes).all(axis=1)]
    auc = deletion_auc(curves).loc[keep, [first, second]].dropna()
    diff = auc[first] - auc[second]
    pval = scipy.stats.wilcoxon(diff).pvalue if len(diff) > 1 and (diff != 0).any() else np.nan
    return pd.Series(
        {
            f"auc_{first}": auc[first].mean(),
            f"auc_{second}": auc[second].mean(),
            "mean_difference": diff.mean(),
            f"fraction_{first}_lower": (diff < 0).mean(),
            "n_units": len(diff),
            "wilcoxon_p": pval,
        }
    )
