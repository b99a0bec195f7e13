"""corelib.pipeline: params checking, parameter injection, failures that keep the partial notebook."""

import subprocess
import sys

import nbformat
import pytest
import yaml

from corelib import pipeline


def _notebook(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body_src),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def books(tmp_path):
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    _notebook(
        root / "notebooks" / "01_first.ipynb",
        "run_dir = None\nseed = 0\nsize = 1",
        "from pathlib import Path\nPath(run_dir, 'first.txt').write_text(f'{seed} {size}')",
    )
    _notebook(
        root / "notebooks" / "02_second.ipynb",
        "run_dir = None\nfail = False",
        "assert not fail, 'planted failure'\nfrom pathlib import Path\nPath(run_dir, 'second.txt').write_text('ok')",
    )
    return root / "notebooks"


def _params(tmp_path, **kwargs):
    params = {"run_name": "t", "run_dir": str(tmp_path / "run"), "seed": 7, **kwargs}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_runs_every_notebook_with_its_parameters(tmp_path, books):
    params = _params(tmp_path, notebooks={"01_first": {"size": 3}})
    run = pipeline.run(params, notebook_dir=books, progress=False)
    assert (run.root / "first.txt").read_text() == "7 3"
    assert (run.root / "second.txt").read_text() == "ok"
    for name in ("01_first", "02_second"):
        assert run.path("notebook", name).exists()
        assert "<html" in run.path("html", name).read_text()
    assert "02_second" in run.path("report").read_text()
    assert yaml.safe_load(run.path("params").read_text())["seed"] == 7


def test_failing_notebook_is_named_and_kept(tmp_path, books):
    params = _params(tmp_path, notebooks={"02_second": {"fail": True}})
    with pytest.raises(pipeline.PipelineError, match=r"02_second failed in cell .*planted failure") as err:
        pipeline.run(params, notebook_dir=books, progress=False)
    assert "partly executed notebook is kept" in str(err.value)
    kept = tmp_path / "run" / "notebooks" / "02_second.ipynb"
    assert kept.exists() and "planted failure" in kept.read_text()
    assert (tmp_path / "run" / "first.txt").exists()


def test_only_runs_the_named_notebooks(tmp_path, books):
    run = pipeline.run(_params(tmp_path), notebook_dir=books, only=["01_first"], progress=False)
    assert (run.root / "first.txt").exists() and not (run.root / "second.txt").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sed": 1}, "unknown top-level keys"),
        ({"notebooks": {"01_first": {"sise": 2}}}, "does not declare"),
        ({"notebooks": {"03_third": {"a": 1}}}, "but the notebooks are"),
    ],
)
def test_params_typos_are_errors(tmp_path, books, extra, message):
    with pytest.raises(ValueError, match=message):
        pipeline.run(_params(tmp_path, **extra), notebook_dir=books, progress=False)


def test_shipped_params_files_are_valid():
    from pathlib import Path

    declared = {nb.stem: pipeline.declared_parameters(nb) for nb in pipeline.notebooks()}
    for path in Path(pipeline.NOTEBOOK_DIR).parent.glob("params/*.yaml"):
        params = pipeline.load_params(path)
        pipeline.check_params(params, declared)


def test_cli_reports_errors_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "corelib", "run", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "error: Params file" in out.stderr and "Traceback" not in out.stderr


def test_parameters_papermill_cannot_read_are_an_error(tmp_path):
    path = tmp_path / "01_bad.ipynb"
    _notebook(path, "seeds = [0, 1, 2]  # compared pairwise (>= 3)\nsize = 1", "pass")
    with pytest.raises(ValueError, match=r"papermill cannot read the parameters \['seeds'\]"):
        pipeline.declared_parameters(path)
