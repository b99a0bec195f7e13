"""``corelib.tl.sae.train`` against a straightforward autograd training loop: same initialisation, same batches,
same steps; weights and per-epoch losses agree within float32 tolerance. Also: skipping AuxK when nothing is
dead changes no gradient, and the two routes of ``topk`` and of ``sparse_decode`` agree with torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scanpy as sc
import torch
from conftest import FLOAT32_ATOL, FLOAT32_RTOL
from test_sae import one_thread, sparse_dictionary_data  # noqa: F401 (one_thread: an autouse fixture)

import corelib as cl
from corelib.datasets import load_dataset
from corelib.tl.sae import training
from corelib.tl.sae.model import _kernel_pays, _kernel_topk, _two_stage_topk


@pytest.fixture(scope="module")
def pbmc_pca() -> np.ndarray:
    """Real bundled data: PCA (20) of log-normalised pbmc3k, 600 cells."""
    adata = load_dataset("pbmc3k")[:600].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    return adata.obsm["X_pca"].astype(np.float32)


def plain_loss(sae: cl.tl.sae.TopKSAE, a_BD: torch.Tensor, dead_C: torch.Tensor, aux_k: int):
    """FVU + AuxK / 32 written the plain way: dense codes, ``torch.topk``, autograd, AuxK always computed
    (over no latent when nothing is dead: then a constant). Returns (loss, fvu, auxk, top values, indices)."""
    pre_BC = (a_BD - sae.b_dec_D) @ sae.W_enc_DC + sae.b_enc_C
    vals, idx = pre_BC.topk(sae.k, dim=-1)
    recon_BD = torch.zeros_like(pre_BC).scatter(1, idx, vals.relu()) @ sae.W_dec_CD + sae.b_dec_D
    fvu = ((a_BD - recon_BD) ** 2).sum() / ((a_BD - a_BD.mean(0)) ** 2).sum()
    resid_BD = (a_BD - recon_BD).detach()
    dead_vals, dead_idx = pre_BC.masked_fill(~dead_C, -torch.inf).topk(min(aux_k, int(dead_C.sum())), dim=-1)
    aux_BD = torch.zeros_like(pre_BC).scatter(1, dead_idx, dead_vals.relu()) @ sae.W_dec_CD
    aux = ((aux_BD - resid_BD) ** 2).sum() / ((resid_BD - resid_BD.mean(0)) ** 2).sum()
    return fvu + aux / 32, fvu, aux, vals, idx


def reference_train(x_ND: np.ndarray, c: int, k: int, *, lr: float, epochs: int, batch_size: int,
                    dead_window: int, max_grad_norm: float, seed: int = 0,
                    ) -> tuple[cl.tl.sae.TopKSAE, list[float], int]:  # fmt: skip
    """The training algorithm of ``train`` in its plainest form: same split, initialisation and batch order;
    autograd; Adam; gradient parallel to the dictionary rows removed, then scaled to a norm of at most
    ``max_grad_norm``; rows renormalised; dead = not fired for ``dead_window`` cells. Returns the model, the
    mean FVU of each epoch and the number of clipped steps."""
    train_idx, _ = cl.tl.sae.split_cells(len(x_ND), 0.1, 0)
    x_train = torch.as_tensor(x_ND[train_idx])
    sae = cl.tl.sae.init_sae(cl.tl.sae.SAEConfig(x_ND.shape[1], c, k), x_train, seed)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired_C = torch.zeros(c, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    fvu_per_epoch, clipped = [], 0
    for _ in range(epochs):
        perm, fvu_sum = torch.randperm(len(x_train), generator=gen), 0.0
        for start in range(0, len(x_train), batch_size):
            a_BD = x_train[perm[start : start + batch_size]]
            loss, fvu, _, vals, idx = plain_loss(sae, a_BD, since_fired_C >= dead_window, aux_k=512)
            opt.zero_grad()
            loss.backward()
            fvu_sum += fvu.item() * len(a_BD)
            with torch.no_grad():
                since_fired_C += len(a_BD)
                since_fired_C[idx[vals > 0]] = 0
                g, w = sae.W_dec_CD.grad, sae.W_dec_CD
                g -= (g * w).sum(1, keepdim=True) * w
                norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in sae.parameters()))
                if norm > max_grad_norm:
                    clipped += 1
                    for p in sae.parameters():
                        p.grad *= max_grad_norm / (norm + 1e-6)
                opt.step()
                sae.W_dec_CD /= sae.W_dec_CD.norm(dim=1, keepdim=True)
        fvu_per_epoch.append(fvu_sum / len(x_train))
    return sae, fvu_per_epoch, clipped


@pytest.mark.parametrize(("data", "max_grad_norm"), [("pbmc3k", 1.0), ("planted", 1.0), ("pbmc3k", 0.05)])
def test_train_equals_the_plain_autograd_loop(data, max_grad_norm, pbmc_pca):
    x_ND = pbmc_pca if data == "pbmc3k" else sparse_dictionary_data(n=600, c=48, d=16, k=3, seed=2)[0]
    c, k = (128, 2) if data == "pbmc3k" else (96, 3)
    kw = dict(lr=3e-3, epochs=3, batch_size=128, dead_window=128, max_grad_norm=max_grad_norm)
    ours = cl.tl.sae.train(x_ND, c, k, device="cpu", progress=False, **kw)
    ref, ref_fvu, clipped = reference_train(x_ND, c, k, **kw)
    assert ours.history["auxk"].iloc[-1] > 0, "the test must exercise AuxK (some latent dead)"
    if max_grad_norm < 1:
        assert clipped > 0, "the test must exercise the clipping"
    np.testing.assert_allclose(ours.history["fvu"], ref_fvu, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    for name in cl.tl.sae.WEIGHT_NAMES:
        torch.testing.assert_close(
            getattr(ours.sae, name), getattr(ref, name), rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL, msg=name
        )


def test_skipping_auxk_when_nothing_is_dead_changes_no_gradient(pbmc_pca):
    a_BD = torch.as_tensor(pbmc_pca[:64]).double()
    sae = cl.tl.sae.init_sae(cl.tl.sae.SAEConfig(20, 40, 3), a_BD.float(), seed=5).double()
    none_dead = torch.zeros(40, dtype=torch.bool)
    step = cl.tl.sae.loss_and_grads(sae, a_BD, none_dead, aux_k=512, aux_weight=1 / 32)
    grads = {name: getattr(sae, name).grad.clone() for name in cl.tl.sae.WEIGHT_NAMES}
    sae.zero_grad()
    loss, fvu, aux, _, _ = plain_loss(sae, a_BD, none_dead, aux_k=512)
    loss.backward()
    assert step.auxk.item() == 0.0 and aux.item() > 0  # skipped, against computed: a constant
    assert step.fvu.item() == pytest.approx(fvu.item(), rel=1e-12)
    for name in cl.tl.sae.WEIGHT_NAMES:
        torch.testing.assert_close(grads[name], getattr(sae, name).grad, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "k"), [(256, 500, 8), (40, 5000, 80), (7, 250, 4), (9, 1000, 16), (3, 20, 3)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("route", [cl.tl.sae.topk, _kernel_topk, _two_stage_topk])
def test_topk_routes_select_torchs_set(n_rows, n_cols, k, dtype, route):
    x = torch.randn(n_rows, n_cols, generator=torch.Generator().manual_seed(k), dtype=dtype)
    x[0] = torch.arange(n_cols, dtype=dtype)  # ascending: every column beats the ones before it
    x[1] = -torch.arange(n_cols, dtype=dtype)  # descending: the first block holds the whole top k
    x[2, ::3] = -torch.inf  # a third of the row at -inf
    vals, idx = route(x, k)
    torch.testing.assert_close(idx.sort(1).values, x.topk(k, dim=-1).indices.sort(1).values, rtol=0, atol=0)
    torch.testing.assert_close(vals, x.gather(1, idx), rtol=0, atol=0)
    # gradients reach the selected entries
    x.requires_grad_(True)
    route(x, k)[0].sum().backward()
    assert int(x.grad.sum()) == n_rows * k


def test_topk_takes_the_compiled_route_on_one_thread_or_for_small_k():
    assert _kernel_pays(80, 1) and _kernel_pays(8, 2) and _kernel_pays(16, 4) and not _kernel_pays(80, 2)


def test_sparse_decode_is_the_same_with_and_without_autograd():
    gen = torch.Generator().manual_seed(0)
    W_dec_CD = torch.randn(300, 24, generator=gen)
    acts_BK, idx_BK = torch.rand(50, 6, generator=gen), torch.randint(0, 300, (50, 6), generator=gen)
    with torch.no_grad():
        fast_BD = cl.tl.sae.sparse_decode(acts_BK, idx_BK, W_dec_CD)
    graph_BD = cl.tl.sae.sparse_decode(acts_BK, idx_BK, W_dec_CD.requires_grad_(True))
    assert graph_BD.requires_grad
    dense_BD = torch.zeros(50, 300).scatter(1, idx_BK, acts_BK) @ W_dec_CD.detach()
    torch.testing.assert_close(fast_BD, dense_BD, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    torch.testing.assert_close(graph_BD.detach(), dense_BD, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_fit_equals_the_tensor_operations(dtype):
    """The CPU kernel of the loss and gradients against the tensor route (which CUDA takes), with selected
    concepts at negative pre-activations (no gradient) and repeated concepts across cells."""
    gen = torch.Generator().manual_seed(1)
    n_cells, d, c, k = 64, 12, 40, 5
    vals_BK = torch.randn(n_cells, k, generator=gen, dtype=dtype)
    idx_BK = torch.randint(0, c, (n_cells, k), generator=gen)
    W_dec_CD = torch.randn(c, d, generator=gen, dtype=dtype)
    target_BD, x_BD = torch.randn(2, n_cells, d, generator=gen, dtype=dtype)
    out = {}
    for name, route in (("kernel", training._fit_and_grads), ("tensors", training._fit_and_grads_tensors)):
        grads = training._Grads(
            torch.zeros(c, d, dtype=dtype), torch.zeros(c, dtype=dtype), torch.zeros(c, d, dtype=dtype)
        )
        out[name] = (*route(vals_BK, idx_BK, W_dec_CD, target_BD, x_BD, 0.5, grads), *grads)
    tol = (
        {"rtol": FLOAT32_RTOL, "atol": FLOAT32_ATOL}
        if dtype == torch.float32
        else {"rtol": 1e-12, "atol": 1e-12}
    )
    for kernel, tensors in zip(out["kernel"], out["tensors"], strict=True):
        torch.testing.assert_close(kernel, tensors, **tol)
