"""The concept explorer: cards, expert labels, the blinded study, the static atlas and the widgets.

The explorer reads a :class:`~corelib.tl.cards.ConceptData`: from an AnnData of ``cl.tl.train_sae``,
``attribute`` and ``annotate`` (``cl.explorer.Explorer(adata)``, ``cl.explorer.write_atlas(adata, path)``) or
from a run directory (:func:`load_run_data`, notebook 06). Its modules, bottom up: :mod:`~corelib.explorer.html`
(the card and page HTML, pure), :mod:`~corelib.explorer.labels`, :mod:`~corelib.explorer.data`,
:mod:`~corelib.explorer.steering`, :mod:`~corelib.explorer.cards`, :mod:`~corelib.explorer.summary`,
:mod:`~corelib.explorer.study`, :mod:`~corelib.explorer.atlas` (writes the page) and
:mod:`~corelib.explorer.widgets`.
"""

from __future__ import annotations

from corelib.explorer import atlas, html
from corelib.explorer.atlas import write_atlas
from corelib.explorer.cards import card_genes, concept_card
from corelib.explorer.data import RunData, as_data, load_run_data, run_title
from corelib.explorer.labels import (
    CONFIDENCE_CHOICES,
    INTERPRETABLE_CHOICES,
    LABEL_COLUMNS,
    LABEL_KIND_CHOICES,
    labels_for,
    read_labels,
    save_label,
)
from corelib.explorer.steering import describe_steering
from corelib.explorer.study import Study, interpretability_table, make_study, unblind
from corelib.explorer.summary import describe_first_card, interesting_order, search_units, unit_summary
from corelib.explorer.widgets import Explorer, LabelForm, StudyExplorer
from corelib.tl.cards import (
    DEFAULT_RELATIVE_THRESHOLD,
    DEFAULT_THRESHOLD,
    CardData,
    ConceptData,
    gsea_label,
)

__all__ = [
    "CONFIDENCE_CHOICES",
    "CardData",
    "ConceptData",
    "DEFAULT_RELATIVE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "INTERPRETABLE_CHOICES",
    "LABEL_COLUMNS",
    "LABEL_KIND_CHOICES",
    "RunData",
    "Study",
    "as_data",
    "atlas",
    "card_genes",
    "concept_card",
    "describe_first_card",
    "describe_steering",
    "gsea_label",
    "html",
    "interesting_order",
    "interpretability_table",
    "labels_for",
    "load_run_data",
    "make_study",
    "read_labels",
    "run_title",
    "save_label",
    "search_units",
    "unblind",
    "unit_summary",
    "write_atlas",
    "Explorer",
    "LabelForm",
    "StudyExplorer",
]
