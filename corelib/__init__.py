"""Interpretable concepts in single-cell foundation models: ``import corelib as cl``.

``cl.tl`` computes, ``cl.pl`` plots, ``cl.runs`` knows the run directory (layout, cache, pipeline),
``cl.explorer`` builds concept cards, labels, the blinded study and the atlas, ``cl.encoders`` embeds cells
and ``cl.datasets`` loads them; ``cl.cluster`` opens a Dask client for per-concept work. Subpackages are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cluster", "datasets", "encoders", "explorer", "pl", "runs", "tl"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"corelib.{name}")
    raise AttributeError(f"module 'corelib' has no attribute {name!r}")
