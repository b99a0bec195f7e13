"""corelib.datasets.check_embedding: a precomputed obsm embedding is checked before anything trains on it."""

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest

import corelib as cl


def _adata(emb=None, n_cells=40, key="X_geneformer"):
    adata = ad.AnnData(np.zeros((n_cells, 3), np.float32))
    if emb is not None:
        adata.obsm[key] = emb
    return adata


def test_a_finite_embedding_of_every_cell_passes():
    emb = np.random.default_rng(0).normal(size=(40, 8))
    assert cl.datasets.check_embedding(_adata(emb), "X_geneformer") == (40, 8)


def test_a_missing_key_lists_the_keys_there_are():
    adata = _adata(np.ones((40, 4)), key="X_scvi")
    with pytest.raises(
        ValueError, match=r"'X_geneformer' is not in the dataset's obsm \(keys there: 'X_scvi'\)"
    ):
        cl.datasets.check_embedding(adata, "X_geneformer")
    with pytest.raises(ValueError, match=r"keys there: none"):
        cl.datasets.check_embedding(_adata(), "X_geneformer")


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "holds 2 NaN or infinite values"), (np.inf, "holds 2 NaN or infinite values")],
)
def test_nan_and_inf_are_counted(value, message):
    emb = np.random.default_rng(0).normal(size=(40, 8))
    emb[[3, 30], [1, 7]] = value
    with pytest.raises(ValueError, match=message):
        cl.datasets.check_embedding(_adata(emb), "X_geneformer")


def test_bad_values_are_found_beyond_the_first_block(monkeypatch):
    monkeypatch.setattr(cl.datasets._embedding, "BLOCK_ROWS", 7)
    emb = np.random.default_rng(0).normal(size=(40, 8))
    emb[39, 0] = np.nan
    with pytest.raises(ValueError, match="holds 1 NaN"):
        cl.datasets.check_embedding(_adata(emb), "X_geneformer")


def test_shape_dimension_and_constant_embeddings_are_refused():
    adata = _adata(np.ones((40, 1)))
    with pytest.raises(ValueError, match="1 dimension"):
        cl.datasets.check_embedding(adata, "X_geneformer")
    with pytest.raises(ValueError, match="the same for every cell"):
        cl.datasets.check_embedding(_adata(np.ones((40, 5))), "X_geneformer")
    strings = _adata(np.array([["a", "b"]] * 40))
    with pytest.raises(ValueError, match="not a numeric cells x dimensions array"):
        cl.datasets.check_embedding(strings, "X_geneformer")


def test_rows_must_be_the_cells_of_obs():
    # anndata itself refuses such an obsm; a reader that bypasses it (a backed or zarr store) could not
    cells = SimpleNamespace(obsm={"X_geneformer": np.ones((39, 4))}, n_obs=40)
    with pytest.raises(ValueError, match="has 39 rows and obs has 40 cells"):
        cl.datasets.check_embedding(cells, "X_geneformer")
