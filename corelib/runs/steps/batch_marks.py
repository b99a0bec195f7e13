"""Notebook 03's batch concepts (issue 26): the concepts whose activity marks a batch of ``batch_key``.

:func:`batch_marks` runs :func:`corelib.tl.batch.batch_concepts` on the selected SAE's codes, with the batch
column and the cell types of ``label_key`` as strata, and caches its table (``batch_marks``); the explorer and
the atlas mark the concepts it calls batch-associated (:func:`corelib.tl.evidence.batch_mark`). Without a
``batch_key`` nothing is computed, and a table an earlier run with one left is removed: no card is marked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corelib.runs.layout import RunDir
from corelib.tl import batch, evidence

if TYPE_CHECKING:
    import pandas as pd

    from corelib.runs.steps.interpret import Inputs


def batch_marks(
    run: RunDir, inputs: Inputs, batch_key: str | None, label_key: str | None = "cell_type", *, seed: int = 0
) -> pd.DataFrame | None:
    """``batch_marks``: :func:`corelib.tl.batch.batch_concepts` of the codes for ``obs[batch_key]`` within the
    cell types of ``obs[label_key]``, with its rule as columns (``null_auroc``, ``min_auroc``); None (and no
    table left in the run) when ``batch_key`` is None."""
    if batch_key is None:
        run.forget("batch_marks")
        return None
    obs = inputs.adata.obs
    missing = [key for key in (batch_key, label_key) if key is not None and key not in obs]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not in the embedded cells' obs (columns: {', '.join(map(str, obs.columns))}): "
            "set batch_key (and label_key) to columns of the dataset."
        )
    strata = obs[label_key] if label_key is not None else None  # None: one stratum, batch.ALL_CELLS
    return run.cached(
        lambda: evidence.with_batch_rule(
            batch.batch_concepts(inputs.codes, obs[batch_key], labels_N=strata, seed=seed)
        ),
        "batch_marks",
        inputs={**inputs.upstream, "batch": obs[batch_key], "labels": strata, "seed": seed},
    )


def describe(table: pd.DataFrame | None, batch_key: str | None, n: int = 5) -> str:
    """What notebook 03 found: how many concepts mark a batch by which rule, and the first ``n`` marks."""
    if table is None:
        return (
            "No batch_key: no batch concepts were looked for (set batch_key to the obs column of each cell's "
            "batch to mark them in the explorer and the atlas)."
        )
    marked = table[table["associated"]]
    rule = (
        f"AUROC at least {table['min_auroc'].iloc[0]:.2f} and above the permutation null's "
        f"{table['null_auroc'].iloc[0]:.2f}"
    )
    if marked.empty:
        return (
            f"No concept marks a batch of obs[{batch_key!r}] ({rule}); the explorer and the atlas mark none."
        )
    marks = "; ".join(
        f"C{unit}: "
        + evidence.batch_mark(row["batch"], row["auroc"], row["stratum"], float("nan")).removeprefix(
            evidence.BATCH_MARK
        )
        for unit, row in marked.head(n).iterrows()
    )
    return (
        f"{len(marked)} of {len(table)} concepts mark a batch of obs[{batch_key!r}] ({rule}), marked on their cards in "
        f"the explorer and the atlas. First {min(n, len(marked))}: {marks}."
    )
