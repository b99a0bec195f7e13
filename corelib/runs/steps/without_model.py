"""Notebook 03's steps on a precomputed embedding (``model: precomputed``, issue 26): no model to run cells through.

What needs only the embedding and the counts runs: the metadata characterisation and the DEG baseline, whose units
are the ones the attribution would have described (the same seeded sample of attributable concepts, every neuron).
What reads the attribution (its gene scores, the deletion curves, GSEA and its null, the worked examples, ORA)
says once why it is absent (:func:`corelib.runs.prose.absent`) and returns an empty result of the same type, so the
notebook's cells run as they are. :mod:`corelib.runs.steps.interpret` hands over here when
:attr:`~corelib.encoders.precomputed.Precomputed.has_model` is False.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from corelib.encoders.precomputed import NO_MODEL
from corelib.runs.layout import RunDir
from corelib.runs.prose import absent
from corelib.tl import attribution, deg, enrichment, units

if TYPE_CHECKING:
    from distributed import Client

    from corelib.runs.steps.interpret import Inputs


def attribute(inputs: Inputs, todo: Sequence[int], kind: str) -> attribution.Attribution:
    """The attribution of ``todo`` (concepts) or of every neuron, not computed: each unit skipped for
    :data:`~corelib.encoders.precomputed.NO_MODEL` (said once, for the concepts)."""
    if kind == "concept":
        print(
            absent("The counterfactual attribution of the concepts and neurons (and their important genes)")
        )
    return attribution.unattributed(todo, inputs.adata.var_names, kind=kind, reason=NO_MODEL)


def deg_units(
    run: RunDir,
    inputs: Inputs,
    attr: attribution.Attribution,
    options: Mapping[str, Any],
    inactive_quantile: float | None = None,
    *,
    client: Client | None = None,
) -> pd.DataFrame:
    """``deg_concepts`` (``inactive_quantile`` None) or ``deg_neurons``: the DEG baseline of every unit of the
    unattributed ``attr`` on the data's own counts and genes (``corelib.tl.deg.deg_units``)."""
    options = dict(options)
    kind = "concepts" if inactive_quantile is None else "neurons"
    acts = inputs.codes if inactive_quantile is None else inputs.emb
    inactive = None if inactive_quantile is None else units.neuron_inactive(inputs.emb, inactive_quantile)
    upstream = inputs.upstream if inactive_quantile is None else {"embedded": inputs.upstream["embedded"]}
    return run.cached(
        lambda: deg.deg_units(
            inputs.adata.X,
            acts,
            inputs.emb,
            inactive,
            attr.units,
            genes=inputs.adata.var_names,
            **options,
            client=client,
        ),
        ("deg", kind, False),
        inputs={**upstream, "units": attr.units, "inactive_quantile": inactive_quantile, **options},
    )


def deletion_curves() -> tuple[pd.DataFrame, attribution.Selection]:
    """No deletion curves (they run cells through the model): an empty table and no held-out pairs."""
    print(absent("The deletion curves (attribution vs DEG vs random order)"))
    none = attribution.unattributed([], [], kind="concept", reason=NO_MODEL)
    curves = pd.DataFrame(columns=["unit", "order", "step", "activation", "pairs"])
    return curves, attribution.Selection(none.prototypes, none.counterfactuals, none.status)


def _no_units(columns: Sequence[str]) -> pd.DataFrame:
    """A per-unit table with ``columns`` and no unit."""
    return pd.DataFrame(columns=list(columns), index=pd.Index([], name="unit"))


def gsea() -> tuple[enrichment.GseaResult, enrichment.GseaResult]:
    """No attribution-based GSEA, for either kind: empty unit and term tables (said once)."""
    print(absent("The attribution-based GSEA labels and their permuted-label null"))
    empty = enrichment.GseaResult(
        _no_units(enrichment.UNIT_COLUMNS), pd.DataFrame(columns=enrichment.TERM_COLUMNS)
    )
    return empty, empty


def gsea_null() -> dict[str, pd.DataFrame]:
    """The permuted-label null of no GSEA: an empty table per kind."""
    return {kind: _no_units(enrichment.UNIT_COLUMNS) for kind in ("concepts", "neurons")}


def worked_examples() -> pd.DataFrame:
    """No worked examples (their genes and labels come from the attribution): an empty table."""
    print(absent("The worked examples (top attributed genes and GSEA labels)"))
    return pd.DataFrame(columns=["top_genes", "metadata", "gsea_label", "gsea_pval", "annotation"])


def ora() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """No expression-matched ORA of the attributed genes: empty labels and terms, and NaN shares."""
    print(absent("The expression-matched ORA of the attributed genes"))
    shares = pd.DataFrame(
        float("nan"), index=["concepts", "neurons"], columns=["real", "permuted genes", "expression-matched"]
    )
    return _no_units(enrichment.ORA_COLUMNS), pd.DataFrame(columns=["unit", "rank", "term"]), shares
