"""The DEG baseline of a unit: its top-activating cells against their nearest non-activating cells (Sec. 4.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from corelib.cluster import map_chunks
from corelib.tl.attribution import counterfactuals, dense_rows, prototypes
from corelib.tl.attribution.select import as_columns, unit_column
from corelib.tl.units import log_normalise

if TYPE_CHECKING:
    from distributed import Client

#: Adjusted p-value cut-off of the DEG order (paper appendix C).
PVAL_CUTOFF = 5e-3

#: Pseudocount of the log fold change, in normalised counts per 10^4 (Seurat's ``FoldChange`` convention).
PSEUDOCOUNT = 1.0

#: DEG orders: scanpy's (``score``: genes up in the top cells, highest test statistic first) or the paper's
#: (``abs_logfc``: genes up or down, largest absolute log fold change first).
DEG_ORDERS = ("score", "abs_logfc")


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


def deg_list_sizes(deg: pd.DataFrame, units: Sequence[int]) -> pd.Series:
    """Number of DEG genes of each unit, 0 for a unit with an empty DEG list.

    Parameters
    ----------
    deg
        The long table of :func:`deg_units` (column ``unit``).
    units
        The units the baseline was run on (e.g. the attributed ones), in the order wanted.

    Returns
    -------
    Integer Series indexed by ``units`` (name ``unit``).
    """
    return deg.groupby("unit").size().reindex(pd.Index(units, name="unit"), fill_value=0)


def deg_size_summary(
    deg: pd.DataFrame, units: Sequence[int], label: str = "DEG genes per attributed concept (0: empty list)"
) -> pd.DataFrame:
    """``describe()`` of :func:`deg_list_sizes` as one row named ``label`` (count, mean, std, quartiles)."""
    return deg_list_sizes(deg, units).describe().rename(label).to_frame().T


#: Columns of the long table of :func:`deg_units`.
DEG_COLUMNS = [
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
    client: Client | None = None,
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
        Show progress bars.
    client
        A ``dask.distributed`` client (:func:`corelib.cluster.dask_client`): the work runs on its workers in
        two rounds of unit chunks. First the groups: the embedding goes to every worker once, each task gets its
        units' activation columns. Then the tests: each task gets only the expression rows of its units' two
        groups. None: in this process. The table is the same either way.

    Returns
    -------
    DataFrame with columns :data:`DEG_COLUMNS`: ``unit``, ``rank`` (1 = first in DEG order), ``gene``,
    ``logfoldchange``, ``score``, ``pval``, ``pval_adj``, ``n_top``, ``n_counterfactual``. A concept with fewer
    than 2 cells in either group, or no gene passing the cut-off, has no rows (an empty DEG list).
    """
    acts_NU = as_columns(acts_NU)
    units = np.arange(acts_NU.shape[1]) if units is None else np.asarray(units, dtype=np.int64)
    test = (genes, method, order, pval_cutoff)
    if client is None:
        tables = (
            _unit_table(expression, *_unit_groups(acts_NU, emb_ND, inactive_NU, u, max_cells), test)
            for u in tqdm(units, desc="DEG", unit="unit", disable=not progress)
        )
    else:
        tables = _tables_on_cluster(
            client, expression, acts_NU, emb_ND, inactive_NU, units, max_cells, test, progress
        )
    parts = [
        table.assign(unit=u, rank=np.arange(1, len(table) + 1))
        for u, table in zip(units, tables, strict=True)
        if table is not None
    ]
    return pd.concat(parts, ignore_index=True)[DEG_COLUMNS] if parts else pd.DataFrame(columns=DEG_COLUMNS)


def _unit_groups(acts_NU, emb_ND, inactive_NU, u: int, max_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`deg_cells` of column ``u`` of the activations."""
    acts_N, inactive_N = unit_column(acts_NU, inactive_NU, u)
    return deg_cells(acts_N, emb_ND, inactive_N, max_cells=max_cells)


def _unit_table(expression, top: np.ndarray, cf: np.ndarray, test: tuple) -> pd.DataFrame | None:
    """One unit's significant genes in DEG order, with the group sizes; None with fewer than 2 cells in a group.

    ``test`` is ``(genes, method, order, pval_cutoff)`` (see :func:`deg_units`).
    """
    genes, method, order, pval_cutoff = test
    if min(len(top), len(cf)) < 2:  # no variance estimate: the unit gets no DEG genes
        return None
    table = deg_table(expression, top, cf, genes=genes, method=method)
    sig = table.loc[deg_order(table, order=order, pval_cutoff=pval_cutoff)].reset_index()
    return sig.assign(n_top=len(top), n_counterfactual=len(cf))


def _tables_on_cluster(
    client: Client,
    expression,
    acts_NU,
    emb_ND,
    inactive_NU,
    units: np.ndarray,
    max_cells: int,
    test: tuple,
    progress: bool,
) -> list[pd.DataFrame | None]:
    """:func:`deg_units`' per-unit tables computed on a Dask cluster, in the order of ``units``."""
    emb = emb_ND.detach().cpu().numpy() if isinstance(emb_ND, torch.Tensor) else np.asarray(emb_ND)
    local = np.arange(len(units))

    def columns(js: np.ndarray) -> tuple:
        picked = units[js]
        return acts_NU[:, picked], None if inactive_NU is None else inactive_NU[:, picked]

    with tqdm(total=len(units), desc="DEG groups", unit="unit", disable=not progress) as bar:
        groups = [
            g
            for _, part in map_chunks(client, _remote_groups, local, columns, (emb, max_cells), bar=bar)
            for g in part
        ]

    def rows(js: np.ndarray) -> tuple:
        cells_K, where = np.unique(
            np.concatenate([np.concatenate(groups[j]) for j in js]), return_inverse=True
        )
        bounds = np.cumsum([0] + [len(part) for j in js for part in groups[j]])
        pieces = [where[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        chunk = expression[cells_K].copy() if isinstance(expression, ad.AnnData) else expression[cells_K]
        return chunk, list(zip(pieces[::2], pieces[1::2], strict=True))

    with tqdm(total=len(units), desc="DEG tests", unit="unit", disable=not progress) as bar:
        return [t for _, part in map_chunks(client, _remote_tables, local, rows, test, bar=bar) for t in part]


def _remote_groups(
    shared: tuple[np.ndarray, int], acts_NK, inactive_NK
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Task of :func:`_tables_on_cluster`: the two groups of each column (unit) of a chunk."""
    emb_ND, max_cells = shared
    acts_NK = as_columns(acts_NK)
    return [_unit_groups(acts_NK, emb_ND, inactive_NK, k, max_cells) for k in range(acts_NK.shape[1])]


def _remote_tables(
    test: tuple, rows, groups: list[tuple[np.ndarray, np.ndarray]]
) -> list[pd.DataFrame | None]:
    """Task of :func:`_tables_on_cluster`: the tables of a chunk's units from their groups' rows only."""
    return [_unit_table(rows, top, cf, test) for top, cf in groups]
