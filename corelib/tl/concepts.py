"""Metadata characterisation of concepts and neurons: which labels their active cells have (Sec. 4.3)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.tl.units import as_matrix

#: The calls other than "<column>-specific", in the order plots show them.
MIXED, NOT_ENOUGH = "mixed", "not enough data"

#: A metadata column whose most common label covers at least this share of all cells (one assay, organism or
#: tissue, as in most CELLxGENE files) cannot make a unit "<column>-specific": almost every unit would be.
UNINFORMATIVE_SHARE = 0.95


def default_min_active_cells(n_cells: int) -> int:
    """``max(10, ceil(0.5% of n_cells))``: the "not enough data" cut-off scaled to the dataset (see module)."""
    return max(10, int(np.ceil(0.005 * n_cells)))


def _active(codes: object, active_threshold: float) -> np.ndarray | sp.csr_matrix:
    """Boolean activity (n_cells x n_units) from codes or an activity matrix; sparse codes stay sparse."""
    codes = as_matrix(codes, "codes")
    if codes.dtype == bool:
        return codes
    if sp.issparse(codes) and active_threshold < 0:
        raise ValueError(
            f"active_threshold={active_threshold} would make every unstored (zero) code active; use a threshold "
            ">= 0 with sparse codes."
        )
    return codes > active_threshold


def _labels(obs: pd.DataFrame, column: str, n_cells: int) -> pd.Categorical:
    """The column as a categorical (missing values become the label "nan"), with clear errors."""
    if column not in obs.columns:
        raise ValueError(
            f"Metadata column {column!r} is not in obs (columns: {', '.join(map(str, obs.columns))}); fix "
            "label_key / metadata_keys."
        )
    if len(obs) != n_cells:
        raise ValueError(
            f"obs has {len(obs)} rows but codes have {n_cells} cells: pass the obs of the same cells."
        )
    return pd.Categorical(obs[column].astype(str).to_numpy())


def _counts(active_NU: np.ndarray | sp.csr_matrix, labels: pd.Categorical) -> np.ndarray:
    """Active cells per unit and label (n_units x n_labels): the labels' indicator matrix (n_cells x n_labels)
    transposed times the activity, one sparse product (only the active cells are stored)."""
    onehot_NL = sp.csr_matrix(
        (np.ones(len(labels)), (np.arange(len(labels)), labels.codes)),
        shape=(len(labels), len(labels.categories)),
    )
    return np.asarray((onehot_NL.T @ sp.csr_matrix(active_NU).astype(np.float64)).T.todense())


def composition(
    codes: object, obs: pd.DataFrame, column: str, *, active_threshold: float = 0.0
) -> pd.DataFrame:
    """Label fractions among each unit's active cells, ``r = (1/j) sum_i M_i`` (paper section 3.1).

    Parameters
    ----------
    codes
        Concept activations or boolean activity (n_cells x n_units), dense or sparse (kept sparse).
    obs
        Cell metadata with ``column`` (same cells, same order).
    column
        Metadata column.
    active_threshold
        A cell activates a unit when its activation exceeds this value (ignored for boolean input).

    Returns
    -------
    Units x labels table of fractions (rows sum to 1; all-zero rows for units that never fire).
    """
    active_NU = _active(codes, active_threshold)
    labels = _labels(obs, column, active_NU.shape[0])
    counts_UL = _counts(active_NU, labels)
    n_active_U = counts_UL.sum(axis=1, keepdims=True)
    fractions = np.divide(counts_UL, n_active_U, out=np.zeros_like(counts_UL), where=n_active_U > 0)
    return pd.DataFrame(fractions, columns=pd.Index(labels.categories, name=column))


def characterize(
    codes: object,
    obs: pd.DataFrame,
    columns: Sequence[str],
    *,
    min_active_cells: int | None = None,
    specific_threshold: float = 0.7,
    active_threshold: float = 0.0,
) -> pd.DataFrame:
    """Call every unit "<column>-specific", "mixed" or "not enough data" from its active cells' metadata.

    Parameters
    ----------
    codes
        Concept activations (n_cells x n_concepts; sparse, as :func:`corelib.tl.sae.encode` gives, stays
        sparse), or boolean activity such as :func:`neuron_activity`.
    obs
        Cell metadata (same cells, same order).
    columns
        Metadata columns, in priority order (cell type first).
    min_active_cells
        Units active in fewer cells are "not enough data"; default :func:`default_min_active_cells`.
    specific_threshold
        Share of the active cells that one label must cover (paper: 0.7).
    active_threshold
        Activation above which a cell activates a unit (ignored for boolean input).

    Returns
    -------
    One row per unit (index = unit number): ``n_active``, then for each column ``<column>_top`` (most common
    label among active cells) and ``<column>_fraction`` (its share), and ``call``. A column whose most common
    label covers :data:`UNINFORMATIVE_SHARE` of all cells is reported but gives no call (with a warning).
    """
    if isinstance(columns, str):
        columns = [columns]
    if not columns:
        raise ValueError("Give at least one metadata column, e.g. columns=['cell_type'].")
    if not 0 < specific_threshold <= 1:
        raise ValueError(f"specific_threshold must be in (0, 1], got {specific_threshold}.")
    active_NU = _active(codes, active_threshold)
    if min_active_cells is None:
        min_active_cells = default_min_active_cells(active_NU.shape[0])
    table = pd.DataFrame({"n_active": np.asarray(active_NU.sum(axis=0), dtype=np.int64).ravel()})
    table.index.name = "unit"
    call = np.full(active_NU.shape[1], MIXED, dtype=object)
    undecided = np.ones(active_NU.shape[1], dtype=bool)
    for column in columns:
        frac = composition(active_NU, obs, column)
        top = frac.to_numpy().argmax(axis=1)
        table[f"{column}_top"] = np.where(table["n_active"] > 0, frac.columns[top], None)
        table[f"{column}_fraction"] = frac.to_numpy().max(axis=1)
        if _uninformative(obs[column], column):
            continue
        passes = undecided & (table[f"{column}_fraction"].to_numpy() >= specific_threshold)
        call[passes] = f"{column}-specific"
        undecided &= ~passes
    call[table["n_active"].to_numpy() < min_active_cells] = NOT_ENOUGH
    table["call"] = call
    return table


def _uninformative(labels: pd.Series, column: str) -> bool:
    """Whether one label covers :data:`UNINFORMATIVE_SHARE` of the cells; warns naming the column if so."""
    counts = labels.astype(str).value_counts(normalize=True)
    if counts.iloc[0] < UNINFORMATIVE_SHARE:
        return False
    warnings.warn(
        f"Metadata column {column!r}: {counts.index[0]!r} covers {counts.iloc[0]:.0%} of the cells "
        f"({len(counts)} value(s)), so no unit is called {column}-specific from it; drop it from metadata_keys "
        "or use a column that varies across cells.",
        stacklevel=3,
    )
    return True


def characterize_many(
    codes_by_name: Mapping[str, object], obs: pd.DataFrame, columns: Sequence[str], **kwargs
):
    """:func:`characterize` for several SAEs (or neurons) at once: ``{name: table}``.

    ``kwargs`` go to :func:`characterize`.
    """
    return {name: characterize(codes, obs, columns, **kwargs) for name, codes in codes_by_name.items()}


def summarize_calls(tables: Mapping[str, pd.DataFrame] | pd.DataFrame) -> pd.DataFrame:
    """Share of units per call (paper Fig. 2B), one row per table.

    Parameters
    ----------
    tables
        A :func:`characterize` table, or ``{name: table}`` (e.g. one per SAE of a sweep).

    Returns
    -------
    Rows = names, columns = calls ("<column>-specific" ..., "mixed", "not enough data"), values = shares
    (rows sum to 1), plus ``n_units``.
    """
    if isinstance(tables, pd.DataFrame):
        tables = {"units": tables}
    shares = pd.DataFrame({name: t["call"].value_counts(normalize=True) for name, t in tables.items()}).T
    specific = sorted(c for c in shares.columns if c not in (MIXED, NOT_ENOUGH))
    shares = shares.reindex(columns=[*specific, MIXED, NOT_ENOUGH]).fillna(0.0)
    shares["n_units"] = [len(t) for t in tables.values()]
    return shares
