"""Ground truth (issue 22): planted programs, the expression-matched ORA, split-half reliability, recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import binom, hypergeom

import corelib as cl

IFNG = "Response To Type II Interferon (GO:0034341)"


@pytest.fixture(scope="module")
def pbmc():
    return cl.datasets.load_dataset("pbmc3k")


@pytest.fixture(scope="module")
def planted(pbmc):
    program = cl.datasets.gene_set_program(IFNG, pbmc.var_names, fold_change=6.0, share=0.2)
    return cl.datasets.plant_programs(pbmc, [program], seed=0)


# ----------------------------------------------------------------------------------------------------------
# The planted data set
# ----------------------------------------------------------------------------------------------------------
def test_planting_adds_counts_only_to_the_program_in_its_cells_at_the_asked_fold_change(pbmc, planted):
    truth = planted.uns["planted"]["response_to_type_ii_interferon"]
    members = planted.obs["planted_response_to_type_ii_interferon"].to_numpy()
    assert truth["term"] == IFNG and truth["n_cells"] == members.sum() == round(0.2 * pbmc.n_obs)
    genes = np.isin(pbmc.var_names, truth["genes"])
    diff = (planted.X - pbmc.X).toarray()
    assert (diff >= 0).all() and (diff == np.round(diff)).all()  # counts only added, integers
    assert not diff[~members].any() and not diff[:, ~genes].any()  # nowhere else
    # expected extra = (fc - 1) * gene share * library size; summed over member cells and genes (Poisson noise
    # of a sum of ~10,000 counts is ~1%)
    X = pbmc.X.toarray().astype(float)
    share_G = X.sum(0) / X.sum()
    expected = 5.0 * X.sum(1)[members, None] * share_G[genes][None, :]
    assert diff[np.ix_(members, genes)].sum() == pytest.approx(expected.sum(), rel=0.05)


def test_planting_is_seeded_and_within_a_type_stays_there(pbmc):
    program = cl.datasets.gene_set_program(IFNG, pbmc.var_names, share=0.5, cell_type="B", max_genes=8)
    a = cl.datasets.plant_programs(pbmc, [program], seed=3)
    b = cl.datasets.plant_programs(pbmc, [program], seed=3)
    assert (a.X != b.X).nnz == 0 and len(program.genes) == 8
    members = a.obs[f"planted_{program.name}"]
    assert (a.obs.loc[members, "cell_type"] == "B").all()


def test_bad_programs_are_named(pbmc):
    with pytest.raises(KeyError, match="similar terms"):
        cl.datasets.gene_set_program("Response To Type II Interferon", pbmc.var_names)
    program = cl.datasets.Program("x", "x", ("NOT_A_GENE",))
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        cl.datasets.plant_programs(pbmc, [program])
    with pytest.raises(ValueError, match="fold_change"):
        cl.datasets.plant_programs(pbmc, [cl.datasets.Program("x", "x", ("CD74",), fold_change=1.0)])
    with pytest.raises(ValueError, match="no cell of type"):
        cl.datasets.plant_programs(pbmc, [cl.datasets.Program("x", "x", ("CD74",), cell_type="Neuron")])


# ----------------------------------------------------------------------------------------------------------
# Expression-matched over-representation
# ----------------------------------------------------------------------------------------------------------
def test_binomial_sum_tail_matches_brute_force_convolution():
    from corelib.tl.enrichment._ora import _binomial_sum_tail, _tail_pvalues

    rng = np.random.default_rng(0)
    count_SB = rng.integers(0, 12, size=(6, 4)).astype(float)
    p_B = rng.uniform(0.005, 0.2, 4)
    observed = rng.integers(0, 8, 6)
    for s in range(6):
        pmf = np.array([1.0])
        for b in range(4):
            pmf = np.convolve(pmf, binom.pmf(np.arange(count_SB[s, b] + 1), count_SB[s, b], p_B[b]))
        expected = pmf[observed[s] :].sum() if observed[s] > 0 else 1.0
        got = _tail_pvalues(_binomial_sum_tail(count_SB[[s]], p_B), observed[[s]])[0]
        assert got == pytest.approx(max(expected, cl.tl.enrichment.MIN_PVALUE), rel=1e-6, abs=1e-12)
    # one tail table for all sets at once, as ora computes it for all units
    together = _tail_pvalues(_binomial_sum_tail(count_SB, p_B), observed)
    alone = [_tail_pvalues(_binomial_sum_tail(count_SB[[s]], p_B), observed[[s]])[0] for s in range(6)]
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-12)


def test_ora_with_one_bin_is_the_binomial_test_and_close_to_hypergeometric():
    genes = [f"G{i}" for i in range(400)]
    scores = pd.DataFrame(np.linspace(1, -1, 400)[:, None], index=genes, columns=[0])
    sets = {"top": genes[:5] + genes[200:215], "mid": genes[100:120]}
    units, terms = cl.tl.enrichment.ora(scores, sets, n_top=40)
    assert units.loc[0, "term"] == "top" and units.loc[0, "overlap"] == 5
    p_binom = binom.sf(4, 20, 40 / 400)
    assert units.loc[0, "pval"] == pytest.approx(p_binom, rel=1e-6)
    assert p_binom == pytest.approx(hypergeom.sf(4, 400, 20, 40), rel=0.5)  # with vs without replacement
    assert units.loc[0, "pval_unit"] == pytest.approx(min(1.0, 2 * p_binom))


def test_ora_expression_matching_discounts_sets_of_highly_expressed_genes():
    """Scores that only follow expression: the plain test names the set of highly expressed genes, the
    expression-matched one does not."""
    genes = [f"G{i}" for i in range(1000)]
    mean = pd.Series(np.linspace(5, 0, 1000), index=genes)
    rng = np.random.default_rng(1)
    scores = pd.DataFrame(mean.to_numpy()[:, None] * rng.uniform(0.5, 1.5, (1000, 20)), index=genes)
    sets = {"highly expressed": genes[:40:2], "random": list(rng.choice(genes, 20, replace=False))}
    plain, _ = cl.tl.enrichment.ora(scores, sets)
    matched, _ = cl.tl.enrichment.ora(scores, sets, mean_expression=mean)
    assert (plain["annotation"] != "none").mean() == 1.0
    assert (matched["annotation"] != "none").mean() == 0.0


def test_expression_matched_permutation_keeps_each_bin_s_scores():
    scores = pd.DataFrame(np.arange(40.0).reshape(20, 2), index=[f"G{i}" for i in range(20)])
    bins = np.repeat([0, 1], 10)
    permuted = cl.tl.annotation.permute_gene_labels(scores, seed=0, bins_G=bins)
    for b in (0, 1):
        rows = bins == b
        assert sorted(permuted.to_numpy()[rows, 0]) == sorted(scores.to_numpy()[rows, 0])
    assert not permuted.equals(scores)
    with pytest.raises(ValueError, match="one bin per gene"):
        cl.tl.annotation.permute_gene_labels(scores, bins_G=bins[:5])


# ----------------------------------------------------------------------------------------------------------
# Split-half reliability
# ----------------------------------------------------------------------------------------------------------
def test_split_half_reliability_against_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    signal = rng.normal(size=300)
    a = np.stack([signal + rng.normal(0, s, 300) for s in (0.1, 10)], 1)
    b = np.stack([signal + rng.normal(0, s, 300) for s in (0.1, 10)], 1)
    a[:100], b[:100] = 0.0, 0.0  # genes equal in every pair: left out
    rho, overlap = cl.tl.attribution.split_half_reliability(a, b)
    assert rho[0] == pytest.approx(spearmanr(a[100:, 0], b[100:, 0]).statistic)
    assert rho[0] > 0.9 > 0.3 > rho[1]
    assert overlap[0] > overlap[1]
    nan = cl.tl.attribution.split_half_reliability(np.full((5, 1), np.nan), np.zeros((5, 1)))
    assert np.isnan(nan[0]).all()


# ----------------------------------------------------------------------------------------------------------
# The whole pipeline on planted data
# ----------------------------------------------------------------------------------------------------------
def test_pipeline_names_a_planted_program_and_its_nulls_do_not(planted):
    """PCA -> SAE (c=32, k=4) -> attribution -> ORA: one concept isolates the planted cells (fold change 6, 20%
    of cells; measured AUROC 0.98) and its label is the planted term; permuted gene labels annotate nothing."""
    adata = planted.copy()
    encoder = cl.encoders.load("pca", adata=adata, n_comps=20, progress=False)
    cl.encoders.embed(encoder, adata, key_added="X_pca", progress=False)
    sae = cl.tl.train_sae(adata, use_rep="X_pca", n_concepts=32, k=4, epochs=200, progress=False)
    attr = cl.tl.attribute(adata, encoder, sae, progress=False)
    result = cl.tl.annotate(adata, method="ora")
    reliability = adata.uns["concepts"]["attribution_reliability"]
    assert len(reliability) == attr.attributed.sum() and reliability["split_half"].notna().all()
    sets = cl.datasets.load_gene_sets(genes=list(adata.var_names))
    rec = cl.tl.recovery.recovery(
        adata.obsm["X_concepts"],
        np.arange(32),
        adata.obs,
        adata.uns["planted"],
        result.units,
        result.terms,
        sets,
    )
    row = rec.iloc[0]
    assert row["recovered"] and row["label"] == IFNG and row["term_rank"] == 1
    signed = cl.tl.annotate(
        adata, method="ora", direction="expression"
    )  # varm["concepts_attribution_signed"]
    assert signed.units.loc[row["unit"], "term"] == IFNG and signed.units.loc[row["unit"], "qval"] < 0.05
    assert (reliability["signed_split_half"] >= cl.tl.attribution.RELIABLE_SPEARMAN).mean() > 0.9
    mean = cl.tl.enrichment.mean_log_expression(adata.X, adata.var_names)
    bins = cl.tl.enrichment.expression_bins(mean.to_numpy())
    for b in (None, bins):
        null = cl.tl.annotation.permute_gene_labels(attr.frame(), seed=0, bins_G=b)
        units, _ = cl.tl.enrichment.ora(null, mean_expression=mean)
        assert cl.tl.annotation.annotation_rates(units)["any"] <= 0.05


def test_several_libraries_form_one_family_and_a_prefixed_label_still_names_the_program(pbmc):
    genes = list(pbmc.var_names)
    go = cl.datasets.load_gene_sets(genes=genes)
    kegg = cl.datasets.load_gene_sets("KEGG_2021_Human", genes=genes)
    both = cl.datasets.load_gene_sets(["GO_Biological_Process_2023", "KEGG_2021_Human"], genes=genes)
    assert len(both) == len(go) + len(kegg)
    assert both[f"GO_Biological_Process_2023: {IFNG}"] == go[IFNG]
    planted = go[IFNG]
    assert cl.tl.recovery.names_program(f"GO_Biological_Process_2023: {IFNG}", IFNG, planted, both)
    half = {"mostly planted": planted[:10] + ["CD3E", "CD3D"], "other": ["CD3E", "CD3D", "CD79A"]}
    assert cl.tl.recovery.names_program("mostly planted", IFNG, planted, half)
    assert not cl.tl.recovery.names_program("other", IFNG, planted, half)
    with pytest.raises(ValueError, match="list of gene set libraries is empty"):
        cl.datasets.load_gene_sets([])


def test_auroc_matches_sklearn_on_sparse_codes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    acts = sp.random(200, 5, density=0.3, random_state=0, format="csr")
    truth = rng.random(200) < 0.3
    expected = [roc_auc_score(truth, acts[:, [u]].toarray()[:, 0]) for u in range(5)]
    assert cl.tl.recovery.auroc(acts, truth) == pytest.approx(expected)
    with pytest.raises(ValueError, match="planted and other cells"):
        cl.tl.recovery.auroc(acts, np.zeros(200, bool))


def test_a_planted_batch_scales_its_genes_in_batch_b_only_by_their_fold_changes(pbmc):
    from corelib.datasets._planted import plant_batch

    batched = plant_batch(pbmc, share=0.3, n_genes=1000, log2_fold_sd=1.0, seed=1)
    truth = batched.uns["planted_batch"]
    in_b = (batched.obs["batch"] == "B").to_numpy()
    assert in_b.sum() == truth["n_cells"] == round(0.3 * pbmc.n_obs) and len(truth["genes"]) == 1000
    genes = np.isin(pbmc.var_names, truth["genes"])
    before, after = pbmc.X.toarray(), batched.X.toarray()
    assert (after == np.round(after)).all() and (after >= 0).all()
    assert (after[~in_b] == before[~in_b]).all() and (after[:, ~genes] == before[:, ~genes]).all()
    assert not after[before == 0].any()  # a gene the cell does not express stays at 0
    # per gene, the counts of batch B are 2^lfc times the real ones (Poisson/binomial noise, sd <= 7% from 200
    # expected counts on)
    lfc = pd.Series(truth["log2_fold_change"], index=truth["genes"])[pbmc.var_names[genes]].to_numpy()
    expected = 2.0**lfc * before[np.ix_(in_b, genes)].sum(0)
    enough = expected >= 200
    assert enough.sum() >= 10
    np.testing.assert_allclose(after[np.ix_(in_b, genes)].sum(0)[enough], expected[enough], rtol=0.25)
    again = plant_batch(pbmc, share=0.3, n_genes=1000, log2_fold_sd=1.0, seed=1)
    assert (again.X != batched.X).nnz == 0
    with pytest.raises(ValueError, match="share must be in"):
        plant_batch(pbmc, share=1.0)
