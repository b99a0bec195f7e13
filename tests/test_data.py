"""corelib.datasets: bundled datasets, reading user files, and every validation error."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import corelib as cl


@pytest.fixture(scope="module")
def pbmc3k():
    return cl.datasets.load_dataset("pbmc3k")


def test_pbmc3k_is_the_documented_dataset(pbmc3k):
    assert pbmc3k.shape == (2638, 2000)
    assert sp.issparse(pbmc3k.X)
    values = pbmc3k.X.data
    assert np.all(values == np.round(values)) and values.min() > 0
    assert pbmc3k.obs["cell_type"].nunique() == 9
    assert (pbmc3k.obs["cell_type"] == pbmc3k.obs["classified"]).all()
    assert pbmc3k.var_names.is_unique and "LYZ" in pbmc3k.var_names


def test_pbmc3k_counts_rebuild_the_shipped_library_sizes(pbmc3k):
    # The 2,000 variable genes carry part of each cell's UMIs: never more than the library size over all genes.
    per_cell = np.asarray(pbmc3k.X.sum(axis=1)).ravel()
    assert np.all(per_cell <= pbmc3k.obs["nCount_RNA"].to_numpy() + 1e-6)


def test_pbmc68k_reduced_counts_invert_scanpys_normalisation():
    import scanpy as sc

    adata = cl.datasets.load_dataset("pbmc68k_reduced")
    assert adata.shape == (700, 765)
    assert adata.obs["cell_type"].nunique() == 10
    src = sc.datasets.pbmc68k_reduced()
    rebuilt = np.log1p(adata.X.toarray() / src.obs["n_counts"].to_numpy()[:, None] * 1e4)
    # 3-decimal rounding of the shipped values + integer rounding of counts: close, not exact.
    assert np.median(np.abs(rebuilt - src.raw.X.toarray())[src.raw.X.toarray() > 0]) < 0.02


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="pbmc3k, pbmc68k_reduced"):
        cl.datasets.load_dataset("pbmc4k")


def _write(tmp_path, X, obs=None, var_names=None, layers=None):
    n, m = X.shape
    adata = ad.AnnData(
        X=X,
        obs=obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=var_names or [f"g{j}" for j in range(m)]),
        layers=layers,
    )
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    return path


def test_read_user_file_with_counts_layer(tmp_path):
    counts = np.arange(12, dtype=np.float32).reshape(4, 3)
    obs = pd.DataFrame({"celltype": list("aabb")}, index=[f"c{i}" for i in range(4)])
    path = _write(tmp_path, np.log1p(counts), obs=obs, layers={"counts": counts})
    adata = cl.datasets.read(path, layer="counts", label_key="celltype", required_columns=["celltype"])
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert list(adata.obs["cell_type"]) == list("aabb")


@pytest.mark.parametrize(
    ("X", "kwargs", "message"),
    [
        (np.array([[1.0, np.nan], [0, 1]]), {}, "NaN or infinite"),
        (np.array([[1.0, np.inf], [0, 1]]), {}, "NaN or infinite"),
        (np.array([[1.0, -1.0], [0, 1]]), {}, "negative values"),
        (np.array([[1.5, 1.0], [0, 1]]), {}, "non-integer values"),
        (np.array([[1.0, 1.0], [0, 1]]), {"required_columns": ["tissue"]}, "'tissue' is not in adata.obs"),
        (np.array([[1.0, 1.0], [0, 1]]), {"layer": "raw"}, "Layer 'raw' not found"),
        (np.array([[1.0, 1.0], [0, 0], [0, 0]]), {}, r"2 of 3 cells have no counts at all \(e\.g\. c1, c2\)"),
    ],
)
def test_read_rejects_bad_input_with_the_fix(tmp_path, X, kwargs, message):
    path = _write(tmp_path, X.astype(np.float32))
    with pytest.raises(ValueError, match=message):
        cl.datasets.read(path, **kwargs)


def test_non_integer_values_are_fine_when_counts_are_not_needed(tmp_path):
    path = _write(tmp_path, np.array([[1.5, 1.0], [0, 1]], dtype=np.float32))
    assert cl.datasets.read(path, counts=False).shape == (2, 2)


def test_duplicate_gene_names_are_rejected(tmp_path):
    adata = ad.AnnData(X=np.ones((2, 2), dtype=np.float32))
    adata.var_names = ["A", "A"]
    with pytest.raises(
        ValueError, match="duplicate gene names.*var_names_make_unique.*duplicate_symbols: sum"
    ):
        cl.datasets.validate(adata)


def test_empty_data_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        cl.datasets.validate(ad.AnnData(X=np.zeros((0, 3), dtype=np.float32)))


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file"):
        cl.datasets.read(tmp_path / "nope.h5ad")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="not an .h5ad"):
        cl.datasets.read(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="neither a bundled dataset"):
        cl.datasets.load("pbmc4k")


def test_cell_cycle_genes_are_the_tirosh_lists_with_alias_fallback(pbmc3k):
    s_genes, g2m_genes = cl.datasets.cell_cycle_genes()
    assert (len(s_genes), len(g2m_genes)) == (43, 54)
    assert s_genes[0] == "MCM5" and g2m_genes[0] == "HMGB2"
    s_present, g2m_present = cl.datasets.cell_cycle_genes(["MCM5", "CENPU", "DTL", "TNFSF13B", "HMGB2"])
    # MLF1IP is found under its new symbol; DTL stays DTL (it is also an alias of TNFSF13B: never swapped).
    assert s_present == ["MCM5", "DTL", "CENPU"] or s_present == ["MCM5", "CENPU", "DTL"]
    assert "TNFSF13B" not in s_present
    assert g2m_present == ["HMGB2"]


def test_gene_descriptions_and_alias_fallback():
    table = cl.datasets.gene_descriptions()
    assert len(table) > 20000
    described = cl.datasets.describe_genes(["CD3E", "MLF1IP", "NOT_A_GENE"])
    assert described["CD3E"] == "CD3e molecule"
    assert "centromere protein U" in described["MLF1IP"]
    assert described["NOT_A_GENE"] == ""


def _ensembl_file(tmp_path, symbols=("CD3E", "MS4A1", "LYZ", "LYZ")):
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    adata = ad.AnnData(
        X=np.ones((3, len(ids)), dtype=np.float32),
        obs=pd.DataFrame(index=["a", "b", "c"]),
        var=pd.DataFrame({"feature_name": list(symbols)}, index=ids),
    )
    path = tmp_path / "ensembl.h5ad"
    adata.write_h5ad(path)
    return path, ids


def test_ensembl_var_names_stop_at_load_with_the_fix(tmp_path):
    path, _ = _ensembl_file(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"Ensembl ids .*`gene_symbols_key: feature_name` \(columns of adata.var: feature_name\)",
    ):
        cl.datasets.load(path)


def test_gene_symbols_key_makes_symbols_the_var_names_and_keeps_the_ids(tmp_path):
    from corelib.encoders import align

    path, ids = _ensembl_file(tmp_path)
    with pytest.warns(
        UserWarning,
        match=r"'feature_name': 1 of 4 genes repeat a symbol already used \(e\.g\. LYZ\).*duplicate_symbols: sum",
    ):
        adata = cl.datasets.load(path, gene_symbols_key="feature_name")
    assert list(adata.var_names) == ["CD3E", "MS4A1", "LYZ", "LYZ-1"]
    assert list(adata.var["feature_id"]) == ids
    # a model with Ensembl genes (the CELLxGENE Census scVI) still finds them, through var["feature_id"]
    X, n_missing = align(adata, ids[::-1], var_key="feature_id", min_overlap=1)
    assert n_missing == 0 and X.shape == (3, 4)
    adata.write_h5ad(tmp_path / "again.h5ad")  # notebook 01 writes it to the run directory
    with pytest.raises(
        ValueError, match="gene_symbols_key 'symbol' is not a column of adata.var; its columns: feature_name"
    ):
        cl.datasets.load(path, gene_symbols_key="symbol")


def test_looks_like_ensembl():
    assert cl.datasets.looks_like_ensembl(["ENSG00000000003", "ENSMUSG00000000001"])
    assert not cl.datasets.looks_like_ensembl(["CD3E", "ENSG00000000003"])
    assert not cl.datasets.looks_like_ensembl([])


def test_truncated_or_garbage_h5ad_names_the_file_and_the_cause(tmp_path):
    good = _write(tmp_path, np.ones((4, 3), dtype=np.float32))
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(good.read_bytes()[:1000])
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_text("not an HDF5 file")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match=rf"Cannot read {path} .*truncated .*download it again"):
            cl.datasets.read(path)


def test_messages_list_names_as_plain_text(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"bundled name \(pbmc3k, pbmc68k_reduced, pbmc3k_planted\)\.$"
    ):
        cl.datasets.read(tmp_path / "nope.h5ad")
    path = _write(tmp_path, np.ones((2, 2), dtype=np.float32), layers={"spliced": np.ones((2, 2))})
    with pytest.raises(ValueError, match="available layers: spliced. Set the counts layer"):
        cl.datasets.read(path, layer="counts")


# --- the organism setting -------------------------------------------------------------------------------
def _mouse_file(tmp_path, pbmc3k):
    """pbmc3k's first 300 genes written as mouse symbols (CD3E -> Cd3e)."""
    adata = pbmc3k[:, :300].copy()
    adata.var_names = [g[:1] + g[1:].lower() for g in adata.var_names]
    del adata.uns["dataset"]
    adata.write_h5ad(tmp_path / "mouse.h5ad")
    return tmp_path / "mouse.h5ad"


