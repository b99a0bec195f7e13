"""Tests of corelib.tl.sae: recovery of a known sparse dictionary, AuxK, losses against brute force, I/O, sweeps."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import minimize
from sklearn.metrics import r2_score as sk_r2_score

import corelib as cl

matplotlib.use("Agg")


def sparse_dictionary_data(
    n: int = 4096, c: int = 128, d: int = 64, k: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic embeddings with a known answer.

    ``c`` random unit atoms in ``d`` dimensions; each cell is a non-negative combination of ``k`` distinct
    atoms drawn uniformly, with coefficients uniform in [0.5, 2], plus one constant offset vector shared by
    all cells (so that b_dec has something to learn). Returns (cells x d float32, atoms c x d).
    """
    rng = np.random.default_rng(seed)
    atoms_CD = rng.normal(size=(c, d))
    atoms_CD /= np.linalg.norm(atoms_CD, axis=1, keepdims=True)
    idx_NK = np.argsort(rng.random((n, c)), axis=1)[:, :k]
    coef_NK = rng.uniform(0.5, 2.0, size=(n, k))
    x_ND = np.einsum("nk,nkd->nd", coef_NK, atoms_CD[idx_NK]) + rng.normal(size=d)
    return x_ND.astype(np.float32), atoms_CD


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray]:
    return sparse_dictionary_data(n=2048)


@pytest.fixture(scope="module")
def small_x() -> np.ndarray:
    return sparse_dictionary_data(n=600, c=32, d=16, k=3, seed=1)[0]


def test_recovers_known_dictionary(synthetic):
    x_ND, atoms_CD = synthetic
    res = cl.tl.sae.train(x_ND, 128, 4, lr=1e-2, epochs=60, batch_size=256, device="cpu", progress=False)
    learned_CD = res.sae.dictionary.detach().numpy()
    best_cos = (atoms_CD @ learned_CD.T).max(axis=1)
    assert best_cos.mean() >= 0.9
    assert res.metrics["r2_train"] >= 0.95
    assert res.metrics["r2_heldout"] >= 0.8
    assert res.metrics["l0_train"] <= 4
    np.testing.assert_allclose(np.linalg.norm(learned_CD, axis=1), 1.0, atol=1e-5)
    assert list(res.history.columns) == [
        "epoch",
        "cells_seen",
        "loss",
        "fvu",
        "auxk",
        "dead_fraction",
        "r2_heldout",
    ]
    assert res.history["fvu"].iloc[-1] < res.history["fvu"].iloc[0]


def _planted_dead(x_ND: np.ndarray, n_dead: int) -> cl.tl.sae.TopKSAE:
    """An initialised SAE whose first ``n_dead`` latents have tiny encoder weights: they never win the Top-K."""
    sae = cl.tl.sae.init_sae(cl.tl.sae.SAEConfig(x_ND.shape[1], 96, 4), torch.as_tensor(x_ND), seed=0)
    with torch.no_grad():
        sae.W_enc_DC[:, :n_dead] *= 1e-3
    return sae


def test_auxk_revives_planted_dead_latents(small_x):
    n_dead = 48
    init = _planted_dead(small_x, n_dead)
    before = cl.tl.sae.metrics(init, small_x)
    kw = dict(lr=1e-2, epochs=40, batch_size=128, device="cpu", progress=False, init=init)
    with_aux = cl.tl.sae.train(small_x, 96, 4, **kw)
    without = cl.tl.sae.train(small_x, 96, 4, aux_weight=0.0, **kw)

    def revived(sae: cl.tl.sae.TopKSAE) -> int:
        return int((cl.tl.sae.encode(sae, small_x)[:, :n_dead].toarray() > 0).any(axis=0).sum())

    assert before["n_active"] <= 96 - n_dead
    assert revived(without.sae) == 0  # no gradient ever reaches a latent that never fires
    assert revived(with_aux.sae) >= n_dead // 3
    assert with_aux.history["auxk"].iloc[-1] > 0
    assert with_aux.history["auxk"].iloc[0] == 0  # nothing is dead before one epoch (the default window)


