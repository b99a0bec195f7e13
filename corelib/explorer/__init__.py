"""The concept explorer: cards, expert labels, the blinded study, the static atlas and the widgets."""

from __future__ import annotations

from corelib.explorer import atlas
from corelib.explorer.cards import (
    DEFAULT_RELATIVE_THRESHOLD,
    DEFAULT_THRESHOLD,
    CardData,
    RunData,
    concept_card,
    load_run_data,
    run_title,
)
from corelib.explorer.labels import (
    CONFIDENCE_CHOICES,
    INTERPRETABLE_CHOICES,
    LABEL_COLUMNS,
    LABEL_KIND_CHOICES,
    labels_for,
    read_labels,
    save_label,
)
from corelib.explorer.study import Study, interpretability_table, make_study, unblind
from corelib.explorer.summary import gsea_label, interesting_order, search_units, unit_summary
from corelib.explorer.widgets import Explorer, LabelForm, StudyExplorer

__all__ = [
    "CONFIDENCE_CHOICES",
    "CardData",
    "DEFAULT_RELATIVE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "INTERPRETABLE_CHOICES",
    "LABEL_COLUMNS",
    "LABEL_KIND_CHOICES",
    "RunData",
    "Study",
    "atlas",
    "concept_card",
    "gsea_label",
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
    "Explorer",
    "LabelForm",
    "StudyExplorer",
]
