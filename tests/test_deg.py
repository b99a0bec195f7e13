"""Tests of corelib.tl.deg: DEG baseline against scipy, deletion curves against a brute-force forward."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import scipy.stats
import torch
from conftest import FLOAT32_ATOL as cl_atol
from conftest import FLOAT32_RTOL as cl_rtol
from conftest import toy_counts, toy_sae, toy_scvi_encoder

import corelib as cl


def test_deg_cells_top_and_distinct_counterfactuals():
    emb = np.arange(10.0)[:, None]
    acts = np.array([0, 0, 0, 0, 0, 0, 0.1, 3.0, 2.0, 0])
    top, cf = cl.tl.deg.deg_cells(acts, emb, acts == 0, max_cells=2)
    np.testing.assert_array_equal(top, [7, 8])
    np.testing.assert_array_equal(cf, [5, 9])  # 7 -> 5 (tie with 9: lower index first), 8 -> 9
    top, cf = cl.tl.deg.deg_cells(acts, emb, acts == 0)
    np.testing.assert_array_equal(top, [7, 8, 6])
    np.testing.assert_array_equal(cf, [5, 9])  # 6 -> 5 again: counted once


def test_deg_table_matches_welch_t_test_and_order():
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, size=(60, 6)).astype(np.float32)
    X[:20, 0] += 30  # up in the top group
    X[20:40, 1] += 30  # up in the counterfactual group
    X[:20, 2] += 6  # up, weaker
    genes = [f"G{i}" for i in range(6)]
    ln = cl.tl.units.log_normalise(X, genes)
    table = cl.tl.deg.deg_table(ln, np.arange(20), np.arange(20, 40))
    Y = ln.X.toarray()
    ref = scipy.stats.ttest_ind(Y[:20], Y[20:40], equal_var=False)
    np.testing.assert_allclose(table.loc[genes, "pval"], ref.pvalue, rtol=1e-4)
    assert table.loc["G0", "logfoldchange"] > 0 > table.loc["G1", "logfoldchange"]
    paper = cl.tl.deg.deg_order(table, order="abs_logfc")
    assert set(paper[:3]) == {"G0", "G1", "G2"} and paper[2] == "G2"
    assert (table.loc[paper, "pval_adj"] <= cl.tl.deg.PVAL_CUTOFF).all()
    assert "G5" not in paper
    assert list(cl.tl.deg.deg_order(table)) == ["G0", "G2"]  # default: up in the top cells, by score
    with pytest.raises(ValueError, match="order must be one of"):
        cl.tl.deg.deg_order(table, order="pval")


def test_log_fold_change_has_pseudocount_one_normalised_count():
    rng = np.random.default_rng(1)
    X = rng.poisson(2.0, size=(40, 5)).astype(np.float32)
    X[20:, 0] = 0  # absent from the counterfactual group: scanpy's 1e-9 pseudocount gives about 2^30
    X[:20, 1] = 0
    ln = cl.tl.units.log_normalise(X, [f"G{i}" for i in range(5)])
    top, cf = np.arange(0, 20, 2), np.arange(20, 40, 3)
    got = cl.tl.deg.log_fold_changes(ln, top, cf)
    per_10k = X.astype(np.float64) / X.sum(1, keepdims=True) * 1e4
    ref = np.log2((per_10k[top].mean(0) + 1) / (per_10k[cf].mean(0) + 1))
    np.testing.assert_allclose(got, ref, rtol=cl_rtol, atol=cl_atol)
    assert 0 < got[0] < 15 and -15 < got[1] < 0
    table = cl.tl.deg.deg_table(ln, top, cf)
    np.testing.assert_allclose(table.loc[ln.var_names, "logfoldchange"], got)


def test_score_order_is_scanpys():
    rng = np.random.default_rng(2)
    X = rng.poisson(3.0, size=(50, 30)).astype(np.float32)
    X[:25, :8] += rng.poisson(4.0, size=(25, 8))
    X[25:, 8:12] += 5
    ln = cl.tl.units.log_normalise(X, [f"G{i}" for i in range(30)])
    top, cf = np.arange(25), np.arange(25, 50)
    table = cl.tl.deg.deg_table(ln, top, cf)
    ref = ln.copy()
    ref.obs["g"] = pd.Categorical(np.where(np.arange(50) < 25, "a", "b"))
    sc.tl.rank_genes_groups(ref, "g", groups=["a"], reference="b", method="t-test", use_raw=False)
    names = pd.DataFrame(ref.uns["rank_genes_groups"]["names"])["a"]
    scores = pd.DataFrame(ref.uns["rank_genes_groups"]["scores"])["a"]
    assert list(table.index) == list(names)
    assert list(cl.tl.deg.deg_order(table, pval_cutoff=1.0)) == list(names[scores > 0])
    sig = cl.tl.deg.deg_order(table)
    assert set(sig) <= {f"G{i}" for i in range(8)} and len(sig) >= 4


def _brute_force_curves(enc, sae, X, protos_P, cfs_PC, order, unit) -> np.ndarray:
    """Deletion curves of every (prototype, counterfactual) pair: cumulative replacement, full float64 forward."""
    curves = []
    enc64, sae64 = enc.double(), sae.double()
    for p, cfs in zip(protos_P, cfs_PC, strict=True):
        for c in cfs:
            cells = np.repeat(X[p][None], len(order) + 1, 0).astype(np.float64)
            for s in range(1, len(order) + 1):
                cells[s, order[:s]] = X[c, order[:s]]
            with torch.no_grad():
                a = sae64.encode(enc64(torch.as_tensor(cells)))[:, unit].numpy()
            curves.append(a / a[0])
    enc.float(), sae.float()
    return np.array(curves)


@pytest.fixture(scope="module")
def attributed():
    enc = toy_scvi_encoder()
    X = toy_counts(150, seed=3)
    with torch.no_grad():
        emb = enc(torch.as_tensor(X)).numpy()
    sae = toy_sae(emb.shape[1], n_concepts=10, k=3)
    attr = cl.tl.attribution.attribute_concepts(
        enc,
        sae,
        X,
        emb,
        concepts=[1, 2, 5],
        n_prototypes=3,
        n_counterfactuals=2,
        device="cpu",
        progress=False,
    )
    return enc, sae, X, emb, attr


def test_deletion_curves_equal_brute_force(attributed):
    enc, sae, X, _, attr = attributed
    readout = cl.tl.attribution.perturb._SAEReadout(sae)
    orders = {
        "attribution": cl.tl.deg.attribution_orders(attr),
        "short": {int(u): np.array([4, 0]) for u in attr.units},
    }
    kw = dict(n_steps=5, batch_size=50, progress=False)
    fast = cl.tl.deg.deletion_curves(
        cl.tl.attribution.perturbation_model(enc, readout, device="cpu", dtype=torch.float64),
        X,
        attr,
        orders,
        **kw,
    )
    plain_model = cl.tl.attribution.perturbation_model(
        enc, readout, use_linear_head=False, device="cpu", dtype=torch.float64
    )
    plain = cl.tl.deg.deletion_curves(plain_model, X, attr, orders, **kw)
    pd.testing.assert_frame_equal(fast, plain, atol=1e-10, rtol=0)
    j = int(np.flatnonzero(attr.attributed)[0])
    unit, order = int(attr.units[j]), orders["attribution"][int(attr.units[j])][:5]
    ref = _brute_force_curves(enc, sae, X, attr.prototypes[j], attr.counterfactuals[j], order, unit)
    got = fast[(fast["unit"] == unit) & (fast["order"] == "attribution")]
    np.testing.assert_allclose(got["activation"], ref.mean(0), atol=1e-10)
    np.testing.assert_allclose(got["std"], ref.std(0), atol=1e-10)
    assert (got["step"] == np.arange(6)).all() and got["activation"].iloc[0] == pytest.approx(1.0)
    # An order shorter than n_steps stays flat once exhausted: the same cell, but in other rows of the batch,
    # which a GEMM may round differently, so equal to float64 precision rather than bit for bit.
    short = fast[(fast["unit"] == unit) & (fast["order"] == "short")]["activation"].to_numpy()
    np.testing.assert_allclose(short[2:], short[2], rtol=0, atol=1e-10)
    assert (fast[fast["order"] == "short"]["n_genes"] == 2).all()


def test_deg_concepts_and_orders(attributed):
    _, sae, X, emb, attr = attributed
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    ln = cl.tl.units.log_normalise(X, attr.genes)
    table = cl.tl.deg.deg_units(ln, codes, emb, codes == 0, attr.units, pval_cutoff=1.0, progress=False)
    assert set(table["unit"]) == set(attr.units[attr.attributed].tolist())  # the dead concept has no rows
    one = table[table["unit"] == attr.units[0]]
    assert (one["rank"] == np.arange(1, len(one) + 1)).all()
    assert (np.diff(one["score"].to_numpy()) <= 0).all() and (one["score"] > 0).all()
    orders = cl.tl.deg.deg_orders(attr, table)
    assert list(attr.genes[orders[int(attr.units[0])]]) == list(one["gene"])
    paper = cl.tl.deg.deg_units(
        ln, codes, emb, codes == 0, attr.units, order="abs_logfc", pval_cutoff=1.0, progress=False
    )
    one = paper[paper["unit"] == attr.units[0]]
    assert len(one) == len(attr.genes) and (np.diff(one["logfoldchange"].abs().to_numpy()) <= 1e-12).all()


def test_deletion_auc_and_plot():
    curves = pd.DataFrame(
        {
            "unit": 1,
            "order": ["a"] * 3 + ["b"] * 3,
            "step": [0, 1, 2] * 2,
            "activation": [1, 1, 1, 1, 0.5, 0],
            "std": 0.0,
            "n_genes": 2,
        }
    )
    auc = cl.tl.deg.deletion_auc(curves)
    assert auc.loc[1, "a"] == pytest.approx(1.0) and auc.loc[1, "b"] == pytest.approx(0.5)
    ax = cl.pl.deletion_curves(curves)
    assert len(ax.get_lines()) >= 2


def test_compare_auc_reports_empty_orders_apart_and_min_genes():
    rows = []
    for unit, (a, d, n_deg) in {1: (0.2, 0.6, 2), 2: (0.5, 0.4, 5)}.items():
        for order, y, n in (("attribution", a, 5), ("deg", d, n_deg)):
            rows += [
                {"unit": unit, "order": order, "step": s, "activation": v, "std": 0.0, "n_genes": n}
                for s, v in enumerate([1.0, y, y])
            ]
    rows += [  # unit 3: no DEG gene, a DEG curve flat at 1 by construction
        {"unit": 3, "order": order, "step": s, "activation": 1.0, "std": 0.0, "n_genes": n}
        for order, n in (("attribution", 5), ("deg", 0))
        for s in range(3)
    ]
    curves = pd.DataFrame(rows)
    both = cl.tl.deg.compare_auc(curves)
    assert both["n_units"] == 2 and both["n_empty"] == 1 and both["fraction_attribution_lower"] == 0.5
    full = cl.tl.deg.compare_auc(curves, min_genes=5)
    assert full["n_units"] == 1 and full["n_empty"] == 1 and full["mean_difference"] > 0


def test_no_attributed_unit_gives_empty_curves_a_nan_comparison_and_a_plot(attributed):
    """Notebook 03 runs through when no concept could be attributed (too few active cells)."""
    enc, sae, X, emb, _ = attributed
    none = cl.tl.attribution.attribute_concepts(
        enc, sae, X, emb, concepts=[], n_prototypes=3, n_counterfactuals=2, device="cpu", progress=False
    )
    model = cl.tl.attribution.perturbation_model(
        enc, cl.tl.attribution.perturb._SAEReadout(sae), device="cpu"
    )
    curves = cl.tl.deg.deletion_curves(model, X, none, {"attribution": {}}, n_steps=5, progress=False)
    assert curves.empty and list(curves.columns) == ["unit", "order", "step", "activation", "std", "n_genes"]
    assert cl.tl.deg.compare_auc(curves)["n_units"] == 0
    held = cl.tl.deg.held_out_pairs(
        none, np.zeros((len(X), 10)), emb, np.ones((len(X), 10), bool), progress=False
    )
    table = cl.tl.deg.deletion_table(
        model, X, {"held-out": held}, {"attribution": {}}, n_steps=5, progress=False
    )
    assert table.empty and "pairs" in table
    summary = cl.tl.deg.deletion_summary(table)
    assert summary.empty and "n_units" in summary
    assert cl.runs.prose.describe_deletion(held, table) == "No deletion curve was measured."
    assert "no attributed unit" in cl.pl.deletion_curves(curves).texts[0].get_text()


def test_held_out_pairs_are_the_next_prototypes_and_their_nearest_inactive_cells(attributed):
    _, sae, _, emb, attr = attributed
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    held = cl.tl.deg.held_out_pairs(attr, codes, emb, codes == 0, progress=False)
    assert list(held.status.index) == list(attr.units[attr.attributed])
    n_p, n_c = attr.counterfactuals.shape[1:]
    for k, unit in enumerate(held.status.index):
        j = list(attr.units).index(unit)
        acts, inactive = codes[:, unit], codes[:, unit] == 0
        ranked = [
            c for c in np.argsort(-acts, kind="stable") if not inactive[c] and c not in attr.prototypes[j]
        ]
        if len(ranked) < n_p:
            assert (
                held.status.loc[unit, "status"] == "skipped"
                and "left after excluding" in held.status.loc[unit, "reason"]
            )
            continue
        assert held.status.loc[unit, "status"] == "attributed"
        np.testing.assert_array_equal(held.prototypes[k], ranked[:n_p])
        assert not set(held.prototypes[k]) & set(attr.prototypes[j])
        for p, cfs in zip(held.prototypes[k], held.counterfactuals[k], strict=True):
            dist = np.linalg.norm(emb.astype(np.float64) - emb[p].astype(np.float64), axis=1)
            nearest = np.flatnonzero(inactive)[np.argsort(dist[inactive], kind="stable")[:n_c]]
            assert inactive[cfs].all()
            np.testing.assert_allclose(dist[cfs], dist[nearest], rtol=1e-12)  # ties may swap cells
    assert (held.status["status"] == "attributed").any()


def test_held_out_pairs_skip_units_without_enough_other_active_cells():
    acts = np.zeros((12, 2))
    acts[:7, 0] = np.arange(7, 0, -1)  # 7 active: prototypes 0, 1; held-out 2, 3
    acts[:3, 1] = [3.0, 2.0, 1.0]  # 3 active: prototypes 0, 1; one left
    emb = np.arange(12.0)[:, None]
    sel = cl.tl.attribution.select_cells(
        acts, emb, acts == 0, n_prototypes=2, n_counterfactuals=2, progress=False
    )
    attr = cl.tl.attribution.Attribution(
        scores=np.zeros((3, 2)),
        genes=np.array(["a", "b", "c"]),
        units=np.arange(2),
        activation=np.ones(2),
        prototypes=sel.prototypes,
        counterfactuals=sel.counterfactuals,
        status=sel.status,
    )
    held = cl.tl.deg.held_out_pairs(attr, acts, emb, acts == 0, progress=False)
    np.testing.assert_array_equal(held.prototypes[0], [2, 3])
    np.testing.assert_array_equal(held.counterfactuals[0], [[7, 8], [7, 8]])
    assert held.status.loc[1, "status"] == "skipped"
    assert held.status.loc[1, "reason"] == "1 active cells left after excluding 2, fewer than n_prototypes=2"


def test_deletion_table_on_held_out_pairs_equals_brute_force_and_skips_empty_orders(attributed):
    enc, sae, X, emb, attr = attributed
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    held = cl.tl.deg.held_out_pairs(attr, codes, emb, codes == 0, progress=False)
    orders = {
        "attribution": cl.tl.deg.attribution_orders(attr),
        "deg": {int(u): np.array([], dtype=np.int64) for u in attr.units},  # no DEG gene passed
        "random": cl.tl.deg.random_orders(attr, seed=3),
    }
    model = cl.tl.attribution.perturbation_model(
        enc, cl.tl.attribution.perturb._SAEReadout(sae), device="cpu", dtype=torch.float64
    )
    curves = cl.tl.deg.deletion_table(
        model, X, {"held-out": held, "in-sample": attr}, orders, n_steps=4, batch_size=40, progress=False
    )
    assert list(curves["pairs"].unique()) == ["held-out", "in-sample"]
    k = int(np.flatnonzero(held.status["status"] == "attributed")[0])
    unit = int(held.status.index[k])
    for name in ("attribution", "random"):
        order = orders[name][unit][:4]
        ref = _brute_force_curves(enc, sae, X, held.prototypes[k], held.counterfactuals[k], order, unit)
        got = curves.query("pairs == 'held-out' and unit == @unit and order == @name")
        np.testing.assert_allclose(got["activation"], ref.mean(0), atol=1e-10)
    deg = curves[curves["order"] == "deg"]
    assert (deg["activation"] == 1).all() and (deg["n_genes"] == 0).all()
    summary = cl.tl.deg.deletion_summary(curves)
    assert list(summary.index) == [(p, o) for p in ("held-out", "in-sample") for o in ("deg", "random")]
    assert summary.loc[("held-out", "deg"), "n_units"] == 0
    assert summary.loc[("in-sample", "deg"), "n_empty"] == attr.attributed.sum()
    assert summary.loc[("in-sample", "random"), "n_units"] == attr.attributed.sum()
    text = cl.runs.prose.describe_deletion(held, curves, "in-sample")
    assert "no unit to compare the attribution and deg orders" in text and "random order's" in text
    ax = cl.pl.deletion_curves(curves, pairs="in-sample")
    assert "deg order empty for every unit" in ax.get_title() and len(ax.get_lines()) == 3  # 2 orders + y=0
    curves.loc[(curves["order"] == "deg") & (curves["unit"] == unit), "n_genes"] = 4
    ax = cl.pl.deletion_curves(curves)
    assert (
        f"(1 units, held-out pairs; {attr.attributed.sum() - 1} with an empty order left out)"
        in ax.get_title()
    )


def test_random_orders_are_seeded_permutations_per_unit(attributed):
    attr = attributed[-1]
    a, b = cl.tl.deg.random_orders(attr, seed=0), cl.tl.deg.random_orders(attr, seed=0)
    unit = int(attr.units[attr.attributed][0])
    np.testing.assert_array_equal(a[unit], b[unit])
    np.testing.assert_array_equal(np.sort(a[unit]), np.arange(len(attr.genes)))
    assert not np.array_equal(a[unit], cl.tl.deg.random_orders(attr, seed=1)[unit])
    assert set(a) == set(attr.units[attr.attributed].tolist())


def test_sparse_codes_and_raw_counts_give_the_dense_deg_table(attributed):
    """Sparse codes (CSR, CSC) and raw counts normalised row by row give today's dense, all-cells table."""
    _, sae, X, emb, attr = attributed
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    ln = cl.tl.units.log_normalise(X, attr.genes)
    dense = cl.tl.deg.deg_units(ln, codes, emb, codes == 0, attr.units, pval_cutoff=1.0, progress=False)
    assert len(dense)
    for sparse in (sp.csr_matrix(codes), sp.csc_matrix(codes)):
        got = cl.tl.deg.deg_units(
            X, sparse, emb, units=attr.units, genes=attr.genes, pval_cutoff=1.0, progress=False
        )
        pd.testing.assert_frame_equal(got, dense, check_exact=False, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="pass genes="):
        cl.tl.deg.deg_table(X, np.arange(3), np.arange(3, 6))


def test_held_out_pairs_from_sparse_codes_equal_dense(attributed):
    _, sae, _, emb, attr = attributed
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    dense = cl.tl.deg.held_out_pairs(attr, codes, emb, codes == 0, progress=False)
    got = cl.tl.deg.held_out_pairs(attr, sp.csr_matrix(codes), emb, progress=False)
    np.testing.assert_array_equal(got.prototypes, dense.prototypes)
    np.testing.assert_array_equal(got.counterfactuals, dense.counterfactuals)
    pd.testing.assert_frame_equal(got.status, dense.status)
