"""model: precomputed (issue 26): a Census-style h5ad with an embedding in obsm and no model runs the pipeline."""

import hashlib

import nbformat
import numpy as np
import pytest
import scanpy as sc
import yaml
from test_notebooks import output_problems

import corelib as cl

KEY = "X_geneformer"


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    """pbmc3k (raw counts) with a 16-dimensional PCA of its log-normalised counts in obsm["X_geneformer"]."""
    adata = cl.datasets.load_dataset("pbmc3k")
    del adata.uns["dataset"]
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm)
    sc.pp.log1p(lognorm)
    sc.pp.pca(lognorm, n_comps=16, random_state=0)
    adata.obsm[KEY] = lognorm.obsm["X_pca"]
    path = tmp_path_factory.mktemp("census") / "census.h5ad"
    adata.write_h5ad(path)
    return path, np.asarray(lognorm.obsm["X_pca"], dtype=np.float32)


def test_the_record_round_trips_and_embed_copies_the_embedding(census, tmp_path):
    adata = sc.read_h5ad(census[0])
    record = cl.encoders.load("precomputed", adata=adata, embedding_key=KEY)
    assert (record.dim, record.n_cells, record.has_model) == (16, adata.n_obs, False)
    assert record.sha256 == hashlib.sha256(census[1].tobytes()).hexdigest()
    cl.encoders.save(record, tmp_path / "encoder")
    assert cl.encoders.restore(tmp_path / "encoder") == record
    emb = cl.encoders.embed(record, adata, out=tmp_path / "emb.npy")
    np.testing.assert_array_equal(emb, census[1])  # a float32 copy of the same values
    assert adata.uns["embed"]["model"] == "precomputed" and adata.uns["embed"]["key"] == KEY
    other = adata[::-1].copy()  # the same values for other cells: not what the record was made from
    with pytest.raises(ValueError, match="is not the embedding the run's record was made from"):
        cl.encoders.embed(record, other)


def test_the_random_control_of_an_embedding_is_a_random_linear_encoder_of_the_expression(census):
    adata = sc.read_h5ad(census[0])
    record = cl.encoders.load("precomputed", adata=adata, embedding_key=KEY)
    control, emb = cl.encoders.embed_random_control(record, adata, seed=3, progress=False)
    assert control.name == "pca_random" and control.genes == list(adata.var_names) and emb.shape == (2638, 16)
    axes = control.components_DG.double()
    np.testing.assert_allclose(axes @ axes.T, np.eye(16), atol=1e-5)  # orthonormal, as many as the dimensions
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    centred = lognorm.X.toarray() - np.asarray(lognorm.X.mean(axis=0))  # scanpy's log-normalisation, its mean
    np.testing.assert_allclose(emb, centred @ axes.numpy().T, rtol=1e-3, atol=1e-3)
    again = cl.encoders.embed_random_control(record, adata, seed=3, progress=False)[1]
    np.testing.assert_array_equal(again, emb)  # seeded
    assert (
        np.abs(cl.encoders.embed_random_control(record, adata, seed=4, progress=False)[1] - emb).max() > 0.1
    )


def test_model_and_embedding_key_go_together():
    adata = sc.datasets.pbmc68k_reduced()
    with pytest.raises(ValueError, match="embedding_key .* goes with model 'precomputed'"):
        cl.encoders.load("pca", adata=adata, embedding_key="X_pca")
    with pytest.raises(ValueError, match="needs one"):
        cl.encoders.load("precomputed", adata=adata)