def test_organism_is_recorded_checked_and_validated(tmp_path, pbmc3k):
    assert cl.datasets.load("pbmc68k_reduced").uns["dataset"]["organism"] == "human"
    path = _mouse_file(tmp_path, pbmc3k)
    with pytest.warns(
        UserWarning,
        match=r"mouse: 100% of the 300 genes are written like mouse symbols .*set organism: mouse",
    ):
        cl.datasets.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cl.datasets.load(path, organism="mouse").uns["dataset"]["organism"] == "mouse"
    with pytest.raises(ValueError, match="organism must be one of human, mouse, got 'rat'"):
        cl.datasets.load("pbmc3k", organism="rat")


def test_cell_cycle_genes_follow_the_organism(capsys):
    from corelib.datasets._organism import note_mapping

    note_mapping.cache_clear()
    s_genes, g2m_genes = cl.datasets.cell_cycle_genes(organism="mouse")
    assert (s_genes[0], g2m_genes[0], len(s_genes), len(g2m_genes)) == ("Mcm5", "Hmgb2", 43, 54)
    names = ["Mcm5", "Cenpu", "Hmgb2", "MCM5"]
    # mouse: the human list by case, aliases included (MLF1IP -> CENPU -> Cenpu); human: exact symbols only
    assert cl.datasets.cell_cycle_genes(names, organism="mouse") == (["Mcm5", "Cenpu"], ["Hmgb2"])
    assert cl.datasets.cell_cycle_genes(names) == (["MCM5"], [])
    printed = capsys.readouterr().out
    assert (
        printed.count("the Tirosh cell-cycle genes are mapped to mouse symbols by case (CD3E -> Cd3e)") == 1
    )


