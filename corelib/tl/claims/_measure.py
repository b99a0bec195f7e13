"""The measurements of notebook 07's claims, on arrays and results: SAE replicates in, measurement rows out.

Each function returns rows of the measurements table (:data:`MEASUREMENT_COLUMNS`: ``claim, arm, replicate,
value``) that :func:`evaluate_claims` judges. The replicates are ``{(arm, seed): TopKSAE}``: SAEs with one
set of settings, one per seed, trained on the embeddings of one encoder per arm (:data:`RUN`, the run's
encoder; :data:`RANDOM`, the same encoder with its weights redrawn, the "dead salmon" control), beside
``{arm: emb_ND}``, the embeddings each arm's SAEs were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from corelib.datasets import load_gene_sets
from corelib.tl import sae as sae_mod
from corelib.tl.annotation import annotation_rates, permute_gene_labels
from corelib.tl.attribution import attribute_concepts, concept_model, sample_concepts
from corelib.tl.claims._verdict import CLAIMS, measurements_frame
from corelib.tl.concepts import characterize
from corelib.tl.deg import (
    attribution_orders,
    compare_auc,
    deg_orders,
    deg_units,
    deletion_curves,
    held_out_pairs,
    random_orders,
)
from corelib.tl.enrichment import GO_BP, gsea, gsea_null, mean_log_expression, ora, ora_shares
from corelib.tl.integration import BATCH_SCORE, BIO_SCORE
from corelib.tl.probes import probe
from corelib.tl.recovery import auroc, recovery
from corelib.tl.stability import alive_dictionary, chance_matching, dictionary_stability

if TYPE_CHECKING:
    from distributed import Client

#: Arm names of the two encoders whose SAEs are compared.
RUN, RANDOM = "run", "random encoder"

#: The null arm of the ``ora_annotation`` claim: per replicate, the higher of its two nulls.
ORA_NULL = CLAIMS["ora_annotation"].null

#: R^2 the paper's SAEs reach at c/d ~ 10 (Table 3), the reconstruction claim's threshold.
R2_THRESHOLD = 0.95

#: Rows of notebook 04's batch study (``cl.tl.integration.scib_table``) that the batch claim needs, and the
#: prefix of its random-concept rows (``"random concepts, seed 0"``, ...).
SCIB_ROWS, RANDOM_ROWS = ("uncorrected", "batch concepts", "cell-type concepts"), "random concepts, "

#: SAE replicates: ``{(arm, seed): TopKSAE}``.
Replicates = Mapping[tuple[str, int], Any]


def reconstruction(
    saes: Replicates, embeddings: Mapping[str, np.ndarray], *, holdout_fraction: float, split_seed: int
) -> pd.DataFrame:
    """Held-out R^2 of every replicate, and the paper's threshold (arm ``"threshold"``).

    The held-out cells of each arm are those ``cl.tl.sae.train`` held out with ``holdout_fraction`` and
    ``split_seed`` (``cl.tl.sae.split_cells``): pass the replicates' training options.
    """
    parts = [measurements_frame("reconstruction", "threshold", {"paper": R2_THRESHOLD})]
    for arm, emb_ND in embeddings.items():
        _, held = sae_mod.split_cells(len(emb_ND), holdout_fraction, split_seed)
        r2 = {s: sae_mod.metrics(m, emb_ND[held])["r2"] for (a, s), m in saes.items() if a == arm}
        parts.append(measurements_frame("reconstruction", arm, r2))
    return pd.concat(parts, ignore_index=True)


def _specific_share(codes: Any, labels: pd.Series, min_active_cells: int | None) -> float:
    """Share of units called specific to ``labels`` (``cl.tl.concepts.characterize``)."""
    obs = labels.to_frame("label")
    calls = characterize(codes, obs, ["label"], min_active_cells=min_active_cells)["call"]
    return float((calls == "label-specific").mean())


def cell_type_specificity(
    saes: Replicates,
    embeddings: Mapping[str, np.ndarray],
    labels: pd.Series,
    *,
    seed: int = 0,
    min_active_cells: int | None = None,
) -> pd.DataFrame:
    """Share of cell-type-specific concepts per replicate, and the same with the labels permuted over cells
    (the null: what the 70% rule gives when labels carry no information about the cells)."""
    rng = np.random.default_rng(seed)
    parts = []
    for arm, emb_ND in embeddings.items():
        codes = {s: sae_mod.encode(m, emb_ND) for (a, s), m in saes.items() if a == arm}
        parts.append(
            measurements_frame(
                "cell_type_specific",
                arm,
                {s: _specific_share(c, labels, min_active_cells) for s, c in codes.items()},
            )
        )
        if arm == RUN:
            permuted = {
                s: _specific_share(
                    c, pd.Series(rng.permutation(labels.to_numpy()), index=labels.index), min_active_cells
                )
                for s, c in codes.items()
            }
            parts.append(measurements_frame("cell_type_specific", "permuted labels", permuted))
    return pd.concat(parts, ignore_index=True)


def probe_accuracy(
    saes: Replicates, embeddings: Mapping[str, np.ndarray], labels: pd.Series, **probe_options: Any
) -> pd.DataFrame:
    """Cell-type probe accuracy (``cl.tl.probes.probe``) on each replicate's concepts, with one balanced split
    per replicate (split seed = SAE seed), and on the run's neurons over the same splits."""
    options = {"progress": False, **probe_options}
    parts = []
    for arm, emb_ND in embeddings.items():
        acc = {
            s: float(probe(sae_mod.encode(m, emb_ND), labels, seeds=[s], **options).accuracy[0])
            for (a, s), m in saes.items()
            if a == arm
        }
        parts.append(measurements_frame("probes", arm, acc))
    seeds = sorted({s for _, s in saes})
    neurons = probe(embeddings[RUN], labels, seeds=seeds, **options)
    parts.append(
        measurements_frame("probes", "neurons", dict(zip(neurons.seeds, neurons.accuracy, strict=True)))
    )
    return pd.concat(parts, ignore_index=True)


