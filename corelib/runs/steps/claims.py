"""Notebook 07's steps: the claims' SAE replicates through the run's cache, and one cached step per
measurements table.

The measurements are :mod:`corelib.tl.claims`'s (arrays and SAEs in, rows ``claim, arm, replicate, value``
out); each step here calls one of them and caches its table as ``07_claims/measurements_<claim>.csv``
(``run.cached``) with the provenance of what it was made from. The replicates are SAEs with the selected SAE's
settings, one per seed, trained on the run's embeddings (arm ``"run"``) and on the embeddings of the run's
encoder with its weights redrawn (arm ``"random encoder"``, the "dead salmon" control). The batch claim reads
notebook 04's batch study instead (:func:`batch_suppression`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from corelib import encoders as encoders_lib
from corelib.encoders.precomputed import NO_MODEL
from corelib.runs.layout import RunDir
from corelib.runs.prose import absent, warnings_once
from corelib.runs.steps.embed import restore_encoder
from corelib.runs.steps.stability import random_control, train_or_load_sae
from corelib.tl import claims as measure
from corelib.tl import sae as sae_mod
from corelib.tl.attribution import Attribution
from corelib.tl.claims import (
    ORA_NULL,
    R2_THRESHOLD,
    RANDOM,
    RUN,
    evaluate_claims,
    measurements_frame,
    not_measured,
)
from corelib.tl.enrichment import GO_BP

if TYPE_CHECKING:
    import numpy as np
    from distributed import Client

__all__ = [
    "ORA_NULL",
    "R2_THRESHOLD",
    "RANDOM",
    "RUN",
    "Arms",
    "ClaimReplicates",
    "arms",
    "batch_suppression",
    "claims_table",
    "cell_type_specificity",
    "interpretation",
    "planted_recovery",
    "probe_accuracy",
    "reconstruction",
    "replicate_saes",
    "replicates",
    "seed_stability",
]


@dataclass(frozen=True)
class Arms:
    """The arms of notebook 07: ``{arm: encoder}``, ``{arm: emb_ND}`` and the cells' expression in the encoder's
    genes (``cl.encoders.align``). Without a model (``model: precomputed``) the embeddings only (the run's, and
    the random linear encoder's of :func:`arms`): no encoder to attribute with, no expression (None)."""

    encoders: Mapping[str, Any]
    embeddings: Mapping[str, Any]
    X: Any


def arms(
    run: RunDir, adata: Any, emb_ND: Any, *, seed: int = 0, device: str = "auto", progress: bool = True
) -> Arms:
    """The run's encoder and embedding, and the random-weight control of that encoder (``random_control``:
    arm :data:`RANDOM`); with no model, the embeddings alone (the control is then a random linear encoder of
    the cells' expression), so no arm can be attributed."""
    encoder = restore_encoder(run, device=device)
    control, random_emb = random_control(run, adata, seed=seed, device=device, progress=progress)
    if not encoder.has_model:
        return Arms({}, {RUN: emb_ND, RANDOM: random_emb}, None)
    X, _ = encoders_lib.align(adata, encoder.genes, var_key=encoder.var_key)
    return Arms({RUN: encoder, RANDOM: control}, {RUN: emb_ND, RANDOM: random_emb}, X)


def claims_table(run: RunDir, arms: Arms, tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Write and return the ``claims`` table (:func:`corelib.tl.claims.evaluate_claims` of the measured
    ``tables``: a claim not measured has no rows); without a model (no encoder in ``arms``), a claim not
    measured says so."""
    measurements = pd.concat([t for t in tables if len(t)], ignore_index=True)
    claims = evaluate_claims(measurements)
    if RUN not in arms.encoders:
        unmeasured = claims["verdict"] == "not measured"
        claims.loc[unmeasured, "reason"] += f"; {NO_MODEL}"
    run.write_table("claims", claims)
    return claims


def _no_model(claims: Sequence[str], what: str) -> tuple[pd.DataFrame, ...]:
    """No measurement of ``claims`` (they need the model): empty tables, and ``what`` is absent, said once."""
    print(absent(what))
    return tuple(measurements_frame(claim, RUN, []) for claim in claims)


def replicate_saes(
    run: RunDir,
    embeddings: Mapping[str, np.ndarray],
    selected: Mapping[str, Any],
    seeds: Sequence[int],
    *,
    device: str = "auto",
    progress: bool = False,
) -> dict[tuple[str, int], Any]:
    """One SAE per ``(arm, seed)`` with the selected SAE's size, k and training options, trained or reused.

    Parameters
    ----------
    run
        The run directory; SAEs are cached as ``07_claims/sae/<arm>_seed<seed>`` with their provenance.
    embeddings
        ``{arm: emb_ND}``, e.g. ``{"run": emb, "random encoder": random_emb}``.
    selected
        ``cl.runs.steps.selected_sae(run, emb)``; its own seed on the ``"run"`` arm reuses it.
    seeds
        At least 3 seeds, for a mean and a spread.
    device, progress
        For training.
    """
    if len(set(seeds)) < 3:
        raise ValueError(f"claim_seeds needs at least 3 distinct seeds for a spread, got {list(seeds)}.")
    train = {**selected["train"], "device": device, "progress": progress, "overwrite": run.overwrite}
    saes = {}
    for arm, emb_ND in embeddings.items():
        for seed in seeds:
            if arm == RUN and seed == selected["seed"]:
                saes[arm, seed] = sae_mod.TopKSAE.load(selected["path"], d_in=emb_ND.shape[1])
                continue
            path = run.path("claims_sae", f"{arm.replace(' ', '_')}_seed{seed}")
            saes[arm, seed] = train_or_load_sae(
                emb_ND, selected["n_concepts"], selected["k"], seed=seed, path=path, **train
            )
    return saes


@dataclass(frozen=True)
class ClaimReplicates:
    """What every measurement of notebook 07 starts from (:func:`replicates`).

    Attributes
    ----------
    run
        The run directory the tables are cached in.
    saes
        ``{(arm, seed): TopKSAE}`` (:func:`replicate_saes`).
    embeddings
        ``{arm: emb_ND}``, the cells each arm's SAEs were trained on.
    selected
        The selected SAE's settings (``cl.runs.steps.selected_sae``).
    seed
        Seed of the permutations, concept samples and chance baselines.
    inputs
        The provenance every table shares: the embedded cells and the selected SAE (fingerprints),
        ``claim_seeds`` and ``seed``.
    """

    run: RunDir
    saes: Mapping[tuple[str, int], Any]
    embeddings: Mapping[str, Any]
    selected: Mapping[str, Any]
    seed: int
    inputs: Mapping[str, Any]


def replicates(
    run: RunDir,
    embeddings: Mapping[str, np.ndarray],
    selected: Mapping[str, Any],
    seeds: Sequence[int],
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> ClaimReplicates:
    """:func:`replicate_saes`, with what the measurement steps need besides: the embeddings, the selected SAE
    and the provenance shared by their tables (``seed``: of the permutations and samples of every step)."""
    saes = replicate_saes(run, embeddings, selected, seeds, device=device, progress=progress)
    inputs = {
        "embedded": run.fingerprint("embedded"),
        "sae": run.fingerprint("sae", selected["name"]),
        "claim_seeds": seeds,
        "seed": seed,
    }
    return ClaimReplicates(run, saes, dict(embeddings), selected, seed, inputs)


def _table(claim: str) -> tuple[str, str, bool]:
    """The run-directory entry of one claim's measurements (``07_claims/measurements_<claim>.csv``)."""
    return ("claims_measurements", claim, False)


def reconstruction(reps: ClaimReplicates) -> pd.DataFrame:
    """:func:`corelib.tl.claims.reconstruction` on the cells each SAE held out in training (the selected SAE's
    ``holdout_fraction`` and ``split_seed``), cached."""
    train = reps.selected["train"]
    split = {key: train.get(key, d) for key, d in (("holdout_fraction", 0.1), ("split_seed", 0))}
    return reps.run.cached(
        lambda: measure.reconstruction(reps.saes, reps.embeddings, **split),
        _table("reconstruction"),
        inputs={**reps.inputs, **split},
    )


def cell_type_specificity(reps: ClaimReplicates, labels: pd.Series) -> pd.DataFrame:
    """:func:`corelib.tl.claims.cell_type_specificity` for ``labels`` (one per cell), cached."""
    return reps.run.cached(
        lambda: measure.cell_type_specificity(reps.saes, reps.embeddings, labels, seed=reps.seed),
        _table("cell_type_specific"),
        inputs={**reps.inputs, "labels": labels},
    )


def probe_accuracy(reps: ClaimReplicates, labels: pd.Series, *, min_cells_per_class: int) -> pd.DataFrame:
    """:func:`corelib.tl.claims.probe_accuracy` for ``labels``, classes with fewer cells dropped, cached."""
    return reps.run.cached(
        lambda: measure.probe_accuracy(
            reps.saes, reps.embeddings, labels, min_cells_per_class=min_cells_per_class
        ),
        _table("probes"),
        inputs={**reps.inputs, "labels": labels, "min_cells_per_class": min_cells_per_class},
    )


def seed_stability(reps: ClaimReplicates) -> pd.DataFrame:
    """:func:`corelib.tl.claims.seed_stability`, cached."""
    return reps.run.cached(
        lambda: measure.seed_stability(reps.saes, reps.embeddings, seed=reps.seed),
        _table("stability"),
        inputs=reps.inputs,
    )


def interpretation(
    reps: ClaimReplicates,
    encoders: Mapping[str, Any],
    X_NM: Any,
    *,
    n_concepts: int,
    attribution_options: Mapping[str, Any] | None = None,
    gsea_options: Mapping[str, Any] | None = None,
    deg_options: Mapping[str, Any] | None = None,
    curve_options: Mapping[str, Any] | None = None,
    device: str = "auto",
    client: Client | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The ``gsea_annotation``, ``deletion`` and ``ora_annotation`` tables
    (:func:`corelib.tl.claims.interpretation`), cached together, against notebook 03's GSEA and attribution
    of the run's neurons.

    Parameters
    ----------
    reps
        :func:`replicates`.
    encoders
        ``{arm: encoder}``: the run's encoder and its random control, each attributing its arm's SAEs.
    X_NM
        The cells' expression in the encoder's genes (``cl.encoders.align``).
    n_concepts, attribution_options, gsea_options, deg_options, curve_options
        As :func:`corelib.tl.claims.interpretation`; all are inputs of the cached tables.
    device, client
        Where attribution runs; a Dask client for attribution, GSEA and DEG, or None.
    """
    if RUN not in encoders:
        return _no_model(
            ("gsea_annotation", "deletion", "ora_annotation"),
            "The attribution-based claims (GSEA and ORA annotation, deletion curves)",
        )
    options = {
        "n_concepts": n_concepts,
        "attribution_options": dict(attribution_options or {}),
        "gsea_options": dict(gsea_options or {}),
        "deg_options": dict(deg_options or {}),
        "curve_options": dict(curve_options or {}),
    }
    run = reps.run
    with warnings_once():  # GSEA warns once per SAE seed and arm
        return run.cached(
            lambda: measure.interpretation(
                reps.saes, reps.embeddings, encoders, X_NM, run.read_table("gsea_neurons"),
                neurons=Attribution.load(run.path("attribution_neurons")), seed=reps.seed, device=device,
                client=client, **options,
            ),
            _table("gsea_annotation"),
            _table("deletion"),
            _table("ora_annotation"),
            inputs={
                **reps.inputs, "neurons": run.fingerprint("gsea_neurons"),
                "neuron_attribution": run.fingerprint("attribution_neurons"), **options,
            },
        )  # fmt: skip


def planted_recovery(
    reps: ClaimReplicates,
    encoders: Mapping[str, Any],
    X_NM: Any,
    obs: pd.DataFrame,
    planted: Mapping[str, Mapping[str, Any]] | None,
    *,
    gene_sets: Any = GO_BP,
    organism: str = "human",
    device: str = "auto",
    **attribution_options: Any,
) -> pd.DataFrame:
    """:func:`corelib.tl.claims.planted_recovery` of the programs planted in the cells (``adata.uns["planted"]``,
    ``obs`` their ``planted_<name>`` columns), cached; without planted programs (``None``) no rows, so the
    claim is *not measured* and says what it needs."""
    if planted is None:
        return measurements_frame("planted_recovery", RUN, [])
    if RUN not in encoders:
        return _no_model(
            ("planted_recovery",), "The planted-program recovery (its labels need the attribution)"
        )[0]
    return reps.run.cached(
        lambda: measure.planted_recovery(
            reps.saes, reps.embeddings, encoders, X_NM, obs, planted, gene_sets=gene_sets,
            organism=organism, seed=reps.seed, device=device, **attribution_options,
        ),
        _table("planted_recovery"),
        inputs={**reps.inputs, "gene_sets": gene_sets, "organism": organism, **attribution_options},
    )  # fmt: skip


#: Why the batch claim is not measured when notebook 04 left neither its scib table nor a reason.
NO_BATCH_STUDY = (
    "the batch study of notebook 04 did not run (batch_study: false in this run's params, or notebook 04 skipped "
    "it and says why in its batch section)"
)


def batch_suppression(run: RunDir) -> pd.DataFrame:
    """The ``batch_suppression`` claim's measurements (:func:`corelib.tl.claims.batch_suppression`) from notebook
    04's scib table (``batch_scib``), written as ``07_claims/measurements_batch_suppression.csv`` beside the
    others; when notebook 04 skipped its batch study, one row saying why (:func:`corelib.tl.claims.not_measured`:
    the ``skipped`` reason of ``batch_info``, else :data:`NO_BATCH_STUDY`), also printed."""
    info = run.read_json("batch_info") if run.locate("batch_info").exists() else {}
    if "skipped" not in info and run.locate("batch_scib").exists():
        table = measure.batch_suppression(run.read_table("batch_scib"))
        made_from = {"batch_scib": run.fingerprint("batch_scib")}
    else:
        reason = str(info.get("skipped", NO_BATCH_STUDY)).rstrip(".")
        print(f"The batch-suppression claim: not measured: {reason}.")
        table, made_from = not_measured("batch_suppression", reason), {"skipped": reason}
    run.write_table("claims_measurements", table, "batch_suppression", index=False, inputs=made_from)
    return table