def test_gene_descriptions_follow_the_organism():
    described = cl.datasets.describe_genes(["Cd3e", "Mlf1ip", "Foo"], organism="mouse")
    assert described.to_dict() == {
        "Cd3e": "CD3e molecule (NCBI symbol CD3E)",
        "Mlf1ip": "centromere protein U (NCBI symbol CENPU)",
        "Foo": "",
    }
    with pytest.warns(
        UserWarning,
        match=r"None of the 2 genes has an NCBI description .* under organism human\. .*set organism: mouse",
    ):
        assert cl.datasets.describe_genes(["Cd3e", "Cd3d"]).tolist() == ["", ""]
    with pytest.raises(ValueError, match="organism must be one of human, mouse"):
        cl.datasets.describe_genes(["CD3E"], organism="Mouse")


# --- cells without counts -------------------------------------------------------------------------------
def test_drop_empty_cells_drops_them_with_a_count(tmp_path, capsys):
    path = _write(tmp_path, np.array([[1.0, 1.0], [0, 0], [2, 0], [0, 0]], dtype=np.float32))
    with pytest.raises(
        ValueError, match="2 of 4 cells have no counts .*set drop_empty_cells: true in the params file"
    ):
        cl.datasets.load(path)
    adata = cl.datasets.load(path, drop_empty_cells=True)
    assert list(adata.obs_names) == ["c0", "c2"]
    np.testing.assert_array_equal(adata.X.toarray(), [[1, 1], [2, 0]])
    assert (
        "drop_empty_cells: dropped 2 of 4 cells without a single count (e.g. c1, c3)"
        in capsys.readouterr().out
    )
    with pytest.raises(ValueError, match="drop_empty_cells needs the counts in memory.*set backed: false"):
        cl.datasets.load(path, drop_empty_cells=True, backed=True)


