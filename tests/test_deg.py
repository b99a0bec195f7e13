"""Tests of corelib.tl.deg: DEG baseline against scipy, deletion curves against a brute-force forward."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
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
    order = cl.tl.deg.deg_order(table)
    assert set(order[:3]) == {"G0", "G1", "G2"} and order[2] == "G2"
    assert (table.loc[order, "pval_adj"] <= cl.tl.deg.PVAL_CUTOFF).all()
    assert "G5" not in order


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
    # Brute force for one unit: cumulative replacement, full forward, normalised per pair, mean over pairs.
    j = int(np.flatnonzero(attr.attributed)[0])
    unit, order = int(attr.units[j]), orders["attribution"][int(attr.units[j])][:5]
    curves = []
    enc64, sae64 = enc.double(), sae.double()
    for p, cfs in zip(attr.prototypes[j], attr.counterfactuals[j], strict=True):
        for c in cfs:
            cells = np.repeat(X[p][None], 6, 0).astype(np.float64)
            for s in range(1, 6):
                cells[s, order[:s]] = X[c, order[:s]]
            with torch.no_grad():
                a = sae64.encode(enc64(torch.as_tensor(cells)))[:, unit].numpy()
            curves.append(a / a[0])
    enc.float(), sae.float()
    got = fast[(fast["unit"] == unit) & (fast["order"] == "attribution")]
    np.testing.assert_allclose(got["activation"], np.mean(curves, 0), atol=1e-10)
    np.testing.assert_allclose(got["std"], np.std(curves, 0), atol=1e-10)
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
    assert (np.diff(one["logfoldchange"].abs().to_numpy()) <= 1e-12).all()
    orders = cl.tl.deg.deg_orders(attr, table)
    assert list(attr.genes[orders[int(attr.units[0])]]) == list(one["gene"])


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


def test_compare_auc_min_genes():
    rows = []
    for unit, (a, d, n_deg) in {1: (0.2, 0.6, 2), 2: (0.5, 0.4, 5)}.items():
        for order, y, n in (("attribution", a, 5), ("deg", d, n_deg)):
            rows += [
                {"unit": unit, "order": order, "step": s, "activation": v, "std": 0.0, "n_genes": n}
                for s, v in enumerate([1.0, y, y])
            ]
    curves = pd.DataFrame(rows)
    both = cl.tl.deg.compare_auc(curves)
    assert both["n_units"] == 2 and both["fraction_attribution_lower"] == 0.5
    full = cl.tl.deg.compare_auc(curves, min_genes=5)
    assert full["n_units"] == 1 and full["mean_difference"] > 0


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
    assert "no attributed unit" in cl.pl.deletion_curves(curves).texts[0].get_text()
