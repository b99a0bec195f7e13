"""corelib.runs: layout, atomic writes, reuse."""

import os
import stat
import subprocess
import sys

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


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_files_honour_the_umask_and_reach_the_disk(tmp_path, umask_022, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with runs.atomic_write(tmp_path / "a" / "t.json") as fh:
        fh.write("{}")
    with runs.atomic_path(tmp_path / "b.npy") as tmp:
        np.save(tmp, np.zeros(2))
    with runs.atomic_path(tmp_path / "c.bin") as tmp:  # a writer that replaces the file, private
        tmp.unlink()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
    assert len(synced) == 3
    for path in (tmp_path / "a", tmp_path / "a" / "t.json", tmp_path / "b.npy", tmp_path / "c.bin"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path  # group and others can read


def test_open_run_removes_temporaries_of_dead_writers_only(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / "01_embed" / f".adata.h5ad.{dead_pid}-0123abcd.tmp.h5ad"
    live = tmp_path / f".index.html.{os.getpid()}-89abcdef.tmp.html"
    other = tmp_path / ".notes.tmp"  # not written by atomic_path
    for p in (stale, live, other):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    runs.open_run(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()