# --- genes sharing a symbol -----------------------------------------------------------------------------
def _brute_force_sum(X: np.ndarray, symbols: list[str]) -> pd.DataFrame:
    """Counts per symbol, one column per distinct symbol in order of first appearance, by a loop."""
    out = {}
    for j, symbol in enumerate(symbols):
        out[symbol] = out.get(symbol, 0) + X[:, j]
    return pd.DataFrame(out)


def _symbols_file(tmp_path, adata, symbols):
    out = adata.copy()
    out.var = pd.DataFrame({"symbol": symbols}, index=[f"ENSG{j:011d}" for j in range(out.n_vars)])
    out.uns.pop("dataset", None)
    out.write_h5ad(tmp_path / "symbols.h5ad")
    return tmp_path / "symbols.h5ad"


def test_duplicate_symbols_sum_equals_a_brute_force_sum(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = sp.random(30, 8, density=0.4, random_state=0, data_rvs=lambda n: rng.integers(1, 9, n)).astype(
        np.float32
    )
    symbols = ["A", "B", "A", "C", "B", "A", "D", "E"]
    adata = ad.AnnData(X=X.tocsr(), obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]))
    adata.layers["lognorm"] = np.log1p(X.toarray())
    path = _symbols_file(tmp_path, adata, symbols)
    summed = cl.datasets.load(path, gene_symbols_key="symbol", duplicate_symbols="sum", drop_empty_cells=True)
    expected = _brute_force_sum(X.toarray(), symbols).loc[summed.obs_names.str[1:].astype(int)]
    assert sp.issparse(summed.X) and summed.X.format == "csr"
    assert list(summed.var_names) == list(expected.columns) == ["A", "B", "C", "D", "E"]
    np.testing.assert_array_equal(summed.X.toarray(), expected.to_numpy())
    assert list(summed.var["feature_id"]) == [f"ENSG{j:011d}" for j in (0, 1, 3, 6, 7)]  # each symbol's first
    assert not summed.layers  # a log layer cannot be summed: dropped, and said
    printed = capsys.readouterr().out
    assert "duplicate_symbols sum: 5 genes share a symbol with another gene (e.g. A, B); " in printed
    assert "8 -> 5 genes" in printed and "Dropped, as only X is summed: layers (lognorm)" in printed
    # the same on the lazy (backed) matrix, block by block
    lazy = cl.datasets.read(path, gene_symbols_key="symbol", duplicate_symbols="sum", backed=True)
    np.testing.assert_array_equal(
        lazy.X.compute().toarray(), _brute_force_sum(X.toarray(), symbols).to_numpy()
    )
    with pytest.raises(ValueError, match="duplicate_symbols must be 'suffix' or 'sum', got 'mean'"):
        cl.datasets.read(path, gene_symbols_key="symbol", duplicate_symbols="mean")


def test_duplicate_symbols_sum_on_pbmc3k(tmp_path, pbmc3k):
    symbols = list(pbmc3k.var_names)
    for j in range(1, len(symbols), 7):  # every 7th gene takes the previous gene's symbol
        symbols[j] = symbols[j - 1]
    path = _symbols_file(tmp_path, pbmc3k, symbols)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # summed: no suffixed duplicates to warn about
        summed = cl.datasets.load(path, gene_symbols_key="symbol", duplicate_symbols="sum")
    expected = _brute_force_sum(pbmc3k.X.toarray(), symbols)
    assert summed.n_vars == expected.shape[1] == len(set(symbols))
    assert list(summed.var_names) == list(expected.columns)
    np.testing.assert_array_equal(summed.X.toarray(), expected.to_numpy())
    assert summed.X.sum() == pbmc3k.X.sum()  # no count lost or added


def test_duplicate_var_names_are_summed_too(tmp_path):
    X = np.array([[1, 2, 3], [0, 5, 0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own note on non-unique names
        adata = ad.AnnData(X=X, obs=pd.DataFrame(index=["c0", "c1"]), var=pd.DataFrame(index=["A", "B", "A"]))
        adata.write_h5ad(tmp_path / "x.h5ad")
        with pytest.raises(ValueError, match="1 duplicate gene names .*set duplicate_symbols: sum"):
            cl.datasets.load(tmp_path / "x.h5ad")
        summed = cl.datasets.load(tmp_path / "x.h5ad", duplicate_symbols="sum")
    assert list(summed.var_names) == ["A", "B"]
    np.testing.assert_array_equal(summed.X.toarray(), [[4, 2], [0, 5]])
