"""Notebook 04's batch concepts (issue 26): one SAE on both datasets of the cross-dataset part, the concepts
that mark a dataset within a cell type, and the embedding with them suppressed, scored with scib-metrics.

The computation is :mod:`corelib.tl.batch` (finding and suppressing concepts, the nulls) and
:mod:`corelib.tl.integration` (scib-metrics, Harmony); this module caches the SAE, the tables and the UMAPs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anndata as ad
import pandas as pd

from corelib._io import atomic_write
from corelib._optional import require
from corelib.datasets import coarse_cell_types
from corelib.runs.steps.stability import train_or_load_sae
from corelib.tl import batch as tb
from corelib.tl import integration as ti
from corelib.tl import sae as sae_mod
from corelib.tl.neighbors import umap_cells
from corelib.tl.sampling import describe_sample, sample_obs

if TYPE_CHECKING:
    import numpy as np

    from corelib.runs.layout import RunDir
    from corelib.runs.steps.cross_dataset import CrossDatasetStudy

__all__ = [
    "RULE",
    "UMAP_EMBEDDINGS",
    "BatchStudy",
    "batch_study",
    "missing_packages",
    "suppression_embeddings",
]

#: The two embeddings of the UMAPs: before and after suppressing the batch concepts (rows of the scib table).
UMAP_EMBEDDINGS = ("uncorrected", "batch concepts")
#: The concept test of the study: :func:`corelib.tl.batch.batch_concepts`' default per-cell-type rule.
RULE = {"statistic": "per_stratum", "min_auroc": tb.MIN_AUROC["per_stratum"]}


class BatchStudy(NamedTuple):
    """Everything of notebook 04's batch-concept section (empty tables when it was skipped).

    Attributes
    ----------
    info
        ``n_batch_concepts``, ``min_auroc`` (the rule's threshold), ``null_auroc`` (its permutation null's
        quantile), ``statistic``, ``n_cells`` (per dataset), ``sae_r2`` (R² on every cell of both datasets),
        ``null_seeds``, ``n_concepts``; or only ``skipped``: why nothing was measured.
    scores
        :func:`corelib.tl.integration.scib_table` of the embeddings (index ``embedding``).
    concepts
        :func:`corelib.tl.batch.batch_concepts` of the SAE's codes (index ``concept``).
    umap
        Long table: ``embedding`` (:data:`UMAP_EMBEDDINGS`), ``dataset``, ``cell_type``, ``umap_1``, ``umap_2``.
    """

    info: dict[str, Any]
    scores: pd.DataFrame
    concepts: pd.DataFrame
    umap: pd.DataFrame


def missing_packages() -> str | None:
    """Why the study cannot run here (scib-metrics or harmonypy not installed, with the install), or None."""
    try:
        require("scib_metrics", "Scoring batch correction with scib-metrics")
        require("harmonypy", "The Harmony row of the batch table")
    except ImportError as err:
        return str(err)
    return None


def suppression_embeddings(
    sae: Any,
    emb_ND: Any,
    batch_N: Any,
    labels_N: Any,
    *,
    null_seeds: int = 3,
    **rule: Any,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The embeddings a batch-concept study scores, and the concept table that chose them.

    Parameters
    ----------
    sae
        The SAE trained on ``emb_ND``.
    emb_ND
        Cells x d.
    batch_N, labels_N
        Batch and cell type of each cell (the cell types are :func:`corelib.tl.batch.batch_concepts`' strata).
    null_seeds
        Random-concept nulls, seeds ``0 .. null_seeds - 1``.
    rule
        Passed to :func:`corelib.tl.batch.batch_concepts` (``statistic``, ``min_auroc``, ``seed``, ...).

    Returns
    -------
    ``({name: cells x d}, table)``: ``uncorrected``; ``batch concepts`` (those ``associated`` suppressed,
    :func:`corelib.tl.batch.suppress_concepts`); ``random concepts, seed <s>`` (as many other concepts);
    ``cell-type concepts`` (as many concepts that mark a cell type best: biology must drop).
    """
    codes_NC = sae_mod.encode(sae, emb_ND)
    table = tb.batch_concepts(codes_NC, batch_N, labels_N=labels_N, **rule)
    found = table.index[table["associated"]].to_list()
    rows = {"uncorrected": emb_ND, "batch concepts": tb.suppress_concepts(sae, emb_ND, found)}
    for s in range(null_seeds):
        chosen = tb.random_concepts(sae.cfg.n_concepts, len(found), seed=s, exclude=found)
        rows[f"random concepts, seed {s}"] = tb.suppress_concepts(sae, emb_ND, chosen)
    typed = tb.label_concepts(codes_NC, labels_N, len(found))
    rows["cell-type concepts"] = tb.suppress_concepts(sae, emb_ND, typed)
    return rows, table


