"""Expert labels: an append-only JSON-lines store, in the run directory (``06_explorer/labels.jsonl``) or any file.

A label store is a run directory (its ``labels`` entry) or the path of a ``.jsonl`` file (an explorer opened on
an AnnData); blinded-study key files go next to it (``study_<id>_key.csv``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from corelib.runs import RunDir

#: Answers of the labelling form (paper appendix D, Fig. 9 right).
INTERPRETABLE_CHOICES: tuple[str, ...] = ("yes", "partly", "no")


CONFIDENCE_CHOICES: tuple[int, ...] = (1, 2, 3, 4, 5)


LABEL_KIND_CHOICES: tuple[str, ...] = ("cell type", "biological process", "tissue", "technical", "unknown")


#: Where answers go: a run directory, or the path of a labels file (JSON lines).
LabelStore = RunDir | str | os.PathLike


def labels_file(store: LabelStore) -> Path:
    """The labels file of a store: ``run.path("labels")`` for a run directory, else the path itself."""
    return store.path("labels") if isinstance(store, RunDir) else Path(store)


def study_key_file(store: LabelStore, study_id: str) -> Path:
    """The key file of a blinded study, next to the store's labels (``study_<id>_key.csv``)."""
    if isinstance(store, RunDir):
        return store.path("study_key", study_id)
    return labels_file(store).parent / f"study_{study_id}_key.csv"


# ------------------------------------------------------------------------------------------- expert labels
def save_label(
    store: LabelStore,
    item: str,
    *,
    rater: str,
    interpretable: str,
    confidence: int,
    kind: str,
    label: str = "",
    description: str = "",
    study: str | None = None,
) -> dict[str, Any]:
    """Append one expert answer to the store's labels file, flushed and fsync-ed before returning.

    Parameters
    ----------
    store
        The run directory, or the path of a labels file.
    item
        What was labelled: a unit name (``"C12"``, ``"N3"``) or, in a blinded study, the item's token.
    rater
        Who answered (several raters may label the same items).
    interpretable
        One of :data:`INTERPRETABLE_CHOICES`.
    confidence
        One of :data:`CONFIDENCE_CHOICES` (1 = guess, 5 = certain).
    kind
        One of :data:`LABEL_KIND_CHOICES`.
    label, description
        The expert label and a free-text description.
    study
        Id of the blinded study the item belongs to, if any.

    Returns
    -------
    The record written (with its UTC ``time``).
    """
    if not str(rater).strip():
        raise ValueError(
            "rater is empty; enter your name or initials so that answers of several raters stay apart."
        )
    if interpretable not in INTERPRETABLE_CHOICES:
        raise ValueError(
            f"interpretable={interpretable!r}; choose one of {', '.join(INTERPRETABLE_CHOICES)}."
        )
    if confidence not in CONFIDENCE_CHOICES:
        raise ValueError(
            f"confidence={confidence!r}; choose an integer in {', '.join(map(str, CONFIDENCE_CHOICES))}."
        )
    if kind not in LABEL_KIND_CHOICES:
        raise ValueError(f"kind={kind!r}; choose one of {', '.join(LABEL_KIND_CHOICES)}.")
    record = {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
        "rater": str(rater).strip(),
        "item": str(item),
        "study": study,
        "label": str(label),
        "description": str(description),
        "interpretable": interpretable,
        "confidence": int(confidence),
        "kind": kind,
    }
    line = json.dumps(record, ensure_ascii=False) + "\n"
    path = labels_file(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    return record


LABEL_COLUMNS = [
    "time",
    "rater",
    "item",
    "study",
    "label",
    "description",
    "interpretable",
    "confidence",
    "kind",
]


def read_labels(store: LabelStore, *, latest: bool = True) -> pd.DataFrame:
    """Expert answers saved in a store.

    Parameters
    ----------
    store
        The run directory, or the path of a labels file.
    latest
        Keep only the latest answer per (rater, study, item); else every submit, in file order.

    Returns
    -------
    DataFrame with columns :data:`LABEL_COLUMNS` (empty when nobody answered yet). A line that cannot be
    parsed (a crash in the middle of a write) is skipped with a warning.
    """
    path = labels_file(store)
    records = []
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{n} is not valid JSON (interrupted write?); skipped.", stacklevel=2)
    table = pd.DataFrame(records, columns=LABEL_COLUMNS)
    if latest and len(table):
        table = table.assign(_study=table["study"].fillna(""))
        table = table.drop_duplicates(["rater", "_study", "item"], keep="last").drop(columns="_study")
    return table.reset_index(drop=True)


def labels_for(labels: pd.DataFrame, item: str, study: str | None = None) -> pd.DataFrame:
    """The latest answers (all raters) for one item, from :func:`read_labels`."""
    if labels.empty:
        return labels
    same_study = labels["study"].isna() if study is None else labels["study"] == study
    return labels[(labels["item"] == item) & same_study].reset_index(drop=True)