def seed_stability(saes: Replicates, embeddings: Mapping[str, np.ndarray], *, seed: int = 0) -> pd.DataFrame:
    """Mean matched cosine of every pair of seeds per arm (``cl.tl.stability.dictionary_stability`` on the
    replicates' alive dictionaries), and of random directions of the same numbers (chance) for the run's pairs."""
    parts = []
    for arm, emb_ND in embeddings.items():
        mine = {s: m for (a, s), m in saes.items() if a == arm}
        pairs = dictionary_stability(
            lambda emb, s, tag, mine=mine: alive_dictionary(mine[s], emb),
            emb_ND,
            seeds=list(mine),
            progress=False,
        )
        names = pairs["fit_1"] + "-" + pairs["fit_2"]
        parts.append(
            measurements_frame("stability", arm, dict(zip(names, pairs["mean_cosine"], strict=True)))
        )
        if arm == RUN:
            chance = [
                chance_matching(n1, n2, emb_ND.shape[1], seed=seed)["mean_cosine"]
                for n1, n2 in zip(pairs["n_1"], pairs["n_2"], strict=True)
            ]
            parts.append(measurements_frame("stability", "chance", dict(zip(names, chance, strict=True))))
    return pd.concat(parts, ignore_index=True)


def attribute_replicates(
    saes: Replicates,
    embeddings: Mapping[str, np.ndarray],
    encoders: Mapping[str, Any],
    X_NM: Any,
    *,
    n_concepts: int,
    seed: int = 0,
    **options: Any,
) -> dict[tuple[str, int], Any]:
    """Counterfactual attribution (``cl.tl.attribution.attribute_concepts``) of a seeded sample of
    ``n_concepts`` attributable concepts of every replicate, with the encoder of its arm.

    ``options`` go to ``attribute_concepts`` (``n_prototypes``, ``n_counterfactuals``, ``device``,
    ``batch_size``, ``progress``).
    """
    out = {}
    n_p, n_c = options.get("n_prototypes", 10), options.get("n_counterfactuals", 3)
    for (arm, s), model in saes.items():
        codes = sae_mod.encode(model, embeddings[arm])
        todo = sample_concepts(codes, n_concepts, n_prototypes=n_p, n_counterfactuals=n_c, seed=seed)
        out[arm, s] = attribute_concepts(
            encoders[arm], model, X_NM, embeddings[arm], codes_NC=codes, concepts=todo, **options
        )
    return out


