"""corelib.runs.preflight: the data are checked against every notebook's settings before any notebook runs."""

import numpy as np
import pytest
import yaml

import corelib as cl


@pytest.fixture(scope="module")
def pbmc3k():
    return cl.datasets.load_dataset("pbmc3k")


def _h5ad(adata, path, **changes):
    out = adata.copy()
    del out.uns["dataset"]
    for key, value in changes.items():
        setattr(out, key, value)
    out.write_h5ad(path)
    return str(path)


def _settings(dataset, **notebooks):
    embed = {
        "dataset": dataset,
        "counts_layer": None,
        "gene_symbols_key": None,
        "label_key": "cell_type",
        "metadata_keys": ["cell_type"],
    }
    return {"01_embed": embed, **notebooks}


def test_thirty_cells_stop_the_run_before_any_notebook(pbmc3k, tmp_path):
    small = _h5ad(
        pbmc3k[np.random.default_rng(0).choice(pbmc3k.n_obs, 30, replace=False)], tmp_path / "s.h5ad"
    )
    params = {"run_dir": str(tmp_path / "run"), "dataset": small, "metadata_keys": ["cell_type"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError) as err:
        cl.runs.pipeline.run(tmp_path / "p.yaml", progress=False)
    message = str(err.value)
    assert "nothing was run" in message and not (tmp_path / "run").exists()
    # the notebooks' own defaults are checked: 02's held-out split, 05's min_cells_per_class=150
    assert "dataset s has 30 cells: the SAEs hold out 10% of them (3) to measure R^2" in message
    assert "Set dataset to a dataset of at least 200 cells." in message
    assert (
        "05_downstream_probes, label_key cell_type: Only 0 class(es) have at least min_cells_per_class=150"
        in message
    )
    assert (
        "notebooks: {05_downstream_probes: {min_cells_per_class: 8}} keeps the two largest classes" in message
    )
    assert "notebooks: {07_claims: {min_cells_per_class: 8}} keeps the two largest classes" in message


def test_sae_grids_that_are_no_top_k_sae_stop_before_notebook_01(pbmc3k):
    grid = {"n_concepts": [20, 50], "k": [0, 50], "k_sweep": [2, 60]}
    with pytest.raises(ValueError) as err:
        cl.runs.preflight.check(_settings("pbmc3k", **{"02_sae_scale_sweep": grid}))
    message = str(err.value)
    assert "n_concepts 20 with k 0: SAEConfig.k must be a positive integer" in message
    assert "n_concepts 50 with k 50: k=50 must be smaller than n_concepts=50" in message
    assert "n_concepts 50 with k 60" in message and "n_concepts 50 with k 2" not in message
    with pytest.raises(ValueError, match="paired element-wise"):
        cl.runs.preflight.check(_settings("pbmc3k", **{"02_sae_scale_sweep": {"n_concepts": 500, "k": [8]}}))


def test_settings_that_suit_the_data_pass(pbmc3k):
    settings = _settings(
        "pbmc3k",
        **{
            "02_sae_scale_sweep": {},
            "03_interpret_concepts": {"n_prototypes": 10, "n_counterfactuals": 3},
            "05_downstream_probes": {"label_key": "cell_type", "min_cells_per_class": 150},
            "04_stability": {"stability_dataset": None, "stability_counts_layer": None},
        },
    )
    cl.runs.preflight.check(settings)
    settings["03_interpret_concepts"]["n_prototypes"] = 3000
    with pytest.raises(
        ValueError, match="n_prototypes \\+ n_counterfactuals = 3003 cells, and pbmc3k has 2638"
    ):
        cl.runs.preflight.check(settings)


def test_stability_dataset_of_another_organism_names_the_setting(pbmc3k, tmp_path):
    mouse = pbmc3k[:300].copy()
    mouse.var_names = [g.capitalize() for g in mouse.var_names]
    path = _h5ad(mouse, tmp_path / "mouse.h5ad")
    stab = {"stability_dataset": path, "stability_counts_layer": None}
    with pytest.raises(ValueError) as err:
        cl.runs.preflight.check(_settings("pbmc3k", **{"04_stability": stab}))
    message = str(err.value)
    assert f"04_stability, stability_dataset {path}: The two datasets share only 48 genes (< 50)" in message
    assert "or to null to skip the cross-dataset comparison" in message


def test_stability_counts_layer_is_used(pbmc3k, tmp_path):
    other = pbmc3k[:250].copy()
    other.layers["counts"] = other.X.copy()
    other.X = other.X.log1p()
    path = _h5ad(other, tmp_path / "b.h5ad")
    stab = {"stability_dataset": path, "stability_counts_layer": None}
    with pytest.raises(ValueError, match=r"stability_dataset .*non-integer values.*stability_counts_layer"):
        cl.runs.preflight.check(_settings("pbmc3k", **{"04_stability": stab}))
    stab["stability_counts_layer"] = "counts"
    cl.runs.preflight.check(_settings("pbmc3k", **{"04_stability": stab}))
    stab["stability_dataset"] = _h5ad(other[:150], tmp_path / "small_b.h5ad")
    with pytest.raises(ValueError, match="stability_dataset small_b has 150 cells: .* at least 200 cells"):
        cl.runs.preflight.check(_settings("pbmc3k", **{"02_sae_scale_sweep": {}, "04_stability": stab}))


def test_ensembl_gene_names_stop_the_pre_flight_with_the_fix(pbmc3k, tmp_path):
    ids = [f"ENSG{i:011d}" for i in range(pbmc3k.n_vars)]
    var = pbmc3k.var.assign(feature_name=pbmc3k.var_names).set_axis(ids)
    path = _h5ad(pbmc3k, tmp_path / "e.h5ad", var=var)
    with pytest.raises(ValueError, match="`gene_symbols_key: feature_name`"):
        cl.runs.preflight.check(_settings(path))
    settings = _settings(path)
    settings["01_embed"]["gene_symbols_key"] = "feature_name"
    cl.runs.preflight.check(settings)


def test_the_pre_flight_loads_with_notebook_01_s_data_settings(pbmc3k, tmp_path, capsys):
    """drop_empty_cells, duplicate_symbols and organism reach the pre-flight's load as notebook 01's."""
    X = pbmc3k.X.tolil()
    X[0] = 0
    var = pbmc3k.var.assign(symbol=[*pbmc3k.var_names[:-1], pbmc3k.var_names[0]]).set_axis(
        [f"ENSG{i:011d}" for i in range(pbmc3k.n_vars)]
    )
    path = _h5ad(pbmc3k, tmp_path / "e.h5ad", X=X.tocsr(), var=var)
    settings = _settings(path)
    settings["01_embed"]["gene_symbols_key"] = "symbol"
    with pytest.raises(ValueError, match="1 of 2638 cells have no counts .*set drop_empty_cells: true"):
        cl.runs.preflight.check(settings)
    settings["01_embed"] |= {"drop_empty_cells": True, "duplicate_symbols": "sum", "organism": "rat"}
    with pytest.raises(ValueError, match="organism must be one of human, mouse, got 'rat'"):
        cl.runs.preflight.check(settings)
    settings["01_embed"]["organism"] = "human"
    cl.runs.preflight.check(settings)
    printed = capsys.readouterr().out
    assert "dropped 1 of 2638 cells" in printed and "2000 -> 1999 genes" in printed


@pytest.fixture(scope="module")
def census_like(pbmc3k, tmp_path_factory):
    """pbmc3k as an h5ad with a (random, finite) embedding in obsm["X_geneformer"], one NaN in obsm["X_nan"]."""
    emb = np.random.default_rng(0).normal(size=(pbmc3k.n_obs, 8)).astype(np.float32)
    with_nan = emb.copy()
    with_nan[5, 2] = np.nan
    out = pbmc3k.copy()
    out.obsm["X_geneformer"], out.obsm["X_nan"] = emb, with_nan
    return _h5ad(out, tmp_path_factory.mktemp("census") / "census.h5ad")


@pytest.mark.parametrize(
    ("embed", "problem"),
    [
        (
            {"model": "precomputed", "embedding_key": "X_uce"},
            "01_embed: embedding_key 'X_uce' is not in the dataset's obsm (keys there: 'X_geneformer', 'X_nan', ",
        ),
        ({"model": "precomputed", "embedding_key": "X_nan"}, "obsm['X_nan'] holds 1 NaN or infinite values"),
        (
            {"model": "precomputed"},
            "model: precomputed reads the cells' embedding from obsm: set embedding_key to its key (obsm keys in "
            "census: X_geneformer, X_nan, ",
        ),
        (
            {"model": "scvi", "embedding_key": "X_geneformer"},
            "embedding_key 'X_geneformer' is read only with model: precomputed, and model is 'scvi'. Set model: "
            "precomputed",
        ),
        (
            {"model": "precomputed", "embedding_key": "X_geneformer", "random_init": True},
            "random_init is a setting of a model, and model: precomputed has none: remove random_init.",
        ),
    ],
)
def test_a_precomputed_embedding_is_checked_before_any_notebook(census_like, embed, problem):
    settings = _settings(census_like)
    settings["01_embed"] |= embed
    with pytest.raises(ValueError) as err:
        cl.runs.preflight.check(settings)
    assert "nothing was run" in str(err.value) and problem in str(err.value)


def test_a_precomputed_embedding_that_suits_passes(census_like):
    settings = _settings(census_like)
    settings["01_embed"] |= {"model": "precomputed", "embedding_key": "X_geneformer"}
    cl.runs.preflight.check(settings)


def test_a_bad_embedding_stops_the_pipeline_before_the_run_directory(census_like, tmp_path):
    params = {
        "run_dir": str(tmp_path / "run"),
        "dataset": census_like,
        "metadata_keys": ["cell_type"],
        "model": "precomputed",
        "embedding_key": "X_nan",
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"obsm\['X_nan'\] holds 1 NaN"):
        cl.runs.pipeline.run(tmp_path / "p.yaml", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_batch_key_not_in_obs_stops_the_pipeline_before_the_run_directory(tmp_path):
    params = {"run_dir": str(tmp_path / "run"), "dataset": "pbmc3k", "batch_key": "batch"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError) as err:
        cl.runs.pipeline.run(tmp_path / "p.yaml", progress=False)
    assert (
        "03_interpret_concepts: batch_key 'batch' is not an obs column of pbmc3k (its columns: orig.ident, "
        in str(err.value)
    )
    assert (
        "seurat_clusters, classified, UMAP_1, UMAP_2, cell_type). Set batch_key to the column holding"
        in str(err.value)
    )
    assert not (tmp_path / "run").exists()


def test_a_batch_key_needs_two_batches(pbmc3k, tmp_path):
    obs = pbmc3k.obs.assign(batch="A", donor=np.where(np.arange(pbmc3k.n_obs) % 2, "d1", "d2"))
    settings = _settings(
        _h5ad(pbmc3k, tmp_path / "one.h5ad", obs=obs),
        **{"03_interpret_concepts": {"n_prototypes": 10, "n_counterfactuals": 3, "batch_key": "batch"}},
    )
    with pytest.raises(
        ValueError, match="batch_key 'batch' holds 1 batch\\(es\\) in one \\(A\\), and a batch"
    ):
        cl.runs.preflight.check(settings)
    settings["03_interpret_concepts"]["batch_key"] = "donor"
    cl.runs.preflight.check(settings)
    settings["03_interpret_concepts"]["batch_key"] = None
    cl.runs.preflight.check(settings)
