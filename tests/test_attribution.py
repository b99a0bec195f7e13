"""Tests of corelib.tl.attribution against Captum's FeatureAblation, brute force and hand-built examples."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from captum.attr import FeatureAblation
from conftest import N_GENES, toy_counts, toy_sae, toy_scvi_encoder

import corelib as cl


def _captum(f, protos_PM: torch.Tensor, cfs_PCM: torch.Tensor, per_eval: int = 64) -> torch.Tensor:
    n_p, n_c, m = cfs_PCM.shape
    inputs = protos_PM.repeat_interleave(n_c, 0)
    out = FeatureAblation(f).attribute(
        inputs, baselines=cfs_PCM.reshape(-1, m), perturbations_per_eval=per_eval
    )
    return out.reshape(n_p, n_c, m)


def _pairs(n_p: int = 4, n_c: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(toy_counts(n_p * (1 + n_c), seed=seed))
    return x[:n_p], x[n_p:].reshape(n_p, n_c, -1)


# ---------------------------------------------------------------------------------------------------- Eq. 2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_occlusion_equals_captum_on_mlp(dtype):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(N_GENES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)

    def f(x):
        return mlp(torch.log1p(x)).squeeze(-1)

    protos, cfs = (t.to(dtype) for t in _pairs())
    with torch.no_grad():
        ours = cl.tl.attribution.occlusion(f, protos, cfs, batch_size=17)
        ref = _captum(f, protos, cfs)
    assert ours.shape == (4, 3, N_GENES)
    assert (ours - ref).abs().max() <= 1e-5
    # Genes equal in both cells are never evaluated: their score is exactly 0.
    equal = protos[:, None] == cfs
    assert equal.any() and (ours[equal] == 0).all()
    assert (ours[~equal] != 0).any()


def test_occlusion_never_evaluates_equal_genes():
    protos, cfs = _pairs(n_p=2, n_c=2)
    calls = []

    def f(x):
        calls.append(len(x))
        return x.sum(1) ** 2

    scores = cl.tl.attribution.occlusion(f, protos, cfs, batch_size=1000)
    # One evaluation per distinct perturbed cell: counterfactuals sharing a gene's value share it.
    p, c, g = torch.nonzero(protos[:, None] != cfs, as_tuple=True)
    n_distinct = len({(int(i), int(j), float(v)) for i, j, v in zip(p, g, cfs[p, c, g], strict=True)})
    assert sum(calls) == len(protos) + n_distinct < len(protos) + len(p)
    # Brute force for f = (sum x)^2.
    total = protos.sum(1)[:, None, None]
    delta = cfs - protos[:, None]
    assert torch.allclose(scores, total**2 - (total + delta) ** 2)


def test_occlusion_equals_captum_on_scvi_encoder():
    enc = toy_scvi_encoder()
    protos, cfs = _pairs()
    for j in (0, 3):

        def f(x, j=j):
            return enc(x)[:, j]

        with torch.no_grad():
            diff = (
                (cl.tl.attribution.occlusion(f, protos, cfs, batch_size=50) - _captum(f, protos, cfs))
                .abs()
                .max()
            )
        assert diff <= 1e-5


def test_occlusion_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_p x n_c x m"):
        cl.tl.attribution.occlusion(lambda x: x.sum(1), torch.zeros(3, 5), torch.zeros(3, 5))


# ---------------------------------------------------------------------------------------------------- Eq. 1
def test_selection_follows_eq1_on_hand_built_example():
    # 8 cells on a line (embedding = position); the unit is active in cells 5, 6, 7 (highest: 7).
    emb = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]])
    acts = np.array([[0, 0, 0, 0, 0, 0.5, 2.0, 1.0]]).T
    sel = cl.tl.attribution.select_cells(
        acts, emb, acts == 0, n_prototypes=2, n_counterfactuals=2, progress=False
    )
    np.testing.assert_array_equal(sel.prototypes[0], [6, 7])
    # Nearest NON-activating cells: 4 then 3 for both prototypes (5 is closer but active).
    np.testing.assert_array_equal(sel.counterfactuals[0], [[4, 3], [4, 3]])
    assert sel.status.loc[0, "status"] == "attributed"


def test_counterfactuals_use_l2_in_embedding_space():
    emb = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 2.0], [2.0, 2.0], [10.0, 10.0]])
    inactive = np.array([False, True, True, True, True])
    cf = cl.tl.attribution.counterfactuals(emb, np.array([0]), inactive, n_counterfactuals=3)
    np.testing.assert_array_equal(cf, [[2, 3, 1]])  # distances 2, 2.83, 3


def test_selection_skips_units_with_reasons():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 3))
    acts = np.zeros((20, 4))
    acts[:, 0] = rng.random(20) + 0.1  # active everywhere: no counterfactual
    acts[:3, 1] = 1.0  # 3 active cells < n_prototypes
    # unit 2: dead
    acts[:10, 3] = rng.random(10) + 0.1  # fine
    sel = cl.tl.attribution.select_cells(
        acts, emb, acts == 0, units=[10, 11, 12, 13], n_prototypes=5, n_counterfactuals=2, progress=False
    )
    st = sel.status
    assert list(st["status"]) == ["skipped", "skipped", "skipped", "attributed"]
    assert "non-activating" in st.loc[10, "reason"] and "n_prototypes=5" in st.loc[11, "reason"]
    assert st.loc[12, "n_active"] == 0
    assert (sel.prototypes[:3] == -1).all() and (sel.prototypes[3] >= 0).all()
    assert np.isin(sel.prototypes[3], np.arange(10)).all()
    assert np.isin(sel.counterfactuals[3], np.arange(10, 20)).all()


def test_prototypes_partial_selection_equals_a_stable_sort():
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 5, 300).astype(float)  # many exact ties
    for n in (1, 7, 60, 300, 400):
        np.testing.assert_array_equal(
            cl.tl.attribution.prototypes(acts, n), np.argsort(-acts, kind="stable")[:n]
        )


def test_selection_from_sparse_codes_equals_dense():
    rng = np.random.default_rng(1)
    emb = rng.integers(0, 4, size=(200, 3)).astype(np.float32)  # ties in distance
    codes = np.where(rng.random((200, 6)) < 0.3, rng.integers(1, 4, (200, 6)), 0).astype(np.float32)
    codes[:, 5] = 0  # a dead unit: skipped
    exclude = np.zeros(codes.shape, bool)
    exclude[np.argmax(codes, 0), np.arange(6)] = True
    options = dict(n_prototypes=5, n_counterfactuals=3, progress=False)
    for excl in (None, exclude):
        ref = cl.tl.attribution.select_cells(codes, emb, codes == 0, exclude_NU=excl, **options)
        for sparse in (sp.csr_matrix(codes), sp.csc_matrix(codes)):
            excl_sp = None if excl is None else sp.csr_matrix(excl)
            got = cl.tl.attribution.select_cells(sparse, emb, exclude_NU=excl_sp, **options)
            np.testing.assert_array_equal(got.prototypes, ref.prototypes)
            np.testing.assert_array_equal(got.counterfactuals, ref.counterfactuals)
            pd.testing.assert_frame_equal(got.status, ref.status)
    assert ref.status.loc[5, "status"] == "skipped"


# ------------------------------------------------------------------------------------------ whole SAE, fast
@pytest.fixture(scope="module")
def scvi_sae_data():
    enc = toy_scvi_encoder()
    X = toy_counts(150, seed=3)
    with torch.no_grad():
        emb = enc(torch.as_tensor(X)).numpy()
    sae = toy_sae(emb.shape[1], n_concepts=10, k=3)
    return enc, sae, X, emb


def _per_concept_reference(enc, sae, X, emb, attr):
    """Plain path: one concept at a time, Eq. 2 through the full forward in float64, then Eq. 3."""
    enc64, sae64 = enc.double(), sae.double()
    ref = np.full_like(attr.scores, np.nan)
    for u, concept in enumerate(attr.units):
        if not attr.attributed[u]:
            continue
        protos = torch.as_tensor(X[attr.prototypes[u]], dtype=torch.float64)
        cfs = torch.as_tensor(X[attr.counterfactuals[u]], dtype=torch.float64)
        with torch.no_grad():
            s = cl.tl.attribution.occlusion(lambda x, c=concept: sae64.encode(enc64(x))[:, c], protos, cfs)
        ref[:, u] = cl.tl.attribution.aggregate_attributions(s).numpy()
    enc.float(), sae.float()
    return ref


def test_shared_pairs_and_linear_head_equal_plain_path(scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    kw = dict(
        n_prototypes=4, n_counterfactuals=2, device="cpu", progress=False, batch_size=97, dtype=torch.float64
    )
    fast = cl.tl.attribution.attribute_concepts(enc, sae, sp.csr_matrix(X), emb, **kw)
    plain = cl.tl.attribution.attribute_concepts(enc, sae, X, emb, use_linear_head=False, **kw)
    assert fast.attributed.sum() >= 5
    np.testing.assert_array_equal(fast.attributed, plain.attributed)
    keep = fast.attributed
    np.testing.assert_allclose(fast.scores[:, keep], plain.scores[:, keep], rtol=0, atol=1e-10)
    ref = _per_concept_reference(enc, sae, X, emb, fast)
    np.testing.assert_allclose(fast.scores[:, keep], ref[:, keep], rtol=0, atol=1e-10)
    assert np.isnan(fast.scores[:, ~keep]).all()
    # The recorded activation is the mean activation of the prototypes.
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    u = np.flatnonzero(keep)[0]
    assert fast.activation[u] == pytest.approx(codes[fast.prototypes[u], fast.units[u]].mean(), rel=1e-5)


def test_signed_scores_and_reliability_equal_a_per_pair_reference(scvi_sae_data):
    """``signed`` is each pair's Eq. 2 score times sign(prototype - counterfactual), averaged; the reliability
    columns are split_half_reliability of the even- and odd-ranked prototypes' means."""
    enc, sae, X, emb = scvi_sae_data
    kw = dict(n_prototypes=4, n_counterfactuals=2, device="cpu", progress=False, dtype=torch.float64)
    attr = cl.tl.attribution.attribute_concepts(enc, sae, X, emb, **kw)
    enc64, sae64 = enc.double(), sae.double()
    halves = np.full((2, 2, *attr.scores.shape), np.nan)
    for u in np.flatnonzero(attr.attributed):
        protos = torch.as_tensor(X[attr.prototypes[u]], dtype=torch.float64)
        cfs = torch.as_tensor(X[attr.counterfactuals[u]], dtype=torch.float64)
        with torch.no_grad():
            s = cl.tl.attribution.occlusion(
                lambda x, c=attr.units[u]: sae64.encode(enc64(x))[:, c], protos, cfs
            )
        signed = (s * torch.sign(protos[:, None] - cfs)).numpy()
        np.testing.assert_allclose(attr.signed[:, u], signed.mean((0, 1)), rtol=0, atol=1e-10)
        for h in (0, 1):
            halves[0, h, :, u], halves[1, h, :, u] = s.numpy()[h::2].mean((0, 1)), signed[h::2].mean((0, 1))
    enc.float(), sae.float()
    for prefix, pair in zip(("", "signed_"), halves, strict=True):
        rho, overlap = cl.tl.attribution.split_half_reliability(*pair)
        np.testing.assert_allclose(attr.reliability[f"{prefix}split_half"], rho, rtol=1e-6)
        np.testing.assert_allclose(attr.reliability[f"{prefix}top_overlap"], overlap)
    # positive signed score = more of the gene, more of the concept
    assert attr.frame("expression").shape == attr.frame().shape
    with pytest.raises(ValueError, match="direction must be"):
        attr.frame("up")


