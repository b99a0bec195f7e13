"""The verdicts: each headline claim judged from its measurements against its comparison and its null.

A run measures every claim several times (one value per SAE seed, per pair of seeds, per split) in a long
*measurements* table: one row per ``(claim, arm, replicate)`` where ``arm`` is ``"run"`` (what the claim is
about), the claim's comparison (e.g. ``"neurons"``) or its null (e.g. ``"permuted genes"``, ``"random
encoder"``, ``"chance"``). :func:`evaluate_claims` turns it into one row per claim: the run's mean and std,
the comparison's and the null's, the paper's value and a verdict from the rule of the claim's :class:`Claim`.
Nothing in the verdict is written by hand; the rules are in :func:`verdict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Columns of the measurements table.
MEASUREMENT_COLUMNS = ["claim", "arm", "replicate", "value"]


#: Columns of :func:`evaluate_claims`'s table (index ``claim``).
CLAIM_COLUMNS = [
    "statement", "source", "value", "std", "n", "comparison", "comparison_value", "comparison_std",
    "null", "null_value", "null_std", "paper", "verdict", "reason",
]  # fmt: skip


#: Arm of the one row that says why a claim could not be measured (:func:`not_measured`).
NOT_MEASURED = "not measured"

#: Verdicts, from best to worst: *at the margin* when the run sits within the noise of a rule's boundary (two
#: standard errors, or the claim's ``resolution``), *no power* when the run, its comparison and its null are all
#: zero (the measurement cannot tell anything apart; read it against the power table of docs/decisions.md).
VERDICTS = ("holds", "at the margin", "fails", "no power", "not measured")


@dataclass(frozen=True)
class Claim:
    """How one claim is judged.

    Attributes
    ----------
    statement
        The claim, as the paper makes it.
    source
        Where the paper makes it (section, figure).
    comparison, null
        Arm names in the measurements table.
    rule
        ``"greater"``: the run must exceed both the comparison and the null; ``"less"``: lie below both;
        ``"within"``: lie within ``tolerance`` of the comparison (the null is shown, not judged);
        ``"at_least"``: reach the comparison (a threshold; the null is shown, not judged);
        ``"beyond_spread"``: exceed the comparison's mean + 2 sd (one value against the spread of the
        comparison's draws, e.g. suppressing chosen concepts against suppressing random ones; the null is shown,
        not judged), and keep the ``condition`` arm at ``-tolerance`` or above.
    paper
        The paper's value, as text.
    tolerance
        For ``"within"``; for ``"beyond_spread"``, how far below 0 the ``condition`` arm may go.
    condition
        For ``"beyond_spread"``: the arm that must stay at ``-tolerance`` or above (a loss that the claim allows).
    needs
        What the claim needs beyond a run (e.g. a dataset with planted programs), said when it is not measured.
    resolution
        Smallest difference the measurement resolves: a difference within ``max(2 SE, resolution)`` of a rule's
        boundary is *at the margin*, so float noise (another thread count or processor) cannot flip a verdict
        even when the replicates agree exactly (SE 0).
    """

    statement: str
    source: str
    comparison: str
    null: str
    rule: str
    paper: str
    tolerance: float = 0.0
    resolution: float = 1e-6
    needs: str = ""
    condition: str = ""


#: The paper's headline claims that a run measures (notebook 07; the measurements: :mod:`corelib.tl.claims`).
CLAIMS: dict[str, Claim] = {
    "reconstruction": Claim(
        "SAEs at c/d ~ 10 reconstruct the embedding: held-out R^2 >= 0.95",
        "Sec. 4.2, Fig. 2A, Table 3", "threshold", "random encoder", "at_least",
        "0.982-0.988 (scVI, c=500, k=8)", resolution=1e-3,
    ),
    "cell_type_specific": Claim(
        "A large share of concepts is specific to a cell type",
        "Sec. 4.2, Fig. 2B", "random encoder", "permuted labels", "greater", "a large proportion",
    ),
    "gsea_annotation": Claim(
        "Concepts are more often annotated by attribution GSEA than neurons",
        "Sec. 4.3, Fig. 3A.b", "neurons", "permuted genes", "greater", "concepts > neurons",
    ),
    "ora_annotation": Claim(
        "Concepts' top genes name a GO process beyond what their expression explains (expression-matched ORA "
        "of the expression-signed attribution; beyond the paper, issue 22)",
        "Sec. 4.3 (method of issue 22)", "neurons", "permuted genes (worse of plain and expression-matched)",
        "greater",
        "not in the paper",
    ),
    "planted_recovery": Claim(
        "A planted program is isolated by one concept (AUROC >= 0.9) whose calibrated label names it "
        "(ground truth, issue 22)",
        "Sec. 3.2-3.4 on planted data", "random encoder", "permuted genes", "greater", "not in the paper",
        needs="a dataset with planted programs (params/planted.yaml)",
    ),
    "deletion": Claim(
        "Deleting genes in attribution order lowers a concept faster than in DEG order (deletion-curve area)",
        "App. C, Fig. 8", "DEG order", "random order", "less", "attribution curve below DEG curve",
    ),
    "probes": Claim(
        "Cell-type probes on concepts are within 0.03 of probes on neurons (accuracy)",
        "Sec. 4.5, Fig. 10A", "neurons", "random encoder", "within", "0.86 vs 0.87", tolerance=0.03,
        resolution=5e-3,  # a few test cells: one thread count's probe may classify one cell differently
    ),
    "stability": Claim(
        "SAE concepts come back across seeds: mean matched cosine above chance and the random encoder",
        "Sec. 4.4, Fig. 4B", "chance", "random encoder", "greater", "some concepts are stable",
    ),
    "batch_suppression": Claim(
        "Suppressing batch concepts improves integration without losing biology: scib's batch score rises beyond "
        "suppressing random concepts (mean + 2 sd) and its bio score loses at most 0.02 (beyond the paper, "
        "issue 26)",
        "issue 26; notebook 04's batch study", "random concepts", "cell-type concepts, bio change",
        "beyond_spread", "not in the paper (the idea: Pedrocchi et al., ICLR 2026)", tolerance=0.02,
        resolution=1e-3,  # scores printed to 3 decimals; neighbour search and Leiden move the third by noise
        condition="bio change",  # without notebook 04's batch study, its measurements say why (not_measured)
    ),
}  # fmt: skip


def _stats(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.nan, np.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _margin(value: tuple[float, float, int], other: tuple[float, float, int], resolution: float) -> float:
    """Noise of a difference of two means: twice its standard error (std / sqrt(n) of each), at least
    ``resolution``."""
    (_, s1, n1), (_, s2, n2) = value, other
    return max(2 * float(np.sqrt(s1**2 / n1 + s2**2 / n2)), resolution)


def _side(diff: float, margin: float) -> str:
    """``"yes"`` beyond ``+margin``, ``"no"`` below ``-margin``, ``"margin"`` in between."""
    return "yes" if diff > margin else "no" if diff < -margin else "margin"


def _no_power(*arms: tuple[float, float, int]) -> bool:
    """Every measured arm is exactly 0 with no spread: nothing was detected anywhere, nulls included."""
    measured = [a for a in arms if a[2] > 0]
    return bool(measured) and all(a[0] == 0 and a[1] == 0 for a in measured)


#: How a ``"beyond_spread"`` run stands against its bound, and its condition against its limit, by :func:`_side`.
_BOUND = {"yes": "above", "no": "not above", "margin": "at"}
_LIMIT = {"yes": "within the limit", "no": "below the limit", "margin": "at the limit"}


def _beyond_spread(
    claim: Claim, value: tuple[float, float, int], comparison: tuple[float, float, int], condition: float
) -> tuple[str, str]:
    """The ``"beyond_spread"`` rule: the run above the comparison's mean + 2 sd, and the ``condition`` arm's
    mean at ``-claim.tolerance`` or above; either within ``claim.resolution`` of its boundary is at the margin.
    The reason states both parts, the ones that do not hold first."""
    bound = comparison[0] + 2 * comparison[1]
    gain = _side(value[0] - bound, claim.resolution)
    kept = _side(condition + claim.tolerance, claim.resolution)
    parts = [
        (gain, f"{_BOUND[gain]} the mean + 2 sd of {claim.comparison} ({value[0]:.3f} vs {bound:.3f})"),
        (kept, f"{claim.condition} {condition:+.3f}, {_LIMIT[kept]} -{claim.tolerance:g}"),
    ]
    sides = {side for side, _ in parts}
    word = "fails" if "no" in sides else "at the margin" if "margin" in sides else "holds"
    reason = "; ".join(text for _, text in sorted(parts, key=lambda part: part[0] == "yes"))
    return word, reason + (f" (resolution {claim.resolution:g})" if word == "at the margin" else "")


def verdict(
    claim: Claim,
    value: tuple[float, float, int],
    comparison: tuple[float, float, int],
    null: tuple[float, float, int],
    condition: tuple[float, float, int] | None = None,
) -> tuple[str, str]:
    """The verdict on one claim and one plain reason, from ``(mean, std, n)`` of its three arms (and of its
    ``condition`` arm, for the ``"beyond_spread"`` rule).

    Each rule compares a difference with its margin (:func:`_margin`: twice the standard error over
    replicates, at least ``claim.resolution``). ``"greater"``/``"less"``: *holds* when the run beats the
    comparison and the null by more than the margin, *fails* when it is on the wrong side of either by more
    than the margin, *at the margin* otherwise. ``"within"``: *holds* when ``|run - comparison|`` is below the
    tolerance by more than the margin, *fails* when above it by more. ``"at_least"``: *holds* / *fails* when
    the run is above / below the threshold by more than the margin. ``"beyond_spread"``: *holds* when the run
    is above the comparison's mean + 2 sd and the condition arm at ``-tolerance`` or above, each by more than
    ``claim.resolution``; *fails* naming the part that does not hold. *no power* when every arm is 0; *not
    measured* when the run or a judged arm has no value.
    """
    if value[2] == 0:
        return "not measured", "no value for this run" + (f": it needs {claim.needs}" if claim.needs else "")
    if comparison[2] == 0:
        return "not measured", f"no value for the comparison ({claim.comparison})"
    if claim.rule in ("greater", "less") and null[2] == 0:
        return "not measured", f"no value for the null ({claim.null})"
    if _no_power(value, comparison, null if claim.rule in ("greater", "less") else value):
        return "no power", (
            f"this run, {claim.comparison} and {claim.null} are all 0: the measurement detected nothing, nulls "
            "included, so it cannot tell them apart (see the power table in docs/decisions.md)"
        )
    if claim.rule == "beyond_spread":
        if condition is None or condition[2] == 0:
            return "not measured", f"no value for {claim.condition}"
        return _beyond_spread(claim, value, comparison, condition[0])
    margin = _margin(value, comparison, claim.resolution)
    if claim.rule == "within":
        gap = abs(value[0] - comparison[0])
        side = _side(claim.tolerance - gap, margin)
        words = {"yes": ("holds", "<"), "no": ("fails", ">"), "margin": ("at the margin", "~")}[side]
        return words[0], f"|difference| {gap:.3f} {words[1]} {claim.tolerance} (margin {margin:.3f})"
    if claim.rule == "at_least":
        side = _side(value[0] - comparison[0], margin)
        words = {"yes": ("holds", ">"), "no": ("fails", "<"), "margin": ("at the margin", "~")}[side]
        return words[0], f"{value[0]:.3f} {words[1]} {comparison[0]:.3f} (margin {margin:.3f})"
    if claim.rule not in ("greater", "less"):
        raise ValueError(
            f"Unknown rule {claim.rule!r}; use greater, less, within, at_least or beyond_spread."
        )
    sign = 1.0 if claim.rule == "greater" else -1.0
    word = "above" if sign > 0 else "below"
    results = {
        name: _side(sign * (value[0] - arm[0]), _margin(value, arm, claim.resolution))
        for name, arm in ((claim.comparison, comparison), (claim.null, null))
    }
    if "no" in results.values():
        names = [n for n, r in results.items() if r == "no"]
        return "fails", f"not {word} {' and '.join(names)}: on the wrong side by more than 2 standard errors"
    if "margin" in results.values():
        names = [n for n, r in results.items() if r == "margin"]
        return "at the margin", f"within 2 standard errors of {' and '.join(names)}: more seeds would decide"
    return "holds", f"{word} {claim.comparison} and {claim.null} by more than 2 standard errors"


def check_measurements(measurements: pd.DataFrame) -> None:
    """A clear error when the measurements table lacks a column or names an unknown claim."""
    missing = [c for c in MEASUREMENT_COLUMNS if c not in measurements.columns]
    if missing:
        raise ValueError(f"The measurements table lacks columns {missing}; it needs {MEASUREMENT_COLUMNS}.")
    unknown = sorted(set(measurements["claim"]) - set(CLAIMS))
    if unknown:
        raise ValueError(f"Unknown claims {unknown} in the measurements; known claims: {', '.join(CLAIMS)}.")


def evaluate_claims(measurements: pd.DataFrame, claims: Mapping[str, Claim] | None = None) -> pd.DataFrame:
    """One row per claim: the run's value, its comparison and its null (mean, std over replicates), the
    paper's value and the verdict (:func:`verdict`).

    Parameters
    ----------
    measurements
        Long table with :data:`MEASUREMENT_COLUMNS`: ``claim`` (a key of ``claims``), ``arm`` (``"run"``, or
        the claim's ``comparison`` or ``null`` name), ``replicate`` (seed, pair of seeds, split) and ``value``.
        Other arms are ignored here (they remain in the table for the notebooks); a claim's rows of arm
        :data:`NOT_MEASURED` (:func:`not_measured`) give its reason when it has no value.
    claims
        The claims to judge; default :data:`CLAIMS`. A claim without measurements is reported as
        *not measured*.

    Returns
    -------
    DataFrame indexed by ``claim`` with :data:`CLAIM_COLUMNS`.
    """
    claims = CLAIMS if claims is None else claims
    check_measurements(measurements)
    rows = {}
    for name, claim in claims.items():
        mine = measurements[measurements["claim"] == name]
        arms = [
            _stats(mine.loc[mine["arm"] == arm, "value"]) for arm in ("run", claim.comparison, claim.null)
        ]
        condition = _stats(mine.loc[mine["arm"] == claim.condition, "value"]) if claim.condition else None
        word, reason = verdict(claim, *arms, condition)
        why = mine.loc[mine["arm"] == NOT_MEASURED, "replicate"]
        if word == "not measured" and len(why):
            reason = "; ".join(why)
        (value, std, n), (c_value, c_std, _), (n_value, n_std, _) = arms
        rows[name] = {
            "statement": claim.statement, "source": claim.source, "value": value, "std": std, "n": n,
            "comparison": claim.comparison, "comparison_value": c_value, "comparison_std": c_std,
            "null": claim.null, "null_value": n_value, "null_std": n_std, "paper": claim.paper,
            "verdict": word, "reason": reason,
        }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index", columns=CLAIM_COLUMNS).rename_axis("claim")


def measurements_frame(
    claim: str, arm: str, values: Sequence[float] | Mapping[object, float]
) -> pd.DataFrame:
    """Measurement rows of one arm of one claim: ``values`` by replicate (a mapping) or in order (a list)."""
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    return pd.DataFrame(
        [{"claim": claim, "arm": arm, "replicate": str(r), "value": float(v)} for r, v in items],
        columns=MEASUREMENT_COLUMNS,
    )


def not_measured(claim: str, reason: str) -> pd.DataFrame:
    """The measurements of a claim that could not be measured: one row of arm :data:`NOT_MEASURED` whose
    replicate is the reason (value NaN); :func:`evaluate_claims` gives that reason with the verdict."""
    return pd.DataFrame(
        [{"claim": claim, "arm": NOT_MEASURED, "replicate": reason, "value": np.nan}],
        columns=MEASUREMENT_COLUMNS,
    )


def format_mean_std(value: float, std: float) -> str:
    """``0.912 ± 0.004``, ``0.912`` without a spread, ``n/a`` when not measured."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3f} ± {std:.3f}" if np.isfinite(std) and std > 0 else f"{value:.3f}"


def summarize(measurements: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and number of replicates of every ``(claim, arm)`` of a measurements table."""
    check_measurements(measurements)
    return (
        measurements.groupby(["claim", "arm"], sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