def _brute_force_losses(
    sae: cl.tl.sae.TopKSAE, a_BD: np.ndarray, dead_C: np.ndarray, aux_k: int
) -> tuple[float, float]:
    """Loss terms by explicit per-cell loops in float64 (independent of the vectorised implementation)."""
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach().double().numpy() for n in cl.tl.sae.WEIGHT_NAMES)
    recon, aux_recon = np.zeros_like(a_BD), np.zeros_like(a_BD)
    dead_idx = np.flatnonzero(dead_C)
    for i, a in enumerate(a_BD):
        pre = (a - b_dec) @ W_enc + b_enc
        top = np.argsort(-pre)[: sae.k]
        recon[i] = sum(max(pre[j], 0.0) * W_dec[j] for j in top) + b_dec
        top_dead = dead_idx[np.argsort(-pre[dead_idx])][: min(aux_k, len(dead_idx))]
        aux_recon[i] = sum(max(pre[j], 0.0) * W_dec[j] for j in top_dead)  # no b_dec
    fvu = ((a_BD - recon) ** 2).sum() / ((a_BD - a_BD.mean(0)) ** 2).sum()
    resid = a_BD - recon
    aux = ((aux_recon - resid) ** 2).sum() / ((resid - resid.mean(0)) ** 2).sum()
    return fvu, aux


