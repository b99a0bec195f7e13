"""corelib.runs.pipeline: params checking, parameter injection, failures that keep the partial notebook."""

import os
import re
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import write_notebook

import corelib as cl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def books(tmp_path):
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    write_notebook(
        root / "notebooks" / "01_first.ipynb",
        "run_dir = None\nseed = 0\nsize = 1",
        "from pathlib import Path\nPath(run_dir, 'first.txt').write_text(f'{seed} {size}')",
    )
    write_notebook(
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
    run = cl.runs.pipeline.run(params, notebook_dir=books, progress=False)
    assert (run.root / "first.txt").read_text() == "7 3"
    assert (run.root / "second.txt").read_text() == "ok"
    for name in ("01_first", "02_second"):
        assert run.path("notebook", name).exists()
        assert "<html" in run.path("html", name).read_text()
    assert not (run.root / "failed").exists()  # no empty folder once every attempt succeeded
    assert "02_second" in run.path("report").read_text()
    assert yaml.safe_load(run.path("params").read_text())["seed"] == 7


def test_every_attempt_is_recorded(tmp_path, books):
    run = cl.runs.pipeline.run(
        _params(tmp_path, notebooks={"01_first": {"size": 3}}), notebook_dir=books, progress=False
    )
    first, second = cl.runs.pipeline.read_attempts(run)
    assert (first["notebook"], first["status"], first["error"]) == ("01_first", "ok", None)
    assert first["parameters"] == {"run_dir": str(run.root), "seed": 7, "size": 3}
    assert first["params_file"] == str(tmp_path / "p.yaml")
    assert first["seconds"] > 0 and datetime.fromisoformat(first["started"]).tzinfo is not None
    assert second["notebook"] == "02_second"


def test_a_failed_run_keeps_the_last_good_outputs(tmp_path, books):
    run = cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)
    good = {key: run.path(key, "02_second").read_text() for key in ("notebook", "html")}
    params = _params(tmp_path, seed=8, notebooks={"02_second": {"fail": True}})
    with pytest.raises(cl.runs.pipeline.PipelineError, match=r"02_second failed: .*planted failure") as err:
        cl.runs.pipeline.run(params, notebook_dir=books, only=["02_second"], progress=False)
    failed = run.path("failed_notebook", "02_second")
    assert f"kept at {failed}" in str(err.value)
    assert "planted failure" in failed.read_text() and run.path("failed_html", "02_second").exists()
    assert {key: run.path(key, "02_second").read_text() for key in ("notebook", "html")} == good
    assert yaml.safe_load(run.path("params").read_text())["seed"] == 7  # the params of the good run
    assert cl.runs.pipeline.read_attempts(run)[-1]["status"] == "failed"
    index = run.path("report").read_text()
    assert "01_first</td><td>ok</td>" in index
    assert "02_second</td><td>failed: AssertionError: planted failure" in index
    assert 'href="html/02_second.html"' in index and 'href="failed/02_second.html"' in index
    cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, only=["02_second"], progress=False)
    assert not failed.exists() and 'href="failed/' not in run.path("report").read_text()


def test_only_runs_the_named_notebooks_and_the_index_lists_all(tmp_path, books):
    run = cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, only=["01_first"], progress=False)
    assert (run.root / "first.txt").exists() and not (run.root / "second.txt").exists()
    index = run.path("report").read_text()
    assert "01_first</td><td>ok</td>" in index and "02_second</td><td>never run</td>" in index


def test_pipeline_files_honour_the_umask(tmp_path, books):
    old = os.umask(0o022)
    try:
        run = cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, only=["01_first"], progress=False)
    finally:
        os.umask(old)
    written = [run.path(k) for k in ("params", "attempts", "report")] + [
        run.path(k, "01_first") for k in ("notebook", "html")
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path  # group and others can read


def test_html_pages_load_nothing_from_the_network(tmp_path, books):
    write_notebook(
        books / "03_math.ipynb", "run_dir = None", "from IPython.display import Markdown\nMarkdown('$R^2$')"
    )
    run = cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)
    remote = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//", re.I)
    for page in [
        run.path("report"),
        *(run.path("html", nb.stem) for nb in cl.runs.pipeline.notebooks(books)),
    ]:
        assert not remote.search(page.read_text()), page
        assert "import(" not in page.read_text(), page  # no module loaded at run time (mermaid)


def _cli(params: Path, books: Path) -> subprocess.Popen:
    """``python -m corelib run params --no-progress`` on the notebooks in ``books``."""
    script = (
        "import functools, sys\nfrom corelib import __main__ as cli\nfrom corelib.runs import pipeline\n"
        f"pipeline.run = functools.partial(pipeline.run, notebook_dir={str(books)!r})\n"
        f"sys.exit(cli.main(['run', {str(params)!r}, '--no-progress']))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # pytest may run with SIGINT ignored
    )


