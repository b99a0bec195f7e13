"""corelib.runs: layout, atomic writes, provenance-checked reuse."""

import os
import stat
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import corelib as cl
from corelib._io import atomic_path, atomic_write


def test_layout_paths_and_templates(tmp_path):
    run = cl.runs.open_run(tmp_path / "r")
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
    assert cl.runs.open_run(None, "demo").root == (tmp_path / "runs" / "demo").resolve()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind


def test_json_round_trip(tmp_path):
    run = cl.runs.open_run(tmp_path)
    run.write_json("sae_selected", {"sae": "c10_k2_s0", "r2": np.float32(0.5)})
    assert run.read_json("sae_selected") == {"sae": "c10_k2_s0", "r2": 0.5}


def test_require_names_the_producing_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_embed"):
        cl.runs.open_run(tmp_path).require("embedded")


def test_tables_and_anndata_round_trip(tmp_path):
    run = cl.runs.open_run(tmp_path)
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

    run = cl.runs.open_run(tmp_path / "r")
    calls = []

    def compute():
        calls.append(1)
        return Saved([1.5, 2.5]), pd.DataFrame({"unit": [1, 1], "x": [0.5, 0.25]})

    outputs = (("interpret", "a.npy"), ("interpret", "t.csv", False))
    inputs = {"k": 3}
    first = run.cached(compute, *outputs, inputs=inputs, load=Saved.load)
    again = run.cached(compute, *outputs, inputs=inputs, load=Saved.load)
    assert len(calls) == 1
    np.testing.assert_array_equal(again[0].values, first[0].values)
    pd.testing.assert_frame_equal(again[1], first[1])
    with pytest.raises(ValueError, match="load="):
        run.cached(compute, *outputs, inputs=inputs)
    # overwrite replaces what changed; what was made from the same inputs is still the same result
    cl.runs.open_run(tmp_path / "r", overwrite=True).cached(compute, *outputs, inputs=inputs, load=Saved.load)
    assert len(calls) == 1
    cl.runs.open_run(tmp_path / "r", overwrite=True).cached(
        compute, *outputs, inputs={"k": 4}, load=Saved.load
    )
    assert len(calls) == 2


def test_cached_stops_on_other_inputs_and_names_them(tmp_path):
    run = cl.runs.open_run(tmp_path)
    cells = ad.AnnData(sp.random(40, 6, density=0.3, format="csr", random_state=0, dtype=np.float32))
    inputs = {"data": cells, "max_concepts": 6, "permutations": 20, "genes": ["CD3E", "LYZ"]}
    table = pd.DataFrame({"x": [1.0]})
    run.cached(lambda: table, "gsea_concepts", inputs=inputs)
    changed = {**inputs, "data": cells[:20].copy(), "max_concepts": 3, "permutations": 30}
    with pytest.raises(cl.runs.StaleOutputError) as err:
        run.cached(lambda: pytest.fail("recomputed without overwrite"), "gsea_concepts", inputs=changed)
    message = str(err.value)
    assert "max_concepts: 6 -> 3" in message and "permutations: 20 -> 30" in message
    assert "data: AnnData 40 cells x 6 genes -> AnnData 20 cells x 6 genes" in message
    assert "  - genes:" not in message  # unchanged inputs are not listed
    assert "--overwrite" in message and "np.str_" not in message
    # same shape, other content: still caught, and said so
    other = cells.copy()
    other.X = other.X * 2
    with pytest.raises(cl.runs.StaleOutputError, match="other content"):
        run.cached(lambda: table, "gsea_concepts", inputs={**inputs, "data": other})
    # other cell names with the same counts: another dataset
    renamed = cells.copy()
    renamed.obs_names = [f"cell{i}" for i in range(40)]
    with pytest.raises(cl.runs.StaleOutputError, match="data"):
        run.cached(lambda: table, "gsea_concepts", inputs={**inputs, "data": renamed})