def gsea_annotation(
    attributions: Mapping[tuple[str, int], Any],
    neuron_units: pd.DataFrame,
    *,
    seed: int = 0,
    client: Client | None = None,
    **gsea_options: Any,
) -> pd.DataFrame:
    """Share of attributed concepts with a calibrated GSEA label, per replicate; the same with each concept's
    gene labels permuted (the null, run replicates only); the run's neurons (``neuron_units``: notebook 03's
    GSEA table of the neurons, ``cl.tl.enrichment.GseaResult.units``).

    Every share is also given with the paper's thresholds (arms suffixed ``" (paper thresholds)"``).
    ``gsea_options`` go to ``cl.tl.enrichment.gsea`` (``gene_sets``, ``permutations``, ``n_jobs``, ...), with
    the Dask ``client`` if any.
    """
    options = {"seed": seed, "progress": False, "client": client, **gsea_options}
    tables: dict[str, dict[object, pd.DataFrame]] = {}
    for (arm, s), attr in attributions.items():
        tables.setdefault(arm, {})[s] = gsea(attr.frame(), **options).units
        if arm == RUN:
            tables.setdefault("permuted genes", {})[s] = gsea_null(attr.frame(), **options)
    tables["neurons"] = {"neurons": neuron_units}
    parts = [
        measurements_frame(
            "gsea_annotation", f"{arm}{suffix}", {r: annotation_rates(t, mode)["any"] for r, t in by.items()}
        )
        for arm, by in tables.items()
        for mode, suffix in (("calibrated", ""), ("paper", " (paper thresholds)"))
    ]
    return pd.concat(parts, ignore_index=True)


def ora_annotation(
    attributions: Mapping[tuple[str, int], Any],
    neurons: Any,
    mean_expression: pd.Series,
    *,
    seed: int = 0,
    gene_sets: Any = GO_BP,
    organism: str = "human",
) -> pd.DataFrame:
    """Share of attributed concepts that the expression-matched ORA of their signed scores labels (q < 0.05,
    ``cl.tl.enrichment.ora_shares``), per replicate, beside its nulls on the run's replicates (gene labels
    permuted; permuted within expression bins) and the run's neurons (``neurons``: notebook 03's neuron
    :class:`~corelib.tl.attribution.Attribution`). The judged null, :data:`ORA_NULL`, is the worse (higher) of
    the two nulls in each replicate."""
    rows: dict[str, dict[object, float]] = {}
    for (arm, s), attr in attributions.items():
        scores = attr.frame("expression")
        if arm != RUN:  # the run's nulls only
            units, _ = ora(scores, gene_sets, mean_expression=mean_expression, organism=organism)
            rows.setdefault(arm, {})[s] = float(annotation_rates(units)["any"])
            continue
        shares = ora_shares({arm: scores}, mean_expression, gene_sets, seed=seed, organism=organism).loc[arm]
        for name, value in (
            (RUN, shares["real"]),
            ("permuted genes", shares["permuted genes"]),
            ("expression-matched genes", shares["expression-matched"]),
            (ORA_NULL, max(shares["permuted genes"], shares["expression-matched"])),
        ):
            rows.setdefault(name, {})[s] = float(value)
    if neurons is not None and neurons.signed is not None:
        units, _ = ora(
            neurons.frame("expression"), gene_sets, mean_expression=mean_expression, organism=organism
        )
        rows["neurons"] = {"neurons": float(annotation_rates(units)["any"])}
    return _arm_measurements("ora_annotation", rows)


def _arm_measurements(claim: str, rows: Mapping[str, Mapping[object, float]]) -> pd.DataFrame:
    """Measurement rows of ``claim`` from ``{arm: {replicate: value}}``."""
    return pd.concat(
        [measurements_frame(claim, arm, values) for arm, values in rows.items()], ignore_index=True
    )