def test_a_successful_run_prints_nothing_on_stderr(tmp_path, books):
    """In particular not the kernel's "Kernel is running over TCP without encryption" warning."""
    proc = _cli(_params(tmp_path), books)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and stderr == "", stderr
    assert "HTML report:" in stdout


def test_ctrl_c_stops_cleanly_and_keeps_the_partial_attempt(tmp_path):
    books = tmp_path / "notebooks"
    books.mkdir()
    write_notebook(
        books / "01_nap.ipynb",
        "run_dir = None\nnap = 0",
        "import time\nfrom pathlib import Path\nPath(run_dir, 'done.txt').write_text(str(nap))\n"
        "Path(run_dir, 'napping').touch()\ntime.sleep(nap)",
        "# never reached",
        "print('never run')",
    )
    run = cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)
    good = run.path("notebook", "01_nap").read_text()
    (run.root / "napping").unlink()
    proc = _cli(_params(tmp_path, notebooks={"01_nap": {"nap": 600}}), books)
    deadline = time.monotonic() + 120
    while not (run.root / "napping").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    # one line: no traceback, and no kernel log (its TCP warning, its lost reply when shut down mid-cell)
    assert stderr.startswith("interrupted: notebook 01_nap stopped") and stderr.count("\n") == 1, stderr
    assert (run.root / "done.txt").read_text() == "600"  # what the notebook did before Ctrl-C is kept
    assert run.path("notebook", "01_nap").read_text() == good  # the partial attempt is not promoted
    assert cl.runs.pipeline.read_attempts(run)[-1]["status"] == "interrupted"
    partial = nbformat.read(run.path("failed_notebook", "01_nap"), as_version=4)
    statuses = [c.metadata.papermill["status"] for c in partial.cells]
    assert statuses[-4:] == ["completed", "interrupted", "pending", "pending"], statuses
    assert run.path("failed_html", "01_nap").exists()
    assert "01_nap</td><td>interrupted" in run.path("report").read_text()


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
        cl.runs.pipeline.run(_params(tmp_path, **extra), notebook_dir=books, progress=False)


