"""Summaries of attribution results across units: skip reasons, reliability, top-gene lists (notebook 03)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from corelib.tl.attribution.result import RELIABILITY_COLUMNS, RELIABLE_SPEARMAN
from corelib.tl.attribution.select import ATTRIBUTED, SKIPPED


def skip_reasons(status: pd.DataFrame) -> pd.DataFrame:
    """Number of skipped units per kind and reason.

    Parameters
    ----------
    status
        :func:`corelib.tl.attribution.status_table` (columns ``kind``, ``status``, ``reason``).

    Returns
    -------
    DataFrame indexed by (``kind``, ``reason``), one column ``units``; empty when no unit was skipped.
    """
    skipped = status[status["status"] == SKIPPED]
    return skipped.groupby(["kind", "reason"]).size().rename("units").to_frame()


def reliability_summary(status: pd.DataFrame, bar: float = RELIABLE_SPEARMAN) -> pd.DataFrame:
    """Median split-half reliability of the attributed units of each kind, and the share reaching ``bar``.

    Parameters
    ----------
    status
        :func:`corelib.tl.attribution.status_table` (``kind``, ``status`` and :data:`RELIABILITY_COLUMNS`).
    bar
        Split-half Spearman from which a unit counts as reliable (default :data:`RELIABLE_SPEARMAN`).

    Returns
    -------
    DataFrame indexed by kind: the median of each of :data:`RELIABILITY_COLUMNS` over the attributed units,
    ``share_reliable`` (share with ``split_half >= bar``) and ``share_reliable_signed`` (``signed_split_half
    >= bar``); a unit whose reliability was not measured (NaN) counts as not reliable.
    """
    attributed = status[status["status"] == ATTRIBUTED]
    table = attributed.groupby("kind")[RELIABILITY_COLUMNS].median()
    kind = attributed["kind"]
    table["share_reliable"] = (attributed["split_half"] >= bar).groupby(kind).mean()
    table["share_reliable_signed"] = (attributed["signed_split_half"] >= bar).groupby(kind).mean()
    return table


def top_gene_lists(top: pd.DataFrame, units: Sequence[int], n: int = 10) -> pd.DataFrame:
    """The ``n`` best genes of each of ``units``, as one comma-separated list per unit.

    Parameters
    ----------
    top
        :func:`corelib.tl.attribution.top_genes` (columns ``unit``, ``rank``, ``gene``), with at least ``n``
        ranks per unit.
    units
        Units to list, in this order (e.g. the concepts with the most important genes).
    n
        Genes per unit.

    Returns
    -------
    DataFrame indexed by unit, one column ``top-<n> genes``.
    """
    lists = top[top["rank"] <= n].groupby("unit")["gene"].agg(", ".join)
    return lists.loc[list(units)].to_frame(f"top-{n} genes")
