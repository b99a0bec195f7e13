"""The headless pipeline: run every numbered notebook with papermill for one params file.

A params file (``params/*.yaml``) is one run recipe. Its top-level keys are common to all notebooks
(:data:`COMMON_KEYS`); its ``notebooks`` section holds per-notebook values::

    run_name: demo
    dataset: pbmc3k
    model: scvi
    notebooks:
      02_sae_scale_sweep: {epochs: 300}

Each notebook receives the common keys and its own section, restricted to the names its ``parameters``
cell declares, so a notebook never sees a value it did not ask for. A name in the params file that no
notebook declares is an error (almost always a typo).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from corelib.runs import RunDir, atomic_write, open_run

#: Keys every params file may set at top level; notebooks declare the ones they use.
COMMON_KEYS: dict[str, str] = {
    "run_name": "name of the run; the run directory defaults to runs/<run_name>",
    "run_dir": "explicit run directory (overrides runs/<run_name>)",
    "overwrite": "recompute and replace results made from other inputs (instead of stopping)",
    "seed": "random seed for everything stochastic",
    "device": "auto | cpu | cuda",
    "dataset": "bundled dataset name (pbmc3k, pbmc68k_reduced) or path to an .h5ad file",
    "counts_layer": ".h5ad only: layer holding raw counts (null: .X)",
    "gene_symbols_key": ".h5ad only: var column holding gene symbols when var_names are Ensembl ids",
    "label_key": "obs column with cell-type labels",
    "metadata_keys": "obs columns used to characterise concepts",
    "model": "encoder: scvi | scgpt | pca",
    "model_path": "pretrained model directory (null: train/fit one on the data and cache it)",
    "trust_pickle": "allow loading pickle-based checkpoints (scvi-tools model.pt) from model_path",
    "random_init": "use the model architecture with random weights (the control)",
    "model_options": "model-specific options (e.g. scVI epochs, n_latent; PCA n_comps)",
}

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it, the failing cell and its error."""


@dataclass(frozen=True)
class NotebookResult:
    """What one notebook run produced."""

    name: str
    notebook: Path
    html: Path
    seconds: float


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a params file.

    Parameters
    ----------
    path
        A YAML file with the common keys at top level and an optional ``notebooks`` mapping.

    Returns
    -------
    The parameters as a dict (``notebooks`` always present).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Params file {path} not found; the recipes shipped are in params/ (e.g. params/demo.yaml)."
        )
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(
            f"{path} must hold a mapping of parameter names to values, not {type(params).__name__}."
        )
    unknown = sorted(set(params) - set(COMMON_KEYS) - {"notebooks"})
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level keys {unknown}. Common keys are {sorted(COMMON_KEYS)}; notebook-specific "
            "values go under 'notebooks: {<notebook name>: {...}}'."
        )
    params.setdefault("notebooks", {})
    if not isinstance(params["notebooks"], dict):
        raise ValueError(
            f"{path}: 'notebooks' must map notebook names (e.g. 01_embed) to parameter mappings."
        )
    return params