def _autograd_loss(
    sae: cl.tl.sae.TopKSAE, a_BD: torch.Tensor, dead_C: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """The training loss written the plain way (dense codes, autograd), as the gradient reference."""
    pre_BC = (a_BD - sae.b_dec_D) @ sae.W_enc_DC + sae.b_enc_C
    vals, idx = pre_BC.topk(sae.k, dim=-1)
    recon_BD = torch.zeros_like(pre_BC).scatter(1, idx, vals.relu()) @ sae.W_dec_CD + sae.b_dec_D
    fvu = ((a_BD - recon_BD) ** 2).sum() / ((a_BD - a_BD.mean(0)) ** 2).sum()
    resid_BD = a_BD - recon_BD.detach()
    dead_pre_BC = pre_BC.masked_fill(~dead_C, -torch.inf)
    vals, idx = dead_pre_BC.topk(min(aux_k, int(dead_C.sum())), dim=-1)
    aux_BD = torch.zeros_like(pre_BC).scatter(1, idx, vals.relu()) @ sae.W_dec_CD
    aux = ((aux_BD - resid_BD) ** 2).sum() / ((resid_BD - resid_BD.mean(0)) ** 2).sum()
    return fvu + aux / 32


@pytest.mark.parametrize("aux_k", [2, 512])
def test_losses_and_gradients_match_references(aux_k):
    gen = torch.Generator().manual_seed(3)
    sae = cl.tl.sae.TopKSAE(5, 12, 3).double()
    with torch.no_grad():
        for name in cl.tl.sae.WEIGHT_NAMES:
            getattr(sae, name).copy_(
                torch.randn(getattr(sae, name).shape, generator=gen, dtype=torch.float64)
            )
    a_BD = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    dead_C = torch.zeros(12, dtype=torch.bool)
    dead_C[[0, 3, 4, 7, 11]] = True
    step = cl.tl.sae.loss_and_grads(sae, a_BD, dead_C, aux_k=aux_k, aux_weight=1 / 32)
    ref_fvu, ref_aux = _brute_force_losses(sae, a_BD.numpy(), dead_C.numpy(), aux_k)
    assert step.fvu.item() == pytest.approx(ref_fvu, rel=1e-10)
    assert step.auxk.item() == pytest.approx(ref_aux, rel=1e-10)
    torch.testing.assert_close(step.out.recon_BD, sae(a_BD).recon_BD, rtol=0, atol=1e-12)
    # The hand-written gradients equal autograd's on the plain formulation.
    grads = {name: getattr(sae, name).grad.clone() for name in cl.tl.sae.WEIGHT_NAMES}
    sae.zero_grad()
    _autograd_loss(sae, a_BD, dead_C, aux_k).backward()
    for name in cl.tl.sae.WEIGHT_NAMES:
        torch.testing.assert_close(grads[name], getattr(sae, name).grad, rtol=0, atol=1e-12, msg=name)
    # The residual is detached and the aux decode has no b_dec: only dead rows of the dictionary get
    # gradient from AuxK.
    cl.tl.sae.loss_and_grads(sae, a_BD, dead_C, aux_k=aux_k, aux_weight=0.0)
    main_only = sae.W_dec_CD.grad.clone()
    aux_only = grads["W_dec_CD"] - main_only
    assert torch.all(aux_only[~dead_C] == 0)
    assert aux_only[dead_C].abs().sum() > 0
    # No dead latent, no AuxK.
    no_dead = cl.tl.sae.loss_and_grads(
        sae, a_BD, torch.zeros(12, dtype=torch.bool), aux_k=aux_k, aux_weight=1 / 32
    )
    assert no_dead.auxk.item() == 0.0


@pytest.mark.parametrize(("n_rows", "n_cols", "k"), [(64, 500, 8), (33, 1000, 16), (5, 101, 2), (4, 10, 3)])
def test_topk_selects_the_same_set_as_torch(n_rows, n_cols, k):
    x = torch.randn(n_rows, n_cols, generator=torch.Generator().manual_seed(n_cols))
    vals, idx = cl.tl.sae.topk(x, k)
    ref_vals, ref_idx = x.topk(k, dim=-1)
    torch.testing.assert_close(idx.sort(1).values, ref_idx.sort(1).values, rtol=0, atol=0)
    torch.testing.assert_close(vals, x.gather(1, idx), rtol=0, atol=0)
    # Ties (many equal values) keep the same selected values.
    x_tied = x.round()
    torch.testing.assert_close(
        cl.tl.sae.topk(x_tied, k)[0].sort(1).values, x_tied.topk(k, dim=-1)[0].sort(1).values
    )


def test_r2_uses_per_dimension_mean():
    rng = np.random.default_rng(0)
    a_ND = rng.normal(size=(200, 6)) + np.arange(6) * 5.0  # uncentred, dimension means differ
    recon_ND = a_ND + rng.normal(scale=0.5, size=a_ND.shape)
    ours = cl.tl.sae.r2_score(torch.as_tensor(a_ND), torch.as_tensor(recon_ND))
    assert ours == pytest.approx(sk_r2_score(a_ND, recon_ND, multioutput="variance_weighted"), rel=1e-12)
    scalar_mean = 1 - ((a_ND - recon_ND) ** 2).sum() / ((a_ND - a_ND.mean()) ** 2).sum()
    assert abs(ours - scalar_mean) > 0.05


def test_geometric_median_matches_optimiser():
    rng = np.random.default_rng(1)
    x_ND = np.concatenate([rng.normal(size=(300, 3)), rng.normal(loc=20.0, size=(30, 3))])  # with outliers
    ours = cl.tl.sae.geometric_median(torch.as_tensor(x_ND)).numpy()
    ref = minimize(lambda y: np.linalg.norm(x_ND - y, axis=1).sum(), x_ND.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000}).x  # fmt: skip
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_training_is_deterministic_under_a_seed(small_x):
    kw = dict(lr=3e-3, epochs=3, batch_size=128, device="cpu", progress=False)
    a, b = cl.tl.sae.train(small_x, 32, 3, seed=7, **kw), cl.tl.sae.train(small_x, 32, 3, seed=7, **kw)
    c = cl.tl.sae.train(small_x, 32, 3, seed=8, **kw)
    for name in cl.tl.sae.WEIGHT_NAMES:
        assert torch.equal(getattr(a.sae, name), getattr(b.sae, name))
    assert not torch.equal(a.sae.W_dec_CD, c.sae.W_dec_CD)
    pd.testing.assert_frame_equal(a.history, b.history)


