"""The claims' measurements in tl terms (SAE replicates and arrays in, measurement rows out), each against a
brute-force reference on small synthetic data; and the run step that caches them (notebook 07)."""

from itertools import combinations, permutations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import toy_counts, toy_sae, toy_scvi_encoder

import corelib as cl
from corelib.runs.cache import StaleOutputError
from corelib.tl.claims import MEASUREMENT_COLUMNS, RANDOM, RUN

SEEDS = (0, 1, 2)
N_CELLS, DIM, N_CONCEPTS, K = 240, 6, 5, 2


def _sae(emb_ND: np.ndarray, seed: int) -> cl.tl.sae.TopKSAE:
    """An untrained SAE with a seeded random dictionary (``init_sae``) and a random encoder bias."""
    cfg = cl.tl.sae.SAEConfig(d_in=DIM, n_concepts=N_CONCEPTS, k=K)
    model = cl.tl.sae.init_sae(cfg, torch.as_tensor(emb_ND), seed)
    with torch.no_grad():
        model.b_enc_C.copy_(torch.randn(N_CONCEPTS, generator=torch.Generator().manual_seed(100 + seed)))
    return model


@pytest.fixture(scope="module")
def replicates():
    """Two arms of three seeds each: ``(saes, embeddings, labels)``; labels shift the run's cells."""
    rng = np.random.default_rng(0)
    labels = pd.Series(rng.choice(["B", "T", "NK"], N_CELLS), index=[f"c{i}" for i in range(N_CELLS)])
    shift = {"B": 3.0, "T": -3.0, "NK": 0.0}
    emb = rng.normal(size=(N_CELLS, DIM)).astype(np.float32)
    emb[:, 0] += labels.map(shift).to_numpy()
    embeddings = {RUN: emb, RANDOM: rng.normal(size=(N_CELLS, DIM)).astype(np.float32)}
    saes = {(arm, s): _sae(e, s + 10 * (arm == RANDOM)) for arm, e in embeddings.items() for s in SEEDS}
    return saes, embeddings, labels


def _codes(model: cl.tl.sae.TopKSAE, emb_ND: np.ndarray) -> np.ndarray:
    """Dense Top-K codes by hand: ReLU of the k largest pre-activations of each cell, zeros elsewhere."""
    W_enc, b_enc, b_dec = (
        getattr(model, n).detach().double().numpy() for n in ("W_enc_DC", "b_enc_C", "b_dec_D")
    )
    pre_NC = (emb_ND.astype(np.float64) - b_dec) @ W_enc + b_enc
    codes = np.zeros_like(pre_NC)
    for i, row in enumerate(pre_NC):
        top = np.argsort(-row)[:K]
        codes[i, top] = np.maximum(row[top], 0)
    return codes


def _values(table: pd.DataFrame, arm: str) -> dict[str, float]:
    rows = table[table["arm"] == arm]
    return dict(zip(rows["replicate"], rows["value"], strict=True))


def test_reconstruction_is_the_held_out_r2_of_each_replicate(replicates):
    saes, embeddings, _ = replicates
    table = cl.tl.claims.reconstruction(saes, embeddings, holdout_fraction=0.25, split_seed=3)
    assert list(table.columns) == MEASUREMENT_COLUMNS and set(table["claim"]) == {"reconstruction"}
    assert _values(table, "threshold") == {"paper": cl.tl.claims.R2_THRESHOLD}
    held = np.sort(np.random.default_rng(3).permutation(N_CELLS)[: round(N_CELLS * 0.25)])
    for arm, emb in embeddings.items():
        want = {}
        for s in SEEDS:
            model, x = saes[arm, s], emb[held].astype(np.float64)
            recon = _codes(model, emb[held]) @ model.W_dec_CD.detach().double().numpy()
            recon += model.b_dec_D.detach().double().numpy()
            want[str(s)] = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        got = _values(table, arm)
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-4, atol=1e-5)


