"""Per-unit work on a 2-worker Dask ``LocalCluster`` equals the single-process path (corelib.cluster)."""

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FLOAT32_ATOL, FLOAT32_RTOL, toy_sae, toy_scvi_encoder
from tqdm.auto import tqdm

import corelib as cl
from corelib.cluster import dask_client, map_chunks

GENES_PATH = Path(__file__).resolve().parents[1] / "corelib" / "datasets" / "pbmc3k" / "genes.txt.gz"
ATTRIBUTION = dict(n_prototypes=3, n_counterfactuals=2, device="cpu", progress=False, batch_size=1024)
CONCEPTS = [0, 1, 2, 3, 4]  # a few concepts: each task gets one or two


@pytest.fixture(scope="module")
def client():
    client = dask_client({"n_workers": 2, "threads_per_worker": 1})
    yield client
    client.close()


@pytest.fixture(scope="module")
def scvi_sae_data():
    """The bundled pbmc68k_reduced counts (sparse) through a random-weight scVI encoder and a toy SAE."""
    adata = cl.datasets.load("pbmc68k_reduced")
    enc = toy_scvi_encoder(n_genes=adata.n_vars)
    with torch.no_grad():
        emb = enc(torch.as_tensor(adata.X.toarray())).numpy()
    return enc, toy_sae(emb.shape[1], n_concepts=10, k=3), adata.X, emb