def batch_suppression(scib: pd.DataFrame) -> pd.DataFrame:
    """The ``batch_suppression`` claim from notebook 04's batch study: how much suppressing each set of concepts
    moves scib's batch score (``"Batch correction"``) and bio score (``"Bio conservation"``) from the
    uncorrected embedding.

    Parameters
    ----------
    scib
        Embeddings x scores (``cl.tl.integration.scib_table``) with rows :data:`SCIB_ROWS`, one or more
        ``"random concepts, seed <i>"`` and optionally ``"Harmony"``.

    Returns
    -------
    Measurements: the batch change of the batch concepts (arm :data:`RUN`), of each random seed (arm
    ``"random concepts"``, the comparison), of the cell-type concepts and of Harmony; beside each, its bio
    change (arm ``"<arm>, bio change"``, or ``"bio change"`` for the run: the claim's condition). The null is
    the cell-type concepts' bio change: the control that shows the bio score can see biology lost.
    """
    claim = CLAIMS["batch_suppression"]
    randoms = [name for name in map(str, scib.index) if name.startswith(RANDOM_ROWS)]
    lacking = [r for r in SCIB_ROWS if r not in scib.index] + ([] if randoms else [f"{RANDOM_ROWS}seed 0"])
    lacking += [c for c in (BATCH_SCORE, BIO_SCORE) if c not in scib.columns]
    if lacking:
        raise ValueError(
            f"The batch study's scib table lacks {lacking}: it should be notebook 04's 04_stability/batch_scib.csv "
            "(rerun notebook 04 with batch_study: true)."
        )
    change = scib[[BATCH_SCORE, BIO_SCORE]] - scib.loc["uncorrected", [BATCH_SCORE, BIO_SCORE]]
    groups = {
        RUN: ["batch concepts"],
        claim.comparison: randoms,
        "cell-type concepts": ["cell-type concepts"],
    }
    groups |= {"Harmony": ["Harmony"]} if "Harmony" in change.index else {}
    rows: dict[str, dict[object, float]] = {}
    for arm, names in groups.items():
        replicates = {name.removeprefix(RANDOM_ROWS): change.loc[name] for name in names}
        rows[arm] = {r: float(c[BATCH_SCORE]) for r, c in replicates.items()}
        rows[claim.condition if arm == RUN else f"{arm}, {claim.condition}"] = {
            r: float(c[BIO_SCORE]) for r, c in replicates.items()
        }
    return _arm_measurements("batch_suppression", rows)


def planted_recovery(
    saes: Replicates,
    embeddings: Mapping[str, np.ndarray],
    encoders: Mapping[str, Any],
    X_NM: Any,
    obs: pd.DataFrame,
    planted: Mapping[str, Mapping[str, Any]],
    *,
    gene_sets: Any = GO_BP,
    organism: str = "human",
    seed: int = 0,
    **attribution_options: Any,
) -> pd.DataFrame:
    """Share of the planted programs (``uns["planted"]``, :func:`corelib.datasets.plant_programs`) that each
    replicate recovers: the concept with the highest AUROC for the planted cells isolates them (AUROC >= 0.9)
    and the expression-matched ORA of its signed scores names the planted term (q < 0.05;
    ``cl.tl.recovery.recovery``). Only the best concept of each program is attributed, so its q-value is
    adjusted for the gene sets alone. The null arm permutes that concept's gene labels before ORA.
    ``organism`` is the species of the genes (``cl.datasets.load_gene_sets``); ``attribution_options`` go to
    ``attribute_concepts``."""
    mean_G = mean_log_expression(X_NM, encoders[RUN].genes)
    sets = load_gene_sets(gene_sets, genes=list(map(str, encoders[RUN].genes)), organism=organism)
    rows: dict[str, dict[object, float]] = {}
    for (arm, s), model in saes.items():
        codes = sae_mod.encode(model, embeddings[arm])
        best = sorted({int(np.argmax(auroc(codes, obs[f"planted_{name}"].to_numpy()))) for name in planted})
        attr = attribute_concepts(
            encoders[arm], model, X_NM, embeddings[arm], codes_NC=codes, concepts=best, **attribution_options
        )
        signed = attr.frame("expression")
        tables = {arm: signed} | (
            {"permuted genes": permute_gene_labels(signed, seed=seed)} if arm == RUN else {}
        )
        for name, frame in tables.items():
            units, terms = ora(frame, gene_sets, mean_expression=mean_G, organism=organism)
            found = recovery(codes, np.arange(codes.shape[1]), obs, planted, units, terms, sets)
            rows.setdefault(name, {})[s] = float(found["recovered"].mean())
    return _arm_measurements("planted_recovery", rows)