def _specific_share(codes: np.ndarray, labels: np.ndarray, min_active: int) -> float:
    """By hand: a concept is specific when it fires on at least ``min_active`` cells, >= 70% of one label."""
    calls = []
    for c in range(codes.shape[1]):
        active = labels[codes[:, c] > 0]
        share = pd.Series(active).value_counts(normalize=True).max() if len(active) else 0.0
        calls.append(len(active) >= min_active and share >= 0.7)
    return float(np.mean(calls))


def test_cell_type_specificity_and_its_permuted_null_by_hand(replicates):
    saes, embeddings, labels = replicates
    table = cl.tl.claims.cell_type_specificity(saes, embeddings, labels, seed=4, min_active_cells=3)
    assert set(table["arm"]) == {RUN, RANDOM, "permuted labels"}
    rng = np.random.default_rng(4)  # the run's replicates' permutations, in seed order
    permuted = {str(s): rng.permutation(labels.to_numpy()) for s in SEEDS}
    for arm, emb in embeddings.items():
        want = {str(s): _specific_share(_codes(saes[arm, s], emb), labels.to_numpy(), 3) for s in SEEDS}
        assert _values(table, arm) == pytest.approx(want)
    run_codes = {str(s): _codes(saes[RUN, s], embeddings[RUN]) for s in SEEDS}
    want = {s: _specific_share(run_codes[s], permuted[s], 3) for s in run_codes}
    assert _values(table, "permuted labels") == pytest.approx(want)


def _best_mean_cosine(D1: np.ndarray, D2: np.ndarray) -> float:
    """Every one-to-one matching of the smaller dictionary's rows into the larger's; the best mean cosine."""
    if len(D1) > len(D2):
        D1, D2 = D2, D1
    cos = (D1 / np.linalg.norm(D1, axis=1, keepdims=True)) @ (
        D2 / np.linalg.norm(D2, axis=1, keepdims=True)
    ).T
    return max(np.mean(cos[np.arange(len(D1)), list(p)]) for p in permutations(range(len(D2)), len(D1)))


def test_seed_stability_against_every_matching(replicates):
    saes, embeddings, _ = replicates
    table = cl.tl.claims.seed_stability(saes, embeddings, seed=5)
    assert set(table["arm"]) == {RUN, RANDOM, "chance"}
    for arm, emb in embeddings.items():
        alive = {
            s: saes[arm, s].W_dec_CD.detach().numpy()[(_codes(saes[arm, s], emb) > 0).any(0)] for s in SEEDS
        }
        want = {f"seed{a}-seed{b}": _best_mean_cosine(alive[a], alive[b]) for a, b in combinations(SEEDS, 2)}
        assert _values(table, arm) == pytest.approx(want, abs=1e-5)
        if arm == RUN:  # random directions of the same numbers, each pair drawn from the seed
            chance = {}
            for a, b in combinations(SEEDS, 2):
                rng = np.random.default_rng(5)
                chance[f"seed{a}-seed{b}"] = _best_mean_cosine(
                    rng.normal(size=(len(alive[a]), DIM)), rng.normal(size=(len(alive[b]), DIM))
                )
            assert _values(table, "chance") == pytest.approx(chance, abs=1e-9)


def test_probe_accuracy_splits_by_replicate_seed_and_probes_the_neurons_on_the_same_splits(replicates):
    saes, embeddings, labels = replicates
    table = cl.tl.claims.probe_accuracy(saes, embeddings, labels, min_cells_per_class=20)
    assert set(table["arm"]) == {RUN, RANDOM, "neurons"}
    for arm, emb in embeddings.items():
        want = {
            str(s): cl.tl.probes.probe(_codes(saes[arm, s], emb), labels, seeds=[s], min_cells_per_class=20,
                                       progress=False).accuracy[0]
            for s in SEEDS
        }  # fmt: skip
        assert _values(table, arm) == pytest.approx(want)
    neurons = _values(table, "neurons")
    assert list(neurons) == [str(s) for s in SEEDS]
    # the run's first neuron separates B (+3) and T (-3) from NK (0): well above the 1/3 of guessing
    assert min(neurons.values()) > 0.8


