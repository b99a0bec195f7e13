"""The blinded interpretability study (App. D): a shuffled mix of concepts and neurons."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from corelib.explorer.cards import RunData, _as_data
from corelib.explorer.labels import INTERPRETABLE_CHOICES, read_labels
from corelib.runs import RunDir
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


def make_study(run: RunDir | RunData, n_concepts: int = 20, n_neurons: int = 20, *, seed: int = 0) -> Study:
    """Draw a blinded study and write its key file ``06_explorer/study_<id>_key.csv``.

    Concepts and neurons are drawn uniformly without replacement among the units with attribution scores
    (the paper: 20 + 20), then shuffled together. The same seed and sizes give the same study.

    Parameters
    ----------
    run
        Run directory or loaded :class:`RunData`.
    n_concepts, n_neurons
        Items of each kind (fewer when the run has fewer attributed units; a warning says so).
    seed
        Seed of the draw and of the order.

    Returns
    -------
    The :class:`Study`.
    """
    data = _as_data(run)
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
        raise ValueError("No unit has attribution scores: run notebook 03 before drawing a study.")
    study_id = f"seed{seed}_{n_concepts}c{n_neurons}n"
    order = rng.permutation(len(drawn))
    tokens = tuple(f"{study_id}-{i + 1:02d}" for i in range(len(drawn)))
    key = {tok: drawn[j] for tok, j in zip(tokens, order, strict=True)}
    table = pd.DataFrame(
        [(tok, kind, unit, unit_name(kind, unit)) for tok, (kind, unit) in key.items()],
        columns=["token", "kind", "unit", "name"],
    )
    data.run.write_table("study_key", table, name=study_id, index=False)
    return Study(id=study_id, tokens=tokens, key=key)


def unblind(run: RunDir, study: Study | str) -> pd.DataFrame:
    """Join a study's latest answers (every rater) with its key file.

    Parameters
    ----------
    run
        The run directory.
    study
        The :class:`Study` or its id.

    Returns
    -------
    DataFrame with one row per (rater, item): ``rater``, ``token``, ``kind`` (concept/neuron), ``unit``,
    ``name``, ``interpretable``, ``confidence``, ``label_kind``, ``label``, ``description``.
    """
    study_id = study.id if isinstance(study, Study) else str(study)
    key = run.read_table("study_key", name=study_id, index_col=None)
    labels = read_labels(run)
    labels = labels[labels["study"] == study_id].rename(columns={"item": "token", "kind": "label_kind"})
    out = labels.merge(key, on="token", how="inner", validate="many_to_one")
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
