"""Top-K sparse autoencoders (SAEs) on cell embeddings: model, training, sweeps, metrics and their plots.

The model (Gao et al. 2024, SPEC section 2)::

    u  = ReLU(TopK(W_enc (a - b_dec) + b_enc))      codes (n_cells x n_concepts), k non-zeros at most
    a' = u D + b_dec                                 D: the dictionary, unit-norm rows (n_concepts x d)

Training follows the reference details that common libraries get wrong:

- the main loss is the fraction of variance unexplained (``1 - R^2`` of the batch, per-dimension mean), so
  that one learning rate suits embeddings of any scale (scGPT's are L2-normalised, scVI's are not);
- AuxK (dead-latent revival) covers the *dead* latents only: the top ``min(aux_k, n_dead)`` of their
  pre-activations reconstruct the *detached* residual through the dictionary *without* ``b_dec``, normalised
  by the residual's variance, with weight 1/32. A latent is dead when it has not fired for ``dead_window``
  cells seen (default one epoch: scRNA-seq datasets are small, so a window in steps would be meaningless);
- ``b_dec`` starts at the geometric median of the training cells (Weiszfeld), the dictionary at random unit
  rows and the encoder at the dictionary's transpose; after each step the dictionary's rows are renormalised
  and the gradient component parallel to each row is removed before the step;
- a held-out split (seeded) is kept aside for evaluation; training is deterministic under a seed on CPU.

Training computes the gradients by hand (:func:`loss_and_grads`, checked against autograd in the tests):
only the k selected concepts of a cell carry gradient, and skipping the autograd graph of many small
operations matters on the CPU. With the exact two-stage :func:`topk`, ``train`` measured (``benchmarks/
sae_train.py``, 2 cores, demo scVI embedding, c=500, k=8, equal held-out R^2 within 0.0015) the samples/s
of a plain autograd + ``DataLoader`` loop times 1.32x (batch 256) and 1.43x (batch 1024) with that loop on
two threads, 1.52x and 1.88x with it on one (``train`` itself uses one thread at batch 256 and two at 1024,
see ``_cpu_threads``); before, about 1.0x. On a PCA embedding, where few latents die and AuxK has little
to do, 1.7-2.1x.

Sweeps train a grid of (n_concepts, k, seed) in one call with the embeddings resident on the device and
batches taken by index permutation. Configurations sharing a seed share their batch order, so they can be
trained "fused" (``fused=True``): one pass over each batch and one optimiser step for the whole group, with
results identical to training them one by one. On the CPU this measured no faster than one by one (0.98x),
so it is off by default; it saves kernel launches where those dominate (small SAEs on a GPU, not measured).
Every trained SAE is a folder ``run.path("sae", name)`` (``sae.safetensors``, ``cfg.json``, ``history.csv``,
``metrics.json``), and a finished configuration is never retrained on rerun.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from corelib.device import resolve_device, small_model_threads
from corelib.runs import Known, RunDir, atomic_path, atomic_write, provenance_path, record_provenance

#: Tensor names in ``sae.safetensors`` (shape suffixes: D = input width, C = number of concepts).
WEIGHT_NAMES = ("W_enc_DC", "b_enc_C", "W_dec_CD", "b_dec_D")
CHECKPOINT_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"


# ----------------------------------------------------------------------------------------------------------
# Configuration and model
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SAEConfig:
    """Architecture of a Top-K SAE: everything :meth:`TopKSAE.load` needs besides the weights.

    Attributes
    ----------
    d_in
        Width of the embeddings (d).
    n_concepts
        Number of concepts (c), the dictionary size.
    k
        Number of concepts active per cell (1 <= k < c).
    """

    d_in: int
    n_concepts: int
    k: int

    def __post_init__(self) -> None:
        for field in ("d_in", "n_concepts", "k"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"SAEConfig.{field} must be a positive integer, got {value!r}.")
        if self.k >= self.n_concepts:
            raise ValueError(
                f"k={self.k} must be smaller than n_concepts={self.n_concepts}: a Top-K SAE keeps k of c "
                "concepts. The paper uses k/c of about 1.6% (e.g. c=500, k=8)."
            )


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
    """

    lr: float = 1e-3
    epochs: int = 300
    batch_size: int = 1024
    aux_k: int = 512
    aux_weight: float = 1 / 32
    dead_window: int | None = None
    holdout_fraction: float = 0.1
    split_seed: int = 0

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


class ForwardOutput(NamedTuple):
    """What :meth:`TopKSAE.forward` returns.

    Attributes
    ----------
    recon_BD
        Reconstruction a' (batch x d).
    top_acts_BK
        Values of the k selected concepts after the ReLU (batch x k).
    top_idx_BK
        Their indices (batch x k).
    pre_acts_BC
        Pre-activations ``W_enc (a - b_dec) + b_enc`` of every concept (batch x c), used by AuxK.
    """

    recon_BD: Tensor
    top_acts_BK: Tensor
    top_idx_BK: Tensor
    pre_acts_BC: Tensor

    def codes(self) -> Tensor:
        """The dense codes u (batch x c)."""
        return torch.zeros_like(self.pre_acts_BC).scatter_(-1, self.top_idx_BK, self.top_acts_BK)


