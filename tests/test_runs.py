"""corelib.runs: layout, atomic writes, reuse."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from corelib import runs


def test_layout_paths_and_templates(tmp_path):
    run = runs.open_run(tmp_path / "r")
    assert run.path("embedded") == tmp_path / "r" / "01_embed" / "adata.h5ad"
    assert run.path("sae", "c500_k8_s0") == tmp_path / "r" / "02_sae" / "c500_k8_s0"
    with pytest.raises(ValueError, match="needs a name"):
        run.path("sae")
    with pytest.raises(ValueError, match="takes no name"):
        run.path("embedded", "x")
    with pytest.raises(KeyError, match="Unknown run-directory entry"):
        run.path("nope")


def test_default_root_is_runs_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runs.open_run(None, "demo").root == (tmp_path / "runs" / "demo").resolve()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), runs.atomic_write(target) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind


def test_done_and_overwrite(tmp_path):
    run = runs.open_run(tmp_path)
    assert not run.done("sae_selected")
    run.write_json("sae_selected", {"sae": "c10_k2_s0", "r2": np.float32(0.5)})
    assert run.done("sae_selected")
    assert run.read_json("sae_selected") == {"sae": "c10_k2_s0", "r2": 0.5}
    assert not runs.open_run(tmp_path, overwrite=True).done("sae_selected")


def test_require_names_the_producing_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_embed"):
        runs.open_run(tmp_path).require("embedded")


def test_tables_and_anndata_round_trip(tmp_path):
    run = runs.open_run(tmp_path)
    df = pd.DataFrame({"x": [1, 2]}, index=["a", "b"])
    run.write_table("sae_sweep", df)
    pd.testing.assert_frame_equal(run.read_table("sae_sweep"), df)
    adata = ad.AnnData(X=np.eye(3, dtype=np.float32))
    adata.uns["embed"] = {"key": "X_pca"}
    run.write_h5ad("embedded", adata)
    back = run.read_h5ad("embedded")
    np.testing.assert_array_equal(back.X, adata.X)
    assert back.uns["embed"]["key"] == "X_pca"


def test_cached_reuses_outputs_unless_overwrite(tmp_path):
    """Tables come back as written; other objects through their save() and the given load()."""

    class Saved:
        def __init__(self, values):
            self.values = np.asarray(values)

        def save(self, path):
            np.save(path, self.values)

        @classmethod
        def load(cls, path):
            return cls(np.load(path))

    run = runs.open_run(tmp_path / "r")
    calls = []

    def compute():
        calls.append(1)
        return Saved([1.5, 2.5]), pd.DataFrame({"unit": [1, 1], "x": [0.5, 0.25]})

    outputs = (("interpret", "a.npy"), ("interpret", "t.csv", False))
    first = run.cached(compute, *outputs, load=Saved.load)
    again = run.cached(compute, *outputs, load=Saved.load)
    assert len(calls) == 1
    np.testing.assert_array_equal(again[0].values, first[0].values)
    pd.testing.assert_frame_equal(again[1], first[1])
    with pytest.raises(ValueError, match="load="):
        run.cached(compute, *outputs)
    runs.open_run(tmp_path / "r", overwrite=True).cached(compute, *outputs, load=Saved.load)
    assert len(calls) == 2
