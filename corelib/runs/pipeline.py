"""The headless pipeline: run every numbered notebook with papermill for one params file.

A params file (``params/*.yaml``) is one run recipe. Its top-level keys are common to all notebooks
(:data:`corelib.runs.params.COMMON_KEYS`); its ``notebooks`` section holds per-notebook values::

    run_name: demo
    dataset: pbmc3k
    model: scvi
    notebooks:
      02_sae_scale_sweep: {epochs: 300}

Each notebook receives the common keys and its own section, restricted to the names its ``parameters``
cell declares, so a notebook never sees a value it did not ask for. A name in the params file that no
notebook declares is an error (almost always a typo). Relative paths (``dataset``, ``model_path``,
``stability_dataset``) are relative to the params file's folder when the file is there, else to the
current working directory (:func:`corelib.runs.params.resolve_path`).

A failed or interrupted notebook never damages the record of a good run: each notebook runs as an attempt
(:func:`run_notebook`) whose executed notebook and HTML replace the last good ones only on success, and
every attempt is appended to the run directory's ``attempts.jsonl``; ``index.html`` shows every notebook's
latest status. The HTML pages are self-contained and open offline.
"""

from __future__ import annotations

import contextlib
import errno
import html as html_lib
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from corelib._io import atomic_write
from corelib.runs import preflight
from corelib.runs.by_hand import pipeline_kernels
from corelib.runs.guards import Terminated, describe_os_error, run_lock, sigterm_as_interrupt
from corelib.runs.layout import RunDir, open_run
from corelib.runs.params import (
    NOTEBOOK_DIR,
    _names,
    check_types,
    load_params,
    notebook_defaults,
    notebook_parameters,
)
from corelib.runs.report import REPORT_CSS, claims_section, mark_unfinished_cells, render_html, run_summary

