"""PCA baseline encoder: scanpy preprocessing + scikit-learn PCA as the reference; caching; random control."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA

import corelib as cl
import corelib.encoders as enc
from corelib.encoders import pca as enc_pca


def _counts(n_cells: int = 80, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = rng.poisson(rng.gamma(1.0, 2.0, (1, n_genes)) * rng.gamma(2.0, 0.5, (n_cells, 1)))
    X[3] = 0  # a cell without counts stays at the (centred) origin, as in scanpy
    adata = ad.AnnData(
        sp.csr_matrix(X.astype(np.float32)), var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    )
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
def test_pca_equals_scanpy_normalisation_plus_sklearn():
    adata = _counts()
    encoder = enc.load("pca", adata=adata, n_comps=5, device="cpu")
    emb = enc.embed(encoder, adata, progress=False)
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    expected = PCA(n_components=5, svd_solver="arpack", random_state=0).fit_transform(ref.X.toarray())
    np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-4)
    assert encoder.name == "pca" and encoder.dim == 5 and encoder.linear_head() is None


def test_forward_is_differentiable_in_expression():
    adata = _counts()
    encoder = enc.load("pca", adata=adata, n_comps=3)
    x_BG = torch.from_numpy(adata.X[:4].toarray()).requires_grad_(True)
    encoder(x_BG).sum().backward()
    assert x_BG.grad is not None and torch.isfinite(x_BG.grad).all()


def test_fit_uses_the_counts_layer():
    adata = _counts()
    adata.X = np.ones(adata.shape, dtype=np.float32)  # X is not the counts here
    from_layer = enc.embed(
        enc.load("pca", adata=adata, layer="counts", n_comps=3), adata, layer="counts", progress=False
    )
    direct = enc.embed(enc.load("pca", adata=_counts(), n_comps=3), _counts(), progress=False)
    np.testing.assert_allclose(from_layer, direct, rtol=1e-5, atol=1e-5)


def test_run_cache_reuse_and_random_control(tmp_path, monkeypatch):
    adata = _counts()
    run = cl.runs.open_run(tmp_path)
    fitted = cl.runs.steps.load_encoder(run, adata, model="pca", options={"n_comps": 4})
    monkeypatch.setattr(enc_pca, "fit", lambda *a, **k: pytest.fail("refitted although cached"))
    again = cl.runs.steps.load_encoder(run, adata, model="pca", options={"n_comps": 4})
    np.testing.assert_array_equal(
        enc.embed(again, adata, progress=False), enc.embed(fitted, adata, progress=False)
    )
    with pytest.raises(cl.runs.StaleOutputError, match="random_init: False -> True"):
        cl.runs.steps.load_encoder(run, adata, model="pca", options={"n_comps": 4}, random_init=True)
    monkeypatch.undo()
    control = enc.load("pca", adata=adata, n_comps=4, random_init=True, seed=1)
    assert control.name == "pca_random"
    torch.testing.assert_close(
        control.components_DG @ control.components_DG.T, torch.eye(4), atol=1e-5, rtol=0
    )
    assert not np.allclose(
        enc.embed(control, adata, progress=False), enc.embed(fitted, adata, progress=False), atol=1e-2
    )


def test_too_many_components_is_a_clear_error():
    with pytest.raises(ValueError, match="n_comps=100"):
        enc.load("pca", adata=_counts(), n_comps=100)


def test_random_control_of_a_run_is_its_own_encoder_with_new_weights(tmp_path):
    """Notebook 04's null: the run's cached encoder with its weights redrawn, not one rebuilt from params."""
    adata = _counts()
    run = cl.runs.open_run(tmp_path)
    encoder = cl.runs.steps.load_encoder(run, adata, model="pca", options={"n_comps": 4})
    trained = enc.embed(encoder, adata, progress=False)
    run.write_h5ad("embedded", adata, inputs={"encoder": run.fingerprint("encoder")})
    control = cl.runs.steps.random_control_embeddings(run, adata, seed=3, progress=False)
    assert control.shape == trained.shape and not np.allclose(control, trained, atol=1e-3)
    again = cl.runs.steps.random_control_embeddings(run, adata, seed=3, progress=False)
    np.testing.assert_array_equal(again, control)
    expected = enc.embed(encoder.random_control(3), adata.copy(), progress=False)
    np.testing.assert_array_equal(control, expected)
