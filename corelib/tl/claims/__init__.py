"""The paper's headline claims, each measured against its comparison and its null, with a computed verdict.

A run measures every claim several times (one value per SAE seed, per pair of seeds, per split) in a long
*measurements* table: one row per ``(claim, arm, replicate)`` where ``arm`` is ``"run"`` (what the claim is
about), the claim's comparison (e.g. ``"neurons"``) or its null (e.g. ``"permuted genes"``, ``"random
encoder"``, ``"chance"``).

- The measurements (``_measure``): :func:`reconstruction`, :func:`cell_type_specificity`,
  :func:`probe_accuracy`, :func:`seed_stability`, :func:`attribute_replicates` then :func:`gsea_annotation`,
  :func:`ora_annotation` and :func:`deletion` (or all three at once, :func:`interpretation`), and
  :func:`planted_recovery`: SAE replicates ``{(arm, seed): TopKSAE}`` and their embeddings in, measurement
  rows out; :func:`batch_suppression` reads notebook 04's scib table of the batch study instead. No run
  directory: notebook 07 caches them through ``cl.runs.steps.claims``.
- The verdicts (``_verdict``): :func:`evaluate_claims` turns the table into one row per claim: the run's mean
  and std, the comparison's and the null's, the paper's value and a verdict from the rule of the claim's
  :class:`Claim`. Nothing in the verdict is written by hand; the rules are in :func:`verdict`. A claim that
  could not be measured says why in its measurements (:func:`not_measured`).
"""

from __future__ import annotations

from corelib.tl.claims._measure import (
    ORA_NULL,
    R2_THRESHOLD,
    RANDOM,
    RANDOM_ROWS,
    RUN,
    SCIB_ROWS,
    Replicates,
    attribute_replicates,
    batch_suppression,
    cell_type_specificity,
    deletion,
    gsea_annotation,
    interpretation,
    ora_annotation,
    planted_recovery,
    probe_accuracy,
    reconstruction,
    seed_stability,
)
from corelib.tl.claims._verdict import (
    CLAIM_COLUMNS,
    CLAIMS,
    MEASUREMENT_COLUMNS,
    NOT_MEASURED,
    VERDICTS,
    Claim,
    check_measurements,
    evaluate_claims,
    format_mean_std,
    measurements_frame,
    not_measured,
    summarize,
    verdict,
)

__all__ = [
    "CLAIMS",
    "CLAIM_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "NOT_MEASURED",
    "ORA_NULL",
    "R2_THRESHOLD",
    "RANDOM",
    "RANDOM_ROWS",
    "RUN",
    "SCIB_ROWS",
    "VERDICTS",
    "Claim",
    "Replicates",
    "attribute_replicates",
    "batch_suppression",
    "cell_type_specificity",
    "check_measurements",
    "deletion",
    "evaluate_claims",
    "format_mean_std",
    "gsea_annotation",
    "interpretation",
    "measurements_frame",
    "not_measured",
    "ora_annotation",
    "planted_recovery",
    "probe_accuracy",
    "reconstruction",
    "seed_stability",
    "summarize",
    "verdict",
]
