"""Atlas-scale embedding: sparse PCA fit, backed (out-of-core) reading and embedding, seeded samples."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.linalg
import scipy.sparse as sp
from conftest import FLOAT32_ATOL, FLOAT32_RTOL, toy_counts, toy_scvi_encoder

import corelib as cl
import corelib.encoders as enc
from corelib.encoders import pca as enc_pca
from corelib.runs.cache import read_provenance
from corelib.tl.baselines import baseline_dictionary, baseline_fitter
from corelib.tl.sampling import subsample_cells


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    """600 pbmc3k cells: enough for a 20-component PCA, small enough to write, read and SVD quickly."""
    return cl.datasets.load_dataset("pbmc3k")[:600].copy()


def _align_signs(a_ND: np.ndarray, b_ND: np.ndarray) -> np.ndarray:
    """``b`` with each column's sign chosen to agree with ``a`` (principal axes have an arbitrary sign)."""
    return b_ND * np.sign((a_ND * b_ND).sum(axis=0))


def test_sparse_pca_fit_equals_the_dense_svd_on_pbmc3k(small):
    """Reference: scanpy's normalisation, densified, centred, float64 SVD (independent of the sparse path)."""
    encoder = enc.load("pca", adata=small, n_comps=20, device="cpu")
    ref = small.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    dense_NG = ref.X.toarray().astype(np.float64)
    dense_NG -= dense_NG.mean(axis=0)
    _, _, vt = np.linalg.svd(dense_NG, full_matrices=False)
    components_DG = encoder.components_DG.numpy().astype(np.float64)
    assert np.degrees(scipy.linalg.subspace_angles(components_DG.T, vt[:20].T)).max() < 0.01
    emb = enc.embed(encoder, small, progress=False)
    expected = _align_signs(emb, dense_NG @ vt[:20].T)
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-3 * np.abs(expected).max())


