"""Notebook 05's run-directory inputs and outputs: model genes, attributions, probe tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from corelib.encoders import checkpoint_genes
from corelib.encoders.precomputed import is_precomputed
from corelib.runs import prose
from corelib.runs.registry import step
from corelib.runs.steps.interpret import Inputs, attribute_listed
from corelib.runs.steps.sae import attribution_path
from corelib.tl.attribution import Attribution
from corelib.tl.probes import ProbeResult, not_attributed, probe_tables

#: Notebook 03's N_p and N_c (``attribute_concepts``' defaults), used when it attributed no concept.
DEFAULT_CELLS = (10, 3)


# ----------------------------------------------------------------------------------------------------------
# Notebook 05 steps (read the run directory, write its 05_probes entries)
# ----------------------------------------------------------------------------------------------------------
def model_genes(run: Any) -> list[str] | None:
    """The genes of the encoder cached by notebook 01 (``run.path("encoder")``,
    :func:`corelib.encoders.checkpoint_genes`), or None when none is cached (a pretrained model read from
    ``model_path``)."""
    return checkpoint_genes(run.path("encoder"))


def load_attribution(run: Any, kind: str) -> Any:
    """Notebook 03's attribution of ``kind`` ("concepts" or "neurons"), or None (printed) when it is missing."""
    path = attribution_path(run, kind)
    if path is None and is_precomputed(run.path("encoder")):
        print(prose.absent(f"The genes of the {kind} (counterfactual attribution, notebook 03)"))
        return None
    if path is None:
        print(
            f"{run.path(f'attribution_{kind}')} is missing ({step('interpret')} did not attribute {kind}): the gene columns are skipped."
        )
        return None
    return Attribution.load(path)


def attribute_shown(
    run: Any, inputs: Inputs, shown: Sequence[int], *, progress: bool = True
) -> tuple[Attribution | None, Attribution | None]:
    """Genes for every concept a Fig. 5 table shows: notebook 03's attribution, and ``probes/
    attribution_concepts.npz``, the ``shown`` concepts that notebook 03 did not attribute (it may attribute a
    seeded sample), attributed now with notebook 03's engine and N_p, N_c
    (:func:`corelib.tl.attribution.attribute_concepts`).

    Returns
    -------
    ``(from_03, added)``, for :func:`corelib.tl.probes.top_units`' ``attribution``; ``from_03`` is None when
    notebook 03 attributed no concept (then every shown concept is in ``added``); both are None without a
    model (``model: precomputed``: nothing to attribute with).
    """
    if not inputs.encoder.has_model:
        return None, None
    earlier = load_attribution(run, "concepts")
    n_p, n_c = (
        DEFAULT_CELLS if earlier is None else (earlier.prototypes.shape[1], earlier.counterfactuals.shape[2])
    )
    todo = not_attributed(shown, earlier)
    added = attribute_listed(
        run, inputs, todo, n_p, n_c, ("probes", "attribution_concepts.npz"), progress=progress
    )
    return earlier, added


def save_probe_results(run: Any, task: str, results: Mapping[str, ProbeResult]) -> pd.DataFrame:
    """Write ``<task>_summary.csv``, ``<task>_per_seed.csv`` and ``<task>_confusion.csv`` under
    ``run.path("probes", ...)`` (:func:`corelib.tl.probes.probe_tables`) and return the summary
    (:func:`corelib.tl.probes.probe_summary`)."""
    summary, per_seed, confusion = probe_tables(results)
    run.write_table("probe_task_summary", summary, task)
    run.write_table("probe_per_seed", per_seed, task, index=False)
    run.write_table("probe_confusion", confusion, task, index=False)
    return summary


def save_top_units(run: Any, task: str, tables: Mapping[str, pd.DataFrame]) -> None:
    """Write each feature set's :func:`corelib.tl.probes.top_units` table as ``<task>_top_<name>.csv`` under
    ``run.path("probes", ...)`` (e.g. ``phase_top_concepts.csv``); nothing when the task was skipped (``{}``)."""
    for name, table in tables.items():
        run.write_table("probe_top_units", table, f"{task}_top_{name}", index=False)
