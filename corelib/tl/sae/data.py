"""Training cells read from an on-disk array (``np.memmap``, ``.npy`` opened with ``mmap_mode="r"``, zarr).

An atlas's embedding need not fit in memory: :class:`DiskCells` reads it in contiguous chunks of rows.
Training draws, per epoch, a seeded permutation of the chunks, loads ``buffer_chunks`` of them at a time,
shuffles the rows of that buffer and cuts it into minibatches ("shuffled chunks"); evaluation passes over the
chunks in order. Memory holds one buffer (``buffer_chunks * chunk_rows`` rows) plus the row indices of the
split (8 bytes per cell), never the whole array.

With one chunk holding every row, the buffer is the whole training set in row order and its shuffle is the
in-memory trainer's permutation: both give the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from corelib.tl.sae.evaluate import metrics_of_blocks
from corelib.tl.sae.model import TopKSAE

#: Rows per chunk read from disk (64k rows of d=50 float32: 13 MB).
CHUNK_ROWS = 65536
#: Chunks shuffled together in one buffer.
BUFFER_CHUNKS = 4
#: Cells per forward pass when evaluating (as :func:`corelib.tl.sae.metrics`'s default batch size).
EVAL_ROWS = 8192
#: Rows :func:`corelib.tl.sae.geometric_median` uses at most (its ``n_sample``): read only these from disk.
MEDIAN_SAMPLE = 4096


def is_on_disk(embeddings: object) -> bool:
    """True for arrays that :class:`DiskCells` reads in chunks: ``np.memmap`` and zarr arrays."""
    return isinstance(embeddings, np.memmap) or type(embeddings).__module__.split(".")[0] == "zarr"


def check_store(store: object, d_in: int | None = None) -> object:
    """Check the shape of an on-disk embedding (values are checked chunk by chunk as they are read)."""
    shape = tuple(store.shape)
    if len(shape) != 2:
        raise ValueError(f"Embeddings must be 2-D (n_cells x d), got shape {shape}.")
    if d_in is not None and shape[1] != d_in:
        raise ValueError(
            f"Embeddings have {shape[1]} dimensions but the SAE expects {d_in}: use the embedding the SAE was "
            "trained on (same model and obsm key)."
        )
    return store


class DiskCells:
    """The rows ``rows_R`` (sorted) of an on-disk cells x d array, read in chunks of ``chunk_rows`` rows.

    Parameters
    ----------
    store
        A 2-D ``np.memmap`` or zarr array (cells x d); read, never written.
    rows_R
        Sorted row indices of the cells to use (e.g. the training split).
    chunk_rows
        Rows per contiguous read (align it with the zarr chunks for zarr stores).
    buffer_chunks
        Chunks whose rows are shuffled together when training.
    """

    def __init__(
        self,
        store: object,
        rows_R: np.ndarray,
        *,
        chunk_rows: int = CHUNK_ROWS,
        buffer_chunks: int = BUFFER_CHUNKS,
    ) -> None:
        if chunk_rows < 1 or buffer_chunks < 1:
            raise ValueError(
                f"chunk_rows and buffer_chunks must be positive, got {chunk_rows} and {buffer_chunks}."
            )
        self.store, self.rows_R = store, np.asarray(rows_R, dtype=np.int64)
        self.chunk_rows, self.buffer_chunks = int(chunk_rows), int(buffer_chunks)
        n_total = int(store.shape[0])
        self._bounds = np.searchsorted(self.rows_R, np.arange(0, n_total + chunk_rows, chunk_rows))

    def __len__(self) -> int:
        return len(self.rows_R)

    @property
    def n_chunks(self) -> int:
        """Number of chunks of the whole array (some may hold none of ``rows_R``)."""
        return len(self._bounds) - 1

    def chunk(self, i: int) -> Tensor:
        """The selected rows of chunk ``i``, float32 (rows x d); raises on NaN or infinite values."""
        start = i * self.chunk_rows
        x_RD = np.asarray(self.store[start : start + self.chunk_rows], dtype=np.float32)
        x_RD = x_RD[self.rows_R[self._bounds[i] : self._bounds[i + 1]] - start]
        bad = ~np.isfinite(x_RD).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} cells in rows {start}..{start + self.chunk_rows - 1} of the on-disk "
                "embeddings have NaN or infinite values: fix the embedding step or drop those cells."
            )
        return torch.from_numpy(x_RD)

    def blocks(self) -> Iterator[Tensor]:
        """The selected rows chunk by chunk, in row order."""
        for i in range(self.n_chunks):
            if self._bounds[i + 1] > self._bounds[i]:
                yield self.chunk(i)

    def median_sample(self) -> Tensor:
        """The evenly spaced cells that :func:`corelib.tl.sae.geometric_median` reads of these cells (so that
        ``init_sae`` gets the in-memory trainer's ``b_dec``), read row by row from disk."""
        idx = self.rows_R[:: max(1, len(self) // MEDIAN_SAMPLE)]
        read = getattr(self.store, "oindex", self.store)  # zarr selects rows by integer array through oindex
        return torch.from_numpy(np.asarray(read[idx], dtype=np.float32))

    @cached_property
    def mean_D(self) -> Tensor:
        """Per-dimension mean of the cells, float64 (one pass, kept: R^2 needs it every epoch)."""
        return sum(x.double().sum(0) for x in self.blocks()) / len(self)

    def batches(self, batch_size: int, gen: torch.Generator, rng: np.random.Generator) -> Iterator[Tensor]:
        """One epoch of shuffled-chunk minibatches.

        Chunks in the order ``rng.permutation``; ``buffer_chunks`` at a time are loaded and their rows
        permuted with ``torch.randperm(generator=gen)``; the rows left over after the last full batch of a
        buffer join the next buffer, so every batch but the epoch's last has ``batch_size`` cells.
        """
        order = rng.permutation(self.n_chunks)
        carry_BD = None
        for s in range(0, len(order), self.buffer_chunks):
            parts = [self.chunk(i) for i in order[s : s + self.buffer_chunks]]
            buf_RD = torch.cat(parts if carry_BD is None else [carry_BD, *parts])
            buf_RD = buf_RD[torch.randperm(buf_RD.shape[0], generator=gen)]
            last = s + self.buffer_chunks >= len(order)
            n_full = buf_RD.shape[0] if last else buf_RD.shape[0] // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield buf_RD[b : min(b + batch_size, n_full)]
            carry_BD = buf_RD[n_full:]


def streamed_metrics(sae: TopKSAE, cells: DiskCells) -> dict:
    """:func:`corelib.tl.sae.metrics` of cells on disk, one pass over the chunks (plus one for the mean, kept)."""
    if len(cells) < 2:
        raise ValueError(f"metrics needs at least 2 cells, got {len(cells)}.")
    dev = sae.W_dec_CD.device
    # forward passes on EVAL_ROWS cells at a time: a whole chunk's pre-activations would be chunk_rows x c
    outputs = ((a_BD, sae(a_BD)) for x in cells.blocks() for a_BD in x.to(dev).split(EVAL_ROWS))
    return metrics_of_blocks(sae, outputs, cells.mean_D, len(cells))
