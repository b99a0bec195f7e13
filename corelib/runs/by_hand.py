"""Notebooks run by hand (JupyterLab, ``jupyter nbconvert --execute``, papermill with only ``run_dir``) take
the parameters they were not given from their run's ``params.yaml``.

The pipeline injects every value into a notebook and marks its kernels (:func:`pipeline_kernels`); there
:func:`saved_parameters` does nothing, since ``params.yaml`` may still hold an older run's params then (it
is rewritten only after a notebook succeeds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corelib.runs.layout import DEFAULT_ROOT, LAYOUT
from corelib.runs.params import NOTEBOOK_DIR, load_params, notebook_defaults, notebook_parameters

#: Set in the environment of the kernels the pipeline starts (they inherit it).
PIPELINE_ENV = "CORELIB_PIPELINE"

#: Never taken from ``params.yaml``: where the run is (it is how the file was found) and whether to replace
#: results made from other inputs (a choice of each run, not part of its recipe).
NOT_TAKEN = frozenset({"run_dir", "overwrite"})


@contextmanager
def pipeline_kernels() -> Iterator[None]:
    """Mark the kernels started inside this block as the pipeline's, so that they ignore ``params.yaml``."""
    before = os.environ.get(PIPELINE_ENV)
    os.environ[PIPELINE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[PIPELINE_ENV]
        else:
            os.environ[PIPELINE_ENV] = before


def saved_parameters(notebook: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a notebook run by hand was not given, from its run's ``params.yaml``.

    A name of the notebook's ``parameters`` cell whose value is still the cell's default counts as not given
    (a value given equal to the default cannot be told apart from it): the run's value replaces it, from the
    common keys or the notebook's own section, as the pipeline would inject it. The run directory is found as
    :func:`~corelib.runs.open_run` finds it, or, when that folder does not exist, relative to the repository
    root (JupyterLab starts notebooks in ``notebooks/``); then ``run_dir`` names the folder found, on a second
    printed line. Prints a line saying what was taken from which file, or that there is no such file. In a
    kernel of the pipeline (:func:`pipeline_kernels`) it does nothing.

    Parameters
    ----------
    notebook
        The notebook's name, e.g. ``"02_sae_scale_sweep"``: its file in ``notebooks/`` holds the defaults.
    values
        The notebook's current values (``globals()``).

    Returns
    -------
    The values to change; the notebook applies them with ``globals().update(...)``.
    """
    if os.environ.get(PIPELINE_ENV):
        return {}
    defaults = notebook_defaults(NOTEBOOK_DIR / f"{notebook}.ipynb")
    given = Path(values.get("run_dir") or DEFAULT_ROOT / values.get("run_name", "demo"))
    root = given
    checkout = NOTEBOOK_DIR.parents[1]  # the repository root, where ``runs/`` is, when corelib is a checkout
    if not given.is_absolute() and not given.exists() and (checkout / given).exists():
        root = checkout / given
    path = root / LAYOUT["params"]
    if not path.exists():
        print(f"No {path}: this notebook uses its parameters cell's values.")
        return {}
    saved = notebook_parameters(load_params(path), notebook, set(defaults))
    taken = {
        name: value
        for name, value in saved.items()
        if name not in NOT_TAKEN
        and name in values
        and values[name] == defaults[name]
        and value != values[name]
    }
    names = ", ".join(taken) or "nothing (every value was given or is the same)"
    print(f"Taken from {path.resolve()}: {names}.")
    if root != given:
        taken["run_dir"] = str(root.resolve())
        print(
            f"run_dir = {taken['run_dir']} ({given} is relative to the repository root, not to {Path.cwd()})."
        )
    return taken