def test_output_without_record_is_recomputed_and_records_are_replaced_first(tmp_path):
    run = cl.runs.open_run(tmp_path)
    run.write_table("deletion_curves", pd.DataFrame({"old": [1]}))  # no inputs: a record of its content only
    assert cl.runs.read_provenance(run.path("deletion_curves")) is None
    new = pd.DataFrame({"new": [2]})
    assert list(run.cached(lambda: new, "deletion_curves", inputs={"a": 1}).columns) == ["new"]
    assert cl.runs.read_provenance(run.path("deletion_curves")).inputs.keys() == {"a"}

    def crash():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):  # a failed recompute keeps the old output and its record
        cl.runs.open_run(tmp_path, overwrite=True).cached(crash, "deletion_curves", inputs={"a": 2})
    assert list(run.cached(crash, "deletion_curves", inputs={"a": 1}).columns) == ["new"]


def test_fingerprints_identify_content_not_spelling():
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    assert cl.runs.fingerprint(x) == cl.runs.fingerprint(x.copy()) == cl.runs.fingerprint(torch.from_numpy(x))
    assert cl.runs.fingerprint(x) == cl.runs.fingerprint(np.asfortranarray(x))
    assert cl.runs.fingerprint(x) != cl.runs.fingerprint(x.astype(np.float64))
    assert cl.runs.fingerprint(x) != cl.runs.fingerprint(x.reshape(5, 30))
    dense = (x > 0.5) * x
    csr, csc = sp.csr_matrix(dense), sp.csc_matrix(dense)
    assert cl.runs.fingerprint(csr) == cl.runs.fingerprint(csc) == cl.runs.fingerprint(sp.csr_array(dense))
    assert cl.runs.fingerprint({"a": 1, "b": [1, 2]}) == cl.runs.fingerprint({"b": [1, 2], "a": 1})
    assert cl.runs.fingerprint([1, 2]) != cl.runs.fingerprint([2, 1])
    assert cl.runs.fingerprint(1) != cl.runs.fingerprint("1") != cl.runs.fingerprint(1.0)
    frame = pd.DataFrame({"cell_type": pd.Categorical(["B", "NK"]), "n": [1, 2]}, index=["c1", "c2"])
    assert cl.runs.fingerprint(frame) != cl.runs.fingerprint(frame.rename(index={"c1": "c9"}))
    known = cl.runs.Known.of(x)
    assert cl.runs.fingerprint(known) == cl.runs.fingerprint(x) and "30 x 5" in known.description
    with pytest.raises(TypeError, match="cannot fingerprint"):
        cl.runs.fingerprint(object())


def test_fingerprint_of_modules_and_paths(tmp_path):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert cl.runs.fingerprint(a) != cl.runs.fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert cl.runs.fingerprint(a) == cl.runs.fingerprint(b)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"abc")
    first = cl.runs.fingerprint(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"abd")
    assert cl.runs.fingerprint(tmp_path / "m") != first
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cl.runs.fingerprint(tmp_path / "nope")


