"""The run's encoder: trained or loaded once (notebook 01), restored by later notebooks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad

from corelib.runs.layout import RunDir


def load_encoder(
    run: RunDir,
    adata: ad.AnnData,
    *,
    model: str,
    model_path: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    random_init: bool = False,
    seed: int = 0,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The run's encoder: built once by :func:`corelib.encoders.load`, then read back from ``encoder``.

    Its provenance is the dataset's content, the model, the content of ``model_path`` and the settings; a
    later call with other ones stops with :class:`StaleOutputError` (or retrains, under ``overwrite``).
    Parameters are those of :func:`corelib.encoders.load` (``options`` = its ``**options``).
    """
    from corelib import encoders

    options = dict(options or {})
    inputs = {
        "data": adata,
        "model": str(model).lower(),
        "model_path": Path(model_path).resolve() if model_path is not None else None,
        "random_init": bool(random_init),
        "seed": int(seed),
        "model_options": options,
    }
    return run.cached(
        lambda: encoders.load(
            model,
            adata=adata,
            path=model_path,
            trust_pickle=trust_pickle,
            random_init=random_init,
            seed=seed,
            device=device,
            **options,
        ),
        "encoder",
        inputs=inputs,
        load=lambda path: encoders.restore(path, device=device),
        save=encoders.save,
    )


def restore_encoder(run: RunDir, *, device: str = "auto") -> Any:
    """The encoder that embedded the run's cells (notebook 01), checked against the embedding's record."""
    from corelib import encoders

    run.check_made_from("embedded", encoder=run.fingerprint("encoder"))
    return encoders.restore(run.path("encoder"), device=device)