def notebooks(notebook_dir: str | os.PathLike = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in execution order."""
    return sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


def declared_parameters(notebook: str | os.PathLike) -> set[str]:
    """Names declared in a notebook's cell tagged ``parameters``.

    papermill reads that cell with regular expressions and silently drops a line it cannot parse (for
    example a comment holding parentheses after a list), which would make the name undeclared; such a
    cell is an error here, found by comparing with the names Python itself sees assigned.
    """
    import ast

    import nbformat
    import papermill as pm

    found = set(pm.inspect_notebook(str(notebook)))
    cells = nbformat.read(str(notebook), as_version=4).cells
    source = next((c.source for c in cells if "parameters" in c.metadata.get("tags", [])), "")
    assigned = {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    if assigned - found:
        raise ValueError(
            f"{Path(notebook).name}: papermill cannot read the parameters {sorted(assigned - found)}; keep each "
            "on one line as `name = value  # comment` without brackets in the comment."
        )
    return found


def notebook_parameters(params: dict[str, Any], name: str, declared: set[str]) -> dict[str, Any]:
    """The values to inject into one notebook: common keys and its own section, restricted to ``declared``."""
    own = params["notebooks"].get(name) or {}
    undeclared = sorted(set(own) - declared)
    if undeclared:
        raise ValueError(
            f"params for notebook {name} set {undeclared}, which its parameters cell does not declare "
            f"(declared: {sorted(declared)})."
        )
    values = {k: v for k, v in params.items() if k in declared and k != "notebooks"}
    values.update(own)
    return values


def run(
    params_file: str | os.PathLike,
    *,
    only: Sequence[str] | None = None,
    overwrite: bool | None = None,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
    progress: bool = True,
) -> RunDir:
    """Execute the numbered notebooks for a params file and render each to HTML in the run directory.

    Parameters
    ----------
    params_file
        The run recipe.
    only
        Notebook names (stems, e.g. ``["01_embed"]``) to run; default all, in order.
    overwrite
        Overrides the params file's ``overwrite`` (recompute finished steps).
    notebook_dir
        Where the notebooks are.
    progress
        Show papermill's cell progress bar.

    Returns
    -------
    The run directory, with ``notebooks/<name>.ipynb``, ``html/<name>.html`` and ``index.html``.

    Raises
    ------
    PipelineError
        When a notebook fails: names the notebook, the cell and the error; the partly executed notebook
        (and its HTML) stay in the run directory. Later notebooks are not run.
    """
    import papermill as pm

    params = load_params(params_file)
    if overwrite is not None:
        params["overwrite"] = overwrite
    books = notebooks(notebook_dir)
    if not books:
        raise FileNotFoundError(f"No numbered notebooks (NN_name.ipynb) in {notebook_dir}.")
    declared = {nb.stem: declared_parameters(nb) for nb in books}
    check_params(params, declared)
    check_data(params, books, declared)
    if only:
        missing = sorted(set(only) - set(declared))
        if missing:
            raise ValueError(f"Unknown notebooks {missing}; available: {sorted(declared)}.")
        books = [nb for nb in books if nb.stem in only]
    run_dir = open_run(params.get("run_dir"), params.get("run_name", "demo"), bool(params.get("overwrite")))
    with atomic_write(run_dir.path("params")) as fh:
        yaml.safe_dump(params, fh, sort_keys=False)

    results = []
    for nb in books:
        out = run_dir.path("notebook", nb.stem)
        values = notebook_parameters(params, nb.stem, declared[nb.stem])
        values["run_dir"] = str(run_dir.root)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(out),
                parameters=values,
                kernel_name="python3",
                cwd=str(Path(notebook_dir).resolve().parent),
                progress_bar=progress,
            )
        except pm.PapermillExecutionError as err:
            raise PipelineError(
                f"Notebook {nb.stem} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"The partly executed notebook is kept at {out} (HTML: {run_dir.path('html', nb.stem)})."
            ) from None
        finally:
            if out.exists():
                render_html(out, run_dir.path("html", nb.stem))
        results.append(
            NotebookResult(nb.stem, out, run_dir.path("html", nb.stem), time.perf_counter() - start)
        )
    write_index(run_dir, results)
    return run_dir


def check_params(params: dict[str, Any], declared: dict[str, set[str]]) -> None:
    """Reject params that no notebook declares (typos) and sections for notebooks that do not exist."""
    unknown_books = sorted(set(params["notebooks"]) - set(declared))
    if unknown_books:
        raise ValueError(
            f"params 'notebooks' names {unknown_books}, but the notebooks are {sorted(declared)}."
        )
    for name in params["notebooks"]:
        notebook_parameters(params, name, declared[name])


def check_data(params: dict[str, Any], books: Sequence[Path], declared: dict[str, set[str]]) -> None:
    """Pre-flight before any notebook runs: :func:`corelib.preflight.check` on every notebook's settings, its
    parameters cell's defaults (literals, as papermill reads them) overridden by the params file."""
    import ast

    import papermill as pm

    from corelib import preflight

    settings = {
        nb.stem: {
            **{name: ast.literal_eval(p["default"]) for name, p in pm.inspect_notebook(str(nb)).items()},
            **notebook_parameters(params, nb.stem, declared[nb.stem]),
        }
        for nb in books
    }
    preflight.check(settings)


def render_html(notebook: str | os.PathLike, html: str | os.PathLike) -> Path:
    """Render an executed notebook to a standalone HTML file (atomically)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    with atomic_write(html) as fh:
        fh.write(body)
    return Path(html)


def write_index(run_dir: RunDir, results: Sequence[NotebookResult]) -> Path:
    """Write ``index.html``: links to every notebook's HTML rendering and the atlas when present."""
    import html as html_lib

    rows = "\n".join(
        f'<li><a href="html/{html_lib.escape(r.name)}.html">{html_lib.escape(r.name)}</a> '
        f"({r.seconds:.0f} s)</li>"
        for r in results
    )
    atlas = run_dir.path("atlas")
    atlas_link = '<p><a href="atlas/index.html">Concept atlas</a></p>' if atlas.exists() else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Run report</title></head><body>"
        f"<h1>Run {html_lib.escape(run_dir.root.name)}</h1><ol>{rows}</ol>{atlas_link}</body></html>"
    )
    out = run_dir.path("report")
    with atomic_write(out) as fh:
        fh.write(page)
    return out
