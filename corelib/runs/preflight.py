"""Pre-flight: before any notebook runs, check that the data suit the settings of every notebook.

Notebook 01 validates its dataset (:func:`corelib.datasets.load`), but what later notebooks need of the data
depends on their own parameters, which notebook 01 does not see: 30 cells, or a second dataset of another
organism, used to fail notebook 04 or 05 after 01-03 had run. :func:`corelib.runs.pipeline.run` therefore calls
:func:`check` first, with each notebook's settings (its parameters cell's defaults overridden by the params
file). One ``ValueError`` lists every problem with the setting to change:

- ``01_embed``: the dataset loads as notebook 01 loads it (:func:`corelib.datasets.load_from_settings`: every
  :func:`corelib.datasets.validate` check, Ensembl ids as gene names included); ``model: precomputed`` and
  ``embedding_key`` come together, without ``model_path`` or ``random_init``, and the key holds an embedding of
  every cell (:func:`corelib.datasets.check_embedding`: the key, its shape and rows, NaN and infinite values);
- ``02_sae_scale_sweep``: the SAEs' held-out split (``corelib.tl.sae.TrainConfig.holdout_fraction``) has at
  least :data:`MIN_HELDOUT_CELLS` cells to measure R^2 on, and every ``(n_concepts, k)`` of the grid and of
  ``k_sweep`` is a valid Top-K SAE (``1 <= k < n_concepts``; a check of the settings alone);
- ``03_interpret_concepts``: the attribution finds ``n_prototypes + n_counterfactuals`` cells, and ``batch_key``
  (when set) is an ``obs`` column with at least two batches (the batch concepts, :func:`corelib.tl.batch.batch_concepts`);
- ``04_stability``: ``stability_dataset`` loads with ``stability_counts_layer``, shares enough genes with the
  dataset (:func:`corelib.tl.stability.shared_genes`) and has enough held-out cells for its R^2 (Fig. 4A);
- ``05_downstream_probes`` and ``07_claims``: at least two classes of ``label_key`` have
  ``min_cells_per_class`` cells (:func:`corelib.tl.probes.select_classes`).

What depends on computed results (the cell-cycle phases of notebook 05, the concepts an SAE learns) cannot be
checked here: those steps print why they skip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import anndata as ad

from corelib import datasets, encoders
from corelib.runs.registry import STEPS, step
from corelib.tl.probes import TooFewClasses, select_classes
from corelib.tl.sae import SAEConfig, TrainConfig
from corelib.tl.stability import shared_genes

#: Fewest held-out cells an SAE's reported R^2 is measured on (notebook 02; both datasets of notebook 04).
MIN_HELDOUT_CELLS = 20


def check(settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Load the data as the notebooks will and check them against every notebook's settings.

    Parameters
    ----------
    settings
        ``{notebook name: {parameter: value}}`` as the notebooks will run (``corelib.runs.pipeline`` builds it;
        the names are the steps' notebooks, :data:`corelib.runs.registry.STEPS`); nothing is checked without
        the embed step's.

    Raises
    ------
    ValueError
        The dataset does not load (the error of :func:`corelib.datasets.load`), or it does not suit the settings:
        one line per problem, each naming the setting to change.
    """
    of = {step.name: settings.get(step.notebook) for step in STEPS}  # each step's settings, or None
    if of["embed"] is None:
        return
    probes_nb = of["probes"]
    # as the embed step loads it (a backed atlas is checked without loading its counts)
    adata = datasets.load_from_settings(
        of["embed"], required_columns=[probes_nb["label_key"]] if probes_nb else []
    )
    problems = [
        *_embedding_problems(adata, of["embed"]),
        *(_heldout_problems(adata) if of["sae"] is not None else []),
        *_sae_grid_problems(of["sae"]),
        *_attribution_problems(adata, of["interpret"]),
        *_batch_problems(adata, of["interpret"]),
        *_probe_problems(adata, probes_nb, step("probes").notebook),
        *_probe_problems(adata, of["claims"], step("claims").notebook),
        *_stability_problems(adata, of["stability"]),
    ]
    if problems:
        raise ValueError(
            "The data do not suit this run's settings; nothing was run:\n- " + "\n- ".join(problems)
        )


def _embedding_problems(adata: ad.AnnData, options: Mapping[str, Any]) -> list[str]:
    """``model: precomputed`` reads ``obsm[embedding_key]`` instead of a model; each without the other is a
    mistake, and so are settings of a model beside it."""
    model, key, precomputed = options.get("model"), options.get("embedding_key"), encoders.precomputed.NAME
    if key is not None and model != precomputed:
        return [
            f"01_embed: embedding_key {key!r} is read only with model: {precomputed}, and model is {model!r}. Set "
            f"model: {precomputed} to run on that obsm embedding, or remove embedding_key to embed with {model}."
        ]
    if model != precomputed:
        return []
    if key is None:
        there = ", ".join(map(str, adata.obsm)) or "none"
        return [
            f"01_embed: model: {precomputed} reads the cells' embedding from obsm: set embedding_key to its key "
            f"(obsm keys in {_name(adata)}: {there})."
        ]
    given = [name for name in ("model_path", "random_init") if options.get(name)]
    problems = [
        f"01_embed: {name} is a setting of a model, and model: {precomputed} has none: remove {name}."
        for name in given
    ]
    try:
        datasets.check_embedding(adata, key)
    except ValueError as err:
        problems.append(f"01_embed: {err}")
    return problems


def _name(adata: ad.AnnData) -> str:
    """The dataset's name, for messages."""
    return str(adata.uns.get("dataset", {}).get("name", "the dataset"))


