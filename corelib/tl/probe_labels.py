"""What the probes predict: cell-cycle phase of every cell and marker genes of each class (App. G)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from corelib.datasets import cell_cycle_genes
from corelib.datasets._organism import organism_mismatch
from corelib.tl.units import log_normalise

#: Phase labels of ``score_genes_cell_cycle``, in display order.
PHASES: tuple[str, ...] = ("G1", "S", "G2M")

#: Fewest S and fewest G2M genes the phases are scored with. A phase score is the mean of its genes minus
#: control genes, and a cell detects few of them: pbmc3k's 2,000 variable genes hold 6 S and 10 G2M genes,
#: of which the median cell detects 0 S and 1 G2M gene, and its "phases" (38% G2M, 29% S among resting
#: PBMCs) are dropout noise. With 10 of each (a quarter of the Tirosh lists) a score averages several
#: detected genes.
MIN_CELL_CYCLE_GENES = 10


# ----------------------------------------------------------------------------------------------------------
def cell_cycle_phase(
    adata: Any,
    *,
    model_genes: Sequence[str] | None = None,
    seed: int = 0,
    missing: str = "raise",
    organism: str = "human",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Cell-cycle phase of every cell with ``scanpy.tl.score_genes_cell_cycle`` (paper appendix G).

    The scores use the FULL expression (every gene of ``adata``, log-normalised), not only the model's
    genes, with the Tirosh et al. (2016) list (43 S + 54 G2M genes; renamed symbols resolved through the
    bundled aliases by ``corelib.datasets.cell_cycle_genes``).

    Parameters
    ----------
    adata
        Raw counts in ``.X``, gene symbols as ``var_names``.
    model_genes
        The encoder's genes, to report how many cell-cycle genes the model itself sees.
    seed
        ``random_state`` of the control-gene sampling of ``score_genes``.
    missing
        When the data have fewer than :data:`MIN_CELL_CYCLE_GENES` S or G2M genes: ``"raise"`` a
        ``ValueError``, or ``"skip"``: print why and return NaN scores and phases (the probes on them are then
        skipped, see :func:`corelib.tl.probes.probe_features`).
    organism
        ``"human"`` or ``"mouse"``: the species of ``var_names`` (the list is human; mouse maps it by case,
        see ``corelib.datasets.cell_cycle_genes``).

    Returns
    -------
    ``(table, counts)``: ``table`` indexed like ``adata.obs`` with ``S_score``, ``G2M_score``, ``phase``
    (categorical G1/S/G2M); ``counts`` with ``n_s_list``, ``n_g2m_list`` (43, 54), ``n_s_data``,
    ``n_g2m_data`` (found in the data) and, with ``model_genes``, ``n_s_model``, ``n_g2m_model``.
    """
    import scanpy as sc

    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip'; got {missing!r}.")
    s_all, g2m_all = cell_cycle_genes(organism=organism)
    s_genes, g2m_genes = cell_cycle_genes(adata.var_names, organism=organism)
    counts = {
        "n_s_list": len(s_all),
        "n_g2m_list": len(g2m_all),
        "n_s_data": len(s_genes),
        "n_g2m_data": len(g2m_genes),
    }
    if model_genes is not None:
        model = set(map(str, model_genes))
        counts["n_s_model"] = sum(g in model for g in s_genes)
        counts["n_g2m_model"] = sum(g in model for g in g2m_genes)
    if min(len(s_genes), len(g2m_genes)) < MIN_CELL_CYCLE_GENES:
        fix = organism_mismatch(adata.var_names, organism) or (
            "Keep all genes (not only highly variable ones), with gene symbols as var_names, when loading the data."
        )
        message = (
            f"Cell-cycle scoring needs at least {MIN_CELL_CYCLE_GENES} S and {MIN_CELL_CYCLE_GENES} G2M genes "
            f"(fewer make the phases noise); the data have {len(s_genes)} of the {len(s_all)} S and "
            f"{len(g2m_genes)} of the {len(g2m_all)} G2M genes of Tirosh et al. (2016), matched under organism "
            f"{organism}. {fix}"
        )
        if missing == "raise":
            raise ValueError(message)
        print(f"Skipped the cell-cycle phases: {message}")
        table = pd.DataFrame(np.nan, index=adata.obs_names, columns=["S_score", "G2M_score"])
        table["phase"] = pd.Categorical([np.nan] * adata.n_obs, categories=list(PHASES))
        return table, counts
    lognorm = log_normalise(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        sc.tl.score_genes_cell_cycle(lognorm, s_genes=s_genes, g2m_genes=g2m_genes, random_state=seed)
    table = lognorm.obs[["S_score", "G2M_score", "phase"]].copy()
    table["phase"] = pd.Categorical(table["phase"], categories=list(PHASES))
    return table, counts


def class_markers(
    adata: Any, labels: pd.Series | np.ndarray, *, n_genes: int = 50, method: str = "wilcoxon"
) -> dict[str, list[str]]:
    """Marker genes of each class: the top ``n_genes`` of a one-vs-rest DEG test (scanpy ``rank_genes_groups``).

    Parameters
    ----------
    adata
        Raw counts in ``.X`` (log-normalised here), gene symbols as ``var_names``.
    labels
        One label per cell; NaN cells are left out of the test (fewer than two classes: no markers, ``{}``).
    n_genes
        Markers kept per class (up-regulated genes, by score).
    method
        ``rank_genes_groups`` method.

    Returns
    -------
    ``{class: [gene, ...]}``.
    """
    import scanpy as sc

    labels = pd.Series(np.asarray(labels, dtype=object), index=adata.obs_names)
    keep = labels.notna().to_numpy()
    if labels[keep].nunique() < 2:
        return {}
    sub = log_normalise(adata[keep])
    sub.obs["_class"] = pd.Categorical(labels[keep].astype(str))
    sc.tl.rank_genes_groups(sub, "_class", method=method, n_genes=n_genes, key_added="_markers")
    names = sub.uns["_markers"]["names"]
    return {str(c): [str(g) for g in names[c]] for c in names.dtype.names}
