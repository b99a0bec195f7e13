"""The attribution fast path against the full forward: the SAE readout's entries decided from the prototype
(``_SAEReadout.entries``), on synthetic cells whose Top-K sets change and on the bundled pbmc68k_reduced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation
from conftest import toy_counts, toy_sae, toy_scvi_encoder

import corelib as cl


def _models(enc, sae, dtype):
    """(fast, full): the linear-head model with the SAE entries, and the plain full forward."""
    fast = cl.tl.attribution.concept_model(enc, sae, device="cpu", dtype=dtype)
    full = cl.tl.attribution.concept_model(enc, sae, use_linear_head=False, device="cpu", dtype=dtype)
    return fast, full


def _spy_pre_acts(model) -> list[int]:
    """Rows that go through the fast model's full SAE pre-activations (the bound did not decide them)."""
    rows, sae = [], model.readout.sae
    pre_acts = sae.pre_acts
    sae.pre_acts = lambda a: rows.append(len(a)) or pre_acts(a)
    return rows


def _topk_sets(sae, emb_BD: torch.Tensor) -> torch.Tensor:
    """Boolean (b x c): the concepts each cell's Top-K selects."""
    idx_BK = sae.pre_acts(emb_BD).topk(sae.cfg.k, dim=1).indices
    return torch.zeros(len(emb_BD), sae.cfg.n_concepts, dtype=torch.bool).scatter_(1, idx_BK, True)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_entries_equal_the_full_forward_where_the_topk_set_changes(dtype, atol):
    enc = toy_scvi_encoder()
    sae = toy_sae(enc.dim, n_concepts=24, k=4, seed=2)
    X = torch.as_tensor(toy_counts(60, seed=5), dtype=dtype)
    x_QM = X[:6]
    rng = np.random.default_rng(0)
    n_b = 400
    slot_B = torch.as_tensor(rng.integers(0, 6, n_b))
    gene_B = torch.as_tensor(rng.integers(0, X.shape[1], n_b))
    # Small steps (a count of +-1) leave most Top-K sets alone; values of other cells or 60 counts move them.
    value_B = torch.where(
        torch.as_tensor(rng.random(n_b) < 0.5),
        (x_QM[slot_B, gene_B] + torch.as_tensor(rng.choice([-1.0, 1.0], n_b), dtype=dtype)).clamp_min(0),
        torch.as_tensor(rng.choice([0.0, 60.0], n_b), dtype=dtype),
    )
    # Every concept of every cell: concepts in, entering, leaving and outside the prototype's Top-K.
    row_E = torch.arange(n_b).repeat_interleave(sae.cfg.n_concepts)
    col_E = torch.arange(sae.cfg.n_concepts).repeat(n_b)
    fast, full = _models(enc, sae, dtype)
    rows = _spy_pre_acts(fast)
    with torch.no_grad():
        base_fast, base_full = fast.prepare(x_QM), full.prepare(x_QM)
        out_E = fast.entries(slot_B, gene_B, value_B, row_E, col_E)
        ref_BC = full.single(slot_B, gene_B, value_B)
        x_BM = x_QM[slot_B].clone()
        x_BM[torch.arange(n_b), gene_B] = value_B
        enc64, sae64 = enc.double(), sae.double()
        was_BC = _topk_sets(sae64, enc64(x_QM.double()))[slot_B]
        now_BC = _topk_sets(sae64, enc64(x_BM.double()))
        enc.float(), sae.float()
    torch.testing.assert_close(base_fast, base_full, rtol=0, atol=atol)
    torch.testing.assert_close(out_E, ref_BC[row_E, col_E], rtol=0, atol=atol)
    # The cases a shortcut could get wrong occur: Top-K sets that change, concepts that leave and enter.
    changed_B = (was_BC != now_BC).any(1)
    assert 0.1 < changed_B.float().mean() < 0.9
    assert (was_BC & ~now_BC & (ref_BC == 0)).any() and (~was_BC & now_BC & (ref_BC > 0)).any()
    # As in attribution (each prototype's own top concept asked), both routes are taken: the bound decides
    # some cells without their pre-activations, not all.
    top_B = base_full.argmax(1)[slot_B]
    rows.clear()
    with torch.no_grad():
        out_B = fast.entries(slot_B, gene_B, value_B, torch.arange(n_b), top_B)
    torch.testing.assert_close(out_B, ref_BC[torch.arange(n_b), top_B], rtol=0, atol=atol)
    assert 0 < sum(rows) < n_b


