"""The blinded interpretability study (App. D): a shuffled mix of concepts and neurons."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from corelib._io import atomic_write
from corelib.explorer.data import Source, as_data
from corelib.explorer.labels import INTERPRETABLE_CHOICES, LabelStore, read_labels, study_key_file
from corelib.runs import RunDir
from corelib.runs.registry import step
from corelib.tl.units import unit_name


# ------------------------------------------------------------------------------------------ blinded study
@dataclass(frozen=True)
class Study:
    """A blinded study (paper 4.3): a seeded, shuffled mix of concepts and neurons behind opaque tokens.

    Attributes
    ----------
    id
        Study id (``seed<seed>_<n>c<m>n``), stored with every answer.
    tokens
        The items in presentation order; a token says nothing about the unit behind it.
    key
        token -> (kind, unit). Used to draw the cards; never displayed. Also written to the key file.
    """

    id: str
    tokens: tuple[str, ...]
    key: dict[str, tuple[str, int]] = field(repr=False)


def make_study(
    source: Source,
    n_concepts: int = 20,
    n_neurons: int = 20,
    *,
    seed: int = 0,
    store: LabelStore | None = None,
) -> Study:
    """Draw a blinded study and write its key file ``study_<id>_key.csv`` (a run's: ``06_explorer/``).

    Concepts and neurons are drawn uniformly without replacement among the units with attribution scores
    (the paper: 20 + 20), then shuffled together. The same seed and sizes give the same study.

    Parameters
    ----------
    source
        The loaded :class:`~corelib.tl.cards.ConceptData`, a run directory or an AnnData.
    n_concepts, n_neurons
        Items of each kind (fewer when the run has fewer attributed units; a warning says so).
    seed
        Seed of the draw and of the order.
    store
        Where the answers go (a run directory or a labels file; the key file goes next to it); default the
        data's run directory. With neither, the key is not written (a warning says so): :func:`unblind` then
        needs the :class:`Study` itself.

    Returns
    -------
    The :class:`Study`.
    """
    data = as_data(source)
    store = data.source if store is None and isinstance(data.source, RunDir) else store
    rng = np.random.default_rng(seed)
    drawn: list[tuple[str, int]] = []
    for kind, n in (("concept", n_concepts), ("neuron", n_neurons)):
        pool = data.units(kind)
        if len(pool) < n:
            warnings.warn(
                f"Only {len(pool)} {kind}s have attribution scores; the study uses all of them.", stacklevel=2
            )
        chosen = rng.choice(np.asarray(pool, dtype=int), size=min(n, len(pool)), replace=False)
        drawn += [(kind, int(u)) for u in sorted(chosen)]
    if not drawn:
        raise ValueError(f"No unit has attribution scores: run {step('interpret')} before drawing a study.")
    study_id = f"seed{seed}_{n_concepts}c{n_neurons}n"
    order = rng.permutation(len(drawn))
    tokens = tuple(f"{study_id}-{i + 1:02d}" for i in range(len(drawn)))
    key = {tok: drawn[j] for tok, j in zip(tokens, order, strict=True)}
    table = _key_table(key)
    if isinstance(store, RunDir):
        store.write_table("study_key", table, name=study_id, index=False)
    elif store is not None:
        with atomic_write(study_key_file(store, study_id)) as fh:
            table.to_csv(fh, index=False)
    else:
        warnings.warn(
            "No label store (a run directory or a labels file): the study's key file is not written; keep the "
            "Study to unblind its answers.",
            stacklevel=2,
        )
    return Study(id=study_id, tokens=tokens, key=key)


def _key_table(key: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """A study's key as the key file's table: ``token``, ``kind``, ``unit``, ``name``."""
    return pd.DataFrame(
        [(tok, kind, unit, unit_name(kind, unit)) for tok, (kind, unit) in key.items()],
        columns=["token", "kind", "unit", "name"],
    )


def unblind(store: LabelStore, study: Study | str, *, reveal_anyway: bool = False) -> pd.DataFrame:
    """Join a study's latest answers (every rater who finished it) with its key file (or the :class:`Study`'s
    key, when no key file was written).

    A rater who has not answered every item is left out, with a warning: seeing which unit each answered item
    was would bias the answers still to come.

    Parameters
    ----------
    store
        The run directory, or the labels file.
    study
        The :class:`Study` or its id.
    reveal_anyway
        Also unblind the raters who have not finished (their answers so far).

    Returns
    -------
    DataFrame with one row per (rater, item): ``rater``, ``token``, ``kind`` (concept/neuron), ``unit``,
    ``name``, ``interpretable``, ``confidence``, ``label_kind``, ``label``, ``description``.
    """
    study_id = study.id if isinstance(study, Study) else str(study)
    path = study_key_file(store, study_id)
    if not path.exists() and isinstance(study, Study):
        key = _key_table(study.key)
    elif isinstance(store, RunDir):
        key = store.read_table("study_key", name=study_id, index_col=None)  # its checksum verified
    else:
        key = pd.read_csv(path)
    labels = read_labels(store)
    labels = labels[labels["study"] == study_id].rename(columns={"item": "token", "kind": "label_kind"})
    out = labels.merge(key, on="token", how="inner", validate="many_to_one")
    answered = out.groupby("rater")["token"].nunique()
    unfinished = answered[answered < len(key)]
    if len(unfinished) and not reveal_anyway:
        who = ", ".join(f"{rater} ({n} of {len(key)})" for rater, n in unfinished.items())
        warnings.warn(
            f"Not unblinded: {who} answered only part of study {study_id}; seeing which unit each answered item "
            "was would bias the rest. Finish the study, or pass reveal_anyway=True.",
            stacklevel=2,
        )
        out = out[~out["rater"].isin(unfinished.index)]
    cols = [
        "rater",
        "token",
        "kind",
        "unit",
        "name",
        "interpretable",
        "confidence",
        "label_kind",
        "label",
        "description",
    ]
    return out[cols].sort_values(["rater", "token"]).reset_index(drop=True)


def interpretability_table(unblinded: pd.DataFrame) -> pd.DataFrame:
    """Fraction of concepts and of neurons judged interpretable, per rater and over all raters (Fig. 3A.a).

    Parameters
    ----------
    unblinded
        Output of :func:`unblind`.

    Returns
    -------
    DataFrame indexed by (rater, kind), ``rater == "all raters"`` pooling everyone, with one column per
    answer of :data:`INTERPRETABLE_CHOICES` (fractions) and ``n`` (answers).
    """
    if unblinded.empty:
        empty = pd.MultiIndex.from_tuples([], names=["rater", "kind"])
        return pd.DataFrame(columns=[*INTERPRETABLE_CHOICES, "n"], index=empty, dtype=float)
    pooled = unblinded.assign(rater="all raters")
    both = pd.concat([unblinded, pooled]) if unblinded["rater"].nunique() > 1 else unblinded
    counts = both.groupby(["rater", "kind"])["interpretable"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(INTERPRETABLE_CHOICES), fill_value=0)
    n = counts.sum(axis=1)
    table = counts.div(n, axis=0)
    table["n"] = n
    return table
