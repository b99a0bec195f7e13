"""Run directories: the layout of every file of a run, the fingerprinted cache, the pipeline and its steps.

``corelib.runs.pipeline`` (papermill) and ``corelib.runs.preflight`` are imported on use: they are heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

from corelib.runs import prose, steps
from corelib.runs.by_hand import saved_parameters
from corelib.runs.cache import (
    FORMAT_VERSION,
    PROVENANCE_SUFFIX,
    DamagedOutputError,
    Known,
    Output,
    Provenance,
    StaleOutputError,
    cached,
    describe,
    fingerprint,
    provenance_path,
    read_provenance,
    record_provenance,
    reusable,
    verify_content,
)
from corelib.runs.layout import DEFAULT_ROOT, LAYOUT, RunDir, open_run
from corelib.runs.registry import STEPS, Step
from corelib.runs.steps import attribution_path, load_encoder, load_sae, restore_encoder

__all__ = [
    "pipeline",
    "preflight",
    "DEFAULT_ROOT",
    "FORMAT_VERSION",
    "Known",
    "LAYOUT",
    "Output",
    "PROVENANCE_SUFFIX",
    "Provenance",
    "RunDir",
    "STEPS",
    "StaleOutputError",
    "Step",
    "DamagedOutputError",
    "attribution_path",
    "cached",
    "describe",
    "fingerprint",
    "load_encoder",
    "load_sae",
    "open_run",
    "prose",
    "provenance_path",
    "read_provenance",
    "record_provenance",
    "restore_encoder",
    "reusable",
    "saved_parameters",
    "steps",
    "verify_content",
]


def __getattr__(name: str) -> Any:
    if name in ("pipeline", "preflight"):
        return importlib.import_module(f"corelib.runs.{name}")
    raise AttributeError(f"module 'corelib.runs' has no attribute {name!r}")
