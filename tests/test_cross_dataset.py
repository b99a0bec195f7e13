"""``corelib.tl.cross_dataset``, and the pieces notebook 04's steps call in tl and encoders."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import hand_attribution

import corelib as cl


def _sae_with_dictionary(D_CD: np.ndarray, k: int = 1) -> cl.tl.sae.TopKSAE:
    model = cl.tl.sae.TopKSAE(D_CD.shape[1], D_CD.shape[0], k)
    with torch.no_grad():
        model.W_dec_CD.copy_(torch.as_tensor(D_CD, dtype=torch.float32))
        model.W_enc_DC.copy_(model.W_dec_CD.T)
    return model.eval()


def test_heldout_cells_are_the_training_split():
    emb = {"A": np.zeros((50, 3)), "B": np.zeros((20, 3))}
    held = cl.tl.cross_dataset.heldout_cells(emb, 0.2, split_seed=3)
    np.testing.assert_array_equal(held["A"], cl.tl.sae.split_cells(50, 0.2, 3)[1])
    assert len(held["B"]) == 4
    with pytest.raises(ValueError, match=r"holdout_fraction must be in \(0, 1\)"):
        cl.tl.cross_dataset.heldout_cells(emb, 0.0)


def test_compare_datasets_matches_permuted_dictionaries_and_summarises():
    rng = np.random.default_rng(0)
    D = np.linalg.qr(rng.normal(size=(6, 6)))[0][:5]
    perm = np.array([3, 0, 4, 1, 2])
    saes = {"A": _sae_with_dictionary(D), "B": _sae_with_dictionary(D[perm])}
    emb = {"A": rng.normal(size=(40, 6)).astype(np.float32), "B": rng.normal(size=(30, 6)).astype(np.float32)}
    held = cl.tl.cross_dataset.heldout_cells(emb, 0.25)
    cross = cl.tl.cross_dataset.compare_datasets(saes, emb, held)
    assert len(cross.r2) == 4 and set(cross.r2["test_dataset"]) == {"A", "B"}
    expected = cl.tl.stability.cross_dataset_r2(saes, {n: e[held[n]] for n, e in emb.items()})
    pd.testing.assert_frame_equal(cross.r2, expected)
    np.testing.assert_array_equal(perm[cross.matching.cols], cross.matching.rows)
    summary = cl.tl.cross_dataset.matching_summary(cross, seed=0)
    assert summary["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert summary["chance_mean_cosine"] == cl.tl.stability.chance_matching(5, 5, 6, seed=0)["mean_cosine"]
    with pytest.raises(ValueError, match="two datasets"):
        cl.tl.cross_dataset.compare_datasets({"A": saes["A"]}, emb, held)


def test_matched_pair_genes_lives_in_tl():
    genes = ["G0", "G1", "G2"]
    a1 = hand_attribution([[5], [4], [0]], genes, [0])
    a2 = hand_attribution([[1], [4], [3]], genes, [0])
    m = cl.tl.stability.Matching(rows=np.array([0]), cols=np.array([0]), cosine=np.array([0.9]))
    out = cl.tl.cross_dataset.matched_pair_genes(m, a1, a2, n_genes=2)
    assert out.loc[0, "top_genes_1"] == "G0, G1" and out.loc[0, "shared_genes"] == "G1"
    assert cl.runs.steps.matched_pair_genes is cl.tl.cross_dataset.matched_pair_genes


def test_concept_matches_leaves_out_dead_concepts_of_the_others():
    D = np.eye(4, dtype=np.float32)
    model = _sae_with_dictionary(D)
    other = _sae_with_dictionary(D[[2, 0, 1, 3]])
    emb = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)  # concept 3 never fires
    table = cl.tl.stability.concept_matches(model, {"seed 1": other}, emb)
    assert list(table.columns) == ["concept", "matched_concept", "cosine", "comparison"]
    # the other SAE's concept 3 is dead: 3 matches, each to the concept with the same direction
    assert len(table) == 3 and set(table["matched_concept"]) == {0, 1, 2}
    np.testing.assert_array_equal(np.array([2, 0, 1])[table["matched_concept"]], table["concept"])
    empty = cl.tl.stability.concept_matches(model, {}, emb)
    assert empty.empty and list(empty.columns) == list(table.columns)


def test_sample_obs_is_the_adata_or_a_seeded_view():
    adata = ad.AnnData(np.zeros((30, 2)), obs=pd.DataFrame({"g": ["a"] * 20 + ["b"] * 10}))
    assert cl.tl.sampling.sample_obs(adata, None) is adata
    assert cl.tl.sampling.sample_obs(adata, 30) is adata
    sample = cl.tl.sampling.sample_obs(adata, 9, seed=1, stratify_key="g")
    expected = cl.tl.sampling.subsample_cells(30, 9, seed=1, labels=adata.obs["g"].to_numpy())
    assert sample.is_view and list(sample.obs_names) == list(adata.obs_names[expected])
    assert sample.obs["g"].value_counts().to_dict() == {"a": 6, "b": 3}


def test_probe_tables_are_the_written_tables():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.repeat(["a", "b"], 60)
    X[y == "b", 0] += 3
    results = cl.tl.probes.probe_features({"f": X}, y, seeds=[0, 1], min_cells_per_class=10, progress=False)
    summary, per_seed, confusion = cl.tl.probes.probe_tables(results)
    pd.testing.assert_frame_equal(summary, cl.tl.probes.probe_summary(results))
    assert list(per_seed.columns) == ["features", "seed", "accuracy", "macro_f1", "converged"]
    assert per_seed["seed"].tolist() == [0, 1]
    assert len(confusion) == 2 * 2 * 2 and confusion["count"].dtype.kind == "i"


def _counts(n: int, genes: list[str], seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.poisson(1.0, size=(n, len(genes))).astype(np.float32))
    return ad.AnnData(X, var=pd.DataFrame(index=genes))


def test_encoders_train_shared_embed_datasets_and_random_control(tmp_path):
    genes = [f"g{i}" for i in range(60)]
    a, b = _counts(80, genes + ["only_a"], 0), _counts(60, ["only_b"] + genes, 1)
    encoder = cl.encoders.train_shared_scvi({"A": a, "B": b}, genes, n_latent=3, epochs=1, progress=False)
    assert encoder.genes == genes and encoder.dim == 3
    emb = cl.encoders.embed_datasets(encoder, {"A": a, "B": b}, progress=False)
    assert emb["A"].shape == (80, 3) and emb["B"].shape == (60, 3) and "X_scvi" not in a.obsm
    control, random_emb = cl.encoders.embed_random_control(encoder, a, seed=2, progress=False)
    assert random_emb.shape == (80, 3) and not np.allclose(random_emb, emb["A"], atol=1e-3)
    assert "X_scvi_random" not in a.obsm
    np.testing.assert_array_equal(
        random_emb, cl.encoders.embed(encoder.random_control(2), a.copy(), progress=False)
    )
    assert cl.encoders.checkpoint_genes(tmp_path) is None
    cl.encoders.save(encoder, tmp_path / "enc")
    assert cl.encoders.checkpoint_genes(tmp_path / "enc") == genes
