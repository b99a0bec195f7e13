"""Tests of corelib.tl.stability: Hungarian matching against brute force, baselines, seeds/halves, cross-dataset R^2."""

from __future__ import annotations

import re
import warnings
from itertools import permutations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import hand_attribution

import corelib as cl
from corelib.runs import StaleOutputError

matplotlib.use("Agg")


def _brute_force(cos: np.ndarray) -> float:
    """Best total cosine over every injective map of the smaller side into the larger (the reference)."""
    c1, c2 = cos.shape
    if c1 <= c2:
        return max(sum(cos[i, p[i]] for i in range(c1)) for p in permutations(range(c2), c1))
    return max(sum(cos[p[j], j] for j in range(c2)) for p in permutations(range(c1), c2))


@pytest.mark.parametrize(("c1", "c2"), [(4, 4), (3, 5), (5, 3), (6, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_equals_brute_force(c1: int, c2: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    D1, D2 = rng.normal(size=(c1, 4)), rng.normal(size=(c2, 4))
    m = cl.tl.stability.match_dictionaries(D1, D2)
    cos = cl.tl.stability.cosine_similarity(D1, D2)
    assert len(m.rows) == min(c1, c2)
    assert len(set(m.rows)) == len(m.rows) and len(set(m.cols)) == len(m.cols)
    np.testing.assert_allclose(m.cosine, cos[m.rows, m.cols])
    assert m.cosine.sum() == pytest.approx(_brute_force(cos), abs=1e-12)


def test_cosine_similarity_matches_scipy() -> None:
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    D1, D2 = rng.normal(size=(5, 7)) * 3, rng.normal(size=(4, 7))
    np.testing.assert_allclose(
        cl.tl.stability.cosine_similarity(D1, D2), 1 - cdist(D1, D2, "cosine"), atol=1e-12
    )


def test_recovers_known_permutation() -> None:
    rng = np.random.default_rng(3)
    D1 = rng.normal(size=(30, 10))
    perm = rng.permutation(30)
    D2 = 2.5 * D1[perm]  # scale must not matter
    m = cl.tl.stability.match_dictionaries(torch.as_tensor(D1), D2)
    np.testing.assert_array_equal(perm[m.cols], m.rows)
    np.testing.assert_allclose(m.cosine, 1.0)
    assert cl.tl.stability.summarize_matching(m.cosine)["frac_ge_0.9"] == 1.0


def test_sign_invariant_matching() -> None:
    rng = np.random.default_rng(4)
    D1 = rng.normal(size=(6, 8))
    flipped = D1 * np.array([1, -1, 1, -1, -1, 1])[:, None]
    np.testing.assert_allclose(
        cl.tl.stability.match_dictionaries(D1, flipped, sign_invariant=True).cosine, 1.0
    )
    assert cl.tl.stability.match_dictionaries(D1, flipped).cosine.min() < 0.99


def test_summarize_matching() -> None:
    s = cl.tl.stability.summarize_matching(np.array([0.95, 0.8, 0.5, 0.1]))
    assert s == {
        "n_pairs": 4,
        "mean_cosine": pytest.approx(0.5875),
        "median_cosine": pytest.approx(0.65),
        "frac_ge_0.7": 0.5,
        "frac_ge_0.9": 0.25,
    }


def test_chance_matching_is_low_in_high_dimension() -> None:
    assert cl.tl.stability.chance_matching(20, 20, 200, seed=0)["mean_cosine"] < 0.3


@pytest.mark.parametrize(
    ("D1", "D2", "match"),
    [
        (np.ones((3, 4)), np.ones((3, 5)), "different spaces"),
        (np.ones(4), np.ones((3, 4)), "2-D"),
        (np.zeros((2, 4)), np.ones((3, 4)), "all-zero rows"),
        (np.full((2, 4), np.nan), np.ones((3, 4)), "NaN"),
    ],
)
def test_bad_dictionaries(D1: np.ndarray, D2: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cl.tl.stability.match_dictionaries(D1, D2)


def _planted_embeddings(n: int = 600, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cells as sparse non-negative mixtures of d known unit directions (independent Laplace-like sources)."""
    rng = np.random.default_rng(seed)
    dirs = np.linalg.qr(rng.normal(size=(d, d)))[0].T
    sources = rng.exponential(size=(n, d)) * (rng.random((n, d)) < 0.3)
    return sources @ dirs, dirs


def test_baselines_shapes_and_pca_reference() -> None:
    from sklearn.decomposition import PCA

    emb, _ = _planted_embeddings()
    pca = cl.tl.baselines.baseline_dictionary(emb, "pca", 3, seed=0)
    ref = PCA(3).fit(emb).components_
    np.testing.assert_allclose(np.abs(np.sum(pca * ref, axis=1)), 1.0, atol=1e-6)
    assert cl.tl.baselines.baseline_dictionary(emb, "ica", 6).shape == (6, 6)
    assert cl.tl.baselines.baseline_dictionary(emb, "nmf", 6).shape == (6, 6)
    with pytest.raises(ValueError, match="between 1 and 6"):
        cl.tl.baselines.baseline_dictionary(emb, "nmf", 7)


def test_ica_recovers_planted_directions() -> None:
    emb, dirs = _planted_embeddings(n=3000)
    m = cl.tl.stability.match_dictionaries(
        cl.tl.baselines.baseline_dictionary(emb, "ica", 6), dirs, sign_invariant=True
    )
    assert m.cosine.min() > 0.95


def test_baseline_bad_inputs() -> None:
    emb, _ = _planted_embeddings()
    with pytest.raises(ValueError, match="between 1 and 6"):
        cl.tl.baselines.baseline_dictionary(emb, "pca", 50)
    with pytest.raises(ValueError, match="Unknown baseline"):
        cl.tl.baselines.baseline_dictionary(emb, "lda", 3)
    assert cl.tl.baselines.baseline_fitter("pca", 50)(emb, 0, "x").shape == (
        6,
        6,
    )  # the fitter caps at what fits


def test_split_halves() -> None:
    a, b = cl.tl.stability.split_halves(11, seed=0)
    assert len(a) == 5 and len(b) == 6
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(11))
    np.testing.assert_array_equal(cl.tl.stability.split_halves(11, seed=0)[0], a)
    with pytest.raises(ValueError, match="two halves"):
        cl.tl.stability.split_halves(1, seed=0)


def test_dictionary_stability_seeds_and_halves() -> None:
    emb, _ = _planted_embeddings()
    seeds = cl.tl.stability.dictionary_stability(
        cl.tl.baselines.baseline_fitter("pca", 4), emb, seeds=[0, 1, 2], sign_invariant=True, progress=False
    )
    assert list(seeds[["fit_1", "fit_2"]].itertuples(index=False, name=None)) == [
        ("seed0", "seed1"),
        ("seed0", "seed2"),
        ("seed1", "seed2"),
    ]
    np.testing.assert_allclose(seeds["mean_cosine"], 1.0, atol=1e-6)  # PCA on the same cells is deterministic
    halves = cl.tl.stability.dictionary_stability(
        cl.tl.baselines.baseline_fitter("pca", 4),
        emb,
        seeds=[0, 1],
        mode="halves",
        sign_invariant=True,
        progress=False,
    )
    assert len(halves) == 2 and (halves["mean_cosine"] < 1).all()
    table = cl.tl.stability.stability_table({("pca", "seeds"): seeds, ("pca", "halves"): halves})
    assert table.loc[0, "mean_cosine_mean"] == pytest.approx(1.0)
    assert table.loc[0, "chance_mean_cosine"] < 0.9 and table.loc[0, "dim"] == 6
    assert (
        cl.tl.stability.format_stability_table(table).loc[("pca", "seeds"), "mean_cosine"] == "1.000 ± 0.000"
    )
    assert table.loc[1, "n_pairs_of_fits"] == 2 and np.isfinite(table.loc[1, "mean_cosine_std"])
    seen = []
    cl.tl.stability.dictionary_stability(
        lambda e, s, tag: seen.append((tag, s)) or emb[:3], emb, seeds=[0, 1], mode="halves", progress=False
    )
    assert seen == [("split0_a", 0), ("split0_b", 1), ("split1_a", 2), ("split1_b", 3)]  # no shared init
    with pytest.raises(ValueError, match="at least 2 seeds"):
        cl.tl.stability.dictionary_stability(
            cl.tl.baselines.baseline_fitter("pca", 4), emb, seeds=[0], progress=False
        )
    with pytest.raises(ValueError, match="mode"):
        cl.tl.stability.dictionary_stability(
            cl.tl.baselines.baseline_fitter("pca", 4), emb, seeds=[0, 1], mode="folds", progress=False
        )


TRAIN = {"lr": 3e-3, "epochs": 20, "batch_size": 128, "device": "cpu", "progress": False}


def test_sae_fitter_caches_and_drops_dead(tmp_path, monkeypatch) -> None:
    emb, _ = _planted_embeddings(n=400)
    fit = cl.runs.steps.sae_fitter(12, 2, cache_dir=tmp_path, **TRAIN)
    D = fit(emb, 0, "seed0")
    model = cl.tl.sae.TopKSAE.load(tmp_path / "seed0")
    alive = cl.tl.stability.active_concepts(model, emb)
    np.testing.assert_allclose(D, model.dictionary.detach().numpy()[alive])

    def no_training(*args, **kwargs):
        raise AssertionError("a cached SAE was retrained")

    monkeypatch.setattr(cl.tl.sae, "train", no_training)
    np.testing.assert_array_equal(fit(emb, 0, "seed0"), D)
    with pytest.raises(StaleOutputError, match="epochs: 20.* -> .*epochs: 21"):  # other settings: not reused
        cl.runs.steps.sae_fitter(12, 2, cache_dir=tmp_path, **{**TRAIN, "epochs": 21})(emb, 0, "seed0")
    with pytest.raises(StaleOutputError, match="embeddings"):  # other cells: not reused either
        fit(emb[:300], 0, "seed0")
    with pytest.raises(AssertionError, match="retrained"):  # overwrite: retrained
        cl.runs.steps.sae_fitter(12, 2, cache_dir=tmp_path, overwrite=True, **{**TRAIN, "epochs": 21})(
            emb, 0, "seed0"
        )


def test_cross_dataset_r2_is_the_documented_formula() -> None:
    emb_a, _ = _planted_embeddings(n=400, seed=0)
    emb_b = _planted_embeddings(n=300, seed=1)[0] * 1.3 + 0.2  # another "dataset" in the same space
    model = cl.tl.sae.train(emb_a, 12, 3, seed=0, **TRAIN).sae
    table = cl.tl.stability.cross_dataset_r2({"A": model}, {"A": emb_a, "B": emb_b})
    with torch.no_grad():
        x = torch.as_tensor(emb_b, dtype=torch.float32)
        recon = model.decode(model.encode(x)).double().numpy()
    expected = 1 - np.sum((emb_b - recon) ** 2) / np.sum((emb_b - emb_b.mean(axis=0)) ** 2)
    got = table.set_index("test_dataset").loc["B", "r2"]
    assert got == pytest.approx(expected, abs=1e-5)
    assert table.set_index("test_dataset").loc["A", "same_dataset"]
    with pytest.raises(ValueError, match="Embed both datasets with the same encoder"):
        cl.tl.stability.cross_dataset_r2({"A": model}, {"C": np.zeros((5, 4))})


def test_matched_pair_genes() -> None:
    genes = ["G0", "G1", "G2", "G3", "G4"]
    a1 = hand_attribution([[5, 0], [4, 0], [3, 1], [0, 2], [0, 3]], genes, [0, 1])  # genes x concepts
    a2 = hand_attribution(
        [[9], [8], [0], [0], [1]], genes, [1]
    )  # only concept 1 of the second SAE attributed
    m = cl.tl.stability.Matching(rows=np.array([0, 1]), cols=np.array([1, 0]), cosine=np.array([0.8, 0.95]))
    out = cl.runs.steps.matched_pair_genes(m, a1, a2, n_genes=3)
    assert out["concept_1"].tolist() == [1, 0]  # best cosine first
    assert (
        out.loc[0, "top_genes_1"] == "G4, G3, G2"
        and out.loc[0, "top_genes_2"] == ""
        and out.loc[0, "n_shared"] == 0
    )
    assert out.loc[1, "top_genes_1"] == "G0, G1, G2" and out.loc[1, "top_genes_2"] == "G0, G1, G4"
    assert out.loc[1, "shared_genes"] == "G0, G1" and out.loc[1, "n_shared"] == 2


def test_cross_dataset_and_attribution_of_matched_pairs(tmp_path) -> None:
    genes = [f"g{i}" for i in range(60)]
    a, b = _counts(150, genes, 0), _counts(120, genes, 1)
    enc, _ = cl.runs.steps.shared_scvi_encoder(a, b, n_latent=4, epochs=1, progress=False)
    emb = cl.runs.steps.embed_datasets(enc, {"A": a, "B": b}, progress=False)
    assert "X_scvi" not in a.obsm  # inputs untouched
    cross = cl.runs.steps.cross_dataset(emb, 10, 2, seed=0, cache_dir=tmp_path, holdout_fraction=0.2, **TRAIN)
    assert set(cross.r2["train_dataset"]) == {"A", "B"} and len(cross.r2) == 4
    assert len(cross.heldout["A"]) == 30 and len(cross.matching.rows) == 10
    attr_a, attr_b = cl.runs.steps.attribute_matched(
        enc,
        cross,
        {"A": a, "B": b},
        emb,
        n_pairs=2,
        n_prototypes=3,
        n_counterfactuals=2,
        device="cpu",
        progress=False,
    )
    pairs = cross.matching.to_frame().head(2)
    assert attr_a.units.tolist() == pairs["concept_1"].tolist()
    table = cl.runs.steps.matched_pair_genes(cross.matching, attr_a, attr_b, n_pairs=2, n_genes=5)
    assert len(table) == 2 and (table["n_shared"] <= 5).all()
    with pytest.raises(ValueError, match="two datasets"):
        cl.runs.steps.cross_dataset({"A": emb["A"]}, 10, 2)


def test_shared_genes_error() -> None:
    a = ad.AnnData(np.zeros((2, 3)), var=pd.DataFrame(index=["A", "B", "C"]))
    b = ad.AnnData(np.zeros((2, 2)), var=pd.DataFrame(index=["C", "D"]))
    assert cl.tl.stability.shared_genes(a, b, min_genes=1) == ["C"]
    with pytest.raises(ValueError, match="share only 1 genes"):
        cl.tl.stability.shared_genes(a, b)


def _counts(n: int, genes: list[str], seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.poisson(1.0, size=(n, len(genes))).astype(np.float32))
    return ad.AnnData(X, var=pd.DataFrame(index=genes))


def test_shared_scvi_encoder_caches(tmp_path) -> None:
    genes = [f"g{i}" for i in range(70)]
    a, b = _counts(60, genes[:65], 0), _counts(40, genes[5:], 1)
    enc, info = cl.runs.steps.shared_scvi_encoder(
        a, b, n_latent=3, epochs=1, cache_dir=tmp_path, progress=False
    )
    assert info["n_shared_genes"] == 60 and not info["reused"] and enc.genes == genes[5:65] and enc.dim == 3
    # trained by corelib.encoders.scvi.train with scvi-tools' default architecture and the dataset as batch
    assert (enc.vae_kwargs["n_layers"], enc.vae_kwargs["n_hidden"], enc.vae_kwargs["n_batch"]) == (1, 128, 2)
    again, info2 = cl.runs.steps.shared_scvi_encoder(
        a, b, n_latent=3, epochs=1, cache_dir=tmp_path, progress=False
    )
    assert info2["reused"]
    with pytest.raises(StaleOutputError, match="data_b"):  # another second dataset
        cl.runs.steps.shared_scvi_encoder(
            a, b[:30].copy(), n_latent=3, epochs=1, cache_dir=tmp_path, progress=False
        )
    x = torch.as_tensor(a[:, enc.genes].X.toarray())
    with torch.no_grad():
        np.testing.assert_allclose(again(x).numpy(), enc(x).numpy(), atol=1e-6)


def test_plots_return_figures() -> None:
    r2 = pd.DataFrame(
        {
            "train_dataset": ["A", "A", "B", "B"],
            "test_dataset": ["A", "B", "A", "B"],
            "r2": [0.9, 0.8, 0.7, 0.95],
            "same_dataset": [True, False, False, True],
        }
    )
    heights = [p.get_height() for p in cl.pl.cross_dataset_r2(r2).patches]  # test A, then test B
    np.testing.assert_allclose(heights, [0.9, 0.7, 0.8, 0.95])
    counts = [p.get_xy() for p in cl.pl.matched_cosines({"x": np.array([0.1, 0.9])}).patches]
    assert len(counts) == 1
    rows = pd.DataFrame(
        {
            "n_1": [3, 3],
            "n_2": [3, 3],
            "dim": 4,
            "sign_invariant": False,
            "mean_cosine": [0.5, 0.6],
            "median_cosine": [0.5, 0.6],
            "frac_ge_0.7": [0.1, 0.2],
            "frac_ge_0.9": [0.0, 0.1],
        }
    )
    table = cl.tl.stability.stability_table({("sae", "seeds"): rows, ("pca", "seeds"): rows})
    ax = cl.pl.stability(table)
    means = table.pivot(index="method", columns="mode", values="mean_cosine_mean").loc[
        table["method"].unique()
    ]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], means.to_numpy().T.ravel())


def test_notebook_steps_reuse_the_selected_sae(tmp_path) -> None:

    run = cl.runs.open_run(tmp_path / "run")
    emb, _ = _planted_embeddings(n=300)
    table = cl.runs.steps.sweep(
        emb, [(12, 2, 0)], run=run, lr=3e-3, epochs=5, batch_size=128, device="cpu", progress=False
    )
    run.write_json("sae_selected", cl.tl.sae.select(table))
    selected = cl.runs.steps.selected_sae(run, emb)
    assert (selected["n_concepts"], selected["k"], selected["seed"]) == (12, 2, 0)
    assert selected["train"]["epochs"] == 5
    with pytest.raises(
        StaleOutputError, match=r"rerun step 'sae' \(notebook 02_sae_scale_sweep\)"
    ):  # not trained on these cells
        cl.runs.steps.selected_sae(run, emb[:100])
    methods = cl.runs.steps.stability_methods(
        emb,
        selected,
        cache_dir=tmp_path / "fits",
        baselines=["pca"],
        random_emb_ND=emb[:, ::-1].copy(),
        device="cpu",
    )
    assert list(methods) == ["SAE", "PCA", "SAE (random encoder)"] and methods["PCA"].sign_invariant
    results = cl.tl.stability.compare_stability(methods, seeds=[0, 1], split_seeds=[0], progress=False)
    assert set(results) == {(m, mode) for m in methods for mode in ("seeds", "halves")}
    assert not (tmp_path / "fits" / "sae" / "seed0").exists()  # notebook 02's SAE was reused, not retrained
    assert (tmp_path / "fits" / "sae" / "seed1").exists() and (
        tmp_path / "fits" / "sae" / "split0_a"
    ).exists()
    assert len(cl.tl.stability.stability_table(results)) == 6
    study = cl.runs.steps.cross_dataset_study(run, None, None, selected)
    assert study.r2.empty and "skipped" in study.info
    assert "no cross-dataset" in cl.pl.cross_dataset_r2(study.r2).texts[0].get_text()


def test_selected_concept_matches_recover_a_permuted_seed(tmp_path):
    D = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))[0][:5]  # 5 orthonormal concepts in 6-d

    def saved(rows, folder):
        model = cl.tl.sae.TopKSAE(6, 5, 1)
        with torch.no_grad():
            model.W_dec_CD.copy_(torch.as_tensor(D[rows], dtype=torch.float32))
            model.W_enc_DC.copy_(model.W_dec_CD.T)
        return model.save(folder)

    perm = np.array([3, 0, 4, 1, 2])
    selected = {"path": saved(np.arange(5), tmp_path / "selected"), "seed": 0}
    saved(perm, tmp_path / "fits" / "sae" / "seed1")
    matches = cl.runs.steps.selected_concept_matches(
        D.astype(np.float32), selected, tmp_path / "fits", [0, 1, 2]
    )
    assert list(matches["comparison"].unique()) == ["seed 1"]  # own seed skipped, seed 2 never trained
    np.testing.assert_array_equal(perm[matches["matched_concept"].to_numpy()], matches["concept"].to_numpy())
    np.testing.assert_allclose(matches["cosine"], 1.0, atol=1e-6)


def test_unconverged_baseline_fits_are_one_warning_per_method():
    """FastICA cannot converge on Gaussian data; scikit-learn would warn on each of the 5 fits."""
    from sklearn.exceptions import ConvergenceWarning

    emb = np.random.default_rng(0).normal(size=(300, 10))
    methods = {
        m.upper(): cl.tl.stability.Method(cl.tl.baselines.baseline_fitter(m, 10), emb) for m in ("pca", "ica")
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cl.tl.stability.compare_stability(methods, seeds=[0, 1, 2], split_seeds=[0], progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"ICA: [1-5] of 5 fits stopped at their iteration limit before converging; .*", messages[0]
    )


def test_describe_stability_reads_each_row_against_its_own_chance_level():
    table = pd.DataFrame(
        {
            "method": ["SAE", "SAE (random encoder)"],
            "mode": ["seeds", "seeds"],
            "mean_cosine_mean": [0.53, 0.54],
            "mean_cosine_std": [0.004, 0.002],
            "frac_ge_0.7_mean": [0.001, 0.0],
            "chance_mean_cosine": [0.39, 0.39],
        }
    )
    text = cl.runs.prose.describe_stability(table)
    assert "0.530 ± 0.004 (chance 0.390, +0.140); 0.1% of its matched pairs reach cosine ≥ 0.7" in text
    assert text.endswith("no further above chance than the null's: no stability from training.")
    # the demo's case: a higher raw cosine for the null, but a lower chance level for the trained SAE's null
    demo = table.assign(mean_cosine_mean=[0.444, 0.401], chance_mean_cosine=[0.397, 0.382])
    text = cl.runs.prose.describe_stability(demo)
    assert "(+0.047 vs +0.019): training adds some stability, but few concepts come back closely" in text
    assert "not compared" in cl.runs.prose.describe_stability(table.iloc[1:])


def test_describe_cross_dataset_calls_a_cosine_near_chance_indistinguishable():
    r2 = pd.DataFrame(
        {
            "train_dataset": ["A", "A", "B", "B"],
            "test_dataset": ["A", "B", "A", "B"],
            "r2": [0.85, 0.83, 0.66, 0.73],
        }
    )
    summary = {"mean_cosine": 0.402, "chance_mean_cosine": 0.397, "frac_ge_0.7": 0.0}
    text = cl.runs.prose.describe_cross_dataset(summary, r2)
    assert (
        "0.402, against 0.397 for random directions of the same shape (+0.005); 0.0% of the pairs reach cosine ≥ 0.7"
        in text
    )
    assert "indistinguishable from chance" in text
    assert "trained on A reconstructs B's held-out cells with R² 0.830 (0.850 on its own)" in text
    assert "trained on B reconstructs A's held-out cells with R² 0.660 (0.730 on its own)" in text
    aligned = cl.runs.prose.describe_cross_dataset({**summary, "mean_cosine": 0.6}, r2)
    assert "align beyond chance" in aligned
    assert "skipped" in cl.runs.prose.describe_cross_dataset({}, pd.DataFrame())


def test_shared_scvi_encoder_trains_on_a_seeded_sample_of_an_atlas(tmp_path, capsys) -> None:
    genes = [f"g{i}" for i in range(60)]
    a, b = _counts(90, genes, 0), _counts(40, genes, 1)
    _, info = cl.runs.steps.shared_scvi_encoder(
        a, b, n_latent=3, epochs=1, max_cells=50, seed=2, cache_dir=tmp_path, progress=False
    )
    assert (
        info["n_train_cells"] == [50, 40] and "seeded sample of 50 of the 90 cells" in capsys.readouterr().out
    )
    # the cache's record of the sampled run is the record of exactly those cells trained on in full
    cells = cl.tl.sampling.subsample_cells(90, 50, seed=2)
    _, again = cl.runs.steps.shared_scvi_encoder(
        a[cells].copy(), b, n_latent=3, epochs=1, seed=2, cache_dir=tmp_path, progress=False
    )
    assert again["reused"]