def test_fit_on_a_sample_is_seeded_stated_and_equals_the_fit_on_those_cells(small):
    with pytest.warns(UserWarning, match="seeded sample of 400 of the 600 cells"):
        sampled = enc_pca.fit(small, n_comps=5, max_cells=400, seed=3)
    rows = enc_pca.fit_cells(small.n_obs, 400, seed=3)
    assert len(np.unique(rows)) == 400 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, enc_pca.fit_cells(small.n_obs, 400, seed=3))
    direct = enc_pca.fit(small[rows].copy(), n_comps=5, seed=3)
    np.testing.assert_allclose(
        sampled.components_DG, direct.components_DG, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL
    )
    np.testing.assert_array_equal(enc_pca.fit_cells(small.n_obs, None, seed=0), np.arange(small.n_obs))


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_backed_embed_equals_in_memory_and_writes_the_store(small, tmp_path, suffix):
    path = tmp_path / f"cells{suffix}"
    small.write_h5ad(path) if suffix == ".h5ad" else small.write_zarr(path)
    backed = cl.datasets.read(path, backed=True, required_columns=["cell_type"])
    assert not sp.issparse(backed.X) and hasattr(backed.X, "compute")  # lazy: nothing read yet
    encoder = enc.load("pca", adata=small, n_comps=10, device="cpu")
    np.testing.assert_allclose(
        enc.load("pca", adata=backed, n_comps=10, device="cpu").components_DG, encoder.components_DG
    )
    in_memory = enc.embed(encoder, small.copy(), progress=False)
    store = tmp_path / "emb.npy"
    streamed = enc.embed(encoder, backed, progress=False, out=store, block_size=128, batch_size=50)
    np.testing.assert_allclose(streamed, in_memory, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    on_disk = np.load(store, mmap_mode="r")
    assert on_disk.shape == (small.n_obs, 10) and on_disk.dtype == np.float32
    assert backed.uns["embed"]["n_genes_missing"] == 0


def test_backed_embed_of_an_scvi_encoder_from_a_layer(tmp_path):
    counts = toy_counts(300)
    adata = ad.AnnData(
        sp.csr_matrix(np.ones_like(counts)), var=pd.DataFrame(index=[f"G{i}" for i in range(counts.shape[1])])
    )
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = cl.datasets.read(tmp_path / "cells.h5ad", backed=True, layer="counts")
    encoder = toy_scvi_encoder()
    expected = enc.embed(encoder, adata, layer="counts", progress=False)
    streamed = enc.embed(encoder, backed, progress=False, block_size=70)
    np.testing.assert_allclose(streamed, expected, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_backed_validation_reads_a_sample_of_cells(small, tmp_path):
    bad = small.copy()
    bad.X = bad.X.copy()
    bad.X.data[:] = -1.0
    bad.write_h5ad(tmp_path / "negative.h5ad")
    with pytest.raises(ValueError, match="negative values"):
        cl.datasets.read(tmp_path / "negative.h5ad", backed=True)
    small.write_h5ad(tmp_path / "ok.h5ad")
    with pytest.raises(ValueError, match="'batch' is not in adata.obs"):
        cl.datasets.read(tmp_path / "ok.h5ad", backed=True, required_columns=["batch"])
    with pytest.raises(ValueError, match="Layer 'counts' not found"):
        cl.datasets.read(tmp_path / "ok.h5ad", backed=True, layer="counts")
    ensembl = small.copy()
    ensembl.var_names = [f"ENSG{i:011d}" for i in range(ensembl.n_vars)]
    ensembl.write_h5ad(tmp_path / "ensembl.h5ad")
    with pytest.raises(ValueError, match="Ensembl ids"):
        cl.datasets.read(tmp_path / "ensembl.h5ad", backed=True)


def test_subsample_is_seeded_sorted_and_stratified():
    labels = np.repeat(["a", "b", "c"], [700, 250, 50])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    cells = subsample_cells(1000, 100, seed=1, labels=labels)
    assert len(cells) == 100 and len(np.unique(cells)) == 100 and np.all(np.diff(cells) > 0)
    assert pd.Series(labels[cells]).value_counts().to_dict() == {"a": 70, "b": 25, "c": 5}
    np.testing.assert_array_equal(cells, subsample_cells(1000, 100, seed=1, labels=labels))
    assert not np.array_equal(cells, subsample_cells(1000, 100, seed=2, labels=labels))
    rare = np.array(["x"] * 999 + ["y"])
    assert "y" in rare[subsample_cells(1000, 10, seed=0, labels=rare)]  # every label keeps a cell
    np.testing.assert_array_equal(subsample_cells(50, 100), np.arange(50))
    assert len(subsample_cells(1000, 10, seed=0)) == 10


def test_baseline_fitted_on_a_stated_sample_of_cells():
    emb_ND = np.random.default_rng(0).normal(size=(300, 6))
    fit = baseline_fitter("pca", 4, max_cells=120)
    with pytest.warns(
        UserWarning, match="pca baseline \\(seed1\\) fitted on a seeded sample of 120 of the 300"
    ):
        got = fit(emb_ND, 1, "seed1")
    expected = baseline_dictionary(emb_ND[subsample_cells(300, 120)], "pca", 4, seed=1)
    np.testing.assert_allclose(got, expected)
    np.testing.assert_allclose(
        baseline_fitter("pca", 4)(emb_ND, 1, "seed1"), baseline_dictionary(emb_ND, "pca", 4, seed=1)
    )


def test_umap_on_a_stratified_sample_above_the_threshold(capsys, monkeypatch):
    # scanpy's layout is scanpy's: a stand-in (the first two embedding dimensions) tests which cells get it
    monkeypatch.setattr(sc.pp, "neighbors", lambda a, **_: None)
    monkeypatch.setattr(sc.tl, "umap", lambda a, **_: a.obsm.__setitem__("X_umap", a.obsm["X_pca"][:, :2]))
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (150, 5)), rng.normal(6, 1, (50, 5))]).astype(np.float32)
    obs = pd.DataFrame(
        {"group": pd.Categorical(["a"] * 150 + ["b"] * 50)}, index=[str(i) for i in range(200)]
    )
    adata = ad.AnnData(obs=obs, obsm={"X_pca": emb})
    shown = cl.runs.steps.umap_cells(adata, use_rep="X_pca", max_cells=80, stratify_key="group", seed=0)
    assert shown.n_obs == 80 and shown.obs["group"].value_counts().to_dict() == {"a": 60, "b": 20}
    assert np.isnan(adata.obsm["X_umap"]).any(axis=1).sum() == 120
    np.testing.assert_array_equal(
        adata.obsm["X_umap"][subsample_cells(200, 80, labels=obs["group"])], shown.obsm["X_umap"]
    )
    assert adata.uns["umap_sample"] == {"n_cells": 80, "max_cells": 80, "seed": 0}
    assert "seeded sample of 80 of the 200 cells" in capsys.readouterr().out
    whole = cl.runs.steps.umap_cells(adata, use_rep="X_pca", max_cells=500, stratify_key="group")
    assert whole is adata and not np.isnan(adata.obsm["X_umap"]).any()


@pytest.mark.parametrize("backed", [False, True])
def test_embed_cells_writes_the_run_store_with_provenance(small, tmp_path, backed):
    """Notebook 01's steps, on cells in memory or left on disk."""
    small.write_h5ad(tmp_path / "cells.h5ad")
    cells = cl.datasets.read(tmp_path / "cells.h5ad", backed=backed)
    run = cl.runs.open_run(tmp_path / "run")
    encoder = cl.runs.steps.load_encoder(run, cells, model="pca", options={"n_comps": 5})
    emb = cl.runs.steps.embed_cells(run, encoder, cells, progress=False)
    path = run.path("embeddings")
    assert path.name == "embeddings.npy" and np.load(path).shape == (small.n_obs, 5)
    np.testing.assert_array_equal(cells.obsm["X_pca"], emb)
    assert read_provenance(path).inputs["encoder"] == run.fingerprint("encoder").fingerprint
    run.write_h5ad("embedded", cells, inputs={"encoder": run.fingerprint("encoder")})
    written = run.read_h5ad("embedded")
    np.testing.assert_array_equal(written.obsm["X_pca"], emb)
    assert (written.X != small.X).nnz == 0
