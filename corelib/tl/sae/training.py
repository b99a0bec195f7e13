"""Training a Top-K SAE with hand-written gradients.

- the main loss is the fraction of variance unexplained (``1 - R^2`` of the batch, per-dimension mean), so
  that one learning rate suits embeddings of any scale (scGPT's are L2-normalised, scVI's are not);
- AuxK (dead-latent revival) covers the *dead* latents only: the top ``min(aux_k, n_dead)`` of their
  pre-activations reconstruct the *detached* residual through the dictionary *without* ``b_dec``, normalised
  by the residual's variance, with weight 1/32. A latent is dead when it has not fired for ``dead_window``
  cells seen (default one epoch: scRNA-seq datasets are small, so a window in steps would be meaningless);
- after each step the dictionary's rows are renormalised and the gradient component parallel to each row is
  removed before the step;
- a held-out split (seeded) is kept aside for evaluation; training is deterministic under a seed on CPU;
- embeddings on disk (``np.memmap``, zarr) are never loaded whole: training reads shuffled chunks of rows and
  evaluation streams (:mod:`corelib.tl.sae.data`).

The gradients are computed by hand (:func:`loss_and_grads`, checked against autograd in the tests): only the
k selected concepts of a cell carry gradient, and skipping the autograd graph of many small operations matters
on the CPU. A grid of configurations sharing a seed shares its batch order, so they can be trained "fused"
(one pass over each batch, one optimiser step for the group) with results identical to one by one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from corelib.device import resolve_device, small_model_threads
from corelib.tl.sae._kernels import sparse_fit_rows
from corelib.tl.sae.data import (
    BUFFER_CHUNKS,
    CHUNK_ROWS,
    DiskCells,
    check_store,
    is_on_disk,
    streamed_metrics,
)
from corelib.tl.sae.evaluate import _sst, metrics, r2_score, split_metrics
from corelib.tl.sae.model import ForwardOutput, SAEConfig, TopKSAE, as_embeddings, init_sae, topk


@dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by all SAEs of a sweep (stored in ``cfg.json`` next to the weights).

    Attributes
    ----------
    lr
        Adam learning rate. The paper tunes it in 5e-5 .. 5e-4 on ~600k cells; it mainly controls the
        number of dead concepts.
    epochs
        Passes over the training cells.
    batch_size
        Cells per step (paper: 1024).
    aux_k
        Upper bound on the number of dead latents used by the AuxK loss (paper: 512).
    aux_weight
        Weight of the AuxK loss (Gao et al.: 1/32).
    dead_window
        A latent is dead when it has not fired for this many training cells; None means one epoch.
    holdout_fraction
        Share of cells kept aside for evaluation.
    split_seed
        Seed of the held-out split (the same for every SAE of a sweep, so their metrics are comparable).
    max_grad_norm
        Each SAE's gradient (after the dictionary's parallel component is removed) is scaled down to at most
        this L2 norm before the Adam step; None never clips. The loss is a fraction of variance, so its
        gradient norm is comparable across embeddings: it exceeds 1 in the first steps on embeddings of
        large variance, whose gradients would otherwise fill Adam's second moment for hundreds of steps
        (``docs/decisions.md``).
    """

    lr: float = 1e-3
    epochs: int = 300
    batch_size: int = 1024
    aux_k: int = 512
    aux_weight: float = 1 / 32
    dead_window: int | None = None
    holdout_fraction: float = 0.1
    split_seed: int = 0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}.")
        for field in ("epochs", "batch_size", "aux_k"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)!r}.")
        if self.dead_window is not None and self.dead_window < 1:
            raise ValueError(
                f"dead_window must be a positive number of cells or None, got {self.dead_window}."
            )
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}.")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be a positive number or None, got {self.max_grad_norm!r}.")


# ----------------------------------------------------------------------------------------------------------
# Losses and their gradients, written out (no autograd graph)
# ----------------------------------------------------------------------------------------------------------
class StepLosses(NamedTuple):
    """What :func:`loss_and_grads` returns: the forward pass and both loss terms (scalars)."""

    out: ForwardOutput
    fvu: Tensor
    auxk: Tensor