def test_init_encoder_is_decoder_transpose(small_x):
    sae = cl.tl.sae.init_sae(cl.tl.sae.SAEConfig(16, 32, 3), torch.as_tensor(small_x), seed=0)
    assert torch.equal(sae.W_enc_DC, sae.W_dec_CD.T)
    np.testing.assert_allclose(sae.W_dec_CD.norm(dim=1).detach().numpy(), 1.0, atol=1e-6)
    assert torch.all(sae.b_enc_C == 0)


def test_save_load_roundtrip(tmp_path, small_x):
    sae = cl.tl.sae.train(small_x, 32, 3, lr=3e-3, epochs=2, batch_size=128, device="cpu", progress=False).sae
    sae.save(tmp_path / "m", extra={"note": "x"})
    loaded = cl.tl.sae.TopKSAE.load(tmp_path / "m", d_in=16)
    for name in cl.tl.sae.WEIGHT_NAMES:
        assert torch.equal(getattr(sae, name), getattr(loaded, name))
    np.testing.assert_array_equal(
        cl.tl.sae.encode(sae, small_x).toarray(), cl.tl.sae.encode(loaded, small_x).toarray()
    )
    assert json.loads((tmp_path / "m" / "cfg.json").read_text())["note"] == "x"
    assert not list((tmp_path / "m").glob(".*tmp"))  # no temporary files left behind


def test_bad_arguments_give_clear_errors(tmp_path, small_x):
    with pytest.raises(ValueError, match="k=32 must be smaller than n_concepts=32"):
        cl.tl.sae.train(small_x, 32, 32, epochs=1, progress=False)
    bad = small_x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="1 of 600 cells have NaN"):
        cl.tl.sae.train(bad, 32, 3, epochs=1, progress=False)
    with pytest.raises(ValueError, match="needs more cells than active concepts"):
        cl.tl.sae.train(small_x[:5], 32, 8, epochs=1, progress=False)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        cl.tl.sae.train(small_x.tolist(), 32, 3, epochs=1, progress=False)
    with pytest.raises(ValueError, match="max_grad_norm must be a positive number or None"):
        cl.tl.sae.train(small_x, 32, 3, epochs=1, max_grad_norm=0, progress=False)
    sae = cl.tl.sae.init_sae(cl.tl.sae.SAEConfig(16, 32, 3), torch.as_tensor(small_x), seed=0)
    sae.save(tmp_path / "m")
    with pytest.raises(ValueError, match="takes 16-dimensional embeddings but d_in=50"):
        cl.tl.sae.TopKSAE.load(tmp_path / "m", d_in=50)
    with pytest.raises(ValueError, match="Embeddings have 15 dimensions but the SAE expects 16"):
        cl.tl.sae.encode(sae, small_x[:, :15])
    with pytest.raises(FileNotFoundError, match="is not a saved SAE"):
        cl.tl.sae.TopKSAE.load(tmp_path)
    with pytest.raises(ValueError, match="paired element-wise"):
        cl.tl.sae.grid([100, 200], [2])


def test_metrics_against_numpy(small_x):
    sae = cl.tl.sae.train(small_x, 32, 3, lr=3e-3, epochs=5, batch_size=128, device="cpu", progress=False).sae
    codes = cl.tl.sae.encode(sae, small_x, batch_size=97).toarray()  # batches do not divide the cells
    recon = codes @ sae.W_dec_CD.detach().numpy() + sae.b_dec.detach().numpy()
    m = cl.tl.sae.metrics(sae, small_x, batch_size=97)
    assert m["r2"] == pytest.approx(sk_r2_score(small_x, recon, multioutput="variance_weighted"), abs=1e-5)
    assert m["l0"] == pytest.approx((codes > 0).sum(1).mean())
    assert m["n_active"] == int((codes > 0).any(0).sum())
    assert m["dead_fraction"] == pytest.approx(1 - m["n_active"] / 32)
    assert (codes > 0).sum(1).max() <= 3