class TopKSAE(nn.Module):
    """Top-K sparse autoencoder ``u = ReLU(TopK(W_enc (a - b_dec) + b_enc))``, ``a' = u D + b_dec``.

    Parameters
    ----------
    d_in
        Embedding width d.
    n_concepts
        Number of concepts c.
    k
        Concepts kept per cell (``1 <= k < c``).

    Attributes
    ----------
    W_enc_DC
        Encoder weights (d x c).
    b_enc_C
        Encoder bias (c,).
    W_dec_CD
        The dictionary: one unit-norm concept vector per row (c x d); also :attr:`dictionary`.
    b_dec_D
        Decoder bias (d,), subtracted before encoding and added after decoding; also :attr:`b_dec`.

    Notes
    -----
    A new model is zero-initialised; :func:`init_sae` gives the training initialisation.
    """

    def __init__(self, d_in: int, n_concepts: int, k: int) -> None:
        super().__init__()
        self.cfg = SAEConfig(d_in=int(d_in), n_concepts=int(n_concepts), k=int(k))
        self.W_enc_DC = nn.Parameter(torch.zeros(d_in, n_concepts))
        self.b_enc_C = nn.Parameter(torch.zeros(n_concepts))
        self.W_dec_CD = nn.Parameter(torch.zeros(n_concepts, d_in))
        self.b_dec_D = nn.Parameter(torch.zeros(d_in))

    @property
    def k(self) -> int:
        """Concepts kept per cell."""
        return self.cfg.k

    @property
    def dictionary(self) -> Tensor:
        """The concept vectors, unit-norm rows (c x d)."""
        return self.W_dec_CD

    @property
    def b_dec(self) -> Tensor:
        """Decoder bias (d,)."""
        return self.b_dec_D

    def pre_acts(self, a_BD: Tensor) -> Tensor:
        """Pre-activations ``W_enc (a - b_dec) + b_enc`` (batch x c)."""
        return (a_BD - self.b_dec_D) @ self.W_enc_DC + self.b_enc_C

    def forward(self, a_BD: Tensor) -> ForwardOutput:
        """Encode and decode a batch of embeddings (batch x d)."""
        pre_acts_BC = self.pre_acts(a_BD)
        top_vals_BK, top_idx_BK = topk(pre_acts_BC, self.cfg.k)
        top_acts_BK = F.relu(top_vals_BK)
        recon_BD = sparse_decode(top_acts_BK, top_idx_BK, self.W_dec_CD) + self.b_dec_D
        return ForwardOutput(recon_BD, top_acts_BK, top_idx_BK, pre_acts_BC)

    def encode(self, a_BD: Tensor) -> Tensor:
        """Dense codes u (batch x c), ReLU(TopK) of the pre-activations; no decoding (half the cost)."""
        pre_acts_BC = self.pre_acts(a_BD)
        top_vals_BK, top_idx_BK = topk(pre_acts_BC, self.cfg.k)
        return torch.zeros_like(pre_acts_BC).scatter_(-1, top_idx_BK, F.relu(top_vals_BK))

    def decode(self, codes_BC: Tensor) -> Tensor:
        """Reconstruction ``u D + b_dec`` (batch x d) of dense codes (batch x c)."""
        return codes_BC @ self.W_dec_CD + self.b_dec_D

    def save(self, path: str | Path, extra: Mapping | None = None) -> Path:
        """Write ``sae.safetensors`` and ``cfg.json`` into the folder ``path``, each atomically.

        Parameters
        ----------
        path
            Folder (created).
        extra
            More JSON-serialisable entries for ``cfg.json`` (the sweep stores the training settings there).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in WEIGHT_NAMES}
        with atomic_path(path / CHECKPOINT_FILE) as tmp:
            save_file(tensors, str(tmp))
        with atomic_write(path / CONFIG_FILE) as fh:
            json.dump({**asdict(self.cfg), **(dict(extra) if extra else {})}, fh, indent=2)
        return path

    @classmethod
    def load(
        cls, path: str | Path, *, d_in: int | None = None, device: str | torch.device = "cpu"
    ) -> TopKSAE:
        """Load a model written by :meth:`save` (no pickle involved).

        Parameters
        ----------
        path
            The folder holding ``sae.safetensors`` and ``cfg.json``.
        d_in
            When given, the embedding width the model must accept (checked, with a clear error).
        device
            Where to put the weights.
        """
        path = Path(path)
        for fname in (CHECKPOINT_FILE, CONFIG_FILE):
            if not (path / fname).is_file():
                raise FileNotFoundError(
                    f"{path / fname} is missing: {path} is not a saved SAE (expected {CHECKPOINT_FILE} and "
                    f"{CONFIG_FILE}, written by TopKSAE.save or corelib.sae.sweep)."
                )
        cfg = json.loads((path / CONFIG_FILE).read_text())
        sae = cls(cfg["d_in"], cfg["n_concepts"], cfg["k"])
        if d_in is not None and int(d_in) != sae.cfg.d_in:
            raise ValueError(
                f"The SAE in {path} takes {sae.cfg.d_in}-dimensional embeddings but d_in={d_in} was requested: "
                "use the SAE trained on this embedding (same model), or retrain one on it."
            )
        tensors = load_file(str(path / CHECKPOINT_FILE))
        expected = {name: tuple(getattr(sae, name).shape) for name in WEIGHT_NAMES}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if found != expected:
            wrong = [
                f"{n} {found.get(n)} (cfg.json: {expected.get(n)})"
                for n in sorted(set(found) | set(expected))
                if found.get(n) != expected.get(n)
            ]
            raise ValueError(
                f"{path / CHECKPOINT_FILE} does not match its cfg.json: {', '.join(wrong)}; the folder mixes "
                "files of different SAEs: retrain it."
            )
        sae.load_state_dict(tensors)
        return sae.to(resolve_device(device))


def topk(x_BC: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest values of each row and their column indices (unsorted), as ``x.topk(k, -1)``.

    ``torch.topk`` on the CPU partially sorts every row, at about 10 ns per element, and was the largest
    single cost of an SAE training step. On the CPU this does it in two stages that touch far fewer elements:
    split the c columns into g strided groups of s (``s ~ sqrt(c / k)``), take each group's maximum, keep
    the k groups with the largest maxima and run ``topk`` on their k * s members. It is exact: the k group
    maxima are k elements at least as large as the k-th largest group maximum, so no member of another group
    can be among the k largest. Measured (``benchmarks/sae_train.py`` prints it): 1.7-2x faster for
    c = 250..1000 on 1 CPU thread. The selected *set* equals ``torch.topk``'s; which of several exactly equal
    values wins a tie may differ. Gradients flow to ``x_BC`` through the returned values.

    Parameters
    ----------
    x_BC
        Scores (batch x c).
    k
        Number kept per row (``k <= c``).

    Returns
    -------
    values (batch x k) and indices (batch x k) into the columns of ``x_BC``.
    """
    n_rows, n_cols = x_BC.shape
    size = round(math.sqrt(n_cols / k))  # group size s
    if x_BC.device.type != "cpu" or size < 2 or k * size >= n_cols:
        return x_BC.topk(k, dim=-1, sorted=False)
    n_groups = -(-n_cols // size)  # group j holds columns j, j + n_groups, j + 2 n_groups, ...
    n_pad = n_groups * size - n_cols
    padded = F.pad(x_BC, (0, n_pad), value=-torch.inf) if n_pad else x_BC
    groups_BSG = padded.view(n_rows, size, n_groups)
    _, group_BK = groups_BSG.detach().amax(1).topk(k, dim=-1, sorted=False)
    members_BSK = groups_BSG.gather(2, group_BK.unsqueeze(1).expand(n_rows, size, k))
    values_BK, pos_BK = members_BSK.reshape(n_rows, size * k).topk(k, dim=-1, sorted=False)
    return values_BK, (pos_BK // k) * n_groups + group_BK.gather(1, pos_BK % k)


def sparse_decode(top_acts_BK: Tensor, top_idx_BK: Tensor, W_dec_CD: Tensor) -> Tensor:
    """``sum_j acts_j D[idx_j]`` (batch x d) of the selected concepts; no bias added.

    Scattering into dense codes and one matrix product measured faster on CPU than ``embedding_bag`` (whose
    backward sorts the indices) at the scales of this project (c <= a few thousand).
    """
    codes_BC = top_acts_BK.new_zeros(top_acts_BK.shape[0], W_dec_CD.shape[0]).scatter(
        -1, top_idx_BK, top_acts_BK
    )
    return codes_BC @ W_dec_CD


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
      dead latents' encoder columns, their dictionary rows and the biases. Zero when nothing is dead.

    The gradients are the ones autograd gives for this loss (tests compare them), computed by hand because
    only the k selected concepts of each cell carry gradient: the decoder's gradient touches k rows per
    cell, and the encoder's is one ``(d x batch) @ (batch x c)`` product with a sparse right factor. This
    and no graph to record made a training step about 1.5x faster on the CPU than ``loss.backward()``.

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
    g_pre_BC, g_W_dec_CD = torch.zeros_like(pre_acts_BC), torch.zeros_like(W_dec_CD)
    fvu, decoded_BD, g_err_BD = _fit_and_grads(
        top_vals_BK, top_idx_BK, W_dec_CD, x_BD, 1.0, g_pre_BC, g_W_dec_CD
    )
    recon_BD = decoded_BD + b_dec_D
    auxk = _auxk_and_grads(
        a_BD - recon_BD, pre_acts_BC, W_dec_CD, dead_C, aux_k, aux_weight, g_pre_BC, g_W_dec_CD
    )
    g_b_enc_C = g_pre_BC.sum(0)
    W_enc_DC.grad = x_BD.T @ g_pre_BC
    b_enc_C.grad = g_b_enc_C
    W_dec_CD.grad = g_W_dec_CD
    b_dec_D.grad = g_err_BD.sum(0) - W_enc_DC @ g_b_enc_C  # b_dec is added after decoding, subtracted before
    out = ForwardOutput(recon_BD, top_vals_BK.clamp_min(0), top_idx_BK, pre_acts_BC)
    return StepLosses(out, fvu, auxk)


def _fit_and_grads(
    vals_BK: Tensor,
    idx_BK: Tensor,
    W_dec_CD: Tensor,
    target_BD: Tensor,
    weight: float,
    g_pre_BC: Tensor,
    g_W_dec_CD: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised error of a sparse decode, ``L = ||sum_j ReLU(v_j) D[idx_j] - target||^2 / sst(target)``.

    Adds ``weight * dL/dv`` to ``g_pre_BC`` at ``idx_BK`` and ``weight * dL/dD`` to the rows ``idx_BK`` of
    ``g_W_dec_CD``, in place.

    Returns
    -------
    ``L``, the decode (batch x d) and ``weight * dL/d(decode)`` (batch x d).
    """
    acts_BK = vals_BK.clamp_min(0)
    rows_BKD = F.embedding(idx_BK, W_dec_CD)  # index_select: ~5x faster than W_dec_CD[idx_BK] on CPU
    decoded_BD = torch.bmm(acts_BK.unsqueeze(1), rows_BKD).squeeze(1)
    err_BD = decoded_BD - target_BD
    sst = _sst(target_BD).clamp_min(1e-12)
    g_err_BD = err_BD * (2 * weight / sst)
    # ReLU's derivative is sign(ReLU(v)): 1 where v > 0, else 0 (a float product; bool masks measured 5x slower)
    g_pre_BC.scatter_add_(1, idx_BK, torch.bmm(rows_BKD, g_err_BD.unsqueeze(2)).squeeze(2) * acts_BK.sign())
    g_W_dec_CD.index_add_(0, idx_BK.flatten(), (acts_BK.unsqueeze(2) * g_err_BD.unsqueeze(1)).flatten(0, 1))
    return err_BD.pow(2).sum() / sst, decoded_BD, g_err_BD


def _auxk_and_grads(
    residual_BD: Tensor,
    pre_acts_BC: Tensor,
    W_dec_CD: Tensor,
    dead_C: Tensor,
    aux_k: int,
    aux_weight: float,
    g_pre_BC: Tensor,
    g_W_dec_CD: Tensor,
) -> Tensor:
    """The AuxK term of :func:`loss_and_grads`; adds ``aux_weight`` times its gradients to ``g_pre_BC`` and
    ``g_W_dec_CD`` in place."""
    n_dead = int(dead_C.sum())
    if n_dead == 0:
        return residual_BD.new_zeros(())
    if aux_k < n_dead:
        vals_BK, idx_BK = pre_acts_BC.masked_fill(~dead_C, -torch.inf).topk(aux_k, dim=-1, sorted=False)
        return _fit_and_grads(vals_BK, idx_BK, W_dec_CD, residual_BD, aux_weight, g_pre_BC, g_W_dec_CD)[0]
    # Every dead latent is selected: no Top-K, and a product over their columns instead of gathered rows.
    idx_N = dead_C.nonzero().squeeze(1)
    pre_BN, rows_ND = pre_acts_BC.index_select(1, idx_N), W_dec_CD.index_select(0, idx_N)
    acts_BN = pre_BN.clamp_min(0)
    err_BD = acts_BN @ rows_ND - residual_BD
    sst = _sst(residual_BD).clamp_min(1e-12)
    g_err_BD = err_BD * (2 * aux_weight / sst)
    g_W_dec_CD.index_add_(0, idx_N, acts_BN.T @ g_err_BD)
    g_pre_BC.index_add_(1, idx_N, (g_err_BD @ rows_ND.T) * acts_BN.sign())
    return err_BD.pow(2).sum() / sst


def _sse(a_BD: Tensor, recon_BD: Tensor) -> Tensor:
    """Sum of squared errors."""
    return (a_BD - recon_BD).pow(2).sum()


def _sst(a_BD: Tensor) -> Tensor:
    """Total sum of squares around the per-dimension mean."""
    return (a_BD - a_BD.mean(0)).pow(2).sum()


def r2_score(a_ND: Tensor, recon_ND: Tensor) -> float:
    """``R^2 = 1 - sum((a - a')^2) / sum((a - mean_per_dim(a))^2)`` (SPEC section 2).

    The mean is taken per dimension: a scalar mean (as in some SAE libraries) gives a different, wrong number
    for uncentred embeddings such as scGPT's L2-normalised ones.
    """
    return float(1.0 - _sse(a_ND.double(), recon_ND.double()) / _sst(a_ND.double()))


# ----------------------------------------------------------------------------------------------------------
# Input checks and initialisation
# ----------------------------------------------------------------------------------------------------------
def as_embeddings(embeddings: object, d_in: int | None = None) -> Tensor:
    """Check embeddings and return them as a float32 CPU tensor (n_cells x d).

    Raises a ``TypeError``/``ValueError`` naming the problem and the fix for AnnData objects, sparse or
    non-2-D input, a wrong width (``d_in``) and non-finite values.
    """
    if hasattr(embeddings, "obsm"):
        raise TypeError(
            "Pass the embedding matrix, not an AnnData: e.g. adata.obsm[adata.uns['embed']['key']]."
        )
    if hasattr(embeddings, "tocsr"):
        raise TypeError("Embeddings must be dense: pass embeddings.toarray().")
    if isinstance(embeddings, Tensor):
        x = embeddings.detach().to("cpu", torch.float32)
    elif isinstance(embeddings, np.ndarray | pd.DataFrame):
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    else:
        raise TypeError(
            f"Embeddings must be a numpy array or torch tensor (n_cells x d), got {type(embeddings).__name__}."
        )
    if x.ndim != 2:
        raise ValueError(f"Embeddings must be 2-D (n_cells x d), got shape {tuple(x.shape)}.")
    if d_in is not None and x.shape[1] != d_in:
        raise ValueError(
            f"Embeddings have {x.shape[1]} dimensions but the SAE expects {d_in}: use the embedding the SAE was "
            "trained on (same model and obsm key)."
        )
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise ValueError(
            f"{int(bad.sum())} of {x.shape[0]} cells have NaN or infinite embedding values (first at row "
            f"{int(bad.nonzero()[0, 0])}): fix the embedding step or drop those cells, e.g. "
            "adata = adata[np.isfinite(emb).all(axis=1)]."
        )
    return x


def geometric_median(x_ND: Tensor, *, n_sample: int = 4096, max_iter: int = 200, tol: float = 1e-7) -> Tensor:
    """Geometric median of the rows of ``x_ND`` by Weiszfeld iterations on a sample, used to initialise b_dec.

    Weiszfeld: ``y <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / ||x_i - y||``, from the mean, until the
    relative move is below ``tol``. Distances are floored at 1e-8 so that a sample point at the median does
    not divide by zero. At most ``n_sample`` evenly spaced rows are used (deterministic, no random state).

    Parameters
    ----------
    x_ND
        Cells x dimensions.
    n_sample
        Rows used at most.
    max_iter, tol
        Stopping rules.

    Returns
    -------
    The median (d,), float32.
    """
    step = max(1, x_ND.shape[0] // n_sample)
    x = x_ND[::step].double()
    y = x.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        moved = (y_new - y).norm() / y.norm().clamp_min(1e-12)
        y = y_new
        if moved < tol:
            break
    return y.float()


def init_sae(cfg: SAEConfig, x_ND: Tensor, seed: int) -> TopKSAE:
    """Training initialisation: random unit dictionary rows, encoder = dictionary transpose, b_enc = 0,
    b_dec = geometric median of ``x_ND``. Drawn on the CPU, so a seed gives the same model on any device."""
    sae = TopKSAE(cfg.d_in, cfg.n_concepts, cfg.k)
    gen = torch.Generator().manual_seed(int(seed))
    W_dec_CD = torch.randn(cfg.n_concepts, cfg.d_in, generator=gen)
    W_dec_CD /= W_dec_CD.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec_CD.copy_(W_dec_CD)
        sae.W_enc_DC.copy_(W_dec_CD.T)
        sae.b_dec_D.copy_(geometric_median(x_ND))
    return sae


def embeddings_fingerprint(embeddings: object) -> Known:
    """The provenance of embeddings as an SAE sees them (float32, whatever the input's dtype or type)."""
    return Known.of(as_embeddings(embeddings))


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
    init: TopKSAE | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one Top-K SAE on cell embeddings.

    Parameters
    ----------
    embeddings
        Cells x d (numpy array or torch tensor), e.g. ``adata.obsm["X_scvi"]``.
    n_concepts, k
        Dictionary size c and active concepts per cell (k < c).
    lr, batch_size, aux_k, epochs, aux_weight, dead_window, holdout_fraction, split_seed
        See :class:`TrainConfig`.
    seed
        Seeds the initialisation and the batch order.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    init
        Start from this model instead of :func:`init_sae` (fine-tuning; a copy is trained).
    progress
        Show a progress bar over epochs.

    Returns
    -------
    :class:`TrainResult` ``(sae, history, metrics)``.
    """
    tcfg = TrainConfig(lr, epochs, batch_size, aux_k, aux_weight, dead_window, holdout_fraction, split_seed)
    x_ND = as_embeddings(embeddings, d_in=None if init is None else init.cfg.d_in)
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
        return _train_group(x_ND, [cfg], tcfg, seed, dev, progress, init=init)[0]


#: Training steps on at least this many pre-activations (batch x c) keep torch's CPU threads.
THREADED_STEP = 2**18


def _cpu_threads(
    device: torch.device, cfgs: Sequence[SAEConfig], batch_size: int
) -> contextlib.AbstractContextManager[None]:
    """One CPU thread while training small SAEs on small batches (:func:`corelib.device.small_model_threads`).

    A step whose batch x c pre-activation matrix has at least :data:`THREADED_STEP` entries keeps torch's
    threads: its Top-K and products are large enough to split. Measured on 2 cores, 30 epochs of the demo's
    c=500 SAE: batch 1024 (512k entries) 0.45 s with 2 threads vs 0.68 s with one; batch 256 (128k) 0.85 s
    vs 0.90 s, where one thread is kept because it is the safe choice on a shared machine.
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
    x_ND: Tensor,
    cfgs: Sequence[SAEConfig],
    tcfg: TrainConfig,
    seed: int,
    device: torch.device,
    progress: bool,
    init: TopKSAE | None = None,
) -> list[TrainResult]:
    """Train SAEs that share data, seed and settings: one pass over each batch, one optimiser step.

    Each SAE's gradients depend only on its own parameters and the batch, so the group's results equal those
    of one-by-one training.
    """
    start = time.perf_counter()
    train_idx, held_idx = split_cells(x_ND.shape[0], tcfg.holdout_fraction, tcfg.split_seed)
    _check_cells(len(train_idx), cfgs, tcfg)
    x_train = x_ND[train_idx].to(device)
    x_held = x_ND[held_idx].to(device)
    n_train = x_train.shape[0]
    window = tcfg.dead_window or n_train
    if init is not None:
        saes = [TopKSAE(init.cfg.d_in, init.cfg.n_concepts, init.cfg.k)]
        saes[0].load_state_dict({n: t.detach().cpu() for n, t in init.state_dict().items()})
    else:
        saes = [init_sae(cfg, x_ND[train_idx], seed) for cfg in cfgs]
    saes = [s.to(device) for s in saes]
    opt = torch.optim.Adam([p for s in saes for p in s.parameters()], lr=tcfg.lr, fused=True)
    since_fired = [torch.zeros(s.cfg.n_concepts, dtype=torch.long, device=device) for s in saes]
    gen = torch.Generator().manual_seed(int(seed))
    rows: list[list[dict]] = [[] for _ in saes]
    cells_seen = 0
    for epoch in tqdm(range(1, tcfg.epochs + 1), desc="SAE epochs", disable=not progress, leave=False):
        sums = torch.zeros(len(saes), 2, dtype=torch.float64, device=device)
        perm = torch.randperm(n_train, generator=gen).to(device)
        for start_b in range(0, n_train, tcfg.batch_size):
            a_BD = x_train.index_select(0, perm[start_b : start_b + tcfg.batch_size])
            n_b = a_BD.shape[0]
            for i, sae in enumerate(saes):
                dead_C = since_fired[i] >= window
                step = loss_and_grads(sae, a_BD, dead_C, aux_k=tcfg.aux_k, aux_weight=tcfg.aux_weight)
                sums[i] += torch.stack([step.fvu, step.auxk]).double() * n_b
                _update_dead_counter(since_fired[i], step.out, n_b)
                _remove_parallel_grad(sae)
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
        m = split_metrics(sae, x_train, x_held)
        results.append(TrainResult(sae, pd.DataFrame(hist), {**m, "seconds": seconds}))
    return results


@torch.no_grad()
def _update_dead_counter(since_fired_C: Tensor, out: ForwardOutput, n_cells: int) -> None:
    """Add the batch's cells to every latent's count and reset the latents that fired in it."""
    since_fired_C += n_cells
    since_fired_C.index_fill_(0, out.top_idx_BK[out.top_acts_BK > 0], 0)


@torch.no_grad()
def _remove_parallel_grad(sae: TopKSAE) -> None:
    """Project out the gradient component parallel to each unit dictionary row (it would only change norms)."""
    g_CD, w_CD = sae.W_dec_CD.grad, sae.W_dec_CD
    if g_CD is not None:
        g_CD -= (g_CD * w_CD).sum(dim=1, keepdim=True) * w_CD


@torch.no_grad()
def _renormalise_dictionary(sae: TopKSAE) -> None:
    """Rescale the dictionary rows to unit norm."""
    sae.W_dec_CD /= sae.W_dec_CD.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------------
# Inference and metrics
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _r2_of(sae: TopKSAE, x_ND: Tensor) -> float:
    """R^2 of a model on cells already on its device (one pass)."""
    return r2_score(x_ND, sae(x_ND).recon_BD)


@torch.no_grad()
def _batched(sae: TopKSAE, x_ND: Tensor, batch_size: int) -> Iterable[tuple[Tensor, ForwardOutput]]:
    """Yield (batch, forward output) over ``x_ND`` on the model's device."""
    dev = sae.W_dec_CD.device
    for i in range(0, x_ND.shape[0], batch_size):
        a_BD = x_ND[i : i + batch_size].to(dev)
        yield a_BD, sae(a_BD)


@torch.no_grad()
def encode(sae: TopKSAE, embeddings: object, *, batch_size: int = 8192, progress: bool = False) -> np.ndarray:
    """Concept activations of cells, in batches.

    Parameters
    ----------
    sae
        A trained model.
    embeddings
        Cells x d.
    batch_size
        Cells per forward pass.
    progress
        Show a progress bar.

    Returns
    -------
    codes (n_cells x n_concepts), float32, at most k non-zeros per row.
    """
    x_ND = as_embeddings(embeddings, d_in=sae.cfg.d_in)
    dev = sae.W_dec_CD.device
    starts = range(0, x_ND.shape[0], batch_size)
    parts = [
        sae.encode(x_ND[i : i + batch_size].to(dev)).cpu().numpy()
        for i in tqdm(starts, total=len(starts), disable=not progress)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, sae.cfg.n_concepts), np.float32)


@torch.no_grad()
def metrics(sae: TopKSAE, embeddings: object, *, batch_size: int = 8192) -> dict:
    """Reconstruction and sparsity of a model on cells, in one pass.

    Returns
    -------
    dict with ``r2`` (:func:`r2_score`, per-dimension mean), ``l0`` (mean number of non-zero concepts per
    cell), ``n_active`` (concepts that fire on at least one cell), ``dead_fraction`` (1 - n_active / c) and
    ``n_cells``.
    """
    x_ND = as_embeddings(embeddings, d_in=sae.cfg.d_in)
    n = x_ND.shape[0]
    if n < 2:
        raise ValueError(f"metrics needs at least 2 cells, got {n}.")
    mean_D = x_ND.double().mean(0)
    sse = sst = l0 = 0.0
    fired_C = torch.zeros(sae.cfg.n_concepts, dtype=torch.bool)
    for a_BD, out in _batched(sae, x_ND, batch_size):
        sse += float(_sse(a_BD.double(), out.recon_BD.double()))
        sst += float((a_BD.double() - mean_D.to(a_BD.device)).pow(2).sum())
        nz_BK = out.top_acts_BK > 0
        l0 += float(nz_BK.sum())
        fired_C[out.top_idx_BK[nz_BK].cpu()] = True
    n_active = int(fired_C.sum())
    return {
        "r2": 1.0 - sse / sst,
        "l0": l0 / n,
        "n_active": n_active,
        "dead_fraction": 1.0 - n_active / sae.cfg.n_concepts,
        "n_cells": n,
    }


def split_metrics(sae: TopKSAE, x_train: Tensor, x_held: Tensor) -> dict:
    """:func:`metrics` on training and held-out cells, keys suffixed ``_train`` / ``_heldout``."""
    out = {}
    for split, x in (("train", x_train), ("heldout", x_held)):
        m = (
            metrics(sae, x)
            if x.shape[0] > 1
            else dict.fromkeys(("r2", "l0", "n_active", "dead_fraction"), math.nan)
        )
        out.update({f"{key}_{split}": value for key, value in m.items()})
    return out


# ----------------------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------------------
def sae_name(n_concepts: int, k: int, seed: int = 0) -> str:
    """Folder name of a sweep point, e.g. ``c500_k8_s0``."""
    return f"c{n_concepts}_k{k}_s{seed}"


def grid(
    n_concepts: Sequence[int], k: Sequence[int], seeds: Sequence[int] = (0,)
) -> list[tuple[int, int, int]]:
    """Sweep points ``(n_concepts, k, seed)``: ``n_concepts`` and ``k`` paired element-wise, times ``seeds``."""
    if len(n_concepts) != len(k):
        raise ValueError(
            f"n_concepts ({len(n_concepts)} values) and k ({len(k)} values) are paired element-wise: give "
            "lists of the same length, e.g. n_concepts=[100, 250, 500, 1000], k=[2, 4, 8, 16]."
        )
    return [(int(c), int(kk), int(s)) for s in seeds for c, kk in zip(n_concepts, k, strict=True)]


def sweep(
    embeddings: object,
    configs: Sequence[tuple[int, int] | tuple[int, int, int]],
    *,
    run: RunDir,
    lr: float = TrainConfig.lr,
    epochs: int = TrainConfig.epochs,
    batch_size: int = TrainConfig.batch_size,
    aux_k: int = TrainConfig.aux_k,
    holdout_fraction: float = TrainConfig.holdout_fraction,
    split_seed: int = 0,
    device: str | torch.device = "auto",
    fused: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train a grid of SAEs in one call, skipping those already finished in the run directory.

    Parameters
    ----------
    embeddings
        Cells x d.
    configs
        Sweep points ``(n_concepts, k, seed)`` (or ``(n_concepts, k)`` for seed 0), e.g. from :func:`grid`.
    run
        Run directory: each SAE goes to ``run.path("sae", sae_name(c, k, seed))`` and the table to
        ``run.path("sae_sweep")``. An SAE trained from the same embeddings with the same settings is reused;
        one trained from other ones raises :class:`corelib.runs.StaleOutputError` naming what changed
        (retrained when ``run.overwrite``).
    lr, epochs, batch_size, aux_k, holdout_fraction, split_seed
        See :class:`TrainConfig`; shared by the grid.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    fused
        Train the points sharing a seed together (one pass over each batch, one optimiser step); the
        default trains them one by one. Both give the same models; fused measured slower on CPU (module
        docstring).
    progress
        Progress bars.

    Returns
    -------
    The sweep table (also written to ``run.path("sae_sweep")``), indexed by SAE name: ``d_in, n_concepts,
    k, seed, expansion, lr, epochs, batch_size`` and the metrics (``r2_train``, ``r2_heldout``,
    ``l0_train``, ``n_active_train``, ``dead_fraction_train``, ..., ``seconds``).
    """
    x_ND = as_embeddings(embeddings)
    tcfg = TrainConfig(
        lr, epochs, batch_size, aux_k, holdout_fraction=holdout_fraction, split_seed=split_seed
    )
    points = [(int(p[0]), int(p[1]), int(p[2]) if len(p) > 2 else 0) for p in configs]
    if len(set(points)) != len(points):
        repeated = sorted({sae_name(*p) for p in points if points.count(p) > 1})
        raise ValueError(f"Duplicate sweep points: {', '.join(repeated)}.")
    cfgs = {sae_name(c, k, s): (SAEConfig(x_ND.shape[1], c, k), s) for c, k, s in points}
    embedding = embeddings_fingerprint(x_ND)
    inputs = {
        name: {"embeddings": embedding, "sae": asdict(cfg), "train": asdict(tcfg), "seed": seed}
        for name, (cfg, seed) in cfgs.items()
    }
    todo = [name for name in cfgs if not run.reusable("sae", name, inputs[name])]
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(todo):
        groups.setdefault(cfgs[name][1] if fused else i, []).append(name)
    dev = resolve_device(device)
    for names in tqdm(list(groups.values()), desc="SAE groups", disable=not progress or len(groups) < 2):
        seed = cfgs[names[0]][1]
        with _cpu_threads(dev, [cfgs[n][0] for n in names], tcfg.batch_size):
            results = _train_group(x_ND, [cfgs[n][0] for n in names], tcfg, seed, dev, progress)
        for name, res in zip(names, results, strict=True):
            _write_result(run, name, res, tcfg, seed)
            record_provenance(run.path("sae", name), inputs[name])
    table = pd.DataFrame([_row(run, name) for name in cfgs]).set_index("name")
    run.write_table("sae_sweep", table)
    return table


def _write_result(run: RunDir, name: str, res: TrainResult, tcfg: TrainConfig, seed: int) -> None:
    """Write one trained SAE's folder (its provenance record is written after it, by the caller)."""
    path = run.path("sae", name)
    provenance_path(path).unlink(missing_ok=True)
    res.sae.save(path, extra={"train": asdict(tcfg), "seed": seed})
    with atomic_write(path / HISTORY_FILE) as fh:
        res.history.to_csv(fh, index=False)
    with atomic_write(path / METRICS_FILE) as fh:
        json.dump(res.metrics, fh, indent=2)


def _row(run: RunDir, name: str) -> dict:
    """One sweep-table row from a finished SAE folder."""
    path = run.path("sae", name)
    cfg = json.loads((path / CONFIG_FILE).read_text())
    train_cfg = cfg["train"]
    return {
        "name": name,
        "d_in": cfg["d_in"],
        "n_concepts": cfg["n_concepts"],
        "k": cfg["k"],
        "seed": cfg["seed"],
        "expansion": cfg["n_concepts"] / cfg["d_in"],
        "lr": train_cfg["lr"],
        "epochs": train_cfg["epochs"],
        "batch_size": train_cfg["batch_size"],
        **json.loads((path / METRICS_FILE).read_text()),
    }


def load_histories(run: RunDir, names: Iterable[str]) -> dict[str, pd.DataFrame]:
    """Training histories of finished SAEs, by name."""
    return {name: pd.read_csv(run.require("sae", name) / HISTORY_FILE) for name in names}


def encode_sweep(run: RunDir, names: Iterable[str], embeddings: object) -> dict[str, np.ndarray]:
    """Codes (n_cells x n_concepts) of each finished SAE in ``names``, by name."""
    x_ND = as_embeddings(embeddings)
    return {name: encode(TopKSAE.load(run.require("sae", name), d_in=x_ND.shape[1]), x_ND) for name in names}


def select(sweep_table: pd.DataFrame, *, expansion: float = 10.0, name: str | None = None) -> dict:
    """Choose the SAE that later notebooks use.

    Parameters
    ----------
    sweep_table
        Output of :func:`sweep`.
    expansion
        Wanted c/d; the closest on a log scale wins (ties: lowest seed, then best held-out R^2).
    name
        An explicit SAE name instead (must be in the table).

    Returns
    -------
    ``{"sae", "n_concepts", "k", "seed", "expansion", "r2_heldout", "dead_fraction_train"}``, what
    ``run.path("sae_selected")`` stores.
    """
    if name is None:
        dist = (np.log(sweep_table["expansion"]) - np.log(expansion)).abs().round(9)
        order = pd.DataFrame({"dist": dist, "seed": sweep_table["seed"], "r2": -sweep_table["r2_heldout"]})
        name = order.sort_values(["dist", "seed", "r2"]).index[0]
    elif name not in sweep_table.index:
        raise ValueError(
            f"selected_sae={name!r} is not in the sweep; choose one of {', '.join(sweep_table.index)}."
        )
    row = sweep_table.loc[name]
    out = {"sae": str(name), **{key: int(row[key]) for key in ("n_concepts", "k", "seed")}}
    return {**out, **{key: float(row[key]) for key in ("expansion", "r2_heldout", "dead_fraction_train")}}


def paper_table(sweep_table: pd.DataFrame, *, dataset: str, model: str) -> pd.DataFrame:
    """The sweep in the layout of the paper's Table 3: dataset, model, c, k, lr, epochs, R^2, active concepts.

    R^2 is on held-out cells; active concepts fire on at least one training cell.
    """
    return pd.DataFrame(
        {
            "Dataset": dataset,
            "Model": model,
            "c": sweep_table["n_concepts"],
            "k": sweep_table["k"],
            "seed": sweep_table["seed"],
            "lr": sweep_table["lr"],
            "Epochs": sweep_table["epochs"],
            "R2 (held-out)": sweep_table["r2_heldout"].round(3),
            "Active concepts": sweep_table["n_active_train"].astype(int),
        }
    ).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------
# Plots (read precomputed results only)
# ----------------------------------------------------------------------------------------------------------
def plot_r2_vs_concepts(sweep_table: pd.DataFrame) -> plt.Figure:
    """R^2 (train and held-out) against the number of concepts, as in the paper's Fig. 2A."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for col, marker, label in (("r2_train", "o", "train"), ("r2_heldout", "s", "held-out")):
        agg = sweep_table.groupby("n_concepts")[col].agg(["mean", "min", "max"])
        ax.errorbar(
            agg.index, agg["mean"], yerr=[agg["mean"] - agg["min"], agg["max"] - agg["mean"]],
            marker=marker, capsize=3, label=label,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("number of concepts c")
    ax.set_ylabel("$R^2$")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_active_concepts(sweep_table: pd.DataFrame) -> plt.Figure:
    """Active and dead concepts (over a full pass on training cells) per SAE, as stacked bars."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(sweep_table)), 3.2))
    active = sweep_table["n_active_train"]
    dead = sweep_table["n_concepts"] - active
    ax.bar(sweep_table.index, active, label="active", color="tab:green")
    ax.bar(sweep_table.index, dead, bottom=active, label="dead", color="tab:red")
    ax.set_ylabel("concepts")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_training_curves(histories: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Training curves: loss (log), held-out R^2 and windowed dead fraction against epochs."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name, hist in histories.items():
        axes[0].plot(hist["epoch"], hist["loss"], label=name)
        axes[1].plot(hist["epoch"], hist["r2_heldout"], label=name)
        axes[2].plot(hist["epoch"], hist["dead_fraction"], label=name)
    axes[0].set_yscale("log")
    for ax, ylabel in zip(
        axes, ("training loss (FVU + AuxK/32)", "held-out $R^2$", "dead fraction"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[1].set_ylim(max(0.0, min(float(h["r2_heldout"].min()) for h in histories.values())), 1.0)
    axes[2].legend(frameon=False, fontsize="small", bbox_to_anchor=(1.02, 1.0), loc="upper left")
    fig.tight_layout()
    return fig