def deletion(
    attributions: Mapping[tuple[str, int], Any],
    saes: Replicates,
    embeddings: Mapping[str, np.ndarray],
    encoders: Mapping[str, Any],
    X_NM: Any,
    *,
    seed: int = 0,
    deg_options: Mapping[str, Any] | None = None,
    device: str = "auto",
    client: Client | None = None,
    **curve_options: Any,
) -> pd.DataFrame:
    """Deletion-curve areas on held-out pairs (``cl.tl.deg.held_out_pairs``), per replicate, in attribution,
    DEG and random order, averaged over the concepts that have a DEG list (the others cannot be compared).

    Parameters
    ----------
    attributions
        :func:`attribute_replicates`.
    saes, embeddings, encoders, X_NM
        As given to :func:`attribute_replicates`; the DEG baseline normalises only the cells it compares.
    seed
        Seed of the random order.
    deg_options
        ``cl.tl.deg.deg_units`` options (``max_cells``, ``method``, ``order``, ``pval_cutoff``).
    device, curve_options
        For the perturbation model and ``cl.tl.deg.deletion_curves`` (``n_steps``, ``batch_size``,
        ``progress``).
    client
        A Dask client for the DEG baseline (``cl.tl.deg.deg_units``), or None.

    Returns
    -------
    Measurements of the ``deletion`` claim: ``run`` (attribution order), ``DEG order``, ``random order`` on the
    run's replicates; ``random encoder`` (attribution order on the random encoder's); ``comparable concepts``
    (how many concepts each mean is over).
    """
    names = {"attribution": None, "deg": "DEG order", "random": "random order"}
    parts = []
    for (arm, s), attr in attributions.items():
        codes = sae_mod.encode(saes[arm, s], embeddings[arm])
        emb_ND = embeddings[arm]
        deg = deg_units(
            X_NM,
            codes,
            emb_ND,
            units=attr.units[attr.attributed],
            genes=attr.genes,
            progress=False,
            client=client,
            **(deg_options or {}),
        )
        orders = {
            "attribution": attribution_orders(attr),
            "deg": deg_orders(attr, deg),
            "random": random_orders(attr, seed=seed),
        }
        pairs = held_out_pairs(attr, codes, emb_ND, progress=False)
        model = concept_model(encoders[arm], saes[arm, s], device=device)
        curves = deletion_curves(model, X_NM, pairs, orders, **curve_options)
        # compare_auc leaves out the concepts whose DEG list is empty; both calls keep the same concepts
        vs_deg, random_vs_deg = (
            compare_auc(curves, "attribution", "deg"),
            compare_auc(curves, "random", "deg"),
        )
        auc = {
            "attribution": vs_deg["auc_attribution"],
            "deg": vs_deg["auc_deg"],
            "random": random_vs_deg["auc_random"],
        }
        for order, name in names.items():
            if arm == RUN or order == "attribution":
                parts.append(measurements_frame("deletion", name or arm, {s: auc[order]}))
        parts.append(measurements_frame("deletion", f"comparable concepts ({arm})", {s: vs_deg["n_units"]}))
    return pd.concat(parts, ignore_index=True)


def interpretation(
    saes: Replicates,
    embeddings: Mapping[str, np.ndarray],
    encoders: Mapping[str, Any],
    X_NM: Any,
    neuron_units: pd.DataFrame,
    *,
    n_concepts: int,
    neurons: Any = None,
    seed: int = 0,
    attribution_options: Mapping[str, Any] | None = None,
    gsea_options: Mapping[str, Any] | None = None,
    deg_options: Mapping[str, Any] | None = None,
    curve_options: Mapping[str, Any] | None = None,
    device: str = "auto",
    client: Client | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The measurements of the ``gsea_annotation``, ``deletion`` and ``ora_annotation`` claims:
    :func:`attribute_replicates`, then :func:`gsea_annotation`, :func:`deletion` and :func:`ora_annotation`
    (``neuron_units``: notebook 03's GSEA of the neurons; ``neurons``: its neuron attribution); attribution,
    GSEA and DEG on the Dask ``client`` if one is given."""
    attributions = attribute_replicates(
        saes,
        embeddings,
        encoders,
        X_NM,
        n_concepts=n_concepts,
        seed=seed,
        device=device,
        client=client,
        **(attribution_options or {}),
    )
    return (
        gsea_annotation(attributions, neuron_units, seed=seed, client=client, **(gsea_options or {})),
        deletion(
            attributions, saes, embeddings, encoders, X_NM, seed=seed, deg_options=deg_options,
            device=device, client=client, **(curve_options or {}),
        ),
        ora_annotation(
            attributions, neurons, mean_log_expression(X_NM, encoders[RUN].genes), seed=seed,
            gene_sets=(gsea_options or {}).get("gene_sets", GO_BP),
            organism=(gsea_options or {}).get("organism", "human"),
        ),
    )  # fmt: skip