def test_sweep_fused_equals_separate_and_skips_finished(tmp_path, small_x, monkeypatch):
    points = cl.tl.sae.grid([24, 32], [2, 3], seeds=[0, 1])
    kw = dict(lr=3e-3, epochs=3, batch_size=128, device="cpu", progress=False)
    fused = cl.runs.steps.sweep(small_x, points, run=cl.runs.open_run(tmp_path / "a"), fused=True, **kw)
    separate = cl.runs.steps.sweep(small_x, points, run=cl.runs.open_run(tmp_path / "b"), fused=False, **kw)
    assert list(fused.index) == ["c24_k2_s0", "c32_k3_s0", "c24_k2_s1", "c32_k3_s1"]
    cols = ["r2_train", "r2_heldout", "n_active_train", "l0_train"]
    pd.testing.assert_frame_equal(fused[cols], separate[cols])
    for name in fused.index:
        a = cl.tl.sae.TopKSAE.load(tmp_path / "a" / "02_sae" / name)
        b = cl.tl.sae.TopKSAE.load(tmp_path / "b" / "02_sae" / name)
        torch.testing.assert_close(a.W_dec_CD, b.W_dec_CD)
    # A rerun never retrains a finished configuration (and adds only the new one).
    calls = []
    real = cl.tl.sae.training._train_group
    monkeypatch.setattr(
        cl.tl.sae.training,
        "_train_group",
        lambda x, cfgs, *a, **k: calls.append(cfgs) or real(x, cfgs, *a, **k),
    )
    again = cl.runs.steps.sweep(small_x, [*points, (40, 3, 0)], run=cl.runs.open_run(tmp_path / "a"), **kw)
    assert [[c.n_concepts for c in group] for group in calls] == [[40]]
    pd.testing.assert_frame_equal(again.loc[fused.index, cols], fused[cols])
    assert cl.runs.open_run(tmp_path / "a").read_table("sae_sweep").shape[0] == 5
    with pytest.raises(cl.runs.StaleOutputError, match=r"train: \{.*epochs: 3.*\} -> \{.*epochs: 4"):
        cl.runs.steps.sweep(small_x, points, run=cl.runs.open_run(tmp_path / "a"), **{**kw, "epochs": 4})
    with pytest.raises(cl.runs.StaleOutputError, match="embeddings: "):  # other cells, same settings
        cl.runs.steps.sweep(small_x[:-10], points, run=cl.runs.open_run(tmp_path / "a"), **kw)
    calls.clear()  # overwrite retrains exactly the SAEs whose inputs changed
    cl.runs.steps.sweep(
        small_x, points[:1], run=cl.runs.open_run(tmp_path / "a", overwrite=True), **{**kw, "epochs": 4}
    )
    assert [[c.n_concepts for c in group] for group in calls] == [[24]]
    cl.runs.steps.sweep(
        small_x, points[1:], run=cl.runs.open_run(tmp_path / "a"), **kw
    )  # the others still match


def _k_sweep_table(r2_by_k: dict[int, float], *, c: int = 500, d: int = 50) -> pd.DataFrame:
    """A synthetic sweep table: one SAE per k at c, plus one at another expansion that must never compete."""
    rows = [(c, k, r2) for k, r2 in r2_by_k.items()] + [(2 * c, 2, 0.999)]
    return pd.DataFrame(
        {
            "n_concepts": [r[0] for r in rows],
            "k": [r[1] for r in rows],
            "seed": 0,
            "d_in": d,
            "expansion": [r[0] / d for r in rows],
            "r2_heldout": [r[2] for r in rows],
            "r2_train": [r[2] + 0.01 for r in rows],
            "dead_fraction_train": 0.1,
        },
        index=[cl.tl.sae.sae_name(r[0], r[1]) for r in rows],
    )


