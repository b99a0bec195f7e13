"""Every notebook, executed headlessly by papermill on params/ci.yaml through the real pipeline."""

from pathlib import Path

import nbformat
import pytest
import yaml

from corelib import pipeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    params = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text())
    params["run_dir"] = str(tmp_path_factory.mktemp("ci_run"))
    path = tmp_path_factory.mktemp("params") / "ci.yaml"
    path.write_text(yaml.safe_dump(params))
    return pipeline.run(path, progress=False)


def test_every_notebook_executes(ci_run):
    for nb in pipeline.notebooks():
        executed = nbformat.read(ci_run.path("notebook", nb.stem), as_version=4)
        errors = [
            o
            for c in executed.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if o.output_type == "error"
        ]
        assert not errors, f"{nb.stem}: {errors}"
        assert ci_run.path("html", nb.stem).exists()
    assert ci_run.path("report").exists()


def test_embed_notebook_writes_the_documented_run_entries(ci_run):
    adata = ci_run.read_h5ad("embedded")
    key = adata.uns["embed"]["key"]
    assert adata.obsm[key].shape == (adata.n_obs, adata.uns["embed"]["dim"])
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert ci_run.read_json("embed_summary")["model"] == "scvi"


def test_rerun_reuses_finished_work(ci_run, tmp_path):
    encoder_files = sorted(p for p in ci_run.path("encoder").rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in encoder_files}
    params = yaml.safe_load(ci_run.path("params").read_text())
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(params))
    pipeline.run(path, only=["01_embed"], progress=False)
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items()), (
        "the cached encoder was retrained"
    )