#: The kernel's own logs say nothing about the notebook: its application's (its transport, "Kernel is running
#: over TCP without encryption"; a reply lost when Ctrl-C shuts it down mid-cell), asyncio's (a task of its
#: message loop still pending when it exits) and tornado's (ipykernel's control thread flushing stdout after
#: its iopub socket closed at shutdown, "ZMQError: Operation not supported", seen once in a full test run).
#: A failing cell is reported by papermill and kept in the notebook.
KERNEL_ARGUMENTS = [
    "--IPKernelApp.logging_config="
    + json.dumps(
        {"loggers": {name: {"level": "CRITICAL"} for name in ("IPKernelApp", "asyncio", "tornado.general")}}
    )
]


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it, the failing cell, its error and where the
    failed attempt is kept."""


class PipelineInterrupted(KeyboardInterrupt):
    """The pipeline was interrupted (Ctrl-C, or SIGTERM) while a notebook ran; the message says what was kept,
    ``exit_code`` the status the command line returns (130, or 143 for SIGTERM)."""

    exit_code = 130


#: :attr:`Attempt.error` of an attempt stopped by Ctrl-C, and by SIGTERM.
INTERRUPTED, TERMINATED = "KeyboardInterrupt (Ctrl-C)", "SIGTERM (terminated)"


@dataclass(frozen=True)
class Attempt:
    """One execution of one notebook, as recorded in the run directory's ``attempts.jsonl``.

    Attributes
    ----------
    notebook
        Its name (``01_embed``).
    status
        ``"ok"``, ``"failed"`` or ``"interrupted"`` (Ctrl-C).
    started
        Start time, ISO 8601 with the local UTC offset.
    seconds
        How long it ran.
    parameters
        The values injected into its ``parameters`` cell.
    params_file
        The params file they came from.
    error
        What went wrong (``"AssertionError: ... (cell 3)"``), or None.
    """

    notebook: str
    status: str
    started: str
    seconds: float
    parameters: dict[str, Any]
    params_file: str
    error: str | None


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
            f"{Path(notebook).name}: papermill cannot read the parameters {_names(assigned - found)}; keep each "
            "on one line as `name = value  # comment` without brackets in the comment."
        )
    return found


def run(
    params_file: str | os.PathLike,
    *,
    only: Sequence[str] | None = None,
    overwrite: bool | None = None,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
    progress: bool = True,
) -> RunDir:
    """Execute the numbered notebooks for a params file and render each to HTML in the run directory.

    Each notebook runs as an attempt (:func:`run_notebook`): the last good executed notebook and HTML are
    replaced only by a successful one, and every attempt is recorded in ``attempts.jsonl``. After each
    attempt ``index.html`` lists every notebook of the pipeline with its latest status, and a success
    writes ``params.yaml`` (so that it describes the params of the latest successful notebook run; the
    attempts log has each notebook's own values).

    Parameters
    ----------
    params_file
        The run recipe.
    only
        Notebook names (stems, e.g. ``["01_embed"]``) to run; default all, in order.
    overwrite
        Overrides the params file's ``overwrite`` (recompute results made from other inputs).
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
        When a notebook fails: names the notebook, the cell and the error, and where the failed attempt is
        kept (``failed/<name>.ipynb`` and ``.html``). Later notebooks are not run.
    PipelineInterrupted
        On Ctrl-C or SIGTERM while a notebook runs, once the attempt is recorded (a ``KeyboardInterrupt``).
    corelib.runs.guards.RunDirError
        Another run holds the run directory (its lock names the pid), or the folder cannot be written.
    """
    params = load_params(params_file)
    if overwrite is not None:
        params["overwrite"] = overwrite
    books = notebooks(notebook_dir)
    if not books:
        raise FileNotFoundError(f"No numbered notebooks (NN_name.ipynb) in {notebook_dir}.")
    declared = {nb.stem: declared_parameters(nb) for nb in books}
    check_params(params, declared)
    defaults = {nb.stem: notebook_defaults(nb) for nb in books}
    check_types(params, defaults)
    missing = sorted(set(only or ()) - set(declared))
    if missing:
        raise ValueError(f"Unknown notebooks {_names(missing)}; available: {_names(declared)}.")
    names = [name for name in declared if not only or name in only]
    check_data(params, {name: defaults[name] for name in names}, declared)
    run_dir = open_run(params.get("run_dir"), params.get("run_name", "demo"), bool(params.get("overwrite")))
    try:
        with run_lock(run_dir.root), sigterm_as_interrupt():
            chosen = [nb for nb in books if nb.stem in names]
            for number, nb in enumerate(chosen, 1):
                print(f"[{number}/{len(chosen)}] running {nb.stem}", flush=True)
                values = {
                    **notebook_parameters(params, nb.stem, declared[nb.stem]),
                    "run_dir": str(run_dir.root),
                }
                attempt = run_notebook(nb, run_dir, values, params_file=Path(params_file), progress=progress)
                print(
                    f"[{number}/{len(chosen)}] {nb.stem}: {attempt.status} in {attempt.seconds:.0f} s",
                    flush=True,
                )
                if attempt.status == "ok":
                    with atomic_write(run_dir.path("params")) as fh:
                        yaml.safe_dump(params, fh, sort_keys=False)
                write_index(run_dir, list(declared))
                _raise_unless_ok(run_dir, attempt)
    except OSError as err:  # a write cut short (a full disk) names no file: name the run directory
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(run_dir.root)) from err
        raise
    return run_dir


def _raise_unless_ok(run_dir: RunDir, attempt: Attempt) -> None:
    """:class:`PipelineError` or :class:`PipelineInterrupted` for an attempt that did not succeed."""
    if attempt.status == "ok":
        return
    name = attempt.notebook
    kept = f"{run_dir.locate('failed_notebook', name)} (HTML: {run_dir.locate('failed_html', name)})"
    if attempt.status == "interrupted":
        stop = PipelineInterrupted(
            f"notebook {name} stopped after {attempt.seconds:.0f} s ({attempt.error}); its partial notebook is "
            f"kept at {kept}. Finished steps stay in {run_dir.root}: run again to continue from them."
        )
        if attempt.error == TERMINATED:
            stop.exit_code = Terminated.exit_code
        raise stop
    if "[Errno 28]" in (attempt.error or ""):  # ENOSPC in the kernel or in papermill: say it plainly
        kept += ".\n" + describe_os_error(OSError(errno.ENOSPC, "No space left on device", str(run_dir.root)))
    raise PipelineError(
        f"Notebook {name} failed: {attempt.error}\nThe failed attempt is kept at {kept}; the last good "
        f"outputs in {run_dir.root / 'notebooks'} and {run_dir.root / 'html'} are unchanged."
    )


def run_notebook(
    notebook: Path, run_dir: RunDir, values: dict[str, Any], *, params_file: Path, progress: bool = True
) -> Attempt:
    """Execute one notebook as an attempt, keep its outputs where they belong, and record it.

    The notebook runs into ``failed/<name>.ipynb`` (in the folder above ``notebook``, the repository
    root, as its working directory). On success it moves to ``notebooks/<name>.ipynb`` and is rendered to
    ``html/<name>.html``: the last good outputs change only then. Otherwise it stays, rendered to
    ``failed/<name>.html``; after Ctrl-C its cells that did not finish say so in papermill's metadata
    (``interrupted``, ``pending``) instead of ``completed``. The attempt is appended to ``attempts.jsonl``
    first, so that a failure to render (a full disk) never loses it.

    Parameters
    ----------
    notebook
        The notebook to run.
    run_dir
        The run directory.
    values
        Values for its ``parameters`` cell.
    params_file
        Where the values came from (recorded).
    progress
        Show papermill's cell progress bar.
    """
    name = notebook.stem
    out = run_dir.path("failed_notebook", name)
    run_dir.path("failed_html", name).unlink(missing_ok=True)
    started, clock = datetime.now().astimezone(), time.perf_counter()
    status, error = _execute(notebook, out, values, progress)
    seconds = round(time.perf_counter() - clock, 1)
    attempt = Attempt(
        name,
        status,
        started.isoformat(timespec="seconds"),
        seconds,
        values,
        str(params_file.resolve()),
        error,
    )
    with open(run_dir.path("attempts"), "a", encoding="utf-8") as fh:  # append-only, on disk before the pages
        fh.write(json.dumps(asdict(attempt), default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if status == "ok":
        render_html(out.replace(run_dir.path("notebook", name)), run_dir.path("html", name))
        with contextlib.suppress(OSError):  # failed/ stays only while it holds a failed attempt
            out.parent.rmdir()
    elif out.exists():
        try:
            if status == "interrupted":
                mark_unfinished_cells(out)
            render_html(out, run_dir.path("failed_html", name))
        except ValueError as err:  # papermill could not finish writing it (a full disk): the attempt says why
            warnings.warn(f"{out} is incomplete and was not rendered ({err}).", stacklevel=2)
    return attempt


def _execute(notebook: Path, out: Path, values: dict[str, Any], progress: bool) -> tuple[str, str | None]:
    """Run ``notebook`` into ``out`` with papermill; ``(status, error)`` as in :class:`Attempt`. Its kernel is
    marked as the pipeline's: it takes nothing from ``params.yaml`` (:mod:`corelib.runs.by_hand`)."""
    import papermill as pm

    try:
        with pipeline_kernels():
            pm.execute_notebook(
                str(notebook),
                str(out),
                parameters=values,
                kernel_name="python3",
                cwd=str(Path.cwd()),  # relative paths mean what they meant to the caller
                progress_bar=progress,
                extra_arguments=KERNEL_ARGUMENTS,
            )
    except pm.PapermillExecutionError as err:
        return "failed", f"{err.ename}: {err.evalue} (cell {err.exec_count})"
    except KeyboardInterrupt as err:
        return "interrupted", TERMINATED if isinstance(err, Terminated) else INTERRUPTED
    except Exception as err:  # the kernel died or did not start
        return "failed", f"{type(err).__name__}: {err}"
    return "ok", None


def read_attempts(run_dir: RunDir) -> list[dict[str, Any]]:
    """The attempts recorded in ``attempts.jsonl``, oldest first (fields of :class:`Attempt`)."""
    path = run_dir.locate("attempts")
    if not path.exists():
        return []
    attempts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            attempts.append(json.loads(line)) if line.strip() else None
        except json.JSONDecodeError:  # cut short by a kill or a full disk: the other attempts still count
            warnings.warn(f"{path}, line {number}: not a complete record, skipped.", stacklevel=2)
    return attempts


def check_params(params: dict[str, Any], declared: dict[str, set[str]]) -> None:
    """Reject params that no notebook declares (typos) and sections for notebooks that do not exist."""
    unknown_books = sorted(set(params["notebooks"]) - set(declared))
    if unknown_books:
        raise ValueError(
            f"params 'notebooks' names {_names(unknown_books)}, but the notebooks are {_names(declared)}."
        )
    for name in params["notebooks"]:
        notebook_parameters(params, name, declared[name])


def check_data(
    params: dict[str, Any], defaults: Mapping[str, Mapping[str, Any]], declared: dict[str, set[str]]
) -> None:
    """Pre-flight before any notebook runs: :func:`corelib.runs.preflight.check` on the settings of the notebooks
    in ``defaults`` (``{name: its parameters cell's defaults}``, :func:`~corelib.runs.params.notebook_defaults`)
    overridden by the params file."""
    settings = {
        name: {**values, **notebook_parameters(params, name, declared[name])}
        for name, values in defaults.items()
    }
    preflight.check(settings)


def write_index(run_dir: RunDir, names: Sequence[str]) -> Path:
    """Write ``index.html``: every notebook with its latest attempt and links, and the atlas when present.

    Parameters
    ----------
    run_dir
        The run directory.
    names
        Every notebook of the pipeline, in order. Each row gives the status of its latest attempt (ok,
        failed, interrupted; "never run"), when it started and how long it ran, its error, a link to the
        last good HTML and one to the failed attempt when they exist.
    """
    latest = {a["notebook"]: a for a in read_attempts(run_dir)}
    rows = "\n".join(_index_row(run_dir, name, latest.get(name)) for name in names)
    atlas = run_dir.locate("atlas")
    atlas_link = '<p><a href="atlas/index.html">Concept atlas</a></p>' if atlas.exists() else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Run report</title>"
        f"<style>{REPORT_CSS}</style></head><body>"
        f"<h1>Run {html_lib.escape(run_dir.root.name)}</h1>{run_summary(run_dir)}{claims_section(run_dir)}"
        "<h2>Notebooks</h2><table>"
        "<tr><th>notebook</th><th>latest status</th><th>started</th><th>seconds</th><th>pages</th></tr>"
        f"{rows}</table>{atlas_link}</body></html>"
    )
    out = run_dir.path("report")
    with atomic_write(out) as fh:
        fh.write(page)
    return out


def _index_row(run_dir: RunDir, name: str, attempt: dict[str, Any] | None) -> str:
    """One ``<tr>`` of ``index.html`` (see :func:`write_index`)."""
    good = run_dir.locate("html", name).exists()
    status = attempt["status"] if attempt else ("not recorded" if good else "never run")
    if attempt and attempt["error"]:
        status += f": {attempt['error']}"
    text = [name, status, *((attempt["started"], f"{attempt['seconds']:.0f}") if attempt else ("", ""))]
    links = [
        f'<a href="{folder}/{html_lib.escape(name)}.html">{label}</a>'
        for exists, folder, label in (
            (good, "html", "last good run"),
            (run_dir.locate("failed_html", name).exists(), "failed", "failed attempt"),
        )
        if exists
    ]
    cells = [*(html_lib.escape(t) for t in text), " | ".join(links)]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
