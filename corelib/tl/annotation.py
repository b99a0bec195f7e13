"""Annotation of a unit's GSEA label: strong / weak / none, and the gene-label permutation null (paper 4.3).

Two modes (:func:`annotation_levels`); every per-unit table of :func:`corelib.tl.enrichment.gsea` carries
the columns both need (``pval``, ``pval_unit``, ``qval``):

* ``"calibrated"`` (default): the label's p-value is the best of ``n_sets_tested`` tests, so it is first
  adjusted for them by Bonferroni, ``pval_unit = min(1, n_sets_tested * pval)`` (valid under any dependence
  between the sets; for the smallest p it equals Holm's step), then Benjamini-Hochberg across the units GSEA
  tested gives ``qval``. "strong" when q < :data:`STRONG_Q` (0.01), "weak" when q < :data:`WEAK_Q` (0.05).
* ``"paper"``: the raw label p-value, "strong" when p < :data:`STRONG_P` (5e-5), "weak" when p <
  :data:`WEAK_P` (5e-3) (paper 4.3, Fig. 3A.b). The best of ~250 raw p-values often passes 5e-3 by chance,
  as units whose gene labels are permuted show (:func:`permute_gene_labels`).

The measurements behind these choices are in ``docs/decisions.md`` (2026-11-29, issue 12).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

#: Paper annotation thresholds on the top term's raw p-value (paper 4.3, Fig. 3A.b).
STRONG_P = 5e-5


WEAK_P = 5e-3


#: Calibrated annotation thresholds on the unit's q-value (set-adjusted, then BH across units).
STRONG_Q = 0.01


WEAK_Q = 0.05


#: Annotation modes of :func:`annotation_levels`.
ANNOTATION_MODES = ("calibrated", "paper")


#: Annotation levels, strongest first.
ANNOTATIONS = ("strong", "weak", "none")


def annotation_strength(pval: float) -> str:
    """Paper mode: ``"strong"`` (p < 5e-5), ``"weak"`` (p < 5e-3) or ``"none"`` (paper 4.3, Fig. 3A.b)."""
    if pval < STRONG_P:
        return "strong"
    return "weak" if pval < WEAK_P else "none"


def unit_pvalues(units: pd.DataFrame) -> pd.Series:
    """The label's p-value adjusted for the number of sets tested in its unit (Bonferroni).

    Parameters
    ----------
    units
        :attr:`corelib.tl.enrichment.GseaResult.units` (columns ``pval``, ``n_sets_tested``).

    Returns
    -------
    pd.Series
        ``pval_unit = min(1, n_sets_tested * pval)``: 1 for a tested unit without a positively enriched set,
        NaN for a unit GSEA did not test (skipped, or fgsea failed).
    """
    tested = units["n_sets_tested"].astype(float) > 0
    adjusted = (units["pval"].astype(float) * units["n_sets_tested"].astype(float)).clip(upper=1.0)
    return adjusted.fillna(1.0).where(tested).rename("pval_unit")


def benjamini_hochberg(pvals: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over the non-NaN entries; NaN entries stay NaN."""
    p = np.asarray(pvals, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def check_mode(annotation: str) -> None:
    """Raise a ValueError naming the modes unless ``annotation`` is one of :data:`ANNOTATION_MODES`."""
    if annotation not in ANNOTATION_MODES:
        raise ValueError(f"annotation must be one of {', '.join(ANNOTATION_MODES)}, got {annotation!r}.")


def annotation_levels(units: pd.DataFrame, annotation: str = "calibrated") -> pd.Series:
    """Strong / weak / none per unit, in one of :data:`ANNOTATION_MODES` (see the module docstring).

    Parameters
    ----------
    units
        :attr:`corelib.tl.enrichment.GseaResult.units`: ``qval`` for ``"calibrated"`` (q < 0.01 strong,
        < 0.05 weak), ``pval`` for ``"paper"`` (p < 5e-5 strong, < 5e-3 weak). Units without a label are
        "none".
    annotation
        ``"calibrated"`` or ``"paper"``.

    Returns
    -------
    pd.Series
        The annotation per unit (same index).
    """
    check_mode(annotation)
    if annotation == "paper":
        values = [annotation_strength(p) for p in units["pval"].astype(float)]
    elif "qval" not in units.columns:
        raise ValueError(
            "This GSEA table has no qval column (made before calibrated annotation); recompute it with "
            "corelib.tl.enrichment.gsea (notebook 03 with overwrite=True), or pass annotation='paper'."
        )
    else:
        q = units["qval"].astype(float).to_numpy()
        values = np.select([q < STRONG_Q, q < WEAK_Q], ["strong", "weak"], "none").tolist()
    return pd.Series(values, index=units.index, name="annotation", dtype=object)


def annotation_rates(units: pd.DataFrame, annotation: str | None = None) -> pd.Series:
    """Shares of units annotated strong, weak, and either (``any``), over all rows of the table.

    Parameters
    ----------
    units
        :attr:`corelib.tl.enrichment.GseaResult.units` of real or permuted scores
        (:func:`permute_gene_labels`).
    annotation
        ``None`` reads the ``annotation`` column; a mode of :func:`annotation_levels` recomputes it.

    Returns
    -------
    pd.Series
        ``strong``, ``weak``, ``any`` (fractions of ``len(units)``; NaN for an empty table).
    """
    labels = units["annotation"] if annotation is None else annotation_levels(units, annotation)
    n = len(labels) or np.nan
    strong, weak = float((labels == "strong").sum() / n), float((labels == "weak").sum() / n)
    return pd.Series({"strong": strong, "weak": weak, "any": strong + weak}, name=annotation or "annotation")


def annotation_shares(real: Mapping[str, pd.DataFrame], null: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Share of units annotated (strong or weak) in each mode, for the real scores and their permutation null.

    Parameters
    ----------
    real, null
        Kind (``"concepts"``, ``"neurons"``) -> per-unit GSEA table of the real scores and of permuted gene
        labels (``corelib.tl.enrichment.gsea(...).units`` and ``gsea_null``), with the same kinds.

    Returns
    -------
    DataFrame indexed by kind, columns (mode, source) for each of :data:`ANNOTATION_MODES` and ``"real"``,
    ``"null"``: :func:`annotation_rates` ``["any"]``, the annotation recomputed in that mode.
    """
    return pd.DataFrame(
        {
            (mode, source): {kind: annotation_rates(tables[kind], mode)["any"] for kind in real}
            for mode in ANNOTATION_MODES
            for source, tables in (("real", real), ("null", null))
        }
    )


def annotation_excess(shares: pd.DataFrame, annotation: str = "calibrated") -> pd.Series:
    """Share annotated beyond chance per kind: real minus null of one mode of :func:`annotation_shares`."""
    check_mode(annotation)
    return shares[(annotation, "real")] - shares[(annotation, "null")]


def permute_gene_labels(
    scores_GU: pd.DataFrame,
    *,
    n_units: int | None = None,
    seed: int = 0,
    bins_G: np.ndarray | None = None,
) -> pd.DataFrame:
    """The gene-label permutation null: each unit keeps its scores, its genes' labels are shuffled.

    A unit keeps its ranking shape (how many genes score, how heavy its top is) while which genes score is
    random, so every annotation of the result by :func:`corelib.tl.enrichment.gsea` is a false positive: its
    annotation rate is the rate reached by chance.

    Parameters
    ----------
    scores_GU
        Attribution scores, genes x units (the input of :func:`corelib.tl.enrichment.gsea`).
    n_units
        A seeded random sample of this many units (to keep the null's GSEA cheap); ``None`` keeps all.
    seed
        Seed of the sample and of the permutations (an independent permutation per unit).
    bins_G
        Expression bin of each gene (``corelib.tl.enrichment.expression_bins``): the expression-matched null,
        which shuffles scores only among genes of the same bin, so a unit keeps its link between score and
        expression while which genes of a given expression score is random. ``None``: one bin (plain null).

    Returns
    -------
    pd.DataFrame
        Genes x sampled units (in their original order), same index and dtype as ``scores_GU``.
    """
    if not isinstance(scores_GU, pd.DataFrame):
        raise TypeError(f"scores_GU must be a DataFrame (genes x units), not {type(scores_GU).__name__}.")
    rng = np.random.default_rng(seed)
    cols = np.arange(scores_GU.shape[1])
    if n_units is not None:
        if n_units < 1:
            raise ValueError(f"n_units must be >= 1 (or None for all units), got {n_units}.")
        cols = np.sort(rng.choice(cols, min(n_units, len(cols)), replace=False))
    values = scores_GU.to_numpy()[:, cols]
    if bins_G is None:
        permuted = rng.permuted(values, axis=0)  # each column shuffled on its own
    else:
        bins_G = np.asarray(bins_G)
        if bins_G.shape != (len(scores_GU),):
            raise ValueError(f"bins_G needs one bin per gene ({len(scores_GU)}), got shape {bins_G.shape}.")
        permuted = values.copy()
        for b in np.unique(bins_G):
            rows = np.flatnonzero(bins_G == b)
            permuted[rows] = rng.permuted(values[rows], axis=0)
    return pd.DataFrame(permuted, index=scores_GU.index, columns=scores_GU.columns[cols])