def test_select_min_r2_takes_the_sparsest_sae_reaching_it():
    table = _k_sweep_table({4: 0.90, 8: 0.955, 16: 0.97, 32: 0.99, 64: 0.995})
    chosen = cl.tl.sae.select(table, expansion=10, min_r2=0.95)
    assert (chosen["sae"], chosen["rule"], chosen["min_r2"], chosen["meets_min_r2"]) == (
        "c500_k8_s0", "min_r2", 0.95, True
    )  # fmt: skip
    assert "sparsest" in chosen["reason"] and chosen["r2_heldout"] == 0.955
    assert cl.tl.sae.select(table, expansion=10, min_r2=0.98)["sae"] == "c500_k32_s0"
    degenerate = _k_sweep_table({4: 0.90, 8: 0.93, 50: 1.0, 64: 1.0})  # k >= d = 50: not sparse, never chosen
    assert cl.tl.sae.select(degenerate, expansion=10, min_r2=0.95)["sae"] == "c500_k8_s0"
    with pytest.raises(ValueError, match="k < d"):
        cl.tl.sae.select(_k_sweep_table({64: 1.0}), expansion=10, min_r2=0.95)


def test_select_min_r2_falls_back_to_the_best_sae_and_says_so():
    table = _k_sweep_table({4: 0.60, 8: 0.70, 16: 0.81, 32: 0.93, 64: 0.92})
    chosen = cl.tl.sae.select(table, expansion=10, min_r2=0.95)
    assert (chosen["sae"], chosen["rule"], chosen["meets_min_r2"]) == ("c500_k32_s0", "min_r2", False)
    assert chosen["reason"].startswith("no SAE with c/d = 10") and "0.930" in chosen["reason"]


def test_select_records_its_rule_without_min_r2():
    table = _k_sweep_table({4: 0.90, 8: 0.955})
    by_expansion = cl.tl.sae.select(table, expansion=10)
    assert (by_expansion["sae"], by_expansion["rule"], by_expansion["meets_min_r2"]) == (
        "c500_k8_s0",
        "expansion",
        None,
    )
    named = cl.tl.sae.select(table, name="c500_k4_s0", min_r2=0.95)
    assert (named["rule"], named["meets_min_r2"]) == ("name", False)


def test_r2_vs_k_draws_one_line_per_c_and_the_threshold():
    table = _k_sweep_table({4: 0.90, 8: 0.955, 16: 0.97})
    ax = cl.pl.r2_vs_k(table, min_r2=0.95, selected="c500_k8_s0")
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["c = 500, held-out"].get_xdata(), [4, 8, 16])
    np.testing.assert_allclose(lines["c = 500, held-out"].get_ydata(), [0.90, 0.955, 0.97])
    np.testing.assert_allclose(lines["c = 500, train"].get_ydata(), [0.91, 0.965, 0.98])
    assert any(line.get_label() == "$R^2$ = 0.95" for line in ax.lines)
    assert "selected: c500_k8_s0" in ax.get_legend_handles_labels()[1]


def test_r2_vs_k_without_the_selected_sae_draws_no_star():
    """The selected SAE can come from the grid, outside the k sweep (a ci-size planted run: KeyError before)."""
    ax = cl.pl.r2_vs_k(_k_sweep_table({4: 0.90, 8: 0.955}), selected="c32_k4_s0")
    assert not any(label.startswith("selected") for label in ax.get_legend_handles_labels()[1])