@torch.no_grad()
def loss_and_grads(
    sae: TopKSAE, a_BD: Tensor, dead_C: Tensor, *, aux_k: int, aux_weight: float
) -> StepLosses:
    """Training loss ``fvu + aux_weight * auxk`` of a batch, with its gradients written to the ``.grad`` of the
    four parameters (replacing what was there).

    - ``fvu``: fraction of variance unexplained of the batch, ``1 - R^2`` with the per-dimension mean (see
      :func:`r2_score`), so that one learning rate suits embeddings of any scale.
    - ``auxk``: AuxK (Gao et al. 2024, section A.2) over the *dead* latents only (``dead_C``, boolean (c,)):
      the top ``min(aux_k, n_dead)`` of their pre-activations, after the ReLU, reconstruct the residual
      ``e = a - a'`` through the dictionary *without* ``b_dec``; the squared error is divided by the
      residual's variance (per-dimension mean). The residual is a constant (detached): AuxK trains only the
      dead latents' encoder columns, their dictionary rows and the biases. Zero, and not computed, when
      nothing is dead.

    The gradients are the ones autograd gives for this loss (tests compare them), computed by hand because
    only the selected concepts of each cell carry gradient: the encoder's and the decoder's gradients are
    sums of k rows per cell (``index_add_``), never a batch x c matrix; no graph is recorded.

    Parameters
    ----------
    sae
        The model being trained.
    a_BD
        A batch of embeddings (batch x d), on the model's device.
    dead_C
        Which latents are dead (c,).
    aux_k, aux_weight
        See :class:`TrainConfig`.
    """
    W_enc_DC, b_enc_C, W_dec_CD, b_dec_D = sae.W_enc_DC, sae.b_enc_C, sae.W_dec_CD, sae.b_dec_D
    x_BD = a_BD - b_dec_D
    pre_acts_BC = torch.addmm(b_enc_C, x_BD, W_enc_DC)
    top_vals_BK, top_idx_BK = topk(pre_acts_BC, sae.k)
    grads = _Grads(torch.zeros_like(W_dec_CD), torch.zeros_like(b_enc_C), torch.zeros_like(W_dec_CD))
    fvu, decoded_BD, g_err_BD = _fit_and_grads(top_vals_BK, top_idx_BK, W_dec_CD, x_BD, x_BD, 1.0, grads)
    recon_BD = decoded_BD + b_dec_D
    auxk = _auxk_and_grads(a_BD - recon_BD, x_BD, pre_acts_BC, W_dec_CD, dead_C, aux_k, aux_weight, grads)
    W_enc_DC.grad = grads.W_enc_CD.T.contiguous()
    b_enc_C.grad = grads.b_enc_C
    W_dec_CD.grad = grads.W_dec_CD
    # b_dec is added after decoding and subtracted before encoding
    b_dec_D.grad = g_err_BD.sum(0) - W_enc_DC @ grads.b_enc_C
    out = ForwardOutput(recon_BD, top_vals_BK.clamp_min(0), top_idx_BK, pre_acts_BC)
    return StepLosses(out, fvu, auxk)


class _Grads(NamedTuple):
    """Gradient accumulators of a step, one row per concept: the encoder's is kept transposed (c x d) so that
    each selected concept adds a row."""

    W_enc_CD: Tensor
    b_enc_C: Tensor
    W_dec_CD: Tensor

    def add(self, idx_M: Tensor, g_pre_M: Tensor, g_enc_MD: Tensor, g_dec_MD: Tensor) -> None:
        """Add rows of gradient to the concepts ``idx_M`` (repeats are summed)."""
        self.W_enc_CD.index_add_(0, idx_M, g_enc_MD)
        self.b_enc_C.index_add_(0, idx_M, g_pre_M)
        self.W_dec_CD.index_add_(0, idx_M, g_dec_MD)