def test_the_claims_step_caches_each_table_under_the_notebook_inputs(replicates, tmp_path, monkeypatch):
    """cl.runs.steps.claims: one tl call, cached as 07_claims/measurements_<claim>.csv with the notebook's
    provenance (the shared inputs); a second call reads the table back without computing."""
    saes, embeddings, _ = replicates
    run = cl.runs.open_run(tmp_path / "run")
    inputs = {"claim_seeds": list(SEEDS), "seed": 5}
    reps = cl.runs.steps.claims.ClaimReplicates(run, saes, embeddings, {"train": {}}, 5, inputs)
    first = cl.runs.steps.claims.seed_stability(reps)
    assert run.path("claims_measurements", "stability").name == "measurements_stability.csv"
    assert run.reusable("claims_measurements", "stability", inputs)
    pd.testing.assert_frame_equal(first, cl.tl.claims.seed_stability(saes, embeddings, seed=5))

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached table")

    monkeypatch.setattr(cl.tl.claims, "seed_stability", fail)
    pd.testing.assert_frame_equal(cl.runs.steps.claims.seed_stability(reps), first)
    other = cl.runs.steps.claims.ClaimReplicates(
        run, saes, embeddings, {"train": {}}, 6, {**inputs, "seed": 6}
    )
    with pytest.raises(StaleOutputError, match="seed: 5 -> 6"):
        cl.runs.steps.claims.seed_stability(other)


class _Scores:
    """Stands for an Attribution: its scores (genes x units)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def frame(self, kind: str = "scores") -> pd.DataFrame:
        return self._frame


@pytest.mark.filterwarnings("ignore:GSEA")
def test_gsea_annotation_is_the_annotated_share_of_each_replicate_its_null_and_the_neurons():
    """Per replicate, the share of units that GSEA labels (calibrated, and with the paper's thresholds), as a
    direct ``gsea`` call gives it; the null permutes the run's gene labels (``gsea_null``)."""
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(300)]
    sets = {"TOP": genes[:30], **{f"R{j}": list(rng.choice(genes, 30, replace=False)) for j in range(5)}}
    planted = rng.normal(size=(300, 2))
    planted[:30, 0] += 4  # unit 0 ranks the TOP set first; unit 1 is noise
    frames = {s: pd.DataFrame(planted + 0.1 * s, index=genes) for s in SEEDS}
    attributions = {(RUN, s): _Scores(f) for s, f in frames.items()}
    attributions |= {
        (RANDOM, s): _Scores(pd.DataFrame(rng.normal(size=(300, 2)), index=genes)) for s in SEEDS
    }
    options = {"gene_sets": sets, "permutations": 100, "n_jobs": 1, "progress": False}
    neuron_units = cl.tl.enrichment.gsea(frames[0], seed=1, **options).units
    table = cl.tl.claims.gsea_annotation(attributions, neuron_units, seed=1, **options)
    for (arm, s), attr in attributions.items():
        units = cl.tl.enrichment.gsea(attr.frame(), seed=1, **options).units
        for mode, suffix in (("calibrated", ""), ("paper", " (paper thresholds)")):
            want = cl.tl.annotation.annotation_rates(units, mode)["any"]
            assert _values(table, arm + suffix)[str(s)] == pytest.approx(want)
            if arm == RUN:
                null = cl.tl.enrichment.gsea_null(attr.frame(), seed=1, **options)
                want = cl.tl.annotation.annotation_rates(null, mode)["any"]
                assert _values(table, "permuted genes" + suffix)[str(s)] == pytest.approx(want)
    assert _values(table, RUN)["0"] == 0.5  # the planted unit is labelled, the noise is not
    assert _values(table, "neurons") == {"neurons": 0.5}


