"""Notebook 03's steps: each cached result of the interpretation (its sentences: :mod:`corelib.runs.prose`).

Every step is its ``corelib.tl`` call and :meth:`~corelib.runs.layout.RunDir.cached` entry, with the outputs
and the provenance ``inputs`` (upstream fingerprints, this step's parameters) the notebook has always used: a
run made before these steps existed is reused as it is. The tables that are not cached (``attribution_status``,
``important_genes``, ``top_genes_*``, ``examples``, ``ora_concepts``, ``recovery``) are rewritten on every run.
``client`` is a ``dask.distributed`` client (:func:`corelib.cluster.dask_client`) or None (this process); the
device and batch size change only the speed, and are never cache inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from corelib import datasets, encoders
from corelib.runs.layout import RunDir
from corelib.runs.prose import warnings_once
from corelib.runs.steps import without_model
from corelib.runs.steps.embed import restore_encoder
from corelib.runs.steps.sae import load_sae
from corelib.tl import attribution, concepts, deg, enrichment, units
from corelib.tl import sae as sae_lib
from corelib.tl.recovery import recovery as planted_recovery

if TYPE_CHECKING:
    from distributed import Client

#: The two kinds of unit notebook 03 interprets, as its entries name them (``attribution_<kind>``...).
KINDS = ("concepts", "neurons")


# --------------------------------------------------------------------------------------------------------------
# Section 1: cells, encoder and SAE
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """What the steps of notebook 03 read: the run's cells, encoder, SAE and codes, checked to belong together.

    Attributes
    ----------
    adata, emb
        The embedded cells of notebook 01 (raw counts in ``X``) and their embedding.
    encoder
        The encoder cached by notebook 01 (:func:`corelib.runs.steps.restore_encoder`).
    X, n_missing
        The counts in the encoder's gene order, and the number of model genes the data lacks
        (:func:`corelib.encoders.align`): the attribution perturbs these counts. None and 0 without a model
        (``model: precomputed``).
    sae_name, sae, codes
        The SAE (default: notebook 02's selected one, :func:`corelib.runs.steps.load_sae`) and its sparse codes
        of every cell (CSR, :func:`corelib.tl.sae.encode`).
    upstream
        Provenance fingerprints of the embedding and the SAE: the cache inputs of the steps that read them.
    device, batch_size
        Where the model runs, and how many perturbed cells go through it at once (speed only).
    """

    adata: Any
    emb: Any
    encoder: Any
    X: Any
    n_missing: int
    sae_name: str
    sae: Any
    codes: Any
    upstream: dict[str, Any]
    device: str = "auto"
    batch_size: int = 2048

    @property
    def genes(self) -> Any:
        """The genes the steps read: the model's input genes, or the data's own without a model."""
        return self.encoder.genes if self.encoder.has_model else self.adata.var_names


def load_inputs(
    run: RunDir, sae_name: str | None = None, *, device: str = "auto", batch_size: int = 2048
) -> Inputs:
    """The run's embedded cells, encoder and SAE (``sae_name``, default the selected one), and its codes."""
    adata = run.read_h5ad("embedded")
    emb = adata.obsm[adata.uns["embed"]["key"]]
    encoder = restore_encoder(run, device=device)
    X, n_missing = (
        encoders.align(adata, encoder.genes, var_key=encoder.var_key) if encoder.has_model else (None, 0)
    )
    sae_name, sae = load_sae(run, emb, sae_name)
    codes = sae_lib.encode(sae, emb)
    upstream = {"embedded": run.fingerprint("embedded"), "sae": run.fingerprint("sae", sae_name)}
    return Inputs(adata, emb, encoder, X, n_missing, sae_name, sae, codes, upstream, device, batch_size)


def _embedded(inputs: Inputs) -> dict[str, Any]:
    """The upstream input of the neuron steps: the embedding alone (neurons do not depend on the SAE)."""
    return {"embedded": inputs.upstream["embedded"]}


# --------------------------------------------------------------------------------------------------------------
# Section 2: which cells activate a unit
# --------------------------------------------------------------------------------------------------------------
def characterize_concepts(run: RunDir, inputs: Inputs, metadata_keys: Sequence[str]) -> pd.DataFrame:
    """``metadata_concepts``: the metadata of each concept's active cells (``corelib.tl.concepts.characterize``)."""
    obs = inputs.adata.obs[list(metadata_keys)]
    return run.cached(
        lambda: concepts.characterize(inputs.codes, obs, metadata_keys),
        "metadata_concepts",
        inputs={**inputs.upstream, "obs": obs},
    )


def characterize_neurons(run: RunDir, inputs: Inputs, metadata_keys: Sequence[str]) -> pd.DataFrame:
    """``metadata_neurons``: the same for each neuron's active cells (``corelib.tl.units.neuron_activity``)."""
    obs = inputs.adata.obs[list(metadata_keys)]
    return run.cached(
        lambda: concepts.characterize(units.neuron_activity(inputs.emb), obs, metadata_keys),
        "metadata_neurons",
        inputs={**_embedded(inputs), "obs": obs},
    )


def characterize(
    run: RunDir, inputs: Inputs, metadata_keys: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`characterize_concepts` and :func:`characterize_neurons`."""
    return characterize_concepts(run, inputs, metadata_keys), characterize_neurons(run, inputs, metadata_keys)


# --------------------------------------------------------------------------------------------------------------
# Section 3: which genes drive a unit
# --------------------------------------------------------------------------------------------------------------
def attribute_concepts(
    run: RunDir,
    inputs: Inputs,
    max_concepts: int | None = None,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    *,
    seed: int = 0,
    client: Client | None = None,
) -> attribution.Attribution:
    """``attribution_concepts``: counterfactual occlusion attribution of every concept, or of a seeded sample of
    ``max_concepts`` attributable ones (``corelib.tl.attribution.sample_concepts``)."""
    todo = attribution.sample_concepts(
        inputs.codes, max_concepts, n_prototypes=n_prototypes, n_counterfactuals=n_counterfactuals, seed=seed
    )
    if not inputs.encoder.has_model:
        return without_model.attribute(inputs, todo, "concept")
    return attribute_listed(
        run, inputs, todo, n_prototypes, n_counterfactuals, "attribution_concepts", client=client
    )


def attribute_listed(
    run: RunDir,
    inputs: Inputs,
    concepts: Sequence[int],
    n_prototypes: int,
    n_counterfactuals: int,
    key: str | tuple[str, str],
    *,
    client: Client | None = None,
    progress: bool = True,
) -> attribution.Attribution:
    """Counterfactual occlusion attribution of the listed ``concepts``, cached under ``key`` with the run's
    upstream inputs, the concepts and ``N_p, N_c`` (notebook 03's sample, notebook 05's shown concepts)."""
    cells = {"n_prototypes": n_prototypes, "n_counterfactuals": n_counterfactuals}
    return run.cached(
        lambda: attribution.attribute_concepts(
            inputs.encoder,
            inputs.sae,
            inputs.X,
            inputs.emb,
            codes_NC=inputs.codes,
            concepts=concepts,
            **cells,
            device=inputs.device,
            batch_size=inputs.batch_size,
            progress=progress,
            client=client,
        ),
        key,
        inputs={**inputs.upstream, "concepts": concepts, **cells},
        load=attribution.Attribution.load,
    )


def attribute_neurons(
    run: RunDir,
    inputs: Inputs,
    inactive_quantile: float = 0.5,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    *,
    client: Client | None = None,
) -> attribution.Attribution:
    """``attribution_neurons``: the same for every neuron, whose counterfactuals are the nearest cells at or below
    its ``inactive_quantile``."""
    if not inputs.encoder.has_model:
        return without_model.attribute(inputs, range(inputs.emb.shape[1]), "neuron")
    return run.cached(
        lambda: attribution.attribute_neurons(
            inputs.encoder,
            inputs.X,
            inputs.emb,
            inactive_quantile=inactive_quantile,
            n_prototypes=n_prototypes,
            n_counterfactuals=n_counterfactuals,
            device=inputs.device,
            batch_size=inputs.batch_size,
            client=client,
        ),
        "attribution_neurons",
        inputs={
            **_embedded(inputs),
            "inactive_quantile": inactive_quantile,
            "n_prototypes": n_prototypes,
            "n_counterfactuals": n_counterfactuals,
        },
        load=attribution.Attribution.load,
    )


def attribution_status(
    run: RunDir, attr_c: attribution.Attribution, attr_n: attribution.Attribution
) -> pd.DataFrame:
    """Write and return ``attribution_status``: each unit's status, skip reason and reliability
    (``corelib.tl.attribution.status_table``)."""
    status = attribution.status_table(attr_c, attr_n)
    run.write_table("attribution_status", status, index=False)
    return status


def gene_counts(
    run: RunDir,
    attr_c: attribution.Attribution,
    attr_n: attribution.Attribution,
    threshold: float = 0.05,
    relative_threshold: float = 0.01,
) -> dict[str, pd.DataFrame]:
    """Write ``important_genes`` and return the number of important genes per unit of each kind,
    ``{"concepts": ..., "neurons": ...}`` (``corelib.tl.attribution.important_gene_counts``)."""
    counts_c, counts_n = (
        attribution.important_gene_counts(a, threshold=threshold, relative_threshold=relative_threshold)
        for a in (attr_c, attr_n)
    )
    run.write_table("important_genes", pd.concat({"concept": counts_c, "neuron": counts_n}, names=["kind"]))
    return {"concepts": counts_c, "neurons": counts_n}


def top_genes(
    run: RunDir, attr_c: attribution.Attribution, attr_n: attribution.Attribution, n: int = 50
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write and return ``top_genes_concepts`` and ``top_genes_neurons``: each unit's ``n`` best genes."""
    tables = attribution.top_genes(attr_c, n=n), attribution.top_genes(attr_n, n=n)
    for kind, table in zip(KINDS, tables, strict=True):
        run.write_table("top_genes", table, kind, index=False)
    return tables


# --------------------------------------------------------------------------------------------------------------
# Section 4: the DEG baseline and deletion curves
# --------------------------------------------------------------------------------------------------------------
def deg_concepts(
    run: RunDir,
    inputs: Inputs,
    attr_c: attribution.Attribution,
    options: Mapping[str, Any],
    *,
    client: Client | None = None,
) -> pd.DataFrame:
    """``deg_concepts``: the DEG baseline of every attributed concept (``corelib.tl.deg.deg_units``; ``options``:
    its ``max_cells``, ``method``, ``order``, ``pval_cutoff``)."""
    if not inputs.encoder.has_model:
        return without_model.deg_units(run, inputs, attr_c, options, client=client)
    options = dict(options)
    return run.cached(
        lambda: deg.deg_units(
            inputs.X,
            inputs.codes,
            inputs.emb,
            units=attr_c.units[attr_c.attributed],
            genes=inputs.encoder.genes,
            **options,
            client=client,
        ),
        ("deg", "concepts", False),
        inputs={**inputs.upstream, "attribution": run.fingerprint("attribution_concepts"), **options},
    )


def deg_neurons(
    run: RunDir,
    inputs: Inputs,
    attr_n: attribution.Attribution,
    options: Mapping[str, Any],
    inactive_quantile: float = 0.5,
    *,
    client: Client | None = None,
) -> pd.DataFrame:
    """``deg_neurons``: the same for every attributed neuron, whose non-activating cells are those at or below
    its ``inactive_quantile`` (as in its attribution)."""
    if not inputs.encoder.has_model:
        return without_model.deg_units(run, inputs, attr_n, options, inactive_quantile, client=client)
    options = dict(options)
    return run.cached(
        lambda: deg.deg_units(
            inputs.X,
            inputs.emb,
            inputs.emb,
            units.neuron_inactive(inputs.emb, inactive_quantile),
            attr_n.units[attr_n.attributed],
            genes=inputs.encoder.genes,
            **options,
            client=client,
        ),
        ("deg", "neurons", False),
        inputs={
            **_embedded(inputs),
            "attribution": run.fingerprint("attribution_neurons"),
            "inactive_quantile": inactive_quantile,
            **options,
        },
    )


def deg_baselines(
    run: RunDir,
    inputs: Inputs,
    attr_c: attribution.Attribution,
    attr_n: attribution.Attribution,
    options: Mapping[str, Any],
    inactive_quantile: float = 0.5,
    *,
    client: Client | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`deg_concepts` and :func:`deg_neurons`."""
    return (
        deg_concepts(run, inputs, attr_c, options, client=client),
        deg_neurons(run, inputs, attr_n, options, inactive_quantile, client=client),
    )


def deg_summary(deg_c: pd.DataFrame, attr_c: attribution.Attribution) -> pd.DataFrame:
    """The DEG list sizes of the concepts :func:`deg_concepts` covered: the attributed ones, or every sampled one
    without a model (``corelib.tl.deg.deg_size_summary``)."""
    if attribution.was_computed(attr_c):
        return deg.deg_size_summary(deg_c, attr_c.units[attr_c.attributed])
    return deg.deg_size_summary(deg_c, attr_c.units, "DEG genes per sampled concept (0: empty list)")


def deletion_curves(
    run: RunDir,
    inputs: Inputs,
    attr_c: attribution.Attribution,
    deg_c: pd.DataFrame,
    n_steps: int = 50,
    *,
    seed: int = 0,
) -> tuple[pd.DataFrame, attribution.Selection]:
    """``deletion_curves`` of the attribution, DEG and seeded random orders, on held-out and in-sample pairs.

    Returns ``(curves, held_out)``: the table of :func:`corelib.tl.deg.deletion_table` and the held-out pairs
    (:func:`corelib.tl.deg.held_out_pairs`, whose status says which concepts have them).
    """
    if not inputs.encoder.has_model:
        return without_model.deletion_curves()
    held_c = deg.held_out_pairs(attr_c, inputs.codes, inputs.emb)
    orders = {
        "attribution": deg.attribution_orders(attr_c),
        "deg": deg.deg_orders(attr_c, deg_c),
        "random": deg.random_orders(attr_c, seed=seed),
    }
    model_c = attribution.concept_model(inputs.encoder, inputs.sae, device=inputs.device)
    curves = run.cached(
        lambda: deg.deletion_table(
            model_c,
            inputs.X,
            {"held-out": held_c, "in-sample": attr_c},
            orders,
            n_steps=n_steps,
            batch_size=inputs.batch_size,
        ),
        ("deletion_curves", None, False),
        inputs={
            **inputs.upstream,
            "attribution": run.fingerprint("attribution_concepts"),
            "deg": run.fingerprint("deg", "concepts"),
            "n_steps": n_steps,
            "random_seed": seed,
            "pairs": ["held-out", "in-sample"],
        },
    )
    return curves, held_c


# --------------------------------------------------------------------------------------------------------------
# Section 5: GSEA and its null
# --------------------------------------------------------------------------------------------------------------
def _gsea(
    run: RunDir, kind: str, attr: attribution.Attribution, options: Mapping[str, Any], client: Any
) -> enrichment.GseaResult:
    options = dict(options)
    found = run.cached(
        lambda: enrichment.gsea(attr.frame(), **options, client=client),
        f"gsea_{kind}",
        ("gsea_terms", kind, False),
        inputs={"attribution": run.fingerprint(f"attribution_{kind}"), **options},
    )
    return enrichment.GseaResult(*found)  # read back, it is a plain tuple


def gsea_concepts(
    run: RunDir, attr_c: attribution.Attribution, options: Mapping[str, Any], *, client: Client | None = None
) -> enrichment.GseaResult:
    """``gsea_concepts`` and ``gsea_terms_concepts``: attribution GSEA of the concepts
    (``corelib.tl.enrichment.gsea``; ``options``: its ``gene_sets``, ``organism``, ``permutations``, ``seed``,
    ``annotation``)."""
    return _gsea(run, "concepts", attr_c, options, client)


def gsea_neurons(
    run: RunDir, attr_n: attribution.Attribution, options: Mapping[str, Any], *, client: Client | None = None
) -> enrichment.GseaResult:
    """``gsea_neurons`` and ``gsea_terms_neurons``: the same for the neurons."""
    return _gsea(run, "neurons", attr_n, options, client)


def gsea(
    run: RunDir,
    attr_c: attribution.Attribution,
    attr_n: attribution.Attribution,
    options: Mapping[str, Any],
    *,
    client: Client | None = None,
) -> tuple[enrichment.GseaResult, enrichment.GseaResult]:
    """:func:`gsea_concepts` and :func:`gsea_neurons` (their warnings told once)."""
    if not attribution.was_computed(attr_c):
        return without_model.gsea()
    with warnings_once():
        return gsea_concepts(run, attr_c, options, client=client), gsea_neurons(
            run, attr_n, options, client=client
        )


def gsea_null(
    run: RunDir,
    attr_c: attribution.Attribution,
    attr_n: attribution.Attribution,
    n_units: int | None,
    options: Mapping[str, Any],
    *,
    client: Client | None = None,
) -> dict[str, pd.DataFrame]:
    """``gsea_null_concepts`` and ``gsea_null_neurons``: GSEA of ``n_units`` units of each kind with permuted
    gene labels (``corelib.tl.enrichment.gsea_null``), ``{"concepts": ..., "neurons": ...}``."""
    if not attribution.was_computed(attr_c):
        return without_model.gsea_null()
    options = dict(options)
    null = {}
    with warnings_once():
        for kind, attr in zip(KINDS, (attr_c, attr_n), strict=True):
            null[kind] = run.cached(
                lambda attr=attr: enrichment.gsea_null(
                    attr.frame(), n_units=n_units, **options, client=client
                ),
                ("gsea_null", kind),
                inputs={"attribution": run.fingerprint(f"attribution_{kind}"), "n_units": n_units, **options},
            )
    return null


# --------------------------------------------------------------------------------------------------------------
# Sections 6 and 7: worked examples, ORA, planted ground truth
# --------------------------------------------------------------------------------------------------------------
def worked_examples(
    run: RunDir, attr_c: attribution.Attribution, gsea_c: pd.DataFrame, meta_c: pd.DataFrame, n: int = 4
) -> pd.DataFrame:
    """Write and return ``examples``: the ``n`` concepts with the most significant GSEA label in the layout of
    the paper's Table 4 (``corelib.tl.attribution.worked_examples``)."""
    examples = (
        attribution.worked_examples(attr_c, gsea_c, meta_c, n=n)
        if attribution.was_computed(attr_c)
        else without_model.worked_examples()
    )
    run.write_table("examples", examples)
    return examples


@dataclass
class OraResult:
    """Notebook 03's expression-matched ORA: the concepts' labels (``units``, as ``ora_concepts``), their long
    table of terms, and each kind's share annotated beside the two nulls (``corelib.tl.enrichment.ora_shares``)."""

    units: pd.DataFrame
    terms: pd.DataFrame
    shares: pd.DataFrame


def ora(
    run: RunDir,
    inputs: Inputs,
    attr_c: attribution.Attribution,
    attr_n: attribution.Attribution,
    gene_sets: Any,
    *,
    organism: str = "human",
    seed: int = 0,
) -> OraResult:
    """ORA of both kinds' expression-signed scores against their nulls, and the concepts' labels (written to
    ``ora_concepts``)."""
    if not inputs.encoder.has_model:
        return OraResult(*without_model.ora())
    mean_expression = enrichment.mean_log_expression(inputs.X, inputs.encoder.genes)
    signed = {"concepts": attr_c.frame("expression"), "neurons": attr_n.frame("expression")}
    shares = enrichment.ora_shares(signed, mean_expression, gene_sets, seed=seed, organism=organism)
    labels, terms = enrichment.ora(
        signed["concepts"], gene_sets, mean_expression=mean_expression, organism=organism
    )
    run.write_table("ora_concepts", labels)
    return OraResult(labels, terms, shares)


def recovery(
    run: RunDir, inputs: Inputs, labels: Mapping[str, Any], gene_sets: Any, organism: str = "human"
) -> pd.DataFrame | None:
    """On data with planted programs (``uns["planted"]``), write and return ``recovery``: for each method, the
    concept that best isolates each program and whether its label names it (``corelib.tl.recovery.recovery``).
    None on other data.

    ``labels``: method -> the concepts' labels, with a per-unit table ``units`` and a long table ``terms``
    (:class:`~corelib.tl.enrichment.GseaResult`, :class:`OraResult`).
    """
    adata = inputs.adata
    if "planted" not in adata.uns:
        return None
    sets = datasets.load_gene_sets(gene_sets, genes=list(inputs.genes), organism=organism)
    columns = range(inputs.codes.shape[1])
    found = {
        method: planted_recovery(
            inputs.codes, columns, adata.obs, adata.uns["planted"], result.units, result.terms, sets
        )
        for method, result in labels.items()
    }
    recovered = pd.concat(found)
    run.write_table("recovery", recovered)
    return recovered
