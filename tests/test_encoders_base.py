"""Gene alignment, embed(), load() dispatch and the safetensors + JSON checkpoint format."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import FLOAT32_ATOL, FLOAT32_RTOL
from test_encoders_scgpt import _upstream_state, _write_checkpoint

import corelib.encoders as enc
from corelib.encoders.base import reinitialise


def _adata(n_cells: int = 30, genes: list[str] | None = None, seed: int = 0) -> ad.AnnData:
    genes = genes or [f"g{i}" for i in range(12)]
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.poisson(2.0, (n_cells, len(genes))).astype(np.float32))
    return ad.AnnData(X, var=pd.DataFrame(index=genes))


def test_align_reorders_and_zero_fills_missing_genes():
    adata = _adata()
    model_genes = ["g3", "absent1", "g0", "g11", "absent2"]
    X, n_missing = enc.align(adata, model_genes, min_overlap=0.5)
    dense = adata.X.toarray()
    assert n_missing == 2
    assert sp.issparse(X) and X.shape == (adata.n_obs, 5)
    expected = np.stack(
        [dense[:, 3], np.zeros(adata.n_obs), dense[:, 0], dense[:, 11], np.zeros(adata.n_obs)], 1
    )
    np.testing.assert_array_equal(X.toarray(), expected)
    X_dense, n_dense = enc.align(ad.AnnData(dense, var=adata.var), model_genes)
    assert isinstance(X_dense, np.ndarray) and n_dense == 2
    np.testing.assert_array_equal(X_dense, expected)


def test_align_uses_var_column_and_layer():
    adata = _adata()
    adata.var["feature_id"] = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.layers["counts"] = adata.X * 2
    X, n_missing = enc.align(adata, ["ENSG00000000002"], layer="counts", var_key="feature_id", min_overlap=1)
    assert n_missing == 0
    np.testing.assert_array_equal(X.toarray()[:, 0], 2 * adata.X.toarray()[:, 2])


def test_align_low_overlap_names_the_problem_and_fix():
    adata = _adata()
    ensembl = [f"ENSG{i:011d}" for i in range(10)]
    with pytest.raises(ValueError, match=r"only 0 of the model's 10 genes.*Ensembl") as err:
        enc.align(adata, ensembl)
    # plain names, not Python reprs of lists of numpy strings
    assert "uses e.g. ENSG00000000000, ENSG00000000001, ENSG00000000002, adata has e.g. g0, g1, g2" in str(
        err.value
    )
    assert "model_options: {gene_id_column: <column>}" in str(err.value)
    with pytest.raises(ValueError, match="need at least 5"):
        enc.align(adata, ["g0", "g1", "g2", "g3", "x", "y", "z", "w", "v", "u"], min_overlap=5)
    enc.align(adata, ["g0", "g1", "g2", "g3", "x", "y", "z", "w", "v", "u"], min_overlap=4)


@pytest.mark.parametrize(
    ("bad", "message"), [("duplicate", "duplicate"), ("nan", "NaN"), ("negative", "negative")]
)
def test_align_rejects_bad_input(bad, message):
    adata = _adata()
    if bad == "duplicate":
        adata.var_names = ["g0", *adata.var_names[1:-1], "g0"]
    else:
        adata.X.data[0] = np.nan if bad == "nan" else -1.0
    with pytest.raises(ValueError, match=message):
        enc.align(adata, ["g0", "g1"], min_overlap=1)


def test_align_missing_layer_lists_layers():
    with pytest.raises(ValueError, match="no layer 'counts'"):
        enc.align(_adata(), ["g0"], layer="counts", min_overlap=1)


def test_load_rejects_unknown_model_and_option():
    with pytest.raises(ValueError, match=r"known models: pca, precomputed, scgpt, scvi\."):
        enc.load("geneformer")
    with pytest.raises(
        ValueError, match="unknown model_options n_components for model 'pca'; accepted: n_comps."
    ):
        enc.load("pca", adata=_adata(), n_components=3)
    with pytest.raises(ValueError, match="pass adata"):
        enc.load("pca")


def test_embed_writes_obsm_and_matches_forward():
    adata = _adata(n_cells=25)
    pca = enc.load("pca", adata=adata, n_comps=3, device="cpu")
    emb = enc.embed(pca, adata, batch_size=7, progress=False)
    assert emb.dtype == np.float32 and emb.shape == (25, 3)
    np.testing.assert_array_equal(adata.obsm["X_pca"], emb)
    with torch.no_grad():
        direct = pca(torch.from_numpy(adata.X.toarray())).numpy()
    np.testing.assert_allclose(emb, direct, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)  # batches of 7 vs one of 25
    assert adata.uns["embed"]["key"] == "X_pca" and adata.uns["embed"]["n_genes_missing"] == 0
    assert adata.uns["embed"]["dim"] == 3 and adata.uns["embed"]["n_genes_model"] == 12
    assert adata.uns["embed"]["layer"] == "X"
    adata.uns["dataset"] = {
        "name": "toy",
        "layer": "counts",
        "organism": "mouse",
    }  # corelib.datasets.load moved layers["counts"] to X and recorded the organism setting
    enc.embed(pca, adata, key_added="X_custom", progress=False)
    assert "X_custom" in adata.obsm and adata.uns["embed"]["dataset"] == "toy"
    assert adata.uns["embed"]["layer"] == "counts"
    assert adata.uns["embed"]["organism"] == "mouse"  # notebook 01's summary says it


def test_embed_warns_on_missing_genes():
    adata = _adata()
    pca = enc.load("pca", adata=adata, n_comps=3)
    smaller = adata[:, adata.var_names[:-2]].copy()
    with pytest.warns(UserWarning, match="2 of the model's 12 genes"):
        enc.embed(pca, smaller, progress=False)


def test_save_restore_round_trip(tmp_path):
    adata = _adata()
    pca = enc.load("pca", adata=adata, n_comps=4)
    enc.save(pca, tmp_path / "ckpt")
    back = enc.restore(tmp_path / "ckpt", device="cpu")
    assert (back.name, back.genes, back.dim) == (pca.name, pca.genes, pca.dim)
    np.testing.assert_array_equal(
        enc.embed(back, adata, progress=False), enc.embed(pca, adata, progress=False)
    )
    assert enc.load("pca", path=tmp_path / "ckpt").genes == pca.genes
    with pytest.raises(ValueError, match="holds a 'pca' encoder"):
        enc.load("scvi", path=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="no encoder checkpoint"):
        enc.restore(tmp_path / "empty")


def test_reinitialise_is_seeded():
    a, b, c = (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)) for _ in range(3))
    reinitialise(a, 1)
    reinitialise(b, 1)
    reinitialise(c, 2)
    assert torch.equal(a[0].weight, b[0].weight)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_embed_warns_on_non_integer_expression():
    adata = _adata()
    pca = enc.load("pca", adata=adata, n_comps=3)
    adata.X = adata.X * 0.5
    with pytest.warns(UserWarning, match="raw counts"):
        enc.embed(pca, adata, progress=False)


#: The kinds of model source load() takes; a corelib checkpoint is written by save() from the source named.
CHECKPOINT_SOURCES = {
    "corelib checkpoint of scvi": "scvi-tools directory",
    "corelib checkpoint of scgpt": "scGPT directory",
    "corelib checkpoint of pca": "pca fitted",
}
SOURCES = ["scvi-tools directory", "scvi trained here", "scGPT directory", "pca fitted", *CHECKPOINT_SOURCES]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, dict]:
    """``load()`` keyword arguments for each kind of source: ``load(**kw)`` is the trained model."""
    scvi = pytest.importorskip("scvi")
    root = tmp_path_factory.mktemp("sources")
    counts = _adata(n_cells=60)
    registered = counts.copy()
    scvi.model.SCVI.setup_anndata(registered)
    scvi.settings.seed = 0
    model = scvi.model.SCVI(registered, n_latent=3, n_hidden=8)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    model.save(str(root / "scvi-tools"))
    found = {
        "scvi-tools directory": {"model": "scvi", "path": root / "scvi-tools", "trust_pickle": True},
        "scvi trained here": {"model": "scvi", "adata": counts, "epochs": 1, "n_latent": 3, "n_hidden": 8},
        "scGPT directory": {"model": "scgpt", "path": _write_checkpoint(root / "scgpt", _upstream_state())},
        "pca fitted": {"model": "pca", "adata": counts, "n_comps": 4},
    }
    for kind, source in CHECKPOINT_SOURCES.items():
        trained = enc.load(**found[source], progress=False)
        found[kind] = {"model": found[source]["model"], "path": enc.save(trained, root / kind)}
    return found


@pytest.mark.parametrize("kind", SOURCES)
def test_random_control_has_random_weights_whatever_the_source(sources, kind):
    kw = {**sources[kind], "device": "cpu", "progress": False}
    trained = enc.load(**kw)
    control = enc.load(**kw, random_init=True, seed=5)
    assert control.name == f"{trained.name}_random" and control.genes == trained.genes
    weights, trained_weights = control.state_dict(), trained.state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in trained_weights.items()}
    matrices = [k for k, v in trained_weights.items() if v.ndim == 2]
    assert matrices and not any(torch.equal(weights[k], trained_weights[k]) for k in matrices), matrices
    twin = enc.load(**kw, random_init=True, seed=5).state_dict()
    assert all(torch.equal(weights[k], twin[k]) for k in weights)  # drawn under the seed
    if kind in CHECKPOINT_SOURCES:  # the same control as the checkpoint's own source gives
        direct = enc.load(**sources[CHECKPOINT_SOURCES[kind]], device="cpu", random_init=True, seed=5)
        assert all(torch.equal(weights[k], direct.state_dict()[k]) for k in weights)
