"""The README's "Use it from your own notebook" snippet runs as written and fills the documented slots."""

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    section = README.read_text().split("## Use it from your own notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_annotates_concepts():
    namespace: dict = {}
    exec(compile(_snippet(), "README.md", "exec"), namespace)
    adata = namespace["adata"]
    codes = adata.obsm["X_concepts"]
    assert sp.issparse(codes) and codes.shape == (adata.n_obs, 64)
    assert (np.diff(codes.indptr) <= 4).all()  # at most k concepts per cell
    assert adata.uns["concepts"]["params"]["use_rep"] == "X_pca"
    scores = adata.varm["concepts_attribution"]
    assert scores.shape == (adata.n_vars, 64)
    assert 0 < (~np.isnan(scores).all(axis=0)).sum() <= 6
    annotation = adata.uns["concepts"]["annotation"]
    assert set(annotation["annotation"]) <= {"strong", "weak", "none"}
    assert annotation["qval"].dropna().between(0, 1).all()  # the calibrated annotation's q-value
    assert len(annotation) == (~np.isnan(scores).all(axis=0)).sum()
    calls = adata.uns["concepts"]["metadata"]
    assert len(calls) == 64 and {"cell_type_top", "call"} <= set(calls.columns)
    deg = adata.uns["concepts"]["deg"]
    attributed = set(np.flatnonzero(~np.isnan(scores).all(axis=0)))
    assert set(deg["unit"]) <= attributed and (deg["pval_adj"] <= 5e-3).all()