def _skip_reason(enabled: bool, cross: CrossDatasetStudy, label_key: str) -> str | None:
    """Why the study is not run, or None."""
    if not enabled:
        return "batch_study is False: the batch concepts were not measured (set batch_study = True)."
    if "skipped" in cross.info:
        return "No batch concepts were measured: they need the cross-dataset part's two datasets, which was skipped."
    unlabelled = [name for name, a in cross.adatas.items() if label_key not in a.obs]
    if unlabelled:
        return (
            f"No batch concepts were measured: {', '.join(unlabelled)} has no obs[{label_key!r}] cell types "
            "(batch concepts are found within cell types): set label_key to a column both datasets have."
        )
    return missing_packages()


def _cells(cross: CrossDatasetStudy, label_key: str, max_cells: int | None, seed: int) -> ad.AnnData:
    """Both datasets' cells in one AnnData: ``obs`` ``dataset`` and ``cell_type`` (:data:`corelib.datasets.COARSE`
    vocabulary), ``obsm["X_uncorrected"]`` the shared encoder's embedding; at most ``max_cells`` of each
    dataset (a seeded sample stratified by cell type, printed)."""
    parts = {}
    for name, a in cross.adatas.items():
        cells = ad.AnnData(
            obs=pd.DataFrame(
                {"cell_type": coarse_cell_types(a.obs[label_key])}, index=a.obs_names.astype(str)
            ),
            obsm={"X_uncorrected": cross.embeddings[name]},
        )
        parts[name] = sample_obs(cells, max_cells, seed=seed, stratify_key="cell_type")
        if parts[name].n_obs < cells.n_obs:
            what = describe_sample(parts[name].n_obs, cells.n_obs, max_cells, seed, "cell_type")
            print(f"Batch concepts measured on {what} of {name}.")
    return ad.concat(parts, label="dataset", index_unique="-")


def _umaps(cells: ad.AnnData, rows: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """UMAP coordinates of the :data:`UMAP_EMBEDDINGS` of ``rows``, one long table."""
    tables = []
    for name in UMAP_EMBEDDINGS:
        cells.obsm["X_shown"] = rows[name]
        shown = umap_cells(cells, use_rep="X_shown", seed=seed)
        coords = pd.DataFrame(shown.obsm["X_umap"], columns=["umap_1", "umap_2"], index=shown.obs_names)
        tables.append(shown.obs[["dataset", "cell_type"]].assign(embedding=name).join(coords))
    return pd.concat(tables, ignore_index=True)[["embedding", "dataset", "cell_type", "umap_1", "umap_2"]]


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger``'s INFO lines silenced inside (scib-metrics logs one per cell type that kBET skips)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _forget(run: RunDir) -> None:
    """Remove the tables an earlier run of the study left (notebook 07 would read a stale batch_scib as this
    run's); the SAE stays, reused when its inputs match."""
    for key in ("batch_scib", "batch_concepts", "batch_umap", "batch_info"):
        run.forget(key)


def _save(obj: Any, path: Path) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2)