def test_an_entry_at_a_near_tie_takes_the_full_forward():
    enc = toy_scvi_encoder()
    sae = toy_sae(enc.dim, n_concepts=24, k=4, seed=2)
    X = torch.as_tensor(toy_counts(8, seed=5))
    x_QM, slot, gene, value = X[:2], torch.tensor([1]), torch.tensor([3]), X[5, 3:4] + 2
    with torch.no_grad():
        x = x_QM[1].clone()
        x[3] = value
        pre = sae.pre_acts(enc(x[None]))[0]
        order = pre.argsort(descending=True)
        concept, rival = order[sae.k - 1], order[sae.k]
        assert pre[concept] > 0
        # The rival concept comes within 1e-7 of the asked one's pre-activation in the perturbed cell.
        sae.b_enc_C[rival] += pre[concept] - pre[rival] - 1e-7 * pre.abs().max()
    fast, full = _models(enc, sae, torch.float32)
    with torch.no_grad():
        fast.prepare(x_QM), full.prepare(x_QM)
        emb = fast.head_rest(fast._hidden(slot, gene, value))
        _, redo = fast.readout.entries(emb, slot, torch.tensor([0]), concept[None], fast.bounds)
        out = fast.entries(slot, gene, value, torch.tensor([0]), concept[None])
        ref = full.single(slot, gene, value)[0, concept]
    assert redo.tolist() == [True]
    # The flagged cell runs the full forward, as Captum does (the same one-row forward: bit equal).
    assert torch.equal(out[0], ref)


def test_attribution_on_bundled_counts_equals_captum_and_the_full_forward():
    adata = cl.datasets.load("pbmc68k_reduced")
    enc = toy_scvi_encoder(n_genes=adata.n_vars, seed=1)
    X_NM = adata.X
    with torch.no_grad():
        emb = enc(torch.as_tensor(X_NM.toarray())).numpy()
    sae = toy_sae(emb.shape[1], n_concepts=32, k=4, seed=3)
    common = dict(n_prototypes=3, n_counterfactuals=2, device="cpu", progress=False)
    fast = cl.tl.attribution.attribute_concepts(enc, sae, X_NM, emb, **common)
    full = cl.tl.attribution.attribute_concepts(enc, sae, X_NM, emb, use_linear_head=False, **common)
    done = np.flatnonzero(fast.attributed)
    assert len(done) >= 4
    np.testing.assert_allclose(fast.scores[:, done], full.scores[:, done], rtol=0, atol=1e-5)
    for u in done[:4]:
        concept = int(fast.units[u])
        protos = torch.as_tensor(cl.tl.attribution.dense_rows(X_NM, fast.prototypes[u]))
        cfs = torch.as_tensor(cl.tl.attribution.dense_rows(X_NM, fast.counterfactuals[u].ravel()))
        with torch.no_grad():
            ref = FeatureAblation(lambda x, c=concept: sae.encode(enc(x))[:, c]).attribute(
                protos.repeat_interleave(2, 0), baselines=cfs, perturbations_per_eval=64
            )
        expected = cl.tl.attribution.aggregate_attributions(ref.reshape(3, 2, -1)).numpy()
        np.testing.assert_allclose(fast.scores[:, u], expected, rtol=0, atol=1e-5)
