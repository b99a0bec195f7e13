"""Optional dependencies: an import that names the extra to install when its package is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

#: The pyproject extra that installs each optional top-level package.
EXTRAS = {
    "scvi": "scvi",
    "distributed": "dask",
    "dask": "dask",
    "ipywidgets": "lab",
    "pdoc": "docs",
    "scib_metrics": "batch",
    "harmonypy": "batch",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or fail with what needs it and the ``pip install`` that provides it.

    Parameters
    ----------
    module
        A dotted module name whose top-level package is in :data:`EXTRAS`, e.g. ``"scvi.module"``.
    purpose
        What needs it, as the start of a sentence, e.g. ``"Training an scVI encoder"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS[module.split(".")[0]]
        raise ImportError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed here: pip install "
            f"'corelib[{extra}]' (a checkout: make setup installs every extra)."
        ) from err