def test_upstream_fingerprints_chain_and_catch_mixed_runs(tmp_path):
    run = cl.runs.open_run(tmp_path)
    run.write_json("sae_selected", {"sae": "x"}, inputs={"embeddings": np.zeros(3)})
    upstream = run.fingerprint("sae_selected")
    assert upstream.description.startswith("02_sae/selected.json")
    run.write_table("deletion_curves", pd.DataFrame({"a": [1]}), inputs={"sae": upstream})
    assert run.check_made_from("deletion_curves", sae=upstream) == run.path("deletion_curves")
    run.write_json("sae_selected", {"sae": "y"}, inputs={"embeddings": np.ones(3)})  # upstream redone
    with pytest.raises(
        cl.runs.StaleOutputError, match=r"rerun step 'interpret' \(notebook 03_interpret_concepts\)"
    ):
        run.check_made_from("deletion_curves", sae=run.fingerprint("sae_selected"))
    run.write_json("sae_selected", {"sae": "z"})  # written without inputs: no record, cannot be chained
    with pytest.raises(cl.runs.StaleOutputError, match="no provenance record"):
        run.fingerprint("sae_selected")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_files_honour_the_umask_and_reach_the_disk(tmp_path, umask_022, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with atomic_write(tmp_path / "a" / "t.json") as fh:
        fh.write("{}")
    with atomic_path(tmp_path / "b.npy") as tmp:
        np.save(tmp, np.zeros(2))
    with atomic_path(tmp_path / "c.bin") as tmp:  # a writer that replaces the file, private
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
    cl.runs.open_run(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.parametrize("damage", ["edit", "truncate", "swap"])
def test_damaged_outputs_are_named_and_recomputed_under_overwrite(tmp_path, damage):
    run = cl.runs.open_run(tmp_path)
    inputs = {"a": 1}
    table = pd.DataFrame({"term": ["Cell Cycle", "Immune Response"], "nes": [2.5, 1.75]})
    run.cached(lambda: table, "gsea_concepts", inputs=inputs)
    path = run.path("gsea_concepts")
    text = path.read_text()
    damaged = {
        "edit": text.replace("Cell Cycle", "T Cell Activation"),  # a hand-edited term, same length or not
        "truncate": text[: len(text) - 5],  # cut mid-line: would read back as NaN
        "swap": text.replace("2.5", "1.75").replace("1.75,", "2.5,", 1),
    }[damage]
    path.write_text(damaged)
    with pytest.raises(cl.runs.DamagedOutputError, match="gsea_concepts.csv is not the content") as err:
        run.cached(lambda: pytest.fail("recomputed without overwrite"), "gsea_concepts", inputs=inputs)
    assert "--overwrite" in str(err.value)
    with pytest.raises(
        cl.runs.DamagedOutputError, match=r"written by step 'interpret' \(notebook 03_interpret_concepts\)"
    ):
        run.read_table("gsea_concepts")  # a reader of the output is stopped too
    again = cl.runs.open_run(tmp_path, overwrite=True).cached(lambda: table, "gsea_concepts", inputs=inputs)
    pd.testing.assert_frame_equal(again, table)
    pd.testing.assert_frame_equal(run.read_table("gsea_concepts"), table)


def test_damaged_binary_outputs_and_records_name_the_file(tmp_path):
    run = cl.runs.open_run(tmp_path)
    run.write_json(
        "sae_selected", {"sae": "c20_k2_s0"}
    )  # written without inputs: its content is still checked
    folder = run.path("sae", "c20_k2_s0")
    folder.mkdir()
    (folder / "sae.safetensors").write_bytes(b"\x00" * 64)
    cl.runs.record_provenance(folder, {"seed": 0})
    (folder / "sae.safetensors").write_bytes(b"\x00" * 32)  # truncated weights inside a folder output
    with pytest.raises(cl.runs.DamagedOutputError, match="c20_k2_s0 is not the content"):
        run.require("sae", "c20_k2_s0")
    with pytest.raises(cl.runs.DamagedOutputError, match="c20_k2_s0 is not the content"):
        run.fingerprint("sae", "c20_k2_s0")
    assert not cl.runs.reusable([folder], {"seed": 0}, overwrite=True)  # overwrite: recompute it
    record = cl.runs.provenance_path(run.path("sae_selected"))
    record.write_text(record.read_text()[:10])  # a truncated provenance record
    with pytest.raises(cl.runs.DamagedOutputError, match=r"selected.json.provenance.json is damaged"):
        run.read_json("sae_selected")
    assert not cl.runs.reusable([run.path("sae_selected")], {}, overwrite=True)


def test_content_check_reads_each_file_once_per_version(tmp_path):
    run = cl.runs.open_run(tmp_path)
    path = run.write_table("probe_summary", pd.DataFrame({"a": [1.0]}))
    first = cl.runs.cache.content_checksum(path)
    assert cl.runs.cache.content_checksum(path) == first
    path.write_text(path.read_text() + "\n")
    assert cl.runs.cache.content_checksum(path) != first


def test_every_step_output_sits_in_its_steps_folder_and_the_shipped_notebooks_are_the_steps():
    """The registry, LAYOUT and the notebooks agree: a missing or damaged file names the step that writes it."""
    from corelib.runs.registry import EXTRA_FOLDERS, step, writer

    for key, path in cl.runs.LAYOUT.items():
        folder = path.split("/")[0]
        if folder[:2].isdigit() or folder in EXTRA_FOLDERS:
            assert writer(path) is not None, key
            assert writer(path).folder == folder or EXTRA_FOLDERS.get(folder) == writer(path).name, key
    assert writer("params.yaml") is None and writer("atlas/index.html") is step("explorer")
    assert [book.stem for book in cl.runs.pipeline.notebooks()] == [s.notebook for s in cl.runs.STEPS]
    order = [s.name for s in cl.runs.STEPS]
    assert all(order.index(need) < order.index(s.name) for s in cl.runs.STEPS for need in s.needs)
    with pytest.raises(KeyError, match="the steps are embed, sae, interpret"):
        step("nope")
