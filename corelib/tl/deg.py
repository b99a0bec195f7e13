"""Differential expression between a unit's prototypes and counterfactuals, and deletion curves (Sec. 4.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scipy.stats
import torch
from tqdm.auto import tqdm

from corelib.tl.attribution import (
    ATTRIBUTED,
    Attribution,
    PerturbationModel,
    Selection,
    counterfactuals,
    dense_rows,
    prototypes,
    select_cells,
)
from corelib.tl.attribution.select import as_columns, unit_column
from corelib.tl.units import log_normalise

#: Adjusted p-value cut-off of the DEG order (paper appendix C).
PVAL_CUTOFF = 5e-3

#: Pseudocount of the log fold change, in normalised counts per 10^4 (Seurat's ``FoldChange`` convention).
PSEUDOCOUNT = 1.0

#: DEG orders: scanpy's (``score``: genes up in the top cells, highest test statistic first) or the paper's
#: (``abs_logfc``: genes up or down, largest absolute log fold change first).
DEG_ORDERS = ("score", "abs_logfc")

CURVE_COLUMNS = ["unit", "order", "step", "activation", "std", "n_genes"]


def deg_cells(
    acts_N: np.ndarray,
    emb_ND: np.ndarray | torch.Tensor,
    inactive_N: np.ndarray | None = None,
    *,
    max_cells: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """The two groups of the DEG baseline: top-activating cells and their counterfactual cells.

    Parameters
    ----------
    acts_N
        The concept's activation in every cell.
    emb_ND
        Embeddings, for the distances of Eq. 1.
    inactive_N
        Boolean: cells that do not activate the concept (default: activation exactly 0).
    max_cells
        Cap on each group (paper: 1000).

    Returns
    -------
    ``(top, counterfactual)`` cell indices: up to ``max_cells`` active cells, highest first, and the distinct
    nearest non-activating cells of those (Eq. 1 with N_c = 1), in the order of their first top cell.
    """
    inactive_N = acts_N == 0 if inactive_N is None else inactive_N
    top = prototypes(np.where(inactive_N, -np.inf, acts_N), min(max_cells, int((~inactive_N).sum())))
    nearest = counterfactuals(emb_ND, top, inactive_N, 1)[:, 0]
    _, first = np.unique(nearest, return_index=True)
    return top, nearest[np.sort(first)][:max_cells]


def group_rows(expression, idx: np.ndarray, genes: Sequence[str] | None = None) -> ad.AnnData:
    """Log-normalised rows ``idx`` (in that order) of a log-normalised AnnData or of a raw counts matrix.

    Normalisation is per cell, so normalising the selected rows of counts gives the values of
    :func:`corelib.tl.units.log_normalise` on all cells: the cost grows with ``len(idx)``, not the cells.

    Parameters
    ----------
    expression
        From :func:`corelib.tl.units.log_normalise`, or raw counts (cells x genes, dense or scipy sparse,
        anything indexable by rows) with their gene names in ``genes``.
    idx
        Cell indices.
    genes
        Gene names of a counts matrix; not used with an AnnData.
    """
    if isinstance(expression, ad.AnnData):
        return expression[idx].copy()
    if genes is None:
        raise ValueError("Raw counts need their gene names: pass genes=..., or a log-normalised AnnData.")
    rows = expression[idx]
    return log_normalise(rows if sp.issparse(rows) else np.asarray(rows), genes)


def deg_table(
    expression,
    top: np.ndarray,
    counterfactual: np.ndarray,
    *,
    genes: Sequence[str] | None = None,
    method: str = "t-test",
) -> pd.DataFrame:
    """Differential expression of the top-activating cells against the counterfactual cells.

    Parameters
    ----------
    expression, genes
        A log-normalised AnnData, or raw counts and their gene names: see :func:`group_rows`. Only the rows
        of the two groups are read.
    top, counterfactual
        Cell indices of the two groups (:func:`deg_cells`).
    method
        ``sc.tl.rank_genes_groups`` method ("t-test", scanpy's default, or "wilcoxon", ...).

    Returns
    -------
    DataFrame indexed by gene in scanpy's order (highest ``score`` first): ``logfoldchange`` (see
    :func:`log_fold_changes`), ``score``, ``pval``, ``pval_adj`` (Benjamini-Hochberg).
    """
    sub = group_rows(expression, np.concatenate([top, counterfactual]), genes)
    sub.obs["group"] = pd.Categorical(["top"] * len(top) + ["counterfactual"] * len(counterfactual))
    sc.tl.rank_genes_groups(
        sub, "group", groups=["top"], reference="counterfactual", method=method, use_raw=False
    )
    df = sc.get.rank_genes_groups_df(sub, group="top").set_index("names")
    df.index.name = "gene"
    in_top = np.arange(len(top))
    lfc = log_fold_changes(sub, in_top, np.arange(len(top), sub.n_obs))
    lfc = pd.Series(lfc, index=sub.var_names)
    df = df.rename(columns={"scores": "score", "pvals": "pval", "pvals_adj": "pval_adj"})
    return df.assign(logfoldchange=lfc.loc[df.index].to_numpy())[
        ["logfoldchange", "score", "pval", "pval_adj"]
    ]


def log_fold_changes(lognorm: ad.AnnData, top: np.ndarray, counterfactual: np.ndarray) -> np.ndarray:
    """log2 fold change of every gene, top vs counterfactual cells, with a pseudocount of 1 normalised count.

    ``log2((mean(expm1(x_top)) + 1) / (mean(expm1(x_cf)) + 1))`` on log1p-normalised values (counts per 10^4),
    Seurat's ``FoldChange``. scanpy's own uses a pseudocount of 1e-9, which turns a gene absent from one group
    into a fold change of about 2^30.

    Returns
    -------
    (n_genes,) in ``lognorm.var_names`` order.
    """

    def mean_counts(idx: np.ndarray) -> np.ndarray:
        x = dense_rows(lognorm.X, idx).astype(np.float64)
        return np.expm1(x).mean(0)

    return np.log2((mean_counts(top) + PSEUDOCOUNT) / (mean_counts(counterfactual) + PSEUDOCOUNT))


def deg_order(table: pd.DataFrame, *, order: str = "score", pval_cutoff: float = PVAL_CUTOFF) -> pd.Index:
    """Genes of the DEG baseline among ``pval_adj <= pval_cutoff``, most important first.

    Parameters
    ----------
    table
        From :func:`deg_table` (scanpy's order).
    order
        ``"score"``: genes up in the top cells (score > 0) in scanpy's order, what a biologist reads off
        ``rank_genes_groups``; ``"abs_logfc"``: up or down, by absolute log fold change (the paper).
    pval_cutoff
        Benjamini-Hochberg adjusted p-value cut-off.
    """
    if order not in DEG_ORDERS:
        raise ValueError(f"order must be one of {DEG_ORDERS}, got {order!r}.")
    sig = table[table["pval_adj"] <= pval_cutoff]
    if order == "score":
        return sig.index[sig["score"].to_numpy() > 0]
    return sig.index[np.argsort(-sig["logfoldchange"].abs().to_numpy(), kind="stable")]


def deg_units(
    expression,
    acts_NU: np.ndarray | sp.spmatrix,
    emb_ND: np.ndarray | torch.Tensor,
    inactive_NU: np.ndarray | None = None,
    units: Sequence[int] | None = None,
    *,
    genes: Sequence[str] | None = None,
    max_cells: int = 1000,
    method: str = "t-test",
    order: str = "score",
    pval_cutoff: float = PVAL_CUTOFF,
    progress: bool = True,
) -> pd.DataFrame:
    """DEG baseline of many units as one long table (the genes of :func:`deg_order` only, in that order).

    The cost of one unit grows with the cells only through the counterfactual search
    (:func:`corelib.tl.neighbors.nearest`): with raw counts, only the two groups' rows are normalised and tested.

    Parameters
    ----------
    expression, genes
        A log-normalised AnnData (:func:`corelib.tl.units.log_normalise`), or raw counts (cells x genes) and
        their gene names: see :func:`group_rows`.
    acts_NU
        Unit activations of all cells (column = unit id): concept codes (dense or scipy sparse, CSR or CSC),
        or the embedding for neurons.
    emb_ND
        Embeddings of all cells.
    inactive_NU
        Boolean, same shape: cells that do not activate each unit (neurons:
        ``corelib.tl.units.neuron_inactive``); default: activation exactly 0 (concepts).
    units
        Unit ids (e.g. the attributed ones); default: every column.
    max_cells, method, order, pval_cutoff
        See :func:`deg_cells`, :func:`deg_table`, :func:`deg_order`.
    progress
        Show a progress bar.

    Returns
    -------
    DataFrame with columns ``unit``, ``rank`` (1 = first in DEG order), ``gene``, ``logfoldchange``, ``score``,
    ``pval``, ``pval_adj``, ``n_top``, ``n_counterfactual``. A concept with fewer than 2 cells in either group,
    or no gene passing the cut-off, has no rows (an empty DEG list).
    """
    acts_NU = as_columns(acts_NU)
    parts = []
    for c in tqdm(range(acts_NU.shape[1]) if units is None else units, desc="DEG", disable=not progress):
        acts_N, inactive_N = unit_column(acts_NU, inactive_NU, c)
        top, cf = deg_cells(acts_N, emb_ND, inactive_N, max_cells=max_cells)
        if min(len(top), len(cf)) < 2:  # no variance estimate: the concept gets no DEG genes
            continue
        table = deg_table(expression, top, cf, genes=genes, method=method)
        sig = table.loc[deg_order(table, order=order, pval_cutoff=pval_cutoff)].reset_index()
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


def describe_deletion(summary: pd.DataFrame, pairs: str = "held-out", first: str = "attribution") -> str:
    """The reading of one set of pairs of a :func:`deletion_summary`, one sentence per order compared."""
    if pairs not in summary.index.get_level_values("pairs"):
        return f"No {pairs} pairs: no unit to compare."
    lines = []
    for second, s in summary.loc[pairs].to_dict("index").items():
        empty = f"; {s['n_empty']} units with an empty {second} list are left out" if s["n_empty"] else ""
        if not s["n_units"]:
            lines.append(f"On {pairs} pairs, no unit to compare the {first} and {second} orders on{empty}.")
            continue
        lines.append(
            f"On {pairs} pairs, the {first} order's curve falls faster than the {second} order's for "
            f"{s[f'fraction_{first}_lower']:.0%} of {s['n_units']} units (mean AUC {s[f'auc_{first}']:.3f} "
            f"vs {s[f'auc_{second}']:.3f}, Wilcoxon p = {s['wilcoxon_p']:.1e}){empty}."
        )
    return "\n".join(lines)
