"""Device selection: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a ``torch.device``.

    Parameters
    ----------
    device
        ``"auto"`` or None (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a
        ``torch.device``.

    Returns
    -------
    The device to use.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'."
        )
    return dev


#: Models with at most this many weights train with one CPU thread (see :func:`small_model_threads`).
SMALL_MODEL = 2_000_000


@contextlib.contextmanager
def small_model_threads(
    device: torch.device, n_weights: int, limit: int = SMALL_MODEL, *, threads: int | None = None
) -> Iterator[None]:
    """Use one intra-op CPU thread while training a small model, then restore the setting.

    A training step of a small model (an SAE on 50-d embeddings, the scVI of the demo) is many small
    operations; with several threads each ends in a barrier, and where the cores are shared the threads
    spin against each other (measurements: ``docs/decisions.md``).

    Parameters
    ----------
    device
        The training device; nothing changes off the CPU.
    n_weights
        Number of trainable weights of the model.
    limit
        Models up to this size get one thread.
    threads
        Use exactly this many CPU threads instead (on a machine known to be otherwise idle, e.g. the demo).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None (one thread for small models), got {threads}.")
    before = torch.get_num_threads()
    if device.type == "cpu" and (threads is not None or n_weights <= limit):
        torch.set_num_threads(threads or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
