"""corelib.runs.by_hand: a notebook run by hand takes the values it was not given from its run's params.yaml."""

import ast
import json
import os
import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml
from conftest import write_notebook

import corelib as cl
from corelib.runs.by_hand import PIPELINE_ENV, saved_parameters

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "02_sae_scale_sweep"


def _defaults(name: str = SWEEP) -> dict:
    """The values of a notebook's parameters cell, as a kernel run top to bottom holds them."""
    cell = pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    return {key: ast.literal_eval(p["default"]) for key, p in cell.items()}


def _saved_run(root: Path) -> Path:
    """A run directory whose params.yaml is written as the pipeline writes it."""
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "run_name": "ci",
        "run_dir": "/somewhere/else",
        "overwrite": True,
        "seed": 3,
        "device": "cpu",
        "dataset": "pbmc68k_reduced",  # not declared by notebook 02
        "notebooks": {
            SWEEP: {"epochs": 5, "n_concepts": [20, 50]},
            "03_interpret_concepts": {"max_concepts": 6},
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(autouse=True)
def _by_hand(monkeypatch):
    """Tests run by hand, whatever started pytest."""
    monkeypatch.delenv(PIPELINE_ENV, raising=False)


def test_a_notebook_run_by_hand_takes_the_values_it_was_not_given(tmp_path, capsys):
    run = _saved_run(tmp_path / "run")
    taken = saved_parameters(SWEEP, {**_defaults(), "run_dir": str(run)})
    # the common keys it declares and its own section; never run_dir, overwrite or another notebook's values
    assert taken == {"run_name": "ci", "seed": 3, "device": "cpu", "epochs": 5, "n_concepts": [20, 50]}
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert str(run.resolve() / "params.yaml") in out and "seed" in out and "n_concepts" in out


def test_values_given_to_the_notebook_are_kept(tmp_path, capsys):
    run = _saved_run(tmp_path / "run")
    given = {"run_dir": str(run), "epochs": 7, "seed": 4}
    taken = saved_parameters(SWEEP, {**_defaults(), **given})
    assert not set(taken) & set(given)
    assert taken["n_concepts"] == [20, 50]


def test_nothing_to_take_says_so(tmp_path, capsys):
    run = _saved_run(tmp_path / "run")
    params = yaml.safe_load((run / "params.yaml").read_text())
    values = {**_defaults(), **cl.runs.pipeline.notebook_parameters(params, SWEEP, set(_defaults()))}
    assert saved_parameters(SWEEP, {**values, "run_dir": str(run)}) == {}
    assert "nothing" in capsys.readouterr().out


def test_without_params_yaml_nothing_is_taken_and_a_line_says_so(tmp_path, capsys):
    assert saved_parameters(SWEEP, {**_defaults(), "run_dir": str(tmp_path)}) == {}
    out = capsys.readouterr().out
    assert f"No {tmp_path / 'params.yaml'}" in out and "parameters cell" in out


def test_a_pipeline_kernel_takes_nothing(tmp_path, capsys, monkeypatch):
    """params.yaml may hold an older run's params while the pipeline runs a notebook: it injected every value."""
    run = _saved_run(tmp_path / "run")
    monkeypatch.setenv(PIPELINE_ENV, "1")
    assert saved_parameters(SWEEP, {**_defaults(), "run_dir": str(run)}) == {}
    assert capsys.readouterr().out == ""


def test_the_pipeline_marks_its_kernels(tmp_path):
    books = tmp_path / "notebooks"
    books.mkdir()
    write_notebook(
        books / "01_mark.ipynb",
        "run_dir = None",
        f"import os, pathlib\npathlib.Path(run_dir, 'mark.txt').write_text(os.environ.get({PIPELINE_ENV!r}, ''))",
    )
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"run_name": "t", "run_dir": str(tmp_path / "run")}))
    run = cl.runs.pipeline.run(params, notebook_dir=books, progress=False)
    assert (run.root / "mark.txt").read_text() == "1"
    assert PIPELINE_ENV not in os.environ  # only its kernels are marked


def test_a_run_found_by_its_name_keeps_its_folder(tmp_path, monkeypatch):
    """params.yaml's run_dir is where the pipeline was told to write, not where this notebook found the run."""
    monkeypatch.chdir(tmp_path)
    _saved_run(tmp_path / "runs" / "ci")
    taken = saved_parameters(SWEEP, {**_defaults(), "run_name": "ci"})
    assert "run_dir" not in taken and taken["epochs"] == 5


def test_the_run_is_found_from_the_repository_root(tmp_path, monkeypatch, capsys):
    """JupyterLab starts a notebook in notebooks/ (a link to corelib/notebooks), where runs/<run_name> is not."""
    books = tmp_path / "project" / "corelib" / "notebooks"
    books.mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / f"{SWEEP}.ipynb", books)
    monkeypatch.setattr(cl.runs.by_hand, "NOTEBOOK_DIR", books)
    monkeypatch.chdir(books)
    run = _saved_run(tmp_path / "project" / "runs" / "ci")
    taken = saved_parameters(SWEEP, {**_defaults(), "run_name": "ci"})
    assert taken["run_dir"] == str(run.resolve()) and taken["epochs"] == 5
    assert not (books / "runs").exists()
    assert f"run_dir = {run.resolve()}" in capsys.readouterr().out


@pytest.mark.parametrize("book", cl.runs.pipeline.notebooks(), ids=lambda p: p.stem)
def test_every_notebook_takes_its_saved_parameters_before_opening_the_run(book, tmp_path):
    cells = nbformat.read(book, as_version=4).cells
    first = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])) + 1
    lines = cells[first].source.splitlines()
    call = f'globals().update(cl.runs.saved_parameters("{book.stem}", globals()))'
    assert call in lines
    opened = next(i for i, line in enumerate(lines) if "cl.runs.open_run(" in line)
    assert lines.index(call) < opened
    taken = saved_parameters(book.stem, {**_defaults(book.stem), "run_dir": str(_saved_run(tmp_path))})
    assert taken["run_name"] == "ci"


def test_notebook_run_by_hand_with_only_its_run_dir(tmp_path):
    """The real check, in a kernel: papermill given only run_dir, in notebooks/ as nbconvert runs it, on notebook
    02's own first cells (up to opening the run) and a run directory holding only a params.yaml."""
    run = _saved_run(tmp_path / "run")
    nb = nbformat.read(ROOT / "notebooks" / f"{SWEEP}.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])) + 1
    seen = "import json\nwith open(run.path('params').with_name('seen.json'), 'w') as fh:\n"
    seen += "    json.dump({'epochs': epochs, 'n_concepts': n_concepts, 'seed': seed, 'lr': lr}, fh)"
    nb.cells = [*nb.cells[: first + 1], nbformat.v4.new_code_cell(seen)]
    nbformat.write(nb, tmp_path / f"{SWEEP}.ipynb")
    out = pm.execute_notebook(
        str(tmp_path / f"{SWEEP}.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"run_dir": str(run), "lr": 0.01},
        kernel_name="python3",
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    assert json.loads((run / "seen.json").read_text()) == {
        "epochs": 5,
        "n_concepts": [20, 50],
        "seed": 3,
        "lr": 0.01,
    }
    printed = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert (
        f"Taken from {run.resolve() / 'params.yaml'}: run_name, seed, device, epochs, n_concepts." in printed
    )
