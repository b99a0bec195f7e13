"""The static concept atlas: one self-contained HTML file with a card per concept (paper 3.3, offline).

:func:`write_atlas` builds the cards (:func:`corelib.explorer.concept_card`) of a run directory or an AnnData,
renders each with :func:`corelib.explorer.html.card_html` (the HTML the notebook explorer shows), and writes the
page of :func:`corelib.explorer.html.atlas_html`: an overview table first (:func:`overview_table`, one sortable
row per card), then the cards, both in the order of evidence of the explorer's "next interesting"
(:func:`corelib.explorer.summary.interesting_order`). Expert labels, direct and un-blinded study answers, are
shown on their cards and in the overview.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from corelib._io import atomic_write
from corelib.explorer.cards import concept_card
from corelib.explorer.data import Source, as_data, run_title
from corelib.explorer.html import atlas_html, card_html, overview_html
from corelib.explorer.labels import LabelStore, labels_file, read_labels
from corelib.explorer.study import unblind
from corelib.explorer.summary import interesting_order, unit_summary
from corelib.runs import RunDir
from corelib.tl.cards import ConceptData, gsea_label, table_row
from corelib.tl.evidence import batch_marks
from corelib.tl.units import unit_name

__all__ = ["overview_table", "unit_labels", "write_atlas"]


def unit_labels(store: LabelStore) -> pd.DataFrame:
    """Latest expert answers per unit name: direct labels plus un-blinded study answers (column ``name``).

    ``store``: a run directory or a labels file (the study key files next to it are read).
    """
    labels = read_labels(store)
    direct = labels[labels["study"].isna()].rename(columns={"item": "name"})
    frames = [direct]
    for key_file in sorted(labels_file(store).parent.glob("study_*_key.csv")):
        study_id = key_file.name.removeprefix("study_").removesuffix("_key.csv")
        frames.append(unblind(store, study_id).drop(columns="kind").rename(columns={"label_kind": "kind"}))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else direct


def atlas_units(data: ConceptData, kind: str, units: Sequence[int] | None = None) -> list[int]:
    """The units of ``kind`` that get a card, most evidence first (:func:`interesting_order`), then the batch
    concepts without attribution scores (largest batch AUROC first: notebook 03 may attribute a sample, and a
    user looks for every batch concept); ``units`` restricts them (those without attribution scores come last,
    in the order given)."""
    order = interesting_order(unit_summary(data, kind))
    if units is None:
        marks = batch_marks(data.metadata.get(kind, pd.DataFrame())).drop(index=order, errors="ignore")
        marked = marks[marks["batch_mark"] != ""].sort_values("batch_auroc", ascending=False, kind="stable")
        return order + [int(u) for u in marked.index]
    wanted = [int(u) for u in units]
    return [u for u in order if u in set(wanted)] + [u for u in wanted if u not in set(order)]


def overview_table(
    data: ConceptData, cards: Sequence[tuple[str, int]], answers: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The atlas overview's rows (:func:`corelib.explorer.html.overview_html`): one per card, in card order.

    Parameters
    ----------
    data
        The loaded data.
    cards
        ``(kind, unit)`` of each card, in the atlas' order.
    answers
        Expert answers (:func:`unit_labels`): a unit's latest non-empty label is its ``label``; without one,
        its GSEA label and annotation.

    Returns
    -------
    The columns of :func:`corelib.explorer.summary.unit_summary` (NaN for a unit without attribution scores)
    plus ``rank`` (position by evidence within its kind) and ``label``; ``batch_auroc`` when the data has batch
    marks (a run with a ``batch_key``): the AUROC of a batch concept, NaN for the others.
    """
    expert = {}
    if answers is not None and not answers.empty:
        named = answers[answers["label"].astype(str).str.strip() != ""]
        expert = named.groupby("name")["label"].last().astype(str).to_dict()
    rows, columns = [], ["rank", "name", "label", *_SUMMARY_COLUMNS]
    for kind in dict.fromkeys(k for k, _ in cards):
        summary, marks = unit_summary(data, kind), batch_marks(data.metadata.get(kind, pd.DataFrame()))
        if "batch_auroc" in summary and "batch_auroc" not in columns:  # batch marks: a column of their own
            columns.append("batch_auroc")
        ranks = {u: i + 1 for i, u in enumerate(interesting_order(summary))}
        for unit in (u for k, u in cards if k == kind):
            row = (
                summary.loc[unit]
                if unit in summary.index
                else marks.loc[unit]  # a batch concept without attribution scores: its mark
                if unit in marks.index
                else pd.Series(dtype=object)
            )
            name = unit_name(kind, unit)
            gsea = gsea_label(table_row(data.gsea.get(kind, pd.DataFrame()), unit))
            annotation = table_row(data.gsea.get(kind, pd.DataFrame()), unit).get("annotation", "")
            label = expert.get(name) or (f"GSEA: {gsea} (annotation {annotation})" if gsea else "")
            rows.append({**row.to_dict(), "name": name, "rank": ranks.get(unit, np.nan), "label": label})
    return pd.DataFrame(rows).reindex(columns=columns)


