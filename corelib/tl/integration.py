"""Integration scores of embeddings with scib-metrics (the scverse benchmark library), as scib aggregates them.

Batch correction: iLISI, kBET (per label), batch ASW (``silhouette_batch``) and graph connectivity. Biology
conservation: cLISI, NMI and ARI of Leiden clusters (resolution optimised, as scib does) and cell-type ASW
(``silhouette_label``). Every metric is in [0, 1] (ARI, chance-adjusted, can dip just below 0 by chance),
higher is better. As in scib-metrics' ``Benchmarker``, the
neighbours come from one pynndescent search per embedding (90 neighbours, seeded; 15 for Leiden and graph
connectivity, 50 for kBET), the batch score is the mean of the batch metrics, the bio score the mean of the bio
metrics, and the total ``0.4 batch + 0.6 bio``; no min-max scaling across embeddings, so a score does not
depend on which other embeddings are in the table. ``silhouette_batch`` is the metric the issue names (scib's
batch ASW); the ``Benchmarker`` of scib-metrics 0.5 replaces it with BRAS.

Needs the ``batch`` extra (``pip install 'corelib[batch]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from corelib._optional import require

#: The batch-correction metrics, by their column name (scib-metrics' clean names).
BATCH_METRICS = ("iLISI", "KBET", "Silhouette batch", "Graph connectivity")
#: The biology-conservation metrics.
BIO_METRICS = ("cLISI", "Leiden NMI", "Leiden ARI", "Silhouette label")
#: Aggregate columns, as scib computes them.
BATCH_SCORE, BIO_SCORE, TOTAL = "Batch correction", "Bio conservation", "Total"
#: Neighbour counts of scib-metrics' Benchmarker: graph metrics, kBET, LISI.
N_NEIGHBORS = (15, 50, 90)


def _scib() -> Any:
    return require("scib_metrics", "Scoring batch correction with scib-metrics")


def neighbors(emb_ND: np.ndarray, *, seed: int = 0) -> dict[int, Any]:
    """The neighbour graphs the metrics read, ``{n: NeighborsResults}``, from one pynndescent search of
    ``max(N_NEIGHBORS)`` neighbours (as scib-metrics' ``Benchmarker.prepare``)."""
    scib = _scib()
    result = scib.nearest_neighbors.pynndescent(emb_ND, n_neighbors=max(N_NEIGHBORS), random_state=seed)
    return {n: result.subset_neighbors(n=n) for n in N_NEIGHBORS}


def integration_metrics(
    emb_ND: Any, batch_N: Sequence, labels_N: Sequence, *, seed: int = 0
) -> dict[str, float]:
    """The eight metrics of one embedding (:data:`BATCH_METRICS`, :data:`BIO_METRICS`), higher is better.

    Parameters
    ----------
    emb_ND
        Cells x d.
    batch_N, labels_N
        Batch and cell type of each cell.
    seed
        Seed of the neighbour search (Leiden keeps scib-metrics' own seed).
    """
    scib = _scib()
    emb_ND = np.asarray(emb_ND, dtype=np.float32)
    batch_N, labels_N = np.asarray(batch_N).astype(str), np.asarray(labels_N).astype(str)
    if not len(emb_ND) == len(batch_N) == len(labels_N):
        raise ValueError(
            f"The embedding has {len(emb_ND)} cells, the batches {len(batch_N)}, the labels {len(labels_N)}."
        )
    nn = neighbors(emb_ND, seed=seed)
    leiden = scib.nmi_ari_cluster_labels_leiden(nn[15], labels_N)
    return {
        "iLISI": float(scib.ilisi_knn(nn[90], batch_N)),
        "KBET": float(scib.kbet_per_label(nn[50], batch_N, labels_N)),
        "Silhouette batch": float(scib.silhouette_batch(emb_ND, labels_N, batch_N)),
        "Graph connectivity": float(scib.graph_connectivity(nn[15], labels_N)),
        "cLISI": float(scib.clisi_knn(nn[90], labels_N)),
        "Leiden NMI": float(leiden["nmi"]),
        "Leiden ARI": float(leiden["ari"]),
        "Silhouette label": float(scib.silhouette_label(emb_ND, labels_N)),
    }


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (embeddings x metrics) with scib's aggregates: the mean of each kind, ``0.4 batch + 0.6 bio``."""
    out = table.copy()
    out[BATCH_SCORE] = out[list(BATCH_METRICS)].mean(axis=1)
    out[BIO_SCORE] = out[list(BIO_METRICS)].mean(axis=1)
    out[TOTAL] = 0.4 * out[BATCH_SCORE] + 0.6 * out[BIO_SCORE]
    return out


def scib_table(
    embeddings: Mapping[str, Any], batch_N: Sequence, labels_N: Sequence, *, seed: int = 0
) -> pd.DataFrame:
    """Score several embeddings of the same cells: one row each, the metrics then the aggregates.

    Parameters
    ----------
    embeddings
        ``{name: cells x d}`` (e.g. uncorrected, corrected, scVI with ``batch_key``, Harmony).
    batch_N, labels_N
        Batch and cell type of each cell.
    seed
        Seed of the neighbour search.

    Returns
    -------
    Embeddings x (:data:`BATCH_METRICS`, :data:`BIO_METRICS`, ``Batch correction``, ``Bio conservation``,
    ``Total``).
    """
    rows = {name: integration_metrics(emb, batch_N, labels_N, seed=seed) for name, emb in embeddings.items()}
    return aggregate(pd.DataFrame.from_dict(rows, orient="index").rename_axis("embedding"))


def harmony(emb_ND: Any, batch_N: Sequence, *, seed: int = 0) -> np.ndarray:
    """Harmony's correction of an embedding for the batch (harmonypy, its defaults), cells x d."""
    harmonypy = require("harmonypy", "Harmony batch correction")
    meta = pd.DataFrame({"batch": np.asarray(batch_N).astype(str)})
    emb_ND = np.asarray(emb_ND, dtype=np.float64)
    result = harmonypy.run_harmony(emb_ND, meta, ["batch"], random_state=seed, verbose=False)
    z = np.asarray(result.Z_corr)
    return (z.T if z.shape[0] != emb_ND.shape[0] else z).astype(np.float32)