def _heldout_problems(adata: ad.AnnData, key: str = "dataset") -> list[str]:
    """The SAE R^2 needs :data:`MIN_HELDOUT_CELLS` held-out cells (``corelib.tl.sae.split_cells`` rounds)."""
    fraction = TrainConfig.holdout_fraction
    n_held = round(adata.n_obs * fraction)
    if n_held >= MIN_HELDOUT_CELLS:
        return []
    return [
        f"{key} {_name(adata)} has {adata.n_obs} cells: the SAEs hold out {fraction:.0%} of them ({n_held}) to "
        f"measure R^2, and at least {MIN_HELDOUT_CELLS} are needed. Set {key} to a dataset of at least "
        f"{math.ceil(MIN_HELDOUT_CELLS / fraction)} cells."
    ]


def _sae_grid_problems(options: Mapping[str, Any] | None) -> list[str]:
    """Notebook 02's grid (``n_concepts`` and ``k`` paired) and ``k_sweep`` (at the selected, i.e. one of the
    grid's, sizes) must describe Top-K SAEs: positive integers with ``k < n_concepts``."""
    if not options or "n_concepts" not in options or "k" not in options:
        return []
    sizes, ks = options["n_concepts"], options["k"]
    if not isinstance(sizes, list | tuple) or not isinstance(ks, list | tuple) or len(sizes) != len(ks):
        return [
            f"02_sae_scale_sweep: n_concepts ({sizes!r}) and k ({ks!r}) are lists paired element-wise; give lists "
            "of the same length, e.g. n_concepts: [100, 250, 500, 1000] and k: [2, 4, 8, 16]."
        ]
    problems = []
    points = [
        *zip(sizes, ks, strict=True),
        *((max(sizes, default=2), k) for k in options.get("k_sweep") or []),
    ]
    for c, k in dict.fromkeys(points):
        try:
            SAEConfig(d_in=1, n_concepts=c, k=k)
        except (ValueError, TypeError) as err:
            problems.append(f"02_sae_scale_sweep, n_concepts {c!r} with k {k!r}: {err}")
    return problems


def _attribution_problems(adata: ad.AnnData, options: Mapping[str, Any] | None) -> list[str]:
    """Notebook 03 attributes a unit on ``n_prototypes`` active and ``n_counterfactuals`` other cells (Eq. 1-3)."""
    if options is None:
        return []
    need = options["n_prototypes"] + options["n_counterfactuals"]
    if adata.n_obs >= need:
        return []
    return [
        f"03_interpret_concepts: the attribution needs n_prototypes + n_counterfactuals = {need} cells, and "
        f"{_name(adata)} has {adata.n_obs}. Lower n_prototypes or n_counterfactuals under notebooks: "
        "03_interpret_concepts in the params file."
    ]


def _batch_problems(adata: ad.AnnData, options: Mapping[str, Any] | None) -> list[str]:
    """Notebook 03 looks for batch concepts with ``batch_key``: an ``obs`` column of at least two batches."""
    key = (options or {}).get("batch_key")
    if key is None:
        return []
    fix = "or to null to look for no batch concepts (a top-level setting of the params file)."
    if key not in adata.obs:
        return [
            f"03_interpret_concepts: batch_key {key!r} is not an obs column of {_name(adata)} (its columns: "
            f"{', '.join(map(str, adata.obs.columns)) or 'none'}). Set batch_key to the column holding each cell's "
            f"batch, {fix}"
        ]
    batches = adata.obs[key].dropna().unique()
    if len(batches) >= 2:
        return []
    return [
        f"03_interpret_concepts: batch_key {key!r} holds {len(batches)} batch(es) in {_name(adata)} "
        f"({', '.join(map(str, batches)) or 'none'}), and a batch concept needs two to tell apart. Set batch_key "
        f"to a column with at least two batches, {fix}"
    ]


def _probe_problems(adata: ad.AnnData, options: Mapping[str, Any] | None, notebook: str) -> list[str]:
    """The cell-type probes of ``notebook`` (05, 07) need two classes of ``min_cells_per_class`` cells."""
    if options is None:
        return []
    labels = adata.obs[options["label_key"]]
    try:
        select_classes(labels, options["min_cells_per_class"])
    except TooFewClasses as err:
        sizes = labels.value_counts()
        fix = (
            f"In the params file, notebooks: {{{notebook}: {{min_cells_per_class: {sizes.iloc[1]}}}}} "
            "keeps the two largest classes."
            if len(sizes) > 1 and sizes.iloc[1] > 1
            else "Set label_key to an obs column with at least two classes of several cells each."
        )
        return [f"{notebook}, label_key {options['label_key']}: {err} {fix}"]
    return []


def _stability_problems(adata: ad.AnnData, options: Mapping[str, Any] | None) -> list[str]:
    """Notebook 04's second dataset: loads, shares genes with the first, has enough cells."""
    if options is None or options["stability_dataset"] is None:
        return []
    other = options["stability_dataset"]
    try:
        adata_b = datasets.load(
            other, layer=options["stability_counts_layer"], organism=adata.uns["dataset"]["organism"]
        )
        shared_genes(adata, adata_b)
    except (ValueError, FileNotFoundError) as err:
        return [
            f"04_stability, stability_dataset {other}: {err} Under notebooks: 04_stability in the params file, set "
            "stability_dataset to a dataset of the same organism with gene symbols as var_names (and "
            "stability_counts_layer to its raw-counts layer), or to null to skip the cross-dataset comparison."
        ]
    return _heldout_problems(adata_b, key="stability_dataset")