def batch_study(
    run: RunDir,
    cross: CrossDatasetStudy,
    sae_settings: Mapping[str, Any],
    *,
    enabled: bool = True,
    label_key: str = "cell_type",
    null_seeds: int = 3,
    max_cells: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> BatchStudy:
    """Batch concepts of the cross-dataset part's two datasets, suppressed and scored with scib-metrics.

    One SAE (the selected SAE's size, k, seed and training options) is trained on both datasets' embeddings by
    the shared encoder together (the encoder is not retrained). Its concepts are tested for the dataset as
    batch within cell types (``obs[label_key]`` in the :data:`corelib.datasets.COARSE` vocabulary;
    :func:`corelib.tl.batch.batch_concepts`' default per-type rule), the embeddings of
    :func:`suppression_embeddings` and Harmony's are scored (:func:`corelib.tl.integration.scib_table`), and
    the embedding before and after suppression gets a UMAP. Outputs are reused when made from the same inputs.

    Parameters
    ----------
    run
        Writes ``batch_sae/``, ``batch_scib.csv``, ``batch_concepts.csv``, ``batch_umap.csv``,
        ``batch_info.json`` in ``04_stability/``.
    cross
        :func:`corelib.runs.steps.cross_dataset_study`'s result (its datasets and embeddings).
    sae_settings
        :func:`corelib.runs.steps.selected_sae`.
    enabled
        False: nothing is measured, and the result says so.
    label_key
        The cell types' ``obs`` column in both datasets.
    null_seeds
        Random-concept nulls.
    max_cells
        At most this many cells of each dataset (a seeded sample stratified by cell type; None: every cell):
        scib-metrics' neighbour searches, kBET and Leiden grow with the cells.
    seed, device, progress
        Seed of the concept test's permutations, Harmony, the neighbour searches and the UMAPs; device and
        progress bar of the SAE.

    Returns
    -------
    :class:`BatchStudy`; when skipped (``enabled`` False, no cross-dataset part, no cell types, scib-metrics
    or harmonypy missing) the reason is printed once and is ``info["skipped"]``, and the tables an earlier run
    of the study left are removed.
    """
    reason = _skip_reason(enabled, cross, label_key)
    if reason:
        print(reason)
        _forget(run)
        return BatchStudy({"skipped": reason}, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    cells = _cells(cross, label_key, max_cells, seed)
    emb_ND = cells.obsm["X_uncorrected"]
    batch_N, labels_N = cells.obs["dataset"].to_numpy(), cells.obs["cell_type"].to_numpy()
    train = {**sae_settings["train"], "device": device, "progress": progress}
    sae = train_or_load_sae(
        emb_ND,
        sae_settings["n_concepts"],
        sae_settings["k"],
        seed=sae_settings["seed"],
        path=run.path("batch_sae"),
        overwrite=run.overwrite,
        **train,
    )

    def compute() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
        rows, table = suppression_embeddings(
            sae, emb_ND, batch_N, labels_N, null_seeds=null_seeds, seed=seed, **RULE
        )
        rows["Harmony"] = ti.harmony(emb_ND, batch_N, seed=seed)
        with _quiet("scib_metrics"):
            scores = ti.scib_table(rows, batch_N, labels_N, seed=seed)
        info = {
            "n_batch_concepts": int(table["associated"].sum()),
            **{key: table.attrs[key] for key in ("statistic", "min_auroc", "null_auroc")},
            "n_concepts": int(sae.cfg.n_concepts),
            "n_cells": cells.obs["dataset"].value_counts(sort=False).astype(int).to_dict(),
            "sae_r2": float(sae_mod.metrics(sae, emb_ND)["r2"]),
            "null_seeds": int(null_seeds),
        }
        return scores, table, _umaps(cells, rows, seed), info

    scores, table, umap, info = run.cached(
        compute,
        "batch_scib",
        "batch_concepts",
        ("batch_umap", None, False),
        "batch_info",
        inputs={
            "embeddings": emb_ND,
            "batch": batch_N,
            "labels": labels_N,
            "sae": sae,
            "null_seeds": int(null_seeds),
            "seed": int(seed),
            "rule": RULE,
        },
        save=_save,
        load=lambda path: json.loads(path.read_text()),
    )
    return BatchStudy(info, scores, table, umap)
