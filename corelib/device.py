"""Device selection: CUDA when present, the CPU otherwise."""

from __future__ import annotations

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