#: The summary columns the overview shows besides the rank, name and label.
_SUMMARY_COLUMNS = [
    "metadata_label",
    "top_share",
    "n_active",
    "specificity",
    "reliability",
    "label_q",
    "n_deg",
    "evidence",
    "top_genes",
    "deg_genes",
]


def write_atlas(
    source: Source,
    path: str | os.PathLike | None = None,
    *,
    kinds: Sequence[str] = ("concept",),
    units: Sequence[int] | None = None,
    n_top: int = 20,
    labels: LabelStore | None = None,
    progress: bool = False,
    **load: Any,
) -> Path:
    """Write the static atlas: one card per attributed unit, in one self-contained HTML file.

    Parameters
    ----------
    source
        A finished run directory (notebooks 01-03; 04 and expert labels are shown when present), its loaded
        data (:func:`corelib.explorer.load_run_data`), or an AnnData of ``cl.tl.train_sae``, ``attribute`` and
        ``annotate`` (what it lacks, each card says).
    path
        The HTML file to write; default the run's ``atlas/index.html`` (required when the data has no run).
    kinds
        Which units get cards: ``("concept",)`` by default; add ``"neuron"`` to compare.
    units
        Restrict to these unit ids (default: every unit with attribution scores, and the batch concepts without);
        cards come in the order of evidence (:func:`atlas_units`).
    n_top
        Genes per bar chart.
    labels
        Expert answers to show (a run directory or a labels file); default the run's.
    progress
        Show a progress bar (off by default: the pipeline calls this at the end and prints the path itself).
    load
        Settings of loading (``metadata_keys``; ``encoder`` and ``sae`` to steer an AnnData's concepts), see
        :func:`corelib.explorer.data.as_data`.

    Returns
    -------
    Path of the written HTML file (self-contained: opens from disk with no network).
    """
    data = as_data(source, **load)
    run = data.source if isinstance(data.source, RunDir) else None
    if path is None and run is None:
        raise ValueError("The data has no run directory to write its atlas in: pass path='atlas.html'.")
    store = run if labels is None else labels
    unit_answers = unit_labels(store) if store is not None else pd.DataFrame()
    todo = [(kind, u) for kind in kinds for u in atlas_units(data, kind, units)]
    cards = []
    for kind, unit in tqdm(todo, desc="atlas cards", disable=not progress):
        card = concept_card(data, unit, kind, n_top=n_top)
        mine = unit_answers[unit_answers["name"] == card.name] if not unit_answers.empty else unit_answers
        cards.append(card_html(card, labels=mine))
    overview = overview_html(overview_table(data, todo, unit_answers))
    page = atlas_html(
        cards, title=f"Concept atlas - {run_title(data)} ({len(cards)} cards)", overview=overview
    )
    path = run.path("atlas") if path is None else Path(path)
    with atomic_write(path) as fh:
        fh.write(page)
    return path
