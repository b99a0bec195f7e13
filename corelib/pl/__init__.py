"""Plots: each takes a result of ``corelib.tl`` (a table or a result object) and draws it.

One signature: ``(result, *, ax=None, ...) -> Axes`` (a new figure when ``ax`` is None). A plot of several
panels takes ``axes=None`` and returns the list of its Axes instead (its docstring says so). Plots never
compute what ``corelib.tl`` should have stored, and never close their figure: Jupyter shows it. They never
change the session's style either: :func:`set_theme` sets corelib's (seaborn's theme), once, where the user
calls it.
"""

from __future__ import annotations

from corelib.pl._attribution import important_genes
from corelib.pl._batch import batch_umaps
from corelib.pl._cards import card, composition, gene_bars, histogram, interpretability, umap
from corelib.pl._claims import claims_forest
from corelib.pl._concepts import call_shares
from corelib.pl._deg import deletion_curves
from corelib.pl._enrichment import annotation_shares, top_terms
from corelib.pl._probes import confusion, top_units
from corelib.pl._sae import dead_concepts, r2_vs_concepts, r2_vs_k, training_curves
from corelib.pl._stability import cross_dataset_r2, matched_cosines, stability
from corelib.pl._steering import steering
from corelib.pl._theme import set_theme

__all__ = [
    "annotation_shares",
    "batch_umaps",
    "call_shares",
    "card",
    "claims_forest",
    "composition",
    "confusion",
    "cross_dataset_r2",
    "dead_concepts",
    "deletion_curves",
    "gene_bars",
    "histogram",
    "important_genes",
    "interpretability",
    "matched_cosines",
    "r2_vs_concepts",
    "r2_vs_k",
    "stability",
    "set_theme",
    "steering",
    "top_terms",
    "top_units",
    "training_curves",
    "umap",
]
