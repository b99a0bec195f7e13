"""CUDA parity: what runs on a GPU gives the CPU's answer within float32 tolerance (skipped without CUDA).

Bit equality between devices is not promised (README, "Determinism"): other kernels sum in another order.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from corelib.encoders import pca
from corelib.tl import attribution
from corelib.tl import sae as S

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA parity needs a GPU; none here")


def _embeddings(n: int = 2000, d: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.exponential(1.0, (n, 64)) * (rng.random((n, 64)) < 0.06)
    return (codes @ rng.normal(size=(64, d)) + 0.05 * rng.normal(size=(n, d))).astype(np.float32)


def test_hand_written_gradients_on_cuda_match_cpu():
    x = torch.as_tensor(_embeddings(512))
    cpu = S.init_sae(S.SAEConfig(x.shape[1], 96, 4), x, seed=0)
    gpu = S.init_sae(S.SAEConfig(x.shape[1], 96, 4), x, seed=0).cuda()
    dead = torch.arange(96) % 3 == 0  # AuxK active
    out_cpu = S.loss_and_grads(cpu, x, dead, aux_k=32, aux_weight=1 / 32)
    out_gpu = S.loss_and_grads(gpu, x.cuda(), dead.cuda(), aux_k=32, aux_weight=1 / 32)
    torch.testing.assert_close(out_gpu.fvu.cpu(), out_cpu.fvu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out_gpu.auxk.cpu(), out_cpu.auxk, rtol=1e-4, atol=1e-6)
    assert out_cpu.auxk > 0  # the AuxK branch ran
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-5)


def test_topk_on_cuda_selects_the_cpu_set():
    x = torch.randn(300, 500, generator=torch.Generator().manual_seed(0))  # continuous: no ties
    vals_cpu, idx_cpu = S.topk(x, 8)
    vals_gpu, idx_gpu = S.topk(x.cuda(), 8)
    assert torch.equal(idx_gpu.cpu().sort(1).values, idx_cpu.sort(1).values)
    torch.testing.assert_close(vals_gpu.cpu().sort(1).values, vals_cpu.sort(1).values)


def test_training_on_cuda_reaches_the_cpu_quality():
    x = _embeddings()
    options = {"lr": 3e-3, "epochs": 30, "batch_size": 256, "seed": 0, "progress": False}
    cpu = S.train(x, 96, 4, device="cpu", **options)
    gpu = S.train(x, 96, 4, device="cuda", **options)
    assert next(gpu.sae.parameters()).is_cuda
    assert gpu.metrics["r2_heldout"] == pytest.approx(cpu.metrics["r2_heldout"], abs=0.01)
    assert gpu.metrics["dead_fraction_train"] == pytest.approx(cpu.metrics["dead_fraction_train"], abs=0.1)
    codes_gpu = S.encode(gpu.sae.cpu(), x)
    assert codes_gpu.shape == (len(x), 96) and ((codes_gpu > 0).sum(1) <= 4).all()


def test_attribution_on_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    n, m = 400, 60
    rates = rng.gamma(1.0, 1.0, (1, m)) * rng.choice([0.3, 3.0], (n, m))
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(rates).astype(np.float32)))
    adata.var_names = [f"g{i}" for i in range(m)]
    encoder = pca.fit(adata, n_comps=8)
    X = adata.X
    with torch.no_grad():
        emb = encoder(torch.as_tensor(X.toarray())).numpy()
    sae = S.train(emb, 24, 3, epochs=20, batch_size=128, device="cpu", progress=False).sae
    options = {"n_prototypes": 4, "n_counterfactuals": 2, "progress": False}
    cpu = attribution.attribute_concepts(encoder, sae, X, emb, device="cpu", **options)
    gpu = attribution.attribute_concepts(encoder.cuda(), sae.cuda(), X, emb, device="cuda", **options)
    assert cpu.attributed.any()
    np.testing.assert_array_equal(gpu.status["status"].to_numpy(), cpu.status["status"].to_numpy())
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-4, atol=1e-5)