@pytest.fixture(scope="module")
def attributed_replicates():
    """Toy scVI encoders (the run's, a redrawn one), three SAE seeds each, two concepts of each attributed."""
    X = toy_counts(150, seed=3)
    encoders = {RUN: toy_scvi_encoder(seed=0), RANDOM: toy_scvi_encoder(seed=1)}
    with torch.no_grad():
        embeddings = {arm: enc(torch.as_tensor(X)).numpy() for arm, enc in encoders.items()}
    saes = {
        (arm, s): toy_sae(e.shape[1], n_concepts=10, k=3, seed=s)
        for arm, e in embeddings.items()
        for s in SEEDS
    }
    options = {"n_prototypes": 3, "n_counterfactuals": 2, "device": "cpu", "progress": False}
    attributions = cl.tl.claims.attribute_replicates(
        saes, embeddings, encoders, X, n_concepts=2, seed=7, **options
    )
    return saes, embeddings, encoders, X, attributions


def test_attribute_replicates_attributes_a_seeded_sample_of_each_replicate(attributed_replicates):
    saes, embeddings, _, _, attributions = attributed_replicates
    assert set(attributions) == set(saes)
    for (arm, s), attr in attributions.items():
        codes = cl.tl.sae.encode(saes[arm, s], embeddings[arm])
        sample = cl.tl.attribution.sample_concepts(codes, 2, n_prototypes=3, n_counterfactuals=2, seed=7)
        assert sorted(attr.units[attr.attributed]) == sorted(sample)


def test_deletion_areas_per_replicate_and_order(attributed_replicates):
    """Per replicate, the mean deletion-curve area of the concepts with a DEG list, in attribution, DEG and
    random order (``compare_auc`` of ``deletion_curves`` on held-out pairs, themselves tested against brute
    force in test_deg.py); the random encoder's in attribution order only."""
    saes, embeddings, encoders, X, attributions = attributed_replicates
    deg_options = {"pval_cutoff": 1.0}
    table = cl.tl.claims.deletion(
        attributions, saes, embeddings, encoders, X, seed=2, deg_options=deg_options, device="cpu", n_steps=5
    )
    arms = {
        RUN,
        "DEG order",
        "random order",
        RANDOM,
        f"comparable concepts ({RUN})",
        f"comparable concepts ({RANDOM})",
    }
    assert set(table["arm"]) == arms
    for (arm, s), attr in attributions.items():
        codes = cl.tl.sae.encode(saes[arm, s], embeddings[arm])
        deg = cl.tl.deg.deg_units(
            X,
            codes,
            embeddings[arm],
            units=attr.units[attr.attributed],
            genes=attr.genes,
            progress=False,
            **deg_options,
        )
        orders = {
            "attribution": cl.tl.deg.attribution_orders(attr),
            "deg": cl.tl.deg.deg_orders(attr, deg),
            "random": cl.tl.deg.random_orders(attr, seed=2),
        }
        pairs = cl.tl.deg.held_out_pairs(attr, codes, embeddings[arm], progress=False)
        model = cl.tl.attribution.concept_model(encoders[arm], saes[arm, s], device="cpu")
        curves = cl.tl.deg.deletion_curves(model, X, pairs, orders, n_steps=5, progress=False)
        vs_deg, random_vs_deg = (cl.tl.deg.compare_auc(curves, o, "deg") for o in ("attribution", "random"))
        assert _values(table, arm)[str(s)] == pytest.approx(vs_deg["auc_attribution"], nan_ok=True)
        assert _values(table, f"comparable concepts ({arm})")[str(s)] == vs_deg["n_units"]
        if arm == RUN:
            assert _values(table, "DEG order")[str(s)] == pytest.approx(vs_deg["auc_deg"], nan_ok=True)
            assert _values(table, "random order")[str(s)] == pytest.approx(
                random_vs_deg["auc_random"], nan_ok=True
            )
