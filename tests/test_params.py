"""corelib.runs.params: every value of a params file is checked against its notebook's declared type."""

import ast
from pathlib import Path

import papermill as pm
import pytest
import yaml

import corelib as cl
from corelib.runs.params import ANY, MODEL_OPTIONS, check_types, infer, notebook_defaults

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def defaults():
    return {nb.stem: notebook_defaults(nb) for nb in cl.runs.pipeline.notebooks()}


def test_defaults_are_read_as_papermill_reads_them(defaults):
    """notebook_defaults parses the parameters cell itself (papermill costs a second at every start-up)."""
    for name, read in defaults.items():
        inspected = pm.inspect_notebook(str(cl.runs.params.NOTEBOOK_DIR / f"{name}.ipynb"))
        assert read == {key: ast.literal_eval(p["default"]) for key, p in inspected.items()}, name
        assert read, name


def _problems(defaults, **params):
    """The lines of check_types' error (empty when the params pass)."""
    try:
        check_types({"notebooks": {}, **params}, defaults)
    except ValueError as err:
        return str(err).splitlines()[1:-1]
    return []


def test_the_issue_cases_are_listed_in_one_error(defaults):
    problems = _problems(
        defaults,
        seed=True,
        metadata_keys="cell_type",
        model_options={"epochs": "5"},
        notebooks={
            "02_sae_scale_sweep": {"n_concepts": 500, "k": [2, "4"]},
            "03_interpret_concepts": {"n_prototypes": "3"},
        },
    )
    assert problems == [
        "- top-level seed: got True (bool), expected int; e.g. seed: 0",
        "- top-level metadata_keys: got 'cell_type' (str), expected list of str; e.g. metadata_keys: "
        "[cell_type, seurat_clusters]",
        "- top-level model_options.epochs: got '5' (str), expected int or None; e.g. model_options: {epochs: 50}",
        "- 02_sae_scale_sweep n_concepts: got 500 (int), expected list of int; e.g. n_concepts: [100, 250, 500, 1000]",
        "- 02_sae_scale_sweep k: got [2, '4'] (list), expected list of int; e.g. k: [2, 4, 8, 16]",
        "- 03_interpret_concepts n_prototypes: got '3' (str), expected int; e.g. n_prototypes: 10",
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_files_pass(path, defaults):
    check_types(cl.runs.pipeline.load_params(path), defaults)


def test_every_notebook_default_is_of_its_declared_type(defaults):
    assert _problems(defaults, notebooks={name: dict(values) for name, values in defaults.items()}) == []


@pytest.mark.parametrize(
    ("section", "values", "problem"),
    [
        (None, {"device": "cuda:1", "counts_layer": "counts", "dask": {"n_workers": 2}}, None),
        (None, {"device": "gpu"}, "device: got 'gpu' (str), expected one of auto, cpu, cuda, cuda:<index>"),
        (
            None,
            {"model": "geneformer"},
            "model: got 'geneformer' (str), expected one of scvi, scgpt, pca, precomputed",
        ),
        (None, {"dask": 2}, "dask: got 2 (int), expected mapping or None; e.g. dask: {n_workers: 2}"),
        (None, {"model": "precomputed", "embedding_key": "X_geneformer"}, None),
        (
            None,
            {"embedding_key": 3},
            "embedding_key: got 3 (int), expected str or None; e.g. embedding_key: X_geneformer",
        ),
        ("02_sae_scale_sweep", {"lr": 1, "min_r2": None, "selected_sae": "c20_k2_s0"}, None),
        ("02_sae_scale_sweep", {"epochs": 3.0}, "epochs: got 3.0 (float), expected int; e.g. epochs: 300"),
        ("02_sae_scale_sweep", {"lr": "1e-3"}, "lr: got '1e-3' (str), expected float; e.g. lr: 0.001"),
        ("03_interpret_concepts", {"max_concepts": None, "gene_sets": ["a.gmt", "b.gmt"]}, None),
        (
            "03_interpret_concepts",
            {"max_concepts": "all"},
            "max_concepts: got 'all' (str), expected int or None",
        ),
        ("03_interpret_concepts", {"gene_sets": 5}, "gene_sets: got 5 (int), expected str or list of str"),
        ("04_stability", {"stability_dataset": None, "attribution_options": {"batch_size": 512}}, None),
        (
            "04_stability",
            {"attribution_options": {"n_prototypes": "3"}},
            "04_stability attribution_options.n_prototypes: got '3' (str), expected int; "
            "e.g. attribution_options: {n_prototypes: 10}",
        ),
    ],
)
def test_declared_types(defaults, section, values, problem):
    """Top-level values and a notebook's own; None defaults take their declared type (DECLARED); an int is a
    float, a float no int (never converted); a dict default types its own keys and leaves others free."""
    params = {"notebooks": {section: values}} if section else values
    problems = _problems(defaults, **params)
    assert problems == [] if problem is None else len(problems) == 1 and problem in problems[0], problems


def test_model_options_are_those_of_the_model(defaults):
    assert _problems(defaults, model="pca", model_options={"n_comps": 20, "max_cells": None}) == []
    assert _problems(defaults, model="pca", model_options={"n_latent": 10}) == [
        "- top-level model_options.n_latent: model pca has no option 'n_latent'; remove it or use one of "
        "n_comps, max_cells."
    ]
    # an unknown model is reported once, its options are not checked against another model's
    assert len(_problems(defaults, model="geneformer", model_options={"n_latent": "10"})) == 1
    options = set().union(*cl.encoders.MODELS.values())
    assert set(MODEL_OPTIONS) == options  # every option of every model has a type


def test_infer_reads_the_type_from_the_default():
    assert infer(10).name == "int" and infer(True).name == "bool" and infer(0.5).name == "float"
    assert infer(["a", "b"]).name == "list of str" and infer([1, "a"]).name == "list"
    assert infer(None) == ANY
    assert not infer(10).accepts(True) and infer(0.5).accepts(2) and not infer([0]).accepts([0, False])


def test_run_stops_before_the_run_directory_and_the_data_preflight(tmp_path):
    params = {
        "run_dir": str(tmp_path / "run"),
        "dataset": str(tmp_path / "missing.h5ad"),  # the pre-flight would stop on this
        "notebooks": {"03_interpret_concepts": {"n_prototypes": "3"}},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="03_interpret_concepts n_prototypes: got '3'"):
        cl.runs.pipeline.run(tmp_path / "p.yaml", progress=False)
    assert not (tmp_path / "run").exists()
