"""The package installs: a wheel built from a copy of the repository, in a clean virtual environment outside it,
runs the pipeline on a shipped recipe. Optional dependencies fail with the extra that provides them."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import corelib as cl
from corelib._optional import require

ROOT = Path(__file__).resolve().parents[1]
#: What a clone does not hold (left out at the repository's top level only: corelib/runs is the package's)
NOT_SHIPPED = {".git", ".venv", "runs", "build", "docs", ".pytest_cache", ".ruff_cache"}


def _not_shipped(folder: str, names: list[str]) -> set[str]:
    top = {n for n in names if n in NOT_SHIPPED} if Path(folder) == ROOT else set()
    return top | {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"{args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def test_a_clean_environment_installs_the_wheel_and_runs_the_pipeline(tmp_path):
    """``pip install <clone>`` then ``python -m corelib run params/ci.yaml`` in a folder that is not the repository.

    Offline, pip cannot download the dependencies, so the wheel goes in with ``--no-deps`` and the clean
    environment then sees this environment's packages through a ``.pth`` line (added after the install, so that
    pip never sees the checkout's editable corelib), and their data files through ``JUPYTER_PATH``. Nothing of
    the checkout is on its path: the notebooks and the recipe come from the wheel.
    """
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, symlinks=True, ignore=_not_shipped)
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", wheels, clone, cwd=tmp_path)  # fmt: skip
    [wheel] = wheels.glob("corelib-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    (Path(site.stdout.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the dependencies' data files (nbconvert's HTML templates), which pip would have put in the clean prefix
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    where = _run(python, "-c", "import corelib; print(corelib.__file__)", cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(env_dir), where
    done = _run(python, "-m", "corelib", "run", "params/ci.yaml", "--no-progress", cwd=work, env=env)
    assert "using the recipe shipped with corelib" in done.stdout
    run = cl.runs.open_run(work / "runs" / "ci")
    assert run.path("report").exists() and run.locate("atlas").exists()
    for book in cl.runs.pipeline.notebooks():
        assert run.path("html", book.stem).exists(), book.stem


def test_a_params_file_not_found_lists_the_shipped_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"params/ci\.yaml, params/demo\.yaml"):
        cl.runs.pipeline.load_params(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("module", "extra"), [("scvi", "scvi"), ("distributed", "dask"), ("ipywidgets", "lab")]
)
def test_a_missing_optional_dependency_names_its_extra(module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without it raises: ImportError
    with pytest.raises(ImportError, match=rf"pip install 'corelib\[{extra}\]'"):
        require(module, "This step")


def test_a_dask_option_without_dask_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"A Dask cluster .* pip install 'corelib\[dask\]'"):
        cl.cluster.dask_client({"n_workers": 1})
