"""The :class:`Attribution` result and the tables read from it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib._io import atomic_path
from corelib.tl.attribution.select import ATTRIBUTED, SKIPPED
from corelib.tl.units import unit_names


# --------------------------------------------------------------------------------------------------------------
# Whole-model attribution
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Attribution:
    """Gene x unit attribution scores (Eq. 3) with everything needed to reproduce or inspect them.

    Attributes
    ----------
    scores
        (n_genes x n_units) mean occlusion score (Eq. 3); NaN columns for skipped units.
    genes
        (n_genes,) gene names, the encoder's input order.
    units
        (n_units,) unit ids (concept or neuron index).
    activation
        (n_units,) mean activation of the unit over its prototypes (as recomputed by the model); NaN if skipped.
    prototypes, counterfactuals
        (n_units x n_p) and (n_units x n_p x n_c) cell indices (-1 if skipped).
    status
        DataFrame indexed by unit id (see :class:`Selection`).
    kind
        ``"concept"`` or ``"neuron"``; labels are ``C<id>`` / ``N<id>``.
    signed
        (n_genes x n_units) the same scores signed by the direction of the expression change, each pair's
        score times ``sign(prototype - counterfactual)`` before the mean: positive means "more of this gene, more
        of the unit" (Eq. 2's score is positive whether the prototype had more or less of it). None for files
        written before it was stored.
    reliability
        Indexed by unit id: ``split_half`` and ``top_overlap`` of :attr:`scores`, ``signed_split_half`` and
        ``signed_top_overlap`` of :attr:`signed` (:func:`split_half_reliability` of the even- vs odd-ranked
        prototypes); NaN when not measured. None for files written before it was stored.
    """

    scores: np.ndarray
    genes: np.ndarray
    units: np.ndarray
    activation: np.ndarray
    prototypes: np.ndarray
    counterfactuals: np.ndarray
    status: pd.DataFrame
    kind: str = "concept"
    signed: np.ndarray | None = None
    reliability: pd.DataFrame | None = None

    @property
    def labels(self) -> list[str]:
        """Display names of the units (``C12`` for concept 12, ``N3`` for neuron 3)."""
        return unit_names(self.kind, self.units)

    @property
    def attributed(self) -> np.ndarray:
        """Boolean (n_units,): units that were attributed (not skipped)."""
        return (self.status["status"] == ATTRIBUTED).to_numpy()

    def frame(self, direction: str = "paper") -> pd.DataFrame:
        """Scores of the attributed units as a DataFrame (genes x unit ids), the input of GSEA.

        ``direction``: ``"paper"`` (:attr:`scores`, Eq. 3) or ``"expression"`` (:attr:`signed`).
        """
        check_direction(direction)
        if direction == "expression" and self.signed is None:
            raise ValueError(
                "This attribution has no expression-signed scores (written before they were stored); "
                "recompute it (notebook 03 with overwrite=True), or use direction='paper'."
            )
        keep = self.attributed
        values = self.scores if direction == "paper" else self.signed
        return pd.DataFrame(
            values[:, keep], index=pd.Index(self.genes, name="gene"), columns=self.units[keep]
        )

    def reliable(self, direction: str = "paper") -> np.ndarray:
        """Boolean (n_units,): attributed units whose split-half Spearman (of ``direction``'s scores) reaches
        :data:`RELIABLE_SPEARMAN`; all False when reliability was not measured."""
        check_direction(direction)
        column = "split_half" if direction == "paper" else "signed_split_half"
        if self.reliability is None:
            return np.zeros(len(self.units), bool)
        rho = self.reliability[column].reindex(self.units).to_numpy(dtype=float)
        return self.attributed & (np.nan_to_num(rho, nan=-1.0) >= RELIABLE_SPEARMAN)

    def save(self, path: str | os.PathLike) -> None:
        """Write to an ``.npz`` file atomically (status columns stored as arrays, no pickle)."""
        with atomic_path(path) as tmp:
            np.savez_compressed(
                tmp,
                scores=self.scores,
                genes=self.genes.astype(str),
                units=self.units.astype(np.int64),  # an empty status index is an object array
                activation=self.activation,
                prototypes=self.prototypes,
                counterfactuals=self.counterfactuals,
                kind=np.array(self.kind),
                **({} if self.signed is None else {"signed": self.signed}),
                **(
                    {}
                    if self.reliability is None
                    else {f"reliability_{c}": self.reliability[c].to_numpy() for c in self.reliability}
                ),
                **{
                    f"status_{c}": self.status[c].to_numpy().astype(str if c in ("status", "reason") else int)
                    for c in self.status.columns
                },
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Attribution:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            status = pd.DataFrame(
                {k.removeprefix("status_"): z[k] for k in z.files if k.startswith("status_")},
                index=pd.Index(z["units"], name="unit"),
            )
            reliability = pd.DataFrame(
                {k.removeprefix("reliability_"): z[k] for k in z.files if k.startswith("reliability_")},
                index=pd.Index(z["units"], name="unit"),
            )
            return cls(
                scores=z["scores"],
                genes=z["genes"],
                units=z["units"],
                activation=z["activation"],
                prototypes=z["prototypes"],
                counterfactuals=z["counterfactuals"],
                status=status,
                kind=str(z["kind"]),
                signed=z["signed"] if "signed" in z.files else None,
                reliability=reliability if len(reliability.columns) else None,
            )


#: What a unit's gene evidence is without an attribution (no model, ``model: precomputed``): its DEG genes only.
CORRELATIONAL = "correlational (DEG), no attribution"


def unattributed(units: Sequence[int], genes: Sequence[str], *, kind: str, reason: str) -> Attribution:
    """An attribution that was not computed (e.g. no model: ``model: precomputed``): every unit skipped for
    ``reason``, its scores NaN, no prototypes; :func:`was_computed` tells it apart."""
    units_U, genes_G = np.asarray(units, dtype=int), np.asarray(genes, dtype=str)
    nan_GU = np.full((len(genes_G), len(units_U)), np.nan)
    status = pd.DataFrame(
        {"status": SKIPPED, "reason": reason, "n_active": np.nan, "n_inactive": np.nan},
        index=pd.Index(units_U, name="unit"),
    )
    return Attribution(
        scores=nan_GU,
        genes=genes_G,
        units=units_U,
        activation=np.full(len(units_U), np.nan),
        prototypes=np.full((len(units_U), 0), -1),
        counterfactuals=np.full((len(units_U), 0, 0), -1),
        status=status,
        kind=kind,
        signed=nan_GU,
    )


def was_computed(attr: Attribution) -> bool:
    """Whether ``attr`` holds a computed attribution (False for :func:`unattributed`)."""
    return attr.prototypes.shape[1] > 0


#: Sign conventions of attribution scores (:meth:`Attribution.frame`).
DIRECTIONS = ("paper", "expression")


def check_direction(direction: str) -> None:
    """Raise a ValueError naming the choices unless ``direction`` is one of :data:`DIRECTIONS`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}.")