def test_the_pipeline_runs_on_the_embedding_alone(census, tmp_path):
    ci = yaml.safe_load(cl.runs.params.PARAMS_DIR.joinpath("ci.yaml").read_text())
    notebooks = {name: ci["notebooks"][name] for name in ci["notebooks"]}
    notebooks["04_stability"]["stability_dataset"] = "pbmc68k_reduced"  # 04 trains its own scVI on counts
    params = {
        **{key: ci[key] for key in ("seed", "device", "dask")},
        "run_dir": str(tmp_path / "run"),
        "dataset": str(census[0]),
        "label_key": "cell_type",
        "metadata_keys": ["cell_type"],
        "model": "precomputed",
        "embedding_key": KEY,
        "notebooks": notebooks,
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    run = cl.runs.pipeline.run(tmp_path / "p.yaml", progress=False)

    executed = {}
    for nb in cl.runs.pipeline.notebooks():  # every notebook runs, its outputs clean
        executed[nb.stem] = nbformat.read(run.path("notebook", nb.stem), as_version=4)
        assert output_problems(executed[nb.stem]) == [], nb.stem
    assert len(executed) == 7
    printed = {  # what each notebook printed
        name: "".join("".join(out.get("text", "")) for cell in nb.cells for out in cell.get("outputs", []))
        for name, nb in executed.items()
    }
    text = {name: nbformat.writes(nb) for name, nb in executed.items()}
    assert "the run has no model (model: precomputed)" in text["01_embed"]
    assert (
        printed["04_stability"].count(cl.runs.prose.RANDOM_PROJECTION) == 1
    )  # the null has no weights to redraw
    for what in ("The genes of the neurons", "concepts the top units show (counterfactual attribution)"):
        assert (
            f"{what}" in text["05_downstream_probes"]
            and "not measured: the run has no model" in text["05_downstream_probes"]
        )
    assert run.path("probe_summary").exists()  # the probes on concepts and neurons ran
    # the SAEs were trained on exactly that embedding
    np.testing.assert_array_equal(np.load(run.path("embeddings")), census[1])
    _, sae = cl.runs.steps.load_sae(run, census[1])
    assert sae.cfg.d_in == 16

    # notebook 03: what reads the attribution says once why it is absent ...
    for what in (
        "The counterfactual attribution of the concepts and neurons",
        "The deletion curves",
        "The attribution-based GSEA labels",
        "The worked examples",
        "The expression-matched ORA",
    ):
        assert printed["03_interpret_concepts"].count(what) == 1, what
    assert printed["03_interpret_concepts"].count("not measured: the run has no model") == 5
    # ... and what needs only the embedding ran: the characterisation, and a DEG baseline of the sampled concepts
    assert len(run.read_table("metadata_concepts")) == sae.cfg.n_concepts
    deg_c = run.read_table("deg", "concepts", index_col=None)
    assert deg_c["unit"].nunique() > 0 and deg_c["gene"].isin(sc.read_h5ad(census[0]).var_names).all()

    # notebook 06: the cards show the DEG genes as correlational, steering says why it is absent, the atlas is written
    assert (
        "genes are correlational (DEG), no attribution: the run has no model"
        in printed["06_concept_explorer"]
    )
    assert "No steering for C" in printed["06_concept_explorer"]
    atlas = run.root.joinpath("atlas", "index.html").read_text()
    assert atlas.count('<section class="cx-card"') == sae.cfg.n_concepts
    assert atlas.count("<h3>Genes: correlational (DEG), no attribution</h3>") == sae.cfg.n_concepts

    # notebook 07: the claims that need only the embedding are judged, the others are not measured, saying why
    for what in (cl.runs.prose.RANDOM_PROJECTION, "The attribution-based claims"):
        assert printed["07_claims"].count(what) == 1, what
    claims = run.read_table("claims")
    no_model = ["gsea_annotation", "ora_annotation", "planted_recovery", "deletion"]
    assert (claims.loc[no_model, "verdict"] == "not measured").all()
    assert claims.loc[no_model, "reason"].str.endswith("; the run has no model (model: precomputed)").all()
    # judged against the random linear encoder of the expression: specificity and stability too
    judged = ["reconstruction", "cell_type_specific", "probes", "stability"]
    assert claims.loc[judged, "verdict"].ne("not measured").all()
    assert (claims.loc[judged, "n"] >= 3).all()
    index = run.path("report").read_text()
    assert "; the run has no model (model: precomputed)" in index
    assert [a["status"] for a in cl.runs.pipeline.read_attempts(run)] == ["ok"] * 7
