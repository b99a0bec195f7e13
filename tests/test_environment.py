"""The declared environment: environment.yml matches pyproject.toml; what they resolve to works together."""

import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= {d for d in extra if not d.startswith("corelib[")}  # `all` names the other extras
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {d for d in pip_section if d != "-e ."}
    assert listed == declared, (
        f"only in pyproject: {declared - listed}; only in environment.yml: {listed - declared}"
    )
    assert any(str(d).startswith("python>=3.11") for d in env["dependencies"])


def test_notebook01_neighbours_and_umap_past_the_exact_knn_limit(monkeypatch):
    """Notebook 01's embedding-space step on more cells than scanpy computes exact neighbours for.

    From 8,192 cells (euclidean; 4,096 otherwise) ``sc.pp.neighbors`` switches from brute force to
    pynndescent, whose graph scanpy reads with ``.getnnz()``: pynndescent 0.7 returns a scipy sparse array
    without that method and the call crashed on a 50,000-cell dataset (hence the cap in pyproject.toml).
    Slow: pynndescent's numba functions compile on first use (40-90 s on 2 shared cores; searching: 2 s).
    """
    import scanpy as sc
    from pynndescent import PyNNDescentTransformer
    from sklearn.neighbors import NearestNeighbors

    graphs = []  # what pynndescent hands to scanpy (the real call, only recorded)
    real_fit_transform = PyNNDescentTransformer.fit_transform
    monkeypatch.setattr(
        PyNNDescentTransformer,
        "fit_transform",
        lambda self, *a, **k: graphs.append(real_fit_transform(self, *a, **k)) or graphs[-1],
    )

    n_cells, n_neighbors = 8_192, 15
    rng = np.random.default_rng(0)
    centres_KD = rng.normal(scale=4.0, size=(8, 10))
    emb_ND = (centres_KD[rng.integers(0, 8, n_cells)] + rng.normal(size=(n_cells, 10))).astype(np.float32)
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]), obsm={"X_scvi": emb_ND})

    sc.pp.neighbors(adata, use_rep="X_scvi", random_state=0)  # the calls of notebook 01, section 4
    sc.tl.umap(adata, random_state=0)

    assert len(graphs) == 1  # the graph came from pynndescent, not from brute force
    # an independent reference: exact neighbours (self excluded); pynndescent's are approximate
    exact = NearestNeighbors(n_neighbors=n_neighbors - 1).fit(emb_ND).kneighbors(return_distance=False)
    graph = adata.obsp["distances"].tocsr()
    found = np.split(graph.indices, graph.indptr[1:-1])
    recall = np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])
    assert recall > 0.9
    assert adata.obsm["X_umap"].shape == (n_cells, 2) and np.isfinite(adata.obsm["X_umap"]).all()