def test_shipped_params_files_are_valid():
    declared = {nb.stem: cl.runs.pipeline.declared_parameters(nb) for nb in cl.runs.pipeline.notebooks()}
    shipped = sorted(cl.runs.params.PARAMS_DIR.glob("*.yaml"))
    assert len(shipped) >= 5, shipped
    for path in shipped:
        params = cl.runs.pipeline.load_params(path)
        cl.runs.pipeline.check_params(params, declared)


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
    write_notebook(path, "seeds = [0, 1, 2]  # compared pairwise (>= 3)\nsize = 1", "pass")
    with pytest.raises(ValueError, match="papermill cannot read the parameters seeds;"):
        cl.runs.pipeline.declared_parameters(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_params_file_stops_instead_of_running_the_demo(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"empty.yaml is empty \(or only comments\)"):
        cl.runs.pipeline.load_params(path)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run_name: x\nseed: 0\nnotebooks:\n  01_embed: {epochs: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml, line 5, column 1: not valid YAML"):
        cl.runs.pipeline.load_params(path)
    out = subprocess.run(
        [sys.executable, "-m", "corelib", "run", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "bad.yaml, line 5" in out.stderr


def test_relative_paths_resolve_beside_the_params_file_else_the_working_directory(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "cells.h5ad").touch()
    path = recipes / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dataset": "cells.h5ad",
                "model_path": "models/scvi",
                "notebooks": {"04_stability": {"stability_dataset": "pbmc3k"}, "05_x": None},
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    params = cl.runs.pipeline.load_params(Path("recipes/p.yaml"))
    assert params["dataset"] == str(recipes / "cells.h5ad")  # exists beside the params file
    assert params["model_path"] == str(tmp_path / "models" / "scvi")  # not there: the working directory
    assert params["notebooks"]["04_stability"]["stability_dataset"] == "pbmc3k"  # bundled name, not a path
    path.write_text(yaml.safe_dump({"notebooks": {"04_stability": {"stability_dataset": "cells.h5ad"}}}))
    params = cl.runs.pipeline.load_params(path)
    assert params["notebooks"]["04_stability"]["stability_dataset"] == str(recipes / "cells.h5ad")


def test_notebook_defaults_mirror_the_library():
    """Defaults live in corelib: notebook 02's training parameters are TrainConfig's (params files override)."""
    import ast
    import dataclasses
    import json

    book = json.loads((Path(cl.runs.pipeline.NOTEBOOK_DIR) / "02_sae_scale_sweep.ipynb").read_text())
    cell = next(c for c in book["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse("".join(cell["source"])).body
        if isinstance(node, ast.Assign)
    }
    defaults = dataclasses.asdict(cl.tl.sae.TrainConfig())
    assert {key: values[key] for key in ("lr", "epochs", "batch_size", "aux_k")} == {
        key: defaults[key] for key in ("lr", "epochs", "batch_size", "aux_k")
    }


def _napping_books(tmp_path: Path) -> Path:
    """One notebook that writes ``napping`` into the run directory, then sleeps ``nap`` seconds."""
    books = tmp_path / "notebooks"
    books.mkdir()
    write_notebook(
        books / "01_nap.ipynb",
        "run_dir = None\nnap = 0",
        "import time\nfrom pathlib import Path\nPath(run_dir, 'napping').touch()\ntime.sleep(nap)",
    )
    return books


def _kernel_files() -> set[Path]:
    from jupyter_core.paths import jupyter_runtime_dir

    return set(Path(jupyter_runtime_dir()).glob("kernel-*.json"))


def test_a_second_run_on_a_locked_directory_stops_and_sigterm_is_recorded(tmp_path):
    books = _napping_books(tmp_path)
    params = _params(tmp_path, notebooks={"01_nap": {"nap": 600}})
    kernels = _kernel_files()
    proc = _cli(params, books)
    napping = tmp_path / "run" / "napping"
    deadline = time.monotonic() + 120
    while not napping.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(cl.runs.guards.RunDirError, match=f"is in use by pid {proc.pid} "):
        cl.runs.pipeline.run(params, notebook_dir=books, progress=False)
    assert not (tmp_path / "run" / "failed" / "01_nap.html").exists()  # the second run wrote nothing
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.startswith("interrupted: notebook 01_nap stopped") and "SIGTERM" in stderr, stderr
    run = cl.runs.open_run(tmp_path / "run")
    assert cl.runs.pipeline.read_attempts(run)[-1]["error"] == cl.runs.pipeline.TERMINATED
    assert _kernel_files() <= kernels  # the kernel was shut down and its connection file removed
    # the lock died with its holder: the directory can be used again at once
    cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)


def test_a_full_disk_is_named_and_the_attempt_recorded(tmp_path, books, monkeypatch):
    import errno

    import papermill as pm

    def fill_the_disk(notebook, out, **kwargs):
        Path(out).write_text('{"cells": [{"cell_type": "code", "sou')  # papermill's write cut short
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(pm, "execute_notebook", fill_the_disk)
    with pytest.warns(UserWarning, match="incomplete and was not rendered"):
        with pytest.raises(cl.runs.pipeline.PipelineError, match="no space left on device: ") as err:
            cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)
    assert "Notebook does not appear to be JSON" not in str(err.value)
    attempt = cl.runs.pipeline.read_attempts(cl.runs.open_run(tmp_path / "run"))[-1]
    assert attempt["status"] == "failed" and "No space left on device" in attempt["error"]
    assert not (tmp_path / "run" / "atlas").exists() and not (tmp_path / "run" / "html").exists()


def test_cli_names_a_read_only_run_directory_in_one_line(tmp_path, books, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == tmp_path / "run" else real_access(p, mode)
    )
    with pytest.raises(cl.runs.guards.RunDirError, match=f"cannot write to {tmp_path / 'run'}"):
        cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)
    err = cl.runs.guards.describe_os_error(OSError(30, "Read-only file system", "/data/run"))
    assert err.startswith("cannot write to /data/run (Read-only file system)") and "\n" not in err


def test_attempts_cut_short_are_skipped_with_a_warning(tmp_path):
    run = cl.runs.open_run(tmp_path)
    run.path("attempts").write_text('{"notebook": "01_embed", "status": "ok"}\n{"notebook": "02_sae", "sta')
    with pytest.warns(UserWarning, match="line 2: not a complete record"):
        assert [a["notebook"] for a in cl.runs.pipeline.read_attempts(run)] == ["01_embed"]


def test_a_write_cut_short_names_the_run_directory(tmp_path, books, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as file.write raises it: no file named

    monkeypatch.setattr(cl.runs.pipeline, "render_html", full)
    with pytest.raises(OSError) as err:
        cl.runs.pipeline.run(_params(tmp_path), notebook_dir=books, progress=False)
    assert err.value.filename == str(tmp_path / "run")
    assert cl.runs.guards.describe_os_error(err.value).startswith(
        f"no space left on device: {tmp_path / 'run'}."
    )
    assert cl.runs.pipeline.read_attempts(cl.runs.open_run(tmp_path / "run"))[-1]["status"] == "ok"