def _assert_same_attribution(dask, local):
    for field in ["genes", "units", "prototypes", "counterfactuals"]:
        np.testing.assert_array_equal(getattr(dask, field), getattr(local, field))
    pd.testing.assert_frame_equal(dask.status, local.status)
    assert dask.kind == local.kind
    assert np.array_equal(np.isnan(dask.scores), np.isnan(local.scores))
    np.testing.assert_allclose(dask.scores, local.scores, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    np.testing.assert_allclose(dask.activation, local.activation, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_concept_and_neuron_attribution_on_dask_equal_one_process(client, scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    kw = dict(concepts=CONCEPTS, **ATTRIBUTION)
    local = cl.tl.attribution.attribute_concepts(enc, sae, X, emb, **kw)
    dask = cl.tl.attribution.attribute_concepts(enc, sae, X, emb, client=client, **kw)
    assert local.attributed.sum() >= 3
    _assert_same_attribution(dask, local)
    local = cl.tl.attribution.attribute_neurons(enc, X, emb, neurons=[0, 5], **ATTRIBUTION)
    dask = cl.tl.attribution.attribute_neurons(enc, X, emb, neurons=[0, 5], client=client, **ATTRIBUTION)
    _assert_same_attribution(dask, local)


class _Recorder:
    """A client that records the arguments of every submitted task."""

    def __init__(self, client):
        self.client, self.submitted = client, []

    def submit(self, func, *args, **kwargs):
        self.submitted.append(args)
        return self.client.submit(func, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_tasks_receive_only_their_units_rows(client, scvi_sae_data):
    enc, sae, X, emb = scvi_sae_data
    recorder = _Recorder(client)
    attr = cl.tl.attribution.attribute_concepts(
        enc, sae, X, emb, concepts=CONCEPTS, client=recorder, **ATTRIBUTION
    )
    assert len(recorder.submitted) > 1
    seen = []
    for _model, X_KM, protos_UP, cfs_UPC, columns_U in recorder.submitted:
        u = np.flatnonzero(np.isin(attr.units, columns_U))
        cells = np.unique(np.concatenate([attr.prototypes[u].ravel(), attr.counterfactuals[u].ravel()]))
        assert X_KM.shape == (len(cells), X.shape[1]) and len(cells) < X.shape[0] / 4
        # the rows of the sparse input, kept sparse
        np.testing.assert_array_equal(X_KM.toarray(), X[cells].toarray())
        np.testing.assert_array_equal(cells[protos_UP], attr.prototypes[u])
        np.testing.assert_array_equal(cells[cfs_UPC], attr.counterfactuals[u])
        seen += list(columns_U)
    assert sorted(seen) == sorted(attr.units[attr.attributed])


def test_deg_on_dask_equals_one_process(client, scvi_sae_data):
    """Concepts (sparse codes, raw counts + genes) and neurons (dense, their own inactive cells; a
    log-normalised AnnData): the same tables; the test tasks get only their units' group rows."""
    enc, sae, X, emb = scvi_sae_data
    genes = [f"g{i}" for i in range(X.shape[1])]
    codes = cl.tl.sae.encode(sae, emb)
    kw = dict(max_cells=100, progress=False)
    local = cl.tl.deg.deg_units(X, codes, emb, genes=genes, **kw)
    recorder = _Recorder(client)
    dask = cl.tl.deg.deg_units(X, codes, emb, genes=genes, client=recorder, **kw)
    assert local["unit"].nunique() >= 3
    pd.testing.assert_frame_equal(dask, local)
    tables = [args for args in recorder.submitted if len(args) == 3 and isinstance(args[2], list)]
    assert tables and all(rows.shape[0] <= 2 * 100 * len(groups) for _, rows, groups in tables)
    lognorm = cl.tl.units.log_normalise(X, genes)
    inactive = cl.tl.units.neuron_inactive(emb)
    local = cl.tl.deg.deg_units(lognorm, emb, emb, inactive, units=[0, 3, 5], **kw)
    dask = cl.tl.deg.deg_units(lognorm, emb, emb, inactive, units=[0, 3, 5], client=client, **kw)
    assert len(local)
    pd.testing.assert_frame_equal(dask, local)


def test_map_chunks_keeps_unit_order_and_counts_progress(client):
    with tqdm(total=23, file=io.StringIO()) as bar:
        out = map_chunks(
            client, np.add, list(range(23)), lambda c: (np.asarray(c),), 100, bar=bar, max_chunk=2
        )
        assert bar.n == 23
    assert all(len(chunk) <= 2 for chunk, _ in out)
    np.testing.assert_array_equal(np.concatenate([r for _, r in out]), np.arange(23) + 100)


@pytest.fixture(scope="module")
def gsea_inputs():
    with gzip.open(GENES_PATH, "rt") as fh:
        genes = [line.strip() for line in fh if line.strip()]
    sets = cl.tl.enrichment.load_gene_sets(cl.tl.enrichment.GO_BP, genes=genes)
    rng = np.random.default_rng(0)
    scores = np.zeros((len(genes), 5))
    for j in range(4):  # sparse attribution-like scores; the last unit is all zeros (skipped)
        idx = rng.choice(len(genes), 60, replace=False)
        scores[idx, j] = rng.exponential(0.1, 60)
    members = [genes.index(g) for g in sets[sorted(sets)[0]]]
    scores[members, 0] += 1.0  # a planted set: a strong label
    return pd.DataFrame(scores, index=genes, columns=[3, 7, 11, 12, 20]), {
        k: sets[k] for k in sorted(sets)[::10]
    }


def test_gsea_on_dask_equals_one_process(client, gsea_inputs):
    scores, sets = gsea_inputs
    kw = dict(permutations=50, seed=2, progress=False)
    local = cl.tl.enrichment.gsea(scores, sets, n_jobs=1, **kw)
    dask = cl.tl.enrichment.gsea(scores, sets, client=client, **kw)
    assert local.units["term"].ne("").sum() >= 3
    pd.testing.assert_frame_equal(dask.units, local.units, rtol=FLOAT32_RTOL)
    pd.testing.assert_frame_equal(dask.terms, local.terms, rtol=FLOAT32_RTOL)


def test_unreachable_scheduler_names_the_fix():
    with pytest.raises(
        ConnectionError, match="No Dask scheduler answered at tcp://127.0.0.1:9.*scheduler_address"
    ):
        dask_client({"scheduler_address": "tcp://127.0.0.1:9", "timeout": 1})


def test_dask_option_checks():
    assert dask_client(None) is None
    with pytest.raises(TypeError, match="n_workers"):
        dask_client(2)
    with pytest.raises(ValueError, match="n_workers cannot be set with scheduler_address"):
        dask_client({"scheduler_address": "tcp://127.0.0.1:9", "n_workers": 2})
