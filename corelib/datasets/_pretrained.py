"""Pretrained encoders shipped with corelib, in ``corelib/datasets/pretrained/<name>/``.

Each folder holds an encoder checkpoint (``encoder.json`` + ``encoder.safetensors``, the format of
``corelib.encoders.save``: no pickle) and ``record.json``: how it was made (recipe, command, library
versions, training record) and the sha256 of each checkpoint file, checked by :func:`pretrained`.
A params file names one as ``model_path: bundled:<name>``.

``pbmc3k_scvi``
    The scVI of the demo (``params/demo.yaml``), trained on the bundled pbmc3k to convergence by
    ``python -m corelib pretrain-demo`` (``corelib.encoders.pretrained.train_demo``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from corelib.datasets._bundled import bundled_path

#: The prefix of a params file's ``model_path`` that names a bundled pretrained encoder.
BUNDLED_PREFIX = "bundled:"
#: The record beside each bundled checkpoint: how it was made and its files' sha256.
RECORD_FILE = "record.json"
#: How a bundled checkpoint is rebuilt (its record says the same; SOURCES.md documents it).
REPRODUCE = "python -m corelib pretrain-demo corelib/datasets/pretrained/{name} (make demo-encoder)"


def pretrained_names() -> list[str]:
    """The names of the bundled pretrained encoders (folders of ``corelib/datasets/pretrained``)."""
    root = bundled_path("pretrained")
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_record(name: str) -> dict[str, Any]:
    """The ``record.json`` of a bundled pretrained encoder (recipe, versions, training, sha256); unchecked."""
    return json.loads((_folder(name) / RECORD_FILE).read_text())


def pretrained(name: str) -> Path:
    """The folder of a bundled pretrained encoder, its files checked against their recorded sha256.

    Pass it as a model path: ``corelib.encoders.load("scvi", path=pretrained("pbmc3k_scvi"))``, or write
    ``model_path: bundled:pbmc3k_scvi`` in a params file.

    Parameters
    ----------
    name
        A bundled encoder (:func:`pretrained_names`), e.g. ``"pbmc3k_scvi"``.

    Raises
    ------
    FileNotFoundError
        No such bundled encoder, or one of its files is missing; the message lists the names and says how to
        rebuild it.
    ValueError
        A file's sha256 differs from its record (damaged or replaced); the message names the file.
    """
    folder = _folder(name)
    record = pretrained_record(name)
    for file, expected in record["sha256"].items():
        path = folder / file
        if not path.exists():
            raise FileNotFoundError(
                f"the bundled encoder {name!r} lacks {path}; reinstall corelib or rebuild it: "
                f"{REPRODUCE.format(name=name)}."
            )
        if sha256_file(path) != expected:
            raise ValueError(
                f"{path} is damaged: its sha256 is not the one in {folder / RECORD_FILE}. Reinstall corelib "
                f"(git checkout of that folder) or rebuild it: {REPRODUCE.format(name=name)}."
            )
    return folder


def resolve_bundled(value: str) -> str:
    """``bundled:<name>`` -> the folder of that pretrained encoder (checked, :func:`pretrained`); other
    values are returned as they are."""
    if not value.startswith(BUNDLED_PREFIX):
        return value
    return str(pretrained(value.removeprefix(BUNDLED_PREFIX)))


def _folder(name: str) -> Path:
    """The folder of a bundled encoder holding its record, or a FileNotFoundError naming the ones there are."""
    folder = bundled_path(f"pretrained/{name}")
    if not (folder / RECORD_FILE).exists():
        known = ", ".join(pretrained_names()) or "none"
        raise FileNotFoundError(
            f"no bundled pretrained encoder {name!r} (no {folder / RECORD_FILE}); bundled: {known}. "
            f"Rebuild it with {REPRODUCE.format(name=name)}, or set model_path to your own model directory."
        )
    return folder