def test_float32_fast_path_matches_captum(scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    attr = cl.tl.attribution.attribute_concepts(
        enc,
        sae,
        X,
        emb,
        concepts=[1, 4, 7],
        n_prototypes=3,
        n_counterfactuals=2,
        dtype=torch.float32,
        device="cpu",
        progress=False,
    )
    for u in np.flatnonzero(attr.attributed):
        protos = torch.as_tensor(X[attr.prototypes[u]])
        cfs = torch.as_tensor(X[attr.counterfactuals[u]])
        with torch.no_grad():
            ref = _captum(lambda x, c=attr.units[u]: sae.encode(enc(x))[:, c], protos, cfs)
        assert np.abs(cl.tl.attribution.aggregate_attributions(ref).numpy() - attr.scores[:, u]).max() <= 1e-5


def test_concept_skipped_not_crash(scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    codes = sae.encode(torch.as_tensor(emb)).detach().numpy()
    codes[:, 0] = 0.0  # dead concept
    codes[:, 1] = np.abs(codes[:, 1]) + 1.0  # active in every cell
    attr = cl.tl.attribution.attribute_concepts(
        enc, sae, X, emb, codes_NC=codes, n_prototypes=3, n_counterfactuals=2, device="cpu", progress=False
    )
    assert list(attr.status["status"].iloc[:2]) == ["skipped", "skipped"]
    assert attr.status["reason"].iloc[0].startswith("0 active cells")
    assert "non-activating" in attr.status["reason"].iloc[1]
    assert 0 not in attr.frame().columns and attr.frame().shape[0] == N_GENES


def test_neurons_equal_per_neuron_occlusion(scvi_sae_data):
    enc, _, X, emb = scvi_sae_data
    attr = cl.tl.attribution.attribute_neurons(
        enc,
        X,
        emb,
        neurons=[0, 2],
        n_prototypes=3,
        n_counterfactuals=2,
        device="cpu",
        progress=False,
        dtype=torch.float64,
    )
    inactive = cl.tl.units.neuron_inactive(emb)
    for u, j in enumerate([0, 2]):
        np.testing.assert_array_equal(attr.prototypes[u], np.argsort(-emb[:, j], kind="stable")[:3])
        assert inactive[attr.counterfactuals[u].ravel(), j].all()
        protos = torch.as_tensor(X[attr.prototypes[u]], dtype=torch.float64)
        cfs = torch.as_tensor(X[attr.counterfactuals[u]], dtype=torch.float64)
        enc64 = enc.double()
        with torch.no_grad():
            ref = cl.tl.attribution.aggregate_attributions(
                cl.tl.attribution.occlusion(lambda x, j=j, e=enc64: e(x)[:, j], protos, cfs)
            )
        enc.float()
        np.testing.assert_allclose(attr.scores[:, u], ref.numpy(), atol=1e-10, rtol=0)
    assert attr.labels == ["N0", "N2"]


def test_perturbation_model_prefixes_agree(scvi_sae_data):
    enc, sae, X, _ = scvi_sae_data
    readout = cl.tl.attribution.perturb._SAEReadout(sae)
    fast = cl.tl.attribution.perturbation_model(enc, readout, device="cpu", dtype=torch.float64)
    plain = cl.tl.attribution.perturbation_model(
        enc, readout, use_linear_head=False, device="cpu", dtype=torch.float64
    )
    x = torch.as_tensor(X[:3], dtype=torch.float64)
    genes = torch.tensor([[0, 5, 9, -1], [3, 2, -1, -1]])
    values = torch.as_tensor(X[3:5, :4], dtype=torch.float64)
    slot = torch.tensor([2, 0])
    with torch.no_grad():
        outs = [(m.prepare(x), m.prefixes(slot, genes, values)) for m in (fast, plain)]
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-10)
    # Step 0 is the prototype itself; padding (-1) changes nothing.
    torch.testing.assert_close(outs[1][1][:, 0], outs[1][0][slot])
    torch.testing.assert_close(outs[1][1][1, 2], outs[1][1][1, 4])


def test_near_ties_are_flagged_and_recomputed_with_the_full_forward(scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    readout = cl.tl.attribution.perturb._SAEReadout(sae)
    emb_BD = torch.as_tensor(emb[:40])
    with torch.no_grad():
        codes, tie = readout.forward_with_ties(emb_BD)
        torch.testing.assert_close(codes, sae.encode(emb_BD), rtol=0, atol=0)
        # Move one cell's (k+1)-th concept to within 1e-7 of its k-th by shifting that concept's bias.
        pre = sae.pre_acts(emb_BD[:1])[0]
        order = pre.argsort(descending=True)
        kth, next_ = order[sae.k - 1], order[sae.k]
        assert pre[kth] > 0
        shifted = copy.deepcopy(sae)
        shifted.b_enc_C[next_] += pre[kth] - pre[next_] - 1e-7 * pre.abs().max()
        assert cl.tl.attribution.perturb._SAEReadout(shifted).forward_with_ties(emb_BD[:1])[1].item()
    assert not tie[0] and tie.float().mean() < 0.1  # clear gaps are not flagged
    # Every flagged cell takes the full forward's value, bit for bit (float32): both run the same 4-row
    # forward on the same threads, the one case where the determinism promise is bit equality.
    flag_all = cl.tl.attribution.perturb._SAEReadout(sae, tie_rtol=math.inf)
    fast = cl.tl.attribution.perturbation_model(enc, flag_all, device="cpu")
    plain = cl.tl.attribution.perturbation_model(enc, readout, use_linear_head=False, device="cpu")
    x = torch.as_tensor(X[:3])
    slot, gene, value = (
        torch.tensor([0, 1, 2, 2]),
        torch.tensor([1, 4, 7, 0]),
        torch.tensor([9.0, 0.0, 3.0, 5.0]),
    )
    with torch.no_grad():
        for m in (fast, plain):
            m.prepare(x)
        assert torch.equal(fast.single(slot, gene, value), plain.single(slot, gene, value))


def test_rejects_misaligned_expression(scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    with pytest.raises(ValueError, match="align"):
        cl.tl.attribution.attribute_concepts(enc, sae, X[:, :10], emb, progress=False)
    with pytest.raises(ValueError, match="same AnnData"):
        cl.tl.attribution.attribute_concepts(enc, sae, X, emb[:10], progress=False)


# ---------------------------------------------------------------------------------------------- reading
def _toy_attribution() -> cl.tl.attribution.Attribution:
    scores = np.array([[0.2, np.nan, 0.01], [0.01, np.nan, 0.5], [-0.1, np.nan, 0.06]])
    status = pd.DataFrame(
        {
            "status": ["attributed", "skipped", "attributed"],
            "reason": ["", "dead", ""],
            "n_active": [9, 0, 4],
            "n_inactive": [1, 10, 6],
        },
        index=pd.Index([3, 5, 8], name="unit"),
    )
    return cl.tl.attribution.Attribution(
        scores=scores,
        genes=np.array(["A", "B", "C"]),
        units=np.array([3, 5, 8]),
        activation=np.array([1.0, np.nan, 2.0]),
        prototypes=np.zeros((3, 1), int),
        counterfactuals=np.zeros((3, 1, 1), int),
        status=status,
    )


def test_ranked_genes_top_genes_and_counts():
    attr = _toy_attribution()
    ranked = cl.tl.attribution.ranked_genes(attr, 8)
    assert list(ranked.index) == ["B", "C", "A"]
    assert list(ranked["important"]) == [True, True, False]
    assert ranked.loc["B", "relative"] == pytest.approx(0.25)
    top = cl.tl.attribution.top_genes(attr, n=2)
    assert list(top["gene"]) == ["A", "B", "B", "C"] and list(top["unit"]) == [3, 3, 8, 8]
    counts = cl.tl.attribution.important_gene_counts(attr, threshold=0.05, relative_threshold=0.05)
    assert counts.loc[3, "n_important"] == 1 and counts.loc[8, "n_important"] == 2
    assert counts.loc[8, "threshold_relative"] == pytest.approx(0.025)
    assert counts.loc[8, "n_important_relative"] == 1  # 0.5/2; 0.06/2 = 0.03 is below
    with pytest.raises(ValueError, match="skipped"):
        cl.tl.attribution.ranked_genes(attr, 5)


def test_save_load_roundtrip(tmp_path):
    attr = _toy_attribution()
    attr.save(tmp_path / "a.npz")
    back = cl.tl.attribution.Attribution.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.scores, attr.scores)
    np.testing.assert_array_equal(back.genes, attr.genes)
    pd.testing.assert_frame_equal(back.status, attr.status, check_dtype=False)
    assert back.kind == "concept" and back.labels == ["C3", "C5", "C8"]
    assert back.signed is None and back.reliability is None  # a file from before they were stored
    with pytest.raises(ValueError, match="recompute"):
        back.frame("expression")
    table = cl.tl.attribution.status_table(back)
    assert table[cl.tl.attribution.RELIABILITY_COLUMNS].isna().all().all()
    attr.signed = -attr.scores
    attr.reliability = pd.DataFrame(
        {c: np.arange(3.0) for c in cl.tl.attribution.RELIABILITY_COLUMNS}, index=attr.units
    )
    attr.save(tmp_path / "b.npz")
    back = cl.tl.attribution.Attribution.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(back.signed, attr.signed)
    pd.testing.assert_frame_equal(
        back.reliability, attr.reliability, check_names=False, check_index_type=False
    )
    np.testing.assert_array_equal(back.reliable(), attr.attributed & (np.arange(3.0) >= 0.5))
    nothing = cl.tl.attribution.Attribution(
        np.zeros((3, 0)),
        attr.genes,
        np.asarray(attr.status.iloc[:0].index),  # no unit attributable: an empty (object) index
        np.zeros(0),
        np.zeros((0, 2), int),
        np.zeros((0, 2, 1), int),
        attr.status.iloc[:0],
    )
    nothing.save(tmp_path / "none.npz")
    assert cl.tl.attribution.Attribution.load(tmp_path / "none.npz").frame().shape == (3, 0)


def test_units_sharing_pairs_read_one_forward_pass(scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    # Two units with the same (prototype, counterfactual) pairs, plus one with a partly shared prototype set.
    protos = np.array([[0, 1], [0, 1], [1, 2]])
    cfs = np.array([[[3, 4], [5, 6]], [[3, 4], [5, 6]], [[5, 6], [7, 8]]])
    status = pd.DataFrame(
        {"status": "attributed", "reason": "", "n_active": 0, "n_inactive": 0},
        index=pd.Index([0, 1, 2], name="unit"),
    )
    sel = cl.tl.attribution.Selection(protos, cfs, status)
    model = cl.tl.attribution.concept_model(enc, sae, device="cpu", dtype=torch.float64)
    calls = []
    entries = model.entries
    model.entries = lambda *a: calls.append(len(a[0])) or entries(*a)
    attr = cl.tl.attribution.attribute_selected(
        model, X, sel, columns=[2, 5, 7], genes=enc.genes, progress=False
    )
    # One evaluation per distinct perturbed cell: (prototype, gene, value) over the distinct pairs.
    distinct = {(0, 3), (0, 4), (1, 5), (1, 6), (2, 7), (2, 8)}
    cells = {(p, g, X[c, g]) for p, c in distinct for g in np.flatnonzero(X[p] != X[c])}
    assert sum(calls) == len(cells) < sum(int((X[p] != X[c]).sum()) for p, c in distinct)
    enc64, sae64 = enc.double(), sae.double()
    for u, col in enumerate([2, 5, 7]):
        with torch.no_grad():
            s = cl.tl.attribution.occlusion(
                lambda x, c=col: sae64.encode(enc64(x))[:, c],
                torch.as_tensor(X[protos[u]], dtype=torch.float64),
                torch.as_tensor(X[cfs[u]], dtype=torch.float64),
            )
        np.testing.assert_allclose(
            attr.scores[:, u], cl.tl.attribution.aggregate_attributions(s).numpy(), atol=1e-10
        )
    enc.float(), sae.float()


def test_sample_concepts_status_examples_and_plot():
    codes = np.zeros((30, 6))
    codes[:12, [0, 2, 3]] = 1.0
    codes[:, 4] = 1.0  # active everywhere: not attributable
    np.testing.assert_array_equal(cl.tl.attribution.sample_concepts(codes, None), np.arange(6))
    sample = cl.tl.attribution.sample_concepts(codes, 2, n_prototypes=10, seed=1)
    assert len(sample) == 2 and set(sample) <= {0, 2, 3}
    assert len(cl.tl.attribution.sample_concepts(codes, 5, n_prototypes=20)) == 0  # the reason is printed
    attr = _toy_attribution()
    table = cl.tl.attribution.status_table(attr)
    assert list(table["label"]) == ["C3", "C5", "C8"] and table["kind"].eq("concept").all()
    gsea = pd.DataFrame(
        {"term": ["t3", "t8"], "pval": [0.01, 1e-6], "annotation": ["none", "strong"]}, index=[3, 8]
    )
    meta = pd.DataFrame(
        {
            "n_active": [9, 4],
            "cell_type_top": ["B", "NK"],
            "cell_type_fraction": [0.9, 0.5],
            "call": ["x", "y"],
        },
        index=[3, 8],
    )
    ex = cl.tl.attribution.worked_examples(attr, gsea, meta, n=2, n_genes=2)
    assert list(ex.index) == ["C8", "C3"] and ex.loc["C8", "top_genes"] == "B, C"
    assert "NK (50%)" in ex.loc["C8", "metadata"]
    shares = cl.tl.attribution.important_gene_shares(cl.tl.attribution.important_gene_counts(attr))
    np.testing.assert_allclose(shares.sum(), 1.0)
    ax = cl.pl.important_genes(shares)
    heights = [p.get_height() for p in ax.patches]  # bin by bin, one bar per threshold
    np.testing.assert_allclose(heights, shares.to_numpy().ravel())
