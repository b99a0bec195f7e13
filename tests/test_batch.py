"""Batch concepts (corelib.tl.batch) and their scib-metrics scores (corelib.tl.integration), issue 26."""

import json
import re
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import roc_auc_score, silhouette_samples

import corelib as cl
from corelib.tl import batch as tb
from corelib.tl import integration as ti
from corelib.tl.sae import SAEConfig, init_sae


def _tied_codes(n_cells=300, n_concepts=6, seed=0):
    codes = sp.random(n_cells, n_concepts, density=0.3, random_state=seed, format="csr")
    codes.data = np.round(codes.data * 3) / 3 + 0.1  # ties among the non-zero values too
    return codes


def test_concept_auroc_matches_sklearn_and_a_pairwise_count_within_strata():
    rng = np.random.default_rng(0)
    codes = _tied_codes()
    labels = rng.choice(["x", "y", "z"], 300)
    strata = rng.choice(["s1", "s2"], 300)
    dense = codes.toarray()
    expected = [[roc_auc_score(labels == lv, dense[:, c]) for lv in "xyz"] for c in range(6)]
    np.testing.assert_allclose(tb.concept_auroc(codes, labels).to_numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(cl.tl.recovery.auroc(codes, labels == "y"), np.array(expected)[:, 1])

    def pairwise(c, level):  # P(a cell of `level` outscores another cell of its stratum), ties one half
        wins = pairs = 0.0
        for s in ("s1", "s2"):
            x, pos = dense[strata == s, c], labels[strata == s] == level
            diff = x[pos][:, None] - x[~pos][None, :]
            wins += (diff > 0).sum() + 0.5 * (diff == 0).sum()
            pairs += diff.size
        return wins / pairs

    within = tb.concept_auroc(codes, labels, strata_N=strata).to_numpy()
    np.testing.assert_allclose(within, [[pairwise(c, lv) for lv in "xyz"] for c in range(6)], atol=1e-12)


def _batch_codes(n_cells=2000, n_concepts=40, seed=0):
    """Codes where concept 0 fires in batch B only, concept 1 in cell type "t1" (60% of batch B is t1, 20% of
    batch A), the rest at random."""
    rng = np.random.default_rng(seed)
    batch = rng.choice(["A", "B"], n_cells)
    types = np.where(rng.random(n_cells) < np.where(batch == "B", 0.6, 0.2), "t1", "t2")
    dense = rng.exponential(size=(n_cells, n_concepts)) * (rng.random((n_cells, n_concepts)) < 0.1)
    dense[:, 0] = (batch == "B") * rng.exponential(size=n_cells) * (rng.random(n_cells) < 0.9)
    dense[:, 1] = (types == "t1") * rng.exponential(size=n_cells)
    return sp.csr_matrix(dense), batch, types


def test_a_planted_batch_concept_is_found_and_random_and_cell_type_concepts_are_not():
    codes, batch, types = _batch_codes()
    table = tb.batch_concepts(codes, batch, labels_N=types, statistic="pooled", n_permutations=50)
    assert table.index[0] == 0 and table.loc[0, "batch"] == "B" and table.loc[0, "auroc"] >= 0.9
    assert table.loc[0, "associated"] and table["associated"].sum() == 1
    assert table.drop(index=0)["auroc"].max() < 0.6  # random concepts and the cell-type concept
    assert 0.5 < table.attrs["null_auroc"] < 0.6
    np.testing.assert_allclose(table["auroc_A"] + table["auroc_B"], 1.0)  # two batches: complementary
    # without the cell types, the concept of the type batch B has more of looks like a batch concept
    pooled = tb.batch_concepts(codes, batch, statistic="pooled", n_permutations=0, min_auroc=0.6)
    assert pooled.loc[1, "auroc"] > 0.65 and pooled.loc[1, "associated"]
    one = tb.batch_concepts(codes, batch, n_permutations=0)  # per stratum, the one stratum named as such
    assert set(one["stratum"]) == {tb.ALL_CELLS}
    assert list(tb.label_concepts(codes, types, 1)) == [1]
    chosen = tb.random_concepts(40, 5, seed=0, exclude=[0, 1])
    assert len(set(chosen)) == 5 and not {0, 1} & set(chosen)


def _typed_batch_codes(n_cells=1500, n_types=5, n_concepts=30, seed=0):
    """Codes where concept t fires in the batch-B cells of cell type t only (each type its own batch
    concept), the rest at random; type 4 is small (10 cells per batch: below min_cells)."""
    rng = np.random.default_rng(seed)
    types = rng.choice(n_types - 1, n_cells - 20)
    types = np.r_[types, np.full(20, n_types - 1)]
    batch = np.r_[rng.choice(["A", "B"], n_cells - 20), np.repeat(["A", "B"], 10)]
    dense = rng.exponential(size=(n_cells, n_concepts)) * (rng.random((n_cells, n_concepts)) < 0.1)
    for t in range(n_types):
        fires = (types == t) & (batch == "B") & (rng.random(n_cells) < 0.95)
        dense[:, t] = fires * rng.exponential(size=n_cells)
    return sp.csr_matrix(dense), batch, types.astype(str)


def test_per_stratum_auroc_finds_each_cell_types_batch_concept_that_pooling_dilutes():
    codes, batch, types = _typed_batch_codes()
    table = tb.batch_concepts(codes, batch, labels_N=types, n_permutations=30, min_cells=20)
    dense = codes.toarray()
    for t in range(4):  # sklearn within the cell type: the independent reference
        inside = types == str(t)
        expected = roc_auc_score(batch[inside] == "B", dense[inside, t])
        assert table.loc[t, "auroc"] == pytest.approx(expected, abs=1e-12) and expected >= 0.9
        assert table.loc[t, "stratum"] == str(t) and table.loc[t, "batch"] == "B"
    assert sorted(table.index[table["associated"]]) == [0, 1, 2, 3]  # type 4 has too few cells
    assert table.drop(index=range(5))["auroc"].max() < table.attrs["null_auroc"] < 0.7
    pooled = tb.batch_concepts(codes, batch, labels_N=types, statistic="pooled", n_permutations=30)
    assert pooled.loc[[0, 1, 2, 3], "auroc"].max() < 0.7 and (pooled["stratum"] == "").all()
    assert pooled.attrs["null_auroc"] < table.attrs["null_auroc"]  # the best of several types: larger null
    with pytest.raises(ValueError, match="lower min_cells"):
        tb.batch_concepts(codes, batch, labels_N=types, min_cells=1000, n_permutations=0)


def _sae(n_concepts=24, k=4, d=8, seed=0):
    x = torch.randn(500, d, generator=torch.Generator().manual_seed(seed))
    return init_sae(SAEConfig(d, n_concepts, k), x, seed), x.numpy()


def test_suppressing_nothing_returns_the_embedding_and_a_concept_removes_its_decoder_contribution():
    sae, emb = _sae()
    np.testing.assert_allclose(tb.suppress_concepts(sae, emb, []), emb, rtol=1e-6, atol=1e-6)
    concepts = [3, 7, 11]
    with torch.no_grad():
        codes = sae.encode(torch.as_tensor(emb)).double().numpy()
    dictionary = sae.W_dec_CD.detach().double().numpy()
    expected = emb.astype(np.float64).copy()
    for i in range(len(emb)):  # brute force: one cell and one suppressed concept at a time
        for c in concepts:
            expected[i] -= codes[i, c] * dictionary[c]
    assert (codes[:, concepts] > 0).any(axis=0).all()  # the concepts do fire
    got = tb.suppress_concepts(sae, emb, concepts, batch_size=64)  # several blocks
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the same as decoding the codes without them plus the residual
    with torch.no_grad():
        full = sae.decode(torch.as_tensor(codes, dtype=torch.float32)).numpy()
        kept = codes.copy()
        kept[:, concepts] = 0
        without = sae.decode(torch.as_tensor(kept, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, without + (emb - full), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Concept indices"):
        tb.suppress_concepts(sae, emb, [24])


def test_remove_batch_concepts_writes_the_corrected_embedding_and_its_record():
    sae, emb = _sae()
    adata = ad.AnnData(
        obs=pd.DataFrame({"batch": np.repeat(["A", "B"], 250)}, index=[f"c{i}" for i in range(500)])
    )
    adata.obsm["X_emb"] = emb
    adata.obsm["X_concepts"] = cl.tl.sae.encode(sae, emb)
    adata.uns["concepts"] = {"params": {"use_rep": "X_emb"}}
    table = tb.remove_batch_concepts(adata, sae, "batch", min_auroc=0.5, n_permutations=0)
    record = adata.uns["concepts"]["batch"]
    assert (
        list(record["concepts"]) == sorted(table.index[table["associated"]]) and len(record["concepts"]) > 0
    )
    np.testing.assert_allclose(
        adata.obsm["X_emb_corrected"], tb.suppress_concepts(sae, emb, record["concepts"]), rtol=1e-6
    )
    with pytest.raises(KeyError, match="no 'donor'"):
        tb.remove_batch_concepts(adata, sae, "donor")


def _clusters(n_cells=600, shift=0.0, seed=0):
    """Four well-separated cell types in 10 dimensions; batch B moved by ``shift`` along one axis."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n_cells)
    batch = rng.integers(0, 2, n_cells)
    centres = rng.normal(scale=6.0, size=(4, 10))
    emb = centres[labels] + rng.normal(size=(n_cells, 10))
    emb[:, 0] += shift * batch
    return emb.astype(np.float32), batch.astype(str), labels.astype(str)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scib_scores_order_a_mixed_batch_above_a_separated_one():
    mixed, batch, labels = _clusters()
    separated, _, _ = _clusters(shift=30.0)
    scrambled = np.random.default_rng(1).permutation(mixed)
    table = ti.scib_table({"mixed": mixed, "separated": separated, "scrambled": scrambled}, batch, labels)
    metrics = [*ti.BATCH_METRICS, *ti.BIO_METRICS]
    assert (
        ((table[metrics] >= -0.01) & (table[metrics] <= 1)).all().all()
    )  # ARI is chance-adjusted: ~0 by chance
    assert table.loc["mixed", ti.BATCH_SCORE] > 0.9 > 0.5 > table.loc["separated", ti.BATCH_SCORE]
    assert (table.loc["mixed", list(ti.BATCH_METRICS)] > table.loc["separated", list(ti.BATCH_METRICS)]).all()
    assert table.loc["mixed", ti.BIO_SCORE] > 0.9 > 0.5 > table.loc["scrambled", ti.BIO_SCORE]
    np.testing.assert_allclose(
        table[ti.TOTAL], 0.4 * table[metrics[:4]].mean(axis=1) + 0.6 * table[metrics[4:]].mean(axis=1)
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scib_scores_match_scib_metrics_benchmarker_and_a_sklearn_batch_asw():
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    emb, batch, labels = _clusters(shift=3.0)
    ours = ti.integration_metrics(emb, batch, labels)
    adata = ad.AnnData(obs=pd.DataFrame({"batch": batch, "labels": labels}, index=map(str, range(len(emb)))))
    adata.obsm["X_emb"] = emb
    adata.obsm["X_pca"] = emb  # only PCR comparison reads it, and it is off
    bench = Benchmarker(
        adata, "batch", "labels", ["X_emb"],
        bio_conservation_metrics=BioConservation(
            isolated_labels=False, nmi_ari_cluster_labels_kmeans=False, nmi_ari_cluster_labels_leiden=True
        ),
        batch_correction_metrics=BatchCorrection(bras=False, pcr_comparison=False),
        pre_integrated_embedding_obsm_key="X_pca", progress_bar=False,
    )  # fmt: skip
    bench.benchmark()
    theirs = bench.get_results(min_max_scale=False).loc["X_emb"]
    for name in (
        "iLISI",
        "KBET",
        "Graph connectivity",
        "cLISI",
        "Leiden NMI",
        "Leiden ARI",
        "Silhouette label",
    ):
        assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-6), name
    # scib's batch ASW: per cell type, 1 - |silhouette| of the batches, averaged over cells, then over types
    per_type = [
        np.mean(1 - np.abs(silhouette_samples(emb[labels == t], batch[labels == t])))
        for t in np.unique(labels)
    ]
    assert ours["Silhouette batch"] == pytest.approx(np.mean(per_type), abs=1e-4)


def test_without_scib_metrics_the_error_names_the_batch_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)
    with pytest.raises(ImportError, match=r"scib-metrics.*pip install 'corelib\[batch\]'"):
        ti.integration_metrics(np.zeros((4, 2)), ["a"] * 4, ["t"] * 4)
    monkeypatch.setitem(sys.modules, "harmonypy", None)
    with pytest.raises(ImportError, match=r"pip install 'corelib\[batch\]'"):
        ti.harmony(np.zeros((4, 2)), ["a", "a", "b", "b"])


# ------------------------------------------------------------------ notebook 04's batch study (runs.steps.batch)
SETTINGS = {"n_concepts": 16, "k": 3, "seed": 0, "train": {"epochs": 40, "lr": 3e-3, "batch_size": 128}}
SCHEMA_ROWS = [
    "uncorrected",
    "batch concepts",
    "random concepts, seed 0",
    "random concepts, seed 1",
    "cell-type concepts",
    "Harmony",
]


def _cross(n_per_type=80, d=8, shift=3.0, seed=0):
    """Two datasets of three cell types; dataset B's T cells are shifted along one direction (the batch)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, d))
    adatas, embeddings = {}, {}
    for j, name in enumerate(("A", "B")):
        types = np.repeat(["CD4+/CD45RO+ Memory" if j else "Memory CD4 T", "B", "NK"], n_per_type)
        emb = centres[np.repeat(np.arange(3), n_per_type)] + rng.normal(0, 1, (len(types), d))
        emb[: n_per_type * j, 0] += shift  # B's first type only
        obs = pd.DataFrame({"cell_type": types}, index=[f"{name}{i}" for i in range(len(types))])
        adatas[name] = ad.AnnData(obs=obs)
        embeddings[name] = emb.astype(np.float32)
    info = {"dataset_a": "A", "dataset_b": "B"}
    return cl.runs.steps.CrossDatasetStudy(
        info, pd.DataFrame(), pd.DataFrame(), {}, pd.DataFrame(), adatas, embeddings
    )


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    run = cl.runs.open_run(tmp_path_factory.mktemp("batch_run"))
    cross = _cross()
    return (
        run,
        cross,
        cl.runs.steps.batch_study(run, cross, SETTINGS, null_seeds=2, device="cpu", progress=False),
    )


def test_the_batch_study_writes_the_scib_table_the_concepts_and_the_umaps(studied):
    run, cross, study = studied
    assert study.scores.index.name == "embedding"
    assert study.scores.index.tolist() == SCHEMA_ROWS
    assert study.scores.columns.tolist() == [
        *ti.BATCH_METRICS,
        *ti.BIO_METRICS,
        "Batch correction",
        "Bio conservation",
        "Total",
    ]
    on_disk = pd.read_csv(run.path("batch_scib"), index_col="embedding")
    pd.testing.assert_frame_equal(on_disk, study.scores, check_exact=False, rtol=1e-9)
    # the shifted T cells: a concept marks dataset B among the T cells (mapped to one coarse type, "CD4 T")
    found = study.concepts[study.concepts["associated"]]
    assert len(found) >= 1 and set(found["stratum"]) == {"CD4 T"} and set(found["batch"]) == {"B"}
    assert study.info["n_batch_concepts"] == len(found)
    assert study.info["n_cells"] == {"A": 240, "B": 240}
    assert study.info["null_seeds"] == 2 and 0 < study.info["sae_r2"] <= 1
    assert study.info["min_auroc"] == tb.MIN_AUROC["per_stratum"]
    assert json.loads(run.path("batch_info").read_text()) == study.info
    # suppressing them mixes the datasets more than random concepts do
    s = study.scores["Batch correction"]
    assert s["batch concepts"] > max(
        s["uncorrected"], s["random concepts, seed 0"], s["random concepts, seed 1"]
    )
    assert len(study.umap) == 2 * 480
    assert study.umap.groupby("embedding").size().to_dict() == {"batch concepts": 480, "uncorrected": 480}
    assert set(study.umap["cell_type"]) == {"CD4 T", "B", "NK"}


def test_the_batch_study_reuses_its_outputs_only_when_made_from_the_same_inputs(studied, monkeypatch):
    run, cross, study = studied

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(ti, "scib_table", fail)
    again = cl.runs.steps.batch_study(run, cross, SETTINGS, null_seeds=2, device="cpu", progress=False)
    pd.testing.assert_frame_equal(again.scores, study.scores)
    assert again.info == study.info
    with pytest.raises(cl.runs.StaleOutputError, match="null_seeds"):
        cl.runs.steps.batch_study(run, cross, SETTINGS, null_seeds=3, device="cpu", progress=False)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("disabled", "batch_study is False"),
        ("no second dataset", "cross-dataset part"),
        ("no cell types", r"has no obs\['cell_type'\]"),
        ("no scib-metrics", r"pip install 'corelib\[batch\]'"),
    ],
)
def test_a_batch_study_that_cannot_run_says_why_once_and_writes_nothing(
    tmp_path, monkeypatch, capsys, case, said
):
    run = cl.runs.open_run(tmp_path)
    cross = _cross(n_per_type=5)
    if case == "no second dataset":
        cross = cross._replace(info={"skipped": "stability_dataset is None"}, adatas={}, embeddings={})
    if case == "no cell types":
        del cross.adatas["B"].obs["cell_type"]
    if case == "no scib-metrics":
        monkeypatch.setitem(sys.modules, "scib_metrics", None)
    run.path("batch_scib").write_text("embedding,Total\nuncorrected,0.5\n")  # an earlier run's table
    study = cl.runs.steps.batch_study(run, cross, SETTINGS, enabled=case != "disabled", progress=False)
    out = capsys.readouterr().out
    assert re.search(said, out) and out.count("\n") == 1 and study.info == {"skipped": out.strip()}
    assert study.scores.empty and study.umap.empty and not run.locate("batch_scib").exists()
    assert cl.runs.prose.describe_batch(study.info, study.scores) == ""


def _scores(batch, bio):
    """A scib table of the study's rows: (batch, bio) scores per row."""
    rows = {
        name: {"Batch correction": b, "Bio conservation": c}
        for name, b, c in zip(SCHEMA_ROWS, batch, bio, strict=True)
    }
    return pd.DataFrame.from_dict(rows, orient="index")


INFO = {"n_batch_concepts": 4, "n_concepts": 50, "min_auroc": 0.7, "null_auroc": 0.65, "sae_r2": 0.9}


def test_describe_batch_reads_the_scores_and_the_claims_verdict():
    kept = cl.runs.prose.describe_batch(
        INFO, _scores([0.5, 0.6, 0.5, 0.52, 0.51, 0.7], [0.8, 0.79, 0.8, 0.8, 0.7, 0.78])
    )
    assert "batch score 0.500 → 0.600 and its bio score 0.800 → 0.790" in kept
    assert "random concepts give batch 0.510 ± 0.014 over 2 seeds" in kept
    assert (
        "cell-type concepts moves bio by -0.100" in kept
        and "Harmony, for comparison: batch 0.700, bio 0.780" in kept
    )
    # the verdict is notebook 07's: gain 0.100 against the random gains' mean + 2 sd, 0.010 + 2 x 0.014
    assert kept.endswith(
        "holds: above the mean + 2 sd of random concepts (0.100 vs 0.038); bio change -0.010, within the limit -0.02."
    )
    lost = cl.runs.prose.describe_batch(
        INFO, _scores([0.5, 0.51, 0.5, 0.52, 0.51, 0.7], [0.8, 0.75, 0.8, 0.8, 0.7, 0.78])
    )
    assert "biology fails: not above the mean + 2 sd" in lost and "bio change -0.050, below the limit" in lost
    none = cl.runs.prose.describe_batch({**INFO, "n_batch_concepts": 0}, _scores([0.5] * 6, [0.8] * 6))
    assert none.endswith("Nothing was suppressed, so the corrected embedding is the uncorrected one.")


def test_the_batch_study_samples_at_most_max_cells_of_each_dataset_keeping_the_cell_types(capsys):
    cells = cl.runs.steps.batch._cells(_cross(n_per_type=60), "cell_type", 90, seed=0)
    assert cells.obs["dataset"].value_counts().to_dict() == {"A": 90, "B": 90}
    assert cells.obs.groupby("dataset", observed=True)["cell_type"].value_counts().eq(30).all()
    assert "a seeded sample of 90 of the 180 cells" in capsys.readouterr().out