def test_select_and_tables(tmp_path, small_x):
    table = cl.runs.steps.sweep(small_x, cl.tl.sae.grid([32, 80, 160], [2, 3, 4]), run=cl.runs.open_run(tmp_path), lr=3e-3, epochs=2,
                    batch_size=128, device="cpu", progress=False)  # fmt: skip
    assert cl.tl.sae.select(table, expansion=5)["sae"] == "c80_k3_s0"  # d=16: expansions 2, 5, 10
    assert cl.tl.sae.select(table, expansion=100)["sae"] == "c160_k4_s0"
    chosen = cl.tl.sae.select(table, name="c32_k2_s0")
    assert chosen["n_concepts"] == 32 and chosen["k"] == 2
    with pytest.raises(ValueError, match="not in the sweep"):
        cl.tl.sae.select(table, name="c1_k1_s0")
    t3 = cl.tl.sae.paper_table(table, dataset="synthetic", model="toy")
    assert list(t3.columns) == [
        "Dataset",
        "Model",
        "c",
        "k",
        "seed",
        "lr",
        "Epochs",
        "R2 (held-out)",
        "Active concepts",
    ]
    histories = cl.runs.steps.load_histories(cl.runs.open_run(tmp_path), table.index)
    ax = cl.pl.r2_vs_concepts(table)
    drawn = {bars.get_label(): bars.lines[0].get_ydata() for bars in ax.containers}  # one errorbar per split
    means = table.groupby("n_concepts")[["r2_train", "r2_heldout"]].mean()
    np.testing.assert_allclose(np.asarray(drawn["train"], float), means["r2_train"])
    np.testing.assert_allclose(np.asarray(drawn["held-out"], float), means["r2_heldout"])
    bars = [p.get_height() for p in cl.pl.dead_concepts(table).patches]
    active = table["n_active_train"].to_numpy()
    np.testing.assert_array_equal(bars, [*active, *(table["n_concepts"].to_numpy() - active)])
    axes = cl.pl.training_curves(histories)
    assert len(axes) == 3
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), next(iter(histories.values()))["r2_heldout"])
    codes = cl.runs.steps.encode_sweep(cl.runs.open_run(tmp_path), table.index, small_x)
    assert codes["c80_k3_s0"].shape == (600, 80)


def test_sparse_encode_equals_the_dense_forward_pass():
    torch.manual_seed(0)
    model = cl.tl.sae.TopKSAE(8, 40, 5)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    with torch.no_grad():
        model.b_enc_C -= 3.0  # many selected pre-activations are negative: their ReLU is 0, not stored
    x = torch.randn(1000, 8)
    codes = cl.tl.sae.encode(model, x, batch_size=97)  # batches do not divide the cells
    dense = model(x).codes().detach().numpy()
    assert sp.isspmatrix_csr(codes) and codes.dtype == np.float32 and codes.shape == (1000, 40)
    assert codes.has_sorted_indices and (codes.data > 0).all()  # no explicit zeros
    assert np.diff(codes.indptr).max() <= 5 and codes.nnz < 1000 * 5  # some rows keep fewer than k
    np.testing.assert_allclose(codes.toarray(), dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(codes.toarray() > 0, dense > 0)  # same support (random data: no ties)
    empty = cl.tl.sae.encode(model, x[:0])
    assert empty.shape == (0, 40) and empty.nnz == 0


def test_encode_equals_forward_codes_and_relu_topk_by_hand():
    torch.manual_seed(0)
    model = cl.tl.sae.TopKSAE(6, 10, 3)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    a_BD = torch.randn(5, 6)
    codes = model.encode(a_BD)
    torch.testing.assert_close(codes, model(a_BD).codes())
    pre = (a_BD - model.b_dec_D) @ model.W_enc_DC + model.b_enc_C
    kth = pre.topk(3, dim=-1).values[:, -1:]
    torch.testing.assert_close(codes, torch.where(pre >= kth, pre.clamp(min=0), torch.zeros_like(pre)))
