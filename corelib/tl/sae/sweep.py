"""Training a grid of Top-K SAEs on the same embeddings in one call (the scale sweep of notebook 02)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from corelib.device import resolve_device
from corelib.tl.sae import training
from corelib.tl.sae.evaluate import sae_name
from corelib.tl.sae.model import SAEConfig, as_embeddings
from corelib.tl.sae.training import TrainConfig, TrainResult

#: A sweep point: ``(n_concepts, k, seed)``, or ``(n_concepts, k)`` for seed 0.
Point = tuple[int, int] | tuple[int, int, int]


def sweep_points(points: Sequence[Point]) -> list[tuple[int, int, int]]:
    """Sweep points as ``(n_concepts, k, seed)`` ints (seed 0 where a point has none).

    Raises
    ------
    ValueError
        A point appears twice (named as :func:`sae_name` names its SAE).
    """
    out = [(int(p[0]), int(p[1]), int(p[2]) if len(p) > 2 else 0) for p in points]
    if len(set(out)) != len(out):
        repeated = sorted({sae_name(*p) for p in out if out.count(p) > 1})
        raise ValueError(f"Duplicate sweep points: {', '.join(repeated)}.")
    return out


def train_many(
    embeddings: object,
    points: Sequence[Point],
    *,
    lr: float = TrainConfig.lr,
    epochs: int = TrainConfig.epochs,
    batch_size: int = TrainConfig.batch_size,
    aux_k: int = TrainConfig.aux_k,
    holdout_fraction: float = TrainConfig.holdout_fraction,
    split_seed: int = 0,
    device: str | torch.device = "auto",
    fused: bool = False,
    progress: bool = True,
    on_trained: Callable[[int, TrainResult], None] | None = None,
    keep: bool = True,
) -> list[TrainResult]:
    """Train one Top-K SAE per sweep point on the same embeddings, with shared training settings.

    Each SAE is the one :func:`corelib.tl.sae.train` gives for its ``n_concepts``, ``k`` and ``seed`` with
    these settings (same initialisation, batch order, held-out cells and metrics).

    Parameters
    ----------
    embeddings
        Cells x d (numpy array or torch tensor).
    points
        ``(n_concepts, k, seed)`` (or ``(n_concepts, k)`` for seed 0), e.g. from :func:`grid`; no point twice.
    lr, epochs, batch_size, aux_k, holdout_fraction, split_seed
        See :class:`TrainConfig`; shared by every point.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    fused
        Train the points sharing a seed together (one pass over each batch, one optimiser step for the group):
        the same models as one by one (the default); it saves kernel launches where those dominate (small SAEs
        on a GPU), not on the CPU (``docs/decisions.md``).
    progress
        Progress bars (over the groups, and over the epochs of each).
    on_trained
        Called as ``on_trained(i, result)`` for each point ``points[i]`` as soon as its group is trained (e.g. to
        save it before the next group starts: an interrupted sweep keeps what it finished).
    keep
        Return the results. False: none is kept after ``on_trained`` has seen it, so a sweep that saves each
        SAE holds one group in memory at a time, not the whole grid.

    Returns
    -------
    One :class:`TrainResult` ``(sae, history, metrics)`` per point, in the order of ``points`` (none when
    ``keep`` is False).
    """
    x_ND = as_embeddings(embeddings)
    tcfg = TrainConfig(
        lr, epochs, batch_size, aux_k, holdout_fraction=holdout_fraction, split_seed=split_seed
    )
    todo = sweep_points(points)
    groups: dict[int, list[int]] = {}
    for i, (_, _, seed) in enumerate(todo):
        groups.setdefault(seed if fused else i, []).append(i)
    dev = resolve_device(device)
    results: dict[int, TrainResult] = {}
    for members in tqdm(list(groups.values()), desc="SAE groups", disable=not progress or len(groups) < 2):
        cfgs = [SAEConfig(x_ND.shape[1], todo[i][0], todo[i][1]) for i in members]
        seed = todo[members[0]][2]
        with training._cpu_threads(dev, cfgs, tcfg.batch_size):
            trained = training._train_group(x_ND, cfgs, tcfg, seed, dev, progress)
        for i, res in zip(members, trained, strict=True):
            if on_trained is not None:
                on_trained(i, res)
            if keep:
                results[i] = res
        del trained
    return [results[i] for i in sorted(results)]