def _fit_and_grads(
    vals_BK: Tensor,
    idx_BK: Tensor,
    W_dec_CD: Tensor,
    target_BD: Tensor,
    x_BD: Tensor,
    weight: float,
    grads: _Grads,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised error of a sparse decode, ``L = ||sum_j ReLU(v_j) D[idx_j] - target||^2 / sst(target)``,
    where ``v = x W_enc[:, idx] + b_enc[idx]``.

    Adds ``weight`` times the gradients of ``L`` to ``grads`` in place: on the CPU in one compiled pass over
    the cells (:func:`corelib.tl.sae._kernels.sparse_fit_rows`), elsewhere with tensor operations
    (:func:`_fit_and_grads_tensors`).

    Returns
    -------
    ``L``, the decode (batch x d) and ``weight * dL/d(decode)`` (batch x d).
    """
    if vals_BK.device.type != "cpu" or vals_BK.dtype not in (torch.float32, torch.float64):
        return _fit_and_grads_tensors(vals_BK, idx_BK, W_dec_CD, target_BD, x_BD, weight, grads)
    decoded_BD, g_err_BD = torch.empty_like(target_BD), torch.empty_like(target_BD)
    arrays = (vals_BK, idx_BK, W_dec_CD, target_BD, x_BD)
    loss = sparse_fit_rows(
        *(t.detach().contiguous().numpy() for t in arrays),
        weight,
        *(g.numpy() for g in grads),
        decoded_BD.numpy(),
        g_err_BD.numpy(),
    )
    return target_BD.new_tensor(loss), decoded_BD, g_err_BD


def _fit_and_grads_tensors(
    vals_BK: Tensor,
    idx_BK: Tensor,
    W_dec_CD: Tensor,
    target_BD: Tensor,
    x_BD: Tensor,
    weight: float,
    grads: _Grads,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_fit_and_grads` with tensor operations (any device)."""
    acts_BK = vals_BK.clamp_min(0)
    rows_BKD = F.embedding(idx_BK, W_dec_CD)  # index_select: ~5x faster than W_dec_CD[idx_BK] on CPU
    decoded_BD = torch.bmm(acts_BK.unsqueeze(1), rows_BKD).squeeze(1)
    err_BD = decoded_BD - target_BD
    sst = _sst(target_BD).clamp_min(1e-12)
    g_err_BD = err_BD * (2 * weight / sst)
    # ReLU's derivative is sign(ReLU(v)): 1 where v > 0, else 0 (a float product; bool masks measured 5x slower).
    # A broadcast product and sum: 3x faster than a batched (k x d) @ (d x 1) product on the CPU.
    g_pre_BK = (rows_BKD * g_err_BD.unsqueeze(1)).sum(2) * acts_BK.sign()
    grads.add(
        idx_BK.flatten(),
        g_pre_BK.flatten(),
        (g_pre_BK.unsqueeze(2) * x_BD.unsqueeze(1)).flatten(0, 1),
        (acts_BK.unsqueeze(2) * g_err_BD.unsqueeze(1)).flatten(0, 1),
    )
    return err_BD.pow(2).sum() / sst, decoded_BD, g_err_BD


def _auxk_and_grads(
    residual_BD: Tensor,
    x_BD: Tensor,
    pre_acts_BC: Tensor,
    W_dec_CD: Tensor,
    dead_C: Tensor,
    aux_k: int,
    aux_weight: float,
    grads: _Grads,
) -> Tensor:
    """The AuxK term of :func:`loss_and_grads`; adds ``aux_weight`` times its gradients to ``grads``."""
    n_dead = int(dead_C.sum())
    if n_dead == 0:
        return residual_BD.new_zeros(())
    if aux_k < n_dead:
        vals_BK, idx_BK = pre_acts_BC.masked_fill(~dead_C, -torch.inf).topk(aux_k, dim=-1, sorted=False)
        return _fit_and_grads(vals_BK, idx_BK, W_dec_CD, residual_BD, x_BD, aux_weight, grads)[0]
    # Every dead latent is selected: no Top-K, and products over their columns instead of gathered rows.
    idx_N = dead_C.nonzero().squeeze(1)
    pre_BN, rows_ND = pre_acts_BC.index_select(1, idx_N), W_dec_CD.index_select(0, idx_N)
    acts_BN = pre_BN.clamp_min(0)
    err_BD = acts_BN @ rows_ND - residual_BD
    sst = _sst(residual_BD).clamp_min(1e-12)
    g_err_BD = err_BD * (2 * aux_weight / sst)
    g_pre_BN = (g_err_BD @ rows_ND.T) * acts_BN.sign()
    grads.add(idx_N, g_pre_BN.sum(0), g_pre_BN.T @ x_BD, acts_BN.T @ g_err_BD)
    return err_BD.pow(2).sum() / sst


def split_cells(n_cells: int, holdout_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n_cells)`` into (train, held-out) index arrays, each sorted."""
    perm = np.random.default_rng(split_seed).permutation(n_cells)
    n_held = int(round(n_cells * holdout_fraction))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes
    ----------
    sae
        The trained model (on the training device).
    history
        One row per epoch: ``epoch, cells_seen, loss, fvu, auxk, dead_fraction`` (training batches; dead =
        not fired over the dead window) and ``r2_heldout``.
    metrics
        :func:`split_metrics` of the final model plus ``seconds``.
    """

    sae: TopKSAE
    history: pd.DataFrame
    metrics: dict


def train(
    embeddings: object,
    n_concepts: int,
    k: int,
    *,
    lr: float = TrainConfig.lr,
    batch_size: int = TrainConfig.batch_size,
    aux_k: int = TrainConfig.aux_k,
    epochs: int = TrainConfig.epochs,
    seed: int = 0,
    device: str | torch.device = "auto",
    aux_weight: float = TrainConfig.aux_weight,
    dead_window: int | None = None,
    holdout_fraction: float = TrainConfig.holdout_fraction,
    split_seed: int = 0,
    max_grad_norm: float | None = TrainConfig.max_grad_norm,
    init: TopKSAE | None = None,
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    buffer_chunks: int = BUFFER_CHUNKS,
) -> TrainResult:
    """Train one Top-K SAE on cell embeddings.

    Parameters
    ----------
    embeddings
        Cells x d (numpy array or torch tensor), e.g. ``adata.obsm["X_scvi"]``; or an on-disk array
        (``np.load(path, mmap_mode="r")``, ``np.memmap``, a zarr array), trained from shuffled chunks without
        loading it (:class:`corelib.tl.sae.data.DiskCells`: another batch order than in memory, same seed
        rules).
    n_concepts, k
        Dictionary size c and active concepts per cell (k < c).
    lr, batch_size, aux_k, epochs, aux_weight, dead_window, holdout_fraction, split_seed, max_grad_norm
        See :class:`TrainConfig`.
    seed
        Seeds the initialisation and the batch order.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    init
        Start from this model instead of :func:`init_sae` (fine-tuning; a copy is trained).
    progress
        Show a progress bar over epochs.
    chunk_rows, buffer_chunks
        On-disk embeddings only: rows per contiguous read, and chunks shuffled together (memory holds
        ``chunk_rows * buffer_chunks`` cells).

    Returns
    -------
    :class:`TrainResult` ``(sae, history, metrics)``.
    """
    tcfg = TrainConfig(
        lr, epochs, batch_size, aux_k, aux_weight, dead_window, holdout_fraction, split_seed, max_grad_norm
    )
    d_in = None if init is None else init.cfg.d_in
    x_ND = check_store(embeddings, d_in) if is_on_disk(embeddings) else as_embeddings(embeddings, d_in)
    if init is not None:
        cfg = init.cfg
        if (cfg.n_concepts, cfg.k) != (n_concepts, k):
            raise ValueError(
                f"init has n_concepts={cfg.n_concepts}, k={cfg.k}; pass the same n_concepts and k."
            )
    else:
        cfg = SAEConfig(x_ND.shape[1], n_concepts, k)
    dev = resolve_device(device)
    with _cpu_threads(dev, [cfg], batch_size):
        return _train_group(
            x_ND, [cfg], tcfg, seed, dev, progress, init=init, chunks=(chunk_rows, buffer_chunks)
        )[0]


#: Training steps on at least this many pre-activations (batch x c) keep torch's CPU threads.
THREADED_STEP = 2**18


def _cpu_threads(
    device: torch.device, cfgs: Sequence[SAEConfig], batch_size: int
) -> contextlib.AbstractContextManager[None]:
    """One CPU thread while training small SAEs on small batches (:func:`corelib.device.small_model_threads`).

    A step whose batch x c pre-activation matrix has at least :data:`THREADED_STEP` entries keeps torch's
    threads: its Top-K and products are large enough to split; below, one thread is the safe choice on a
    shared machine (measurements: ``docs/decisions.md``).
    """
    if batch_size * max(c.n_concepts for c in cfgs) >= THREADED_STEP:
        return contextlib.nullcontext()
    return small_model_threads(device, max(c.n_concepts * c.d_in for c in cfgs))


def _check_cells(n_train: int, cfgs: Sequence[SAEConfig], tcfg: TrainConfig) -> None:
    """Clear errors when there are too few training cells for the requested SAEs."""
    k_max = max(c.k for c in cfgs)
    if n_train < max(k_max, 2):
        raise ValueError(
            f"Only {n_train} training cells (after holding out {tcfg.holdout_fraction:.0%}) for an SAE with "
            f"k={k_max}: an SAE needs more cells than active concepts per cell. Use more cells or a smaller k."
        )


def _train_group(
    x_ND: object,
    cfgs: Sequence[SAEConfig],
    tcfg: TrainConfig,
    seed: int,
    device: torch.device,
    progress: bool,
    init: TopKSAE | None = None,
    chunks: tuple[int, int] = (CHUNK_ROWS, BUFFER_CHUNKS),
) -> list[TrainResult]:
    """Train SAEs that share data, seed and settings: one pass over each batch, one optimiser step.

    Each SAE's gradients depend only on its own parameters and the batch, so the group's results equal those
    of one-by-one training. ``x_ND`` is a tensor, or an on-disk array read in ``chunks = (chunk_rows,
    buffer_chunks)`` (:class:`DiskCells`).
    """
    start = time.perf_counter()
    train_idx, held_idx = split_cells(x_ND.shape[0], tcfg.holdout_fraction, tcfg.split_seed)
    _check_cells(len(train_idx), cfgs, tcfg)
    if isinstance(x_ND, Tensor):
        x_train, x_held = x_ND[train_idx].to(device), x_ND[held_idx].to(device)
        median_sample = x_ND[train_idx]
    else:
        x_train, x_held = (
            DiskCells(x_ND, idx, chunk_rows=chunks[0], buffer_chunks=chunks[1])
            for idx in (train_idx, held_idx)
        )
        median_sample = x_train.median_sample()
    n_train = len(train_idx)
    window = tcfg.dead_window or n_train
    if init is not None:
        saes = [TopKSAE(init.cfg.d_in, init.cfg.n_concepts, init.cfg.k)]
        saes[0].load_state_dict({n: t.detach().cpu() for n, t in init.state_dict().items()})
    else:
        saes = [init_sae(cfg, median_sample, seed) for cfg in cfgs]
    saes = [s.to(device) for s in saes]
    opt = torch.optim.Adam([p for s in saes for p in s.parameters()], lr=tcfg.lr, fused=True)
    since_fired = [torch.zeros(s.cfg.n_concepts, dtype=torch.long, device=device) for s in saes]
    gen = torch.Generator().manual_seed(int(seed))
    chunk_rng = np.random.default_rng(int(seed))  # on-disk only: the chunk order, apart from ``gen``
    rows: list[list[dict]] = [[] for _ in saes]
    cells_seen = 0
    for epoch in tqdm(range(1, tcfg.epochs + 1), desc="SAE epochs", disable=not progress, leave=False):
        sums = torch.zeros(len(saes), 2, dtype=torch.float64, device=device)
        for a_BD in _epoch_batches(x_train, tcfg.batch_size, gen, chunk_rng, device):
            n_b = a_BD.shape[0]
            for i, sae in enumerate(saes):
                dead_C = since_fired[i] >= window
                step = loss_and_grads(sae, a_BD, dead_C, aux_k=tcfg.aux_k, aux_weight=tcfg.aux_weight)
                sums[i] += torch.stack([step.fvu, step.auxk]).double() * n_b
                _update_dead_counter(since_fired[i], step.out, n_b)
                _remove_parallel_grad(sae)
                if tcfg.max_grad_norm is not None:
                    _clip_gradient(sae, tcfg.max_grad_norm)
            opt.step()
            for sae in saes:
                _renormalise_dictionary(sae)
            cells_seen += n_b
        sums = (sums / n_train).cpu()
        for i, sae in enumerate(saes):
            fvu, aux = float(sums[i, 0]), float(sums[i, 1])
            rows[i].append(
                {
                    "epoch": epoch,
                    "cells_seen": cells_seen,
                    "loss": fvu + tcfg.aux_weight * aux,
                    "fvu": fvu,
                    "auxk": aux,
                    "dead_fraction": float((since_fired[i] >= window).float().mean()),
                    "r2_heldout": _r2_of(sae, x_held) if len(held_idx) > 1 else math.nan,
                }
            )
    seconds = (time.perf_counter() - start) / len(saes)
    results = []
    for sae, hist in zip(saes, rows, strict=True):
        sae.eval()
        measure = metrics if isinstance(x_train, Tensor) else streamed_metrics
        m = split_metrics(sae, x_train, x_held, measure=measure)
        results.append(TrainResult(sae, pd.DataFrame(hist), {**m, "seconds": seconds}))
    return results


def _epoch_batches(
    x_train: Tensor | DiskCells,
    batch_size: int,
    gen: torch.Generator,
    rng: np.random.Generator,
    device: torch.device,
) -> Iterator[Tensor]:
    """One epoch of minibatches on ``device``: a permutation of the cells in memory, shuffled chunks on disk."""
    if isinstance(x_train, DiskCells):
        for a_BD in x_train.batches(batch_size, gen, rng):
            yield a_BD.to(device)
        return
    perm = torch.randperm(x_train.shape[0], generator=gen).to(device)
    for start_b in range(0, x_train.shape[0], batch_size):
        yield x_train.index_select(0, perm[start_b : start_b + batch_size])


@torch.no_grad()
def _update_dead_counter(since_fired_C: Tensor, out: ForwardOutput, n_cells: int) -> None:
    """Add the batch's cells to every latent's count and reset the latents that fired in it."""
    since_fired_C += n_cells
    # a minimum over the selected latents, where firing is 0: no boolean-mask gather (5x slower on the CPU)
    fired_BK = torch.where(out.top_acts_BK > 0, 0, torch.iinfo(since_fired_C.dtype).max)
    since_fired_C.scatter_reduce_(0, out.top_idx_BK.flatten(), fired_BK.flatten(), "amin")


@torch.no_grad()
def _remove_parallel_grad(sae: TopKSAE) -> None:
    """Project out the gradient component parallel to each unit dictionary row (it would only change norms)."""
    g_CD, w_CD = sae.W_dec_CD.grad, sae.W_dec_CD
    if g_CD is not None:
        g_CD -= (g_CD * w_CD).sum(dim=1, keepdim=True) * w_CD


@torch.no_grad()
def _clip_gradient(sae: TopKSAE, max_norm: float) -> None:
    """Scale the model's gradient to an L2 norm of at most ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``
    does, without its per-call bookkeeping (``docs/decisions.md``)."""
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))


@torch.no_grad()
def _renormalise_dictionary(sae: TopKSAE) -> None:
    """Rescale the dictionary rows to unit norm."""
    sae.W_dec_CD /= sae.W_dec_CD.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------------
# Inference and metrics
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _r2_of(sae: TopKSAE, x_ND: Tensor | DiskCells) -> float:
    """R^2 of a model on cells already on its device (one pass), or streamed from disk."""
    if isinstance(x_ND, DiskCells):
        return streamed_metrics(sae, x_ND)["r2"]
    return r2_score(x_ND, sae(x_ND).recon_BD)
