"""The demo's pretrained scVI: how the bundled ``pbmc3k_scvi`` checkpoint is made (and remade).

:func:`train_demo` trains the scVI that ``params/demo.yaml`` trained before it was bundled (:data:`DEMO_RECIPE`:
the bundled pbmc3k, seed 0, on the CPU, to convergence by scvi-tools' early stopping), saves it in our
checkpoint format and writes ``record.json`` beside it (recipe, command, library versions, how training went,
each file's sha256). ``python -m corelib pretrain-demo <folder>`` (``make demo-encoder``) runs it;
``corelib.datasets.pretrained("pbmc3k_scvi")`` returns the shipped copy.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from corelib import datasets
from corelib._io import atomic_write
from corelib.encoders import scvi as _scvi
from corelib.encoders.base import CONFIG_FILE, WEIGHTS_FILE, save

#: The recipe of the bundled demo encoder: ``params/demo.yaml``'s dataset, seed and ``model_options``
#: (tests/test_pretrained.py checks that they agree), on the CPU.
DEMO_RECIPE: dict[str, Any] = {
    "dataset": "pbmc3k",
    "model": "scvi",
    "seed": 0,
    "device": "cpu",
    "model_options": {"early_stopping": True, "epochs": None, "n_latent": 50, "threads": 2},
}

#: The libraries whose versions the record keeps (the training's numerics depend on them).
VERSIONED = ("corelib", "scvi-tools", "torch", "lightning", "numpy")


def train_demo(directory: str | os.PathLike, *, progress: bool = True) -> Path:
    """Train the demo's scVI by :data:`DEMO_RECIPE` and write it, with its ``record.json``, to ``directory``.

    Parameters
    ----------
    directory
        Where to write ``encoder.json``, ``encoder.safetensors`` and ``record.json`` (created; files there
        are replaced).
    progress
        Show scvi-tools' training progress bar.

    Returns
    -------
    The directory.
    """
    adata = datasets.load(DEMO_RECIPE["dataset"])
    start = time.perf_counter()
    encoder = _scvi.train_encoder(
        adata,
        seed=DEMO_RECIPE["seed"],
        device=None,  # the CPU
        progress=progress,
        **DEMO_RECIPE["model_options"],
    )
    seconds = time.perf_counter() - start
    directory = save(encoder, directory)
    record = {
        "name": Path(directory).name,
        "what": _what(encoder.vae_kwargs, adata),
        "command": "python -m corelib pretrain-demo <folder>",
        "recipe": DEMO_RECIPE,
        "training": encoder.training_record,
        "training_seconds": round(seconds, 1),
        "versions": {name: metadata.version(name) for name in VERSIONED},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": {
            name: datasets.sha256_file(Path(directory) / name) for name in (CONFIG_FILE, WEIGHTS_FILE)
        },
    }
    with atomic_write(Path(directory) / datasets.RECORD_FILE) as fh:
        fh.write(json.dumps(record, indent=1) + "\n")
    return Path(directory)


def describe_source(model_path: str | os.PathLike | None) -> str:
    """Where a run's encoder came from, in one sentence: trained here, a bundled pretrained one (from its
    ``record.json``: what, recipe, library versions, command) or a model directory."""
    if model_path is None:
        return "trained here on this dataset (model_path: null), with the model_options of the params file"
    record_path = Path(model_path) / datasets.RECORD_FILE
    if not record_path.exists():
        return f"pretrained, loaded from {model_path}"
    record = json.loads(record_path.read_text())
    return (
        f"pretrained, bundled with corelib as {record['name']}: {record['what']}; seed {record['recipe']['seed']}, "
        f"scvi-tools {record['versions']['scvi-tools']}, torch {record['versions']['torch']}; "
        f"remade by `{record['command']}`"
    )


def _what(vae_kwargs: dict[str, Any], adata: Any) -> str:
    """The model and its training data in words, from its architecture and the dataset."""
    return (
        f"an scvi-tools SCVI ({vae_kwargs['n_layers']} layers of {vae_kwargs['n_hidden']} units, "
        f"{vae_kwargs['n_latent']} latent dimensions, {vae_kwargs['gene_likelihood'].upper()} likelihood) trained on "
        f"{adata.uns['dataset']['name']} ({adata.n_obs:,} cells x {adata.n_vars:,} genes, raw counts) until its "
        "validation ELBO stopped improving"
    )