#: Split-half Spearman from which a unit's gene scores count as reproducible (issue 22).
RELIABLE_SPEARMAN = 0.5

#: Genes compared by the top-overlap share of :func:`split_half_reliability`.
RELIABILITY_TOP = 20


def split_half_reliability(half_a_GU: np.ndarray, half_b_GU: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Agreement of two independent halves of each unit's attribution (e.g. even vs odd prototypes).

    Parameters
    ----------
    half_a_GU, half_b_GU
        Eq. 3 scores of the two halves (n_genes x n_units); NaN columns for units not attributed.

    Returns
    -------
    ``(spearman_U, overlap_U)``: the Spearman correlation of the halves over the genes scored non-zero in
    either (genes equal in every pair are 0 in both and would agree trivially), and the share of the halves'
    :data:`RELIABILITY_TOP` highest-scoring genes they have in common. NaN for a unit without both halves or
    with fewer than 3 scored genes.
    """
    from scipy.stats import spearmanr

    n_genes, n_units = half_a_GU.shape
    rho, overlap = np.full(n_units, np.nan), np.full(n_units, np.nan)
    n_top = min(RELIABILITY_TOP, n_genes)
    for u in range(n_units):
        a, b = half_a_GU[:, u], half_b_GU[:, u]
        if np.isnan(a).any() or np.isnan(b).any():
            continue
        scored = (a != 0) | (b != 0)
        if scored.sum() >= 3 and np.ptp(a[scored]) > 0 and np.ptp(b[scored]) > 0:
            rho[u] = spearmanr(a[scored], b[scored]).statistic
        top_a = set(np.argsort(-a, kind="stable")[:n_top])
        overlap[u] = len(top_a & set(np.argsort(-b, kind="stable")[:n_top])) / n_top
    return rho, overlap


def dense_rows(X, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a dense or sparse cells x genes matrix, as a dense float32 array."""
    rows = X[idx]
    return np.asarray(rows.toarray() if sp.issparse(rows) else rows, dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------------------------
def ranked_genes(attr: Attribution, unit: int, *, threshold: float = 0.05) -> pd.DataFrame:
    """C_i of Eq. 3: the genes of one unit sorted by attribution score.

    Parameters
    ----------
    attr
        An :class:`Attribution`.
    unit
        Unit id (concept or neuron index).
    threshold
        Importance threshold on the score (paper: 0.05).

    Returns
    -------
    DataFrame indexed by gene, highest score first: ``score``, ``relative`` (score / the unit's mean
    prototype activation), ``important`` (score > threshold).
    """
    where = np.flatnonzero(attr.units == unit)
    if len(where) == 0:
        raise KeyError(
            f"Unit {unit} is not in this attribution (units {', '.join(map(str, attr.units[:5]))}, ...)."
        )
    j = where[0]
    if not attr.attributed[j]:
        raise ValueError(f"Unit {unit} was skipped: {attr.status['reason'].iloc[j]}.")
    df = pd.DataFrame(
        {"score": attr.scores[:, j], "relative": attr.scores[:, j] / attr.activation[j]},
        index=pd.Index(attr.genes, name="gene"),
    )
    df["important"] = df["score"] > threshold
    return df.sort_values("score", ascending=False, kind="stable")


def top_genes(attr: Attribution, n: int = 10) -> pd.DataFrame:
    """The ``n`` highest-scoring genes of every attributed unit, as a long table.

    Returns
    -------
    DataFrame with columns ``unit``, ``rank`` (1 = highest), ``gene``, ``score``, ``relative``.
    """
    keep = np.flatnonzero(attr.attributed)
    order_NU = np.argsort(-attr.scores[:, keep], axis=0, kind="stable")[:n]
    rank_N = np.arange(1, len(order_NU) + 1)
    return pd.DataFrame(
        {
            "unit": np.repeat(attr.units[keep], len(rank_N)),
            "rank": np.tile(rank_N, len(keep)),
            "gene": attr.genes[order_NU.T.ravel()],
            "score": np.take_along_axis(attr.scores[:, keep], order_NU, 0).T.ravel(),
            "relative": (
                np.take_along_axis(attr.scores[:, keep], order_NU, 0) / attr.activation[keep]
            ).T.ravel(),
        }
    )


def important_gene_counts(
    attr: Attribution, *, threshold: float = 0.05, relative_threshold: float = 0.01
) -> pd.DataFrame:
    """Number of important genes per unit (paper Fig. 2C), absolute and relative to the unit's activation.

    The paper's threshold (score > 0.05) is in activation units, so its meaning changes with the scale of a
    concept; the relative count uses score / mean prototype activation > ``relative_threshold`` instead.

    Returns
    -------
    DataFrame indexed by unit id (attributed units only): ``activation``, ``n_important`` (score >
    threshold), ``threshold_relative`` (threshold / activation: what the absolute threshold means for this
    unit), ``n_important_relative``.
    """
    keep = attr.attributed
    scores, act = attr.scores[:, keep], attr.activation[keep]
    return pd.DataFrame(
        {
            "activation": act,
            "n_important": (scores > threshold).sum(0),
            "threshold_relative": threshold / act,
            "n_important_relative": (scores / act > relative_threshold).sum(0),
        },
        index=pd.Index(attr.units[keep], name="unit"),
    )


def sample_concepts(
    codes_NC: np.ndarray,
    max_concepts: int | None,
    *,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Concepts to attribute: all of them, or a seeded random sample of the attributable ones.

    Attributing every concept of a large SAE takes long on a CPU; a random sample (as the paper's expert
    study did with 20 concepts) keeps the summaries unbiased.

    Parameters
    ----------
    codes_NC
        Concept activations of all cells.
    max_concepts
        How many concepts to keep; None keeps all (skipped ones are then recorded with their reason).
    n_prototypes, n_counterfactuals
        A sampled concept has at least this many active and non-activating cells.
    seed
        Seed of the sample.

    Returns
    -------
    Sorted concept indices.
    """
    if max_concepts is None:
        return np.arange(codes_NC.shape[1])
    n_active = np.asarray((codes_NC > 0).sum(axis=0)).ravel()  # dense or sparse codes
    ok = np.flatnonzero((n_active >= n_prototypes) & (codes_NC.shape[0] - n_active >= n_counterfactuals))
    if len(ok) < max_concepts:
        print(
            f"Only {len(ok)} of {codes_NC.shape[1]} concepts are active on at least n_prototypes={n_prototypes} "
            f"cells and inactive on at least n_counterfactuals={n_counterfactuals}: all of them are attributed."
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ok, size=min(int(max_concepts), len(ok)), replace=False))


def status_table(*attrs: Attribution) -> pd.DataFrame:
    """Per-unit status of several attributions (concepts and neurons) as one table.

    Returns
    -------
    DataFrame with columns ``kind``, ``unit``, ``label``, ``status``, ``reason``, ``n_active``, ``n_inactive``,
    ``activation`` (mean prototype activation) and the reliability columns (:attr:`Attribution.reliability`;
    NaN where not measured).
    """
    columns = ["kind", "unit", "label", "status", "reason", "n_active", "n_inactive", "activation"]
    return pd.concat(
        [
            a.status.reset_index()
            .assign(kind=a.kind, label=a.labels, activation=a.activation)
            .join(_reliability_columns(a), on="unit")[[*columns, *RELIABILITY_COLUMNS]]
            for a in attrs
        ],
        ignore_index=True,
    )


#: Columns of :attr:`Attribution.reliability`.
RELIABILITY_COLUMNS = ["split_half", "top_overlap", "signed_split_half", "signed_top_overlap"]


def _reliability_columns(attr: Attribution) -> pd.DataFrame:
    """The reliability table of an attribution, NaN-filled (and complete) when not measured."""
    table = attr.reliability if attr.reliability is not None else pd.DataFrame(index=attr.units)
    return table.reindex(index=attr.units, columns=RELIABILITY_COLUMNS).rename_axis("unit")


#: Bins of the number of important genes per unit (paper Fig. 2C): [0, 1), [1, 4), [4, 11), [11, 51), [51, inf).
GENE_COUNT_BINS = (0, 1, 4, 11, 51, np.inf)
GENE_COUNT_LABELS = ("0", "1-3", "4-10", "11-50", ">50")


def important_gene_shares(counts: pd.DataFrame) -> pd.DataFrame:
    """Share of units per bin of :data:`GENE_COUNT_BINS` important genes, for each threshold (paper Fig. 2C).

    Parameters
    ----------
    counts
        From :func:`important_gene_counts`.

    Returns
    -------
    Bins (index, :data:`GENE_COUNT_LABELS`) x thresholds (``score > threshold``, ``relative to activation``);
    each column sums to 1. ``attrs["n_units"]`` holds the number of units.
    """
    shares = pd.DataFrame(
        {
            name: pd.cut(counts[col], GENE_COUNT_BINS, right=False, labels=GENE_COUNT_LABELS).value_counts(
                normalize=True
            )
            for name, col in [
                ("score > threshold", "n_important"),
                ("relative to activation", "n_important_relative"),
            ]
        }
    ).loc[list(GENE_COUNT_LABELS)]
    shares.attrs["n_units"] = len(counts)
    return shares


def worked_examples(
    attr: Attribution, gsea_units: pd.DataFrame, metadata: pd.DataFrame, *, n: int = 4, n_genes: int = 10
) -> pd.DataFrame:
    """A few interpreted units in the layout of the paper's Table 4: top genes, metadata, GSEA label.

    Units with the most significant GSEA label come first (then the most important genes, for units GSEA
    could not label).

    Parameters
    ----------
    attr
        An :class:`Attribution`.
    gsea_units
        ``corelib.tl.enrichment.gsea(...).units`` (indexed by unit; ``term``, ``pval``, ``annotation``).
    metadata
        ``corelib.tl.concepts.characterize`` table (indexed by unit; ``call``, ``<column>_top``,
        ``<column>_fraction``).
    n, n_genes
        Number of units, and of top genes listed per unit.

    Returns
    -------
    DataFrame indexed by label (``C12``): ``top_genes``, ``metadata``, ``gsea_label``, ``gsea_pval``,
    ``annotation``.
    """
    top = top_genes(attr, n=n_genes).groupby("unit")["gene"].agg(", ".join)
    gsea = gsea_units.reindex(top.index)
    n_important = pd.Series((attr.scores > 0.05).sum(0), index=attr.units).reindex(top.index)
    order = (
        pd.DataFrame({"p": gsea["pval"].fillna(np.inf), "g": -n_important}).sort_values(["p", "g"]).index[:n]
    )
    columns = [c.removesuffix("_top") for c in metadata.columns if c.endswith("_top")]

    def describe(unit: int) -> str:
        if unit not in metadata.index:
            return ""
        row = metadata.loc[unit]
        labels = "; ".join(f"{c}: {row[f'{c}_top']} ({row[f'{c}_fraction']:.0%})" for c in columns)
        return f"{row['call']} ({row['n_active']} active cells); {labels}"

    return pd.DataFrame(
        {
            "top_genes": top.loc[order].to_numpy(),
            "metadata": [describe(u) for u in order],
            "gsea_label": gsea.loc[order, "term"].to_numpy(),
            "gsea_pval": gsea.loc[order, "pval"].to_numpy(),
            "annotation": gsea.loc[order, "annotation"].to_numpy(),
        },
        index=pd.Index(unit_names(attr.kind, order), name="unit"),
    )


def unit_top_genes(attr: Any, unit: int, n: int = 10) -> list[str]:
    """The ``n`` genes with the highest positive attribution score for one unit, highest first.

    ``attr`` is a ``corelib.tl.attribution.Attribution``; a unit it does not cover, or skipped, gets ``[]``.
    """
    if attr is None or unit not in set(np.asarray(attr.units).tolist()):
        return []
    j = int(np.flatnonzero(np.asarray(attr.units) == unit)[0])
    if not attr.attributed[j]:
        return []
    ranked = ranked_genes(attr, unit)
    return [str(g) for g in ranked.index[:n][ranked["score"].to_numpy()[:n] > 0]]
