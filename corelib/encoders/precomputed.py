"""A precomputed embedding in place of a model (``model: precomputed``, ``embedding_key``: an ``obsm`` key).

CELLxGENE Census and most atlases ship embeddings (scVI, Geneformer, UCE, scGPT) without the weights that made
them. :class:`Precomputed` is the run's "encoder" then: not a ``torch.nn.Module`` but a record of the ``obsm``
key, the embedding's size and a SHA-256 of its content. The SAEs, their characterisation, probes and stability
need only the embedding; what runs cells through the model (counterfactual attribution, deletion curves,
steering, the random-weight encoder null) checks :attr:`Precomputed.has_model` and says :data:`NO_MODEL`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
from numpy.lib.format import open_memmap

from corelib._io import atomic_write
from corelib.datasets import check_embedding
from corelib.datasets._embedding import BLOCK_ROWS
from corelib.encoders.base import CONFIG_FILE

#: The model name of a precomputed embedding in params files and records.
NAME = "precomputed"

#: Why the steps that need the model are absent, said once where each would run.
NO_MODEL = "the run has no model (model: precomputed)"


@dataclass(frozen=True)
class Precomputed:
    """The embedding ``adata.obsm[key]`` standing in for an encoder (:func:`from_adata`).

    Attributes
    ----------
    key
        The ``obsm`` key.
    dim
        Its number of dimensions.
    n_cells
        Its number of rows (cells).
    sha256
        SHA-256 of its float32 values, row-major: which embedding the run was made from.
    """

    key: str
    dim: int
    n_cells: int
    sha256: str
    name: ClassVar[str] = NAME
    has_model: ClassVar[bool] = False

    def config(self) -> dict[str, Any]:
        """The record written by :func:`save`."""
        return asdict(self)

    def decoder_absent(self) -> str:
        """Why a concept cannot be steered (decoded back to genes): there is no model."""
        return f"{NO_MODEL}: no decoder to steer concepts with"

    def describe(self) -> str:
        """One sentence on what the run embeds with."""
        return (
            f"{NAME}: obsm[{self.key!r}], {self.n_cells:,} cells x {self.dim} dimensions (SHA-256 "
            f"{self.sha256[:12]}); {NO_MODEL}, so the steps that run cells through a model are absent"
        )


def _blocks(emb_ND: Any) -> Any:
    """The rows of a (possibly memory-mapped or backed) embedding as float32 blocks of :data:`BLOCK_ROWS`."""
    for start in range(0, emb_ND.shape[0], BLOCK_ROWS):
        yield start, np.ascontiguousarray(emb_ND[start : start + BLOCK_ROWS], dtype=np.float32)


def from_adata(adata: ad.AnnData, key: str) -> Precomputed:
    """Check ``adata.obsm[key]`` (:func:`corelib.datasets.check_embedding`) and record it."""
    n_cells, dim = check_embedding(adata, key)
    digest = hashlib.sha256()
    for _, block_BD in _blocks(adata.obsm[key]):
        digest.update(block_BD.tobytes())
    return Precomputed(key=key, dim=dim, n_cells=n_cells, sha256=digest.hexdigest())


def embed(
    record: Precomputed, adata: ad.AnnData, *, out: str | os.PathLike | None = None
) -> tuple[np.ndarray, str]:
    """Copy ``adata.obsm[record.key]`` as float32 (into the ``.npy`` ``out`` block by block, when given).

    Returns
    -------
    ``(emb_ND, sha256)``: the copy (a read-only memory map when ``out`` is given) and the SHA-256 of its content,
    which differs from ``record.sha256`` when the cells are not those the record was made from.
    """
    emb_ND = adata.obsm[record.key]
    shape = (adata.n_obs, emb_ND.shape[1])
    copy_ND = np.empty(shape, np.float32) if out is None else open_memmap(out, "w+", np.float32, shape)
    digest = hashlib.sha256()
    for start, block_BD in _blocks(emb_ND):
        copy_ND[start : start + block_BD.shape[0]] = block_BD
        digest.update(block_BD.tobytes())
    if out is not None:
        copy_ND.flush()
        del copy_ND
        copy_ND = np.asarray(np.load(out, mmap_mode="r"))
    return copy_ND, digest.hexdigest()


def save(record: Precomputed, directory: str | os.PathLike) -> Path:
    """Write ``record`` as ``encoder.json`` (no weights: there is no model)."""
    directory = Path(directory)
    with atomic_write(directory / CONFIG_FILE) as fh:
        json.dump({"class": "Precomputed", "config": record.config()}, fh, indent=1)
    return directory


def is_precomputed(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a :class:`Precomputed` record (written by :func:`save`)."""
    path = Path(directory) / CONFIG_FILE
    return path.exists() and json.loads(path.read_text())["class"] == "Precomputed"


def restore(config: dict[str, Any]) -> Precomputed:
    """The record of an ``encoder.json`` written by :func:`save` (its ``config``)."""
    return Precomputed(**config)
