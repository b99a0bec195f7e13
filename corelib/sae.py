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

Sweeps train a grid of (n_concepts, k, seed) in one call with the embeddings resident on the device and
batches taken by index permutation. Configurations sharing a seed share their batch order, so they can be
trained "fused" (``fused=True``): one pass over each batch, one backward and one optimiser step for the whole
group, with results identical to training them one by one. On CPU this measured slower than one by one
(``benchmarks/sae_train.py``: 0.6-0.8x, larger working set per step), so it is off by default; it saves
kernel launches where those dominate (small SAEs on a GPU). Every trained SAE is a
folder ``run.path("sae", name)`` (``sae.safetensors``, ``cfg.json``, ``history.csv``, ``metrics.json``), and a
finished configuration is never retrained on rerun.
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
from corelib.runs import RunDir, atomic_path, atomic_write

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
        top_vals_BK, top_idx_BK = pre_acts_BC.topk(self.cfg.k, dim=-1, sorted=False)
        top_acts_BK = F.relu(top_vals_BK)
        recon_BD = sparse_decode(top_acts_BK, top_idx_BK, self.W_dec_CD) + self.b_dec_D
        return ForwardOutput(recon_BD, top_acts_BK, top_idx_BK, pre_acts_BC)

    def encode(self, a_BD: Tensor) -> Tensor:
        """Dense codes u (batch x c), ReLU(TopK) of the pre-activations; no decoding (half the cost)."""
        pre_acts_BC = self.pre_acts(a_BD)
        top_vals_BK, top_idx_BK = pre_acts_BC.topk(self.cfg.k, dim=-1, sorted=False)
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
            raise ValueError(
                f"{path / CHECKPOINT_FILE} holds tensors {found} but its cfg.json describes {expected}: the "
                "folder mixes files of different SAEs; retrain it."
            )
        sae.load_state_dict(tensors)
        return sae.to(resolve_device(device))


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
# Losses: plain functions with one signature (a_BD, out, W_dec_CD, dead_C, aux_k) -> scalar
# ----------------------------------------------------------------------------------------------------------
def fvu_loss(a_BD: Tensor, out: ForwardOutput, W_dec_CD: Tensor, dead_C: Tensor, aux_k: int) -> Tensor:
    """Fraction of variance unexplained of the batch, ``1 - R^2`` (see :func:`r2_score`).

    ``W_dec_CD``, ``dead_C`` and ``aux_k`` are unused; every loss takes the same arguments.
    """
    return _sse(a_BD, out.recon_BD) / _sst(a_BD).clamp_min(1e-12)


def auxk_loss(a_BD: Tensor, out: ForwardOutput, W_dec_CD: Tensor, dead_C: Tensor, aux_k: int) -> Tensor:
    """AuxK loss (Gao et al. 2024, section A.2) over the dead latents only.

    The top ``min(aux_k, n_dead)`` pre-activations among dead latents (``dead_C``, boolean (c,)), after the
    ReLU, reconstruct the residual ``e = a - a'.detach()`` through the dictionary *without* ``b_dec`` (the
    residual has no offset to model); the squared error is divided by the residual's variance (per-dimension
    mean). Zero when no latent is dead.
    """
    n_dead = int(dead_C.sum())
    if n_dead == 0:
        return a_BD.new_zeros(())
    residual_BD = a_BD - out.recon_BD.detach()
    if aux_k >= n_dead:  # every dead latent is selected: no Top-K, and only their columns are computed
        dead_idx = dead_C.nonzero().squeeze(1)
        aux_recon_BD = F.relu(out.pre_acts_BC[:, dead_idx]) @ W_dec_CD[dead_idx]
    else:
        dead_pre_BC = out.pre_acts_BC.masked_fill(~dead_C, -torch.inf)
        aux_vals_BK, aux_idx_BK = dead_pre_BC.topk(aux_k, dim=-1, sorted=False)
        aux_recon_BD = sparse_decode(F.relu(aux_vals_BK), aux_idx_BK, W_dec_CD)
    return _sse(residual_BD, aux_recon_BD) / _sst(residual_BD).clamp_min(1e-12)


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
    with _cpu_threads(dev, [cfg]):
        return _train_group(x_ND, [cfg], tcfg, seed, dev, progress, init=init)[0]


def _cpu_threads(device: torch.device, cfgs: Sequence[SAEConfig]) -> contextlib.AbstractContextManager[None]:
    """One CPU thread while training small SAEs (:func:`corelib.device.small_model_threads`)."""
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
    """Train SAEs that share data, seed and settings: one pass over each batch, one backward, one step.

    Each SAE's loss depends only on its own parameters, so the summed loss gives every SAE exactly the
    gradients it would get alone: the group's results equal those of one-by-one training.
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
    opt = torch.optim.Adam([p for s in saes for p in s.parameters()], lr=tcfg.lr, foreach=True)
    since_fired = [torch.zeros(s.cfg.n_concepts, dtype=torch.long, device=device) for s in saes]
    gen = torch.Generator().manual_seed(int(seed))
    rows: list[list[dict]] = [[] for _ in saes]
    cells_seen = 0
    for epoch in tqdm(range(1, tcfg.epochs + 1), desc="SAE epochs", disable=not progress, leave=False):
        sums = torch.zeros(len(saes), 2, dtype=torch.float64, device=device)
        perm = torch.randperm(n_train, generator=gen).to(device)
        for start_b in range(0, n_train, tcfg.batch_size):
            a_BD = x_train[perm[start_b : start_b + tcfg.batch_size]]
            n_b = a_BD.shape[0]
            total = a_BD.new_zeros(())
            for i, sae in enumerate(saes):
                out = sae(a_BD)
                dead_C = since_fired[i] >= window
                rec = fvu_loss(a_BD, out, sae.W_dec_CD, dead_C, tcfg.aux_k)
                aux = auxk_loss(a_BD, out, sae.W_dec_CD, dead_C, tcfg.aux_k)
                total = total + rec + tcfg.aux_weight * aux
                sums[i] += torch.stack([rec.detach(), aux.detach()]).double() * n_b
                _update_dead_counter(since_fired[i], out, n_b)
            opt.zero_grad(set_to_none=True)
            total.backward()
            for sae in saes:
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
    since_fired_C[out.top_idx_BK[out.top_acts_BK > 0]] = 0


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
        ``run.path("sae_sweep")``. A folder whose ``metrics.json`` exists is reused (unless ``run.overwrite``);
        if it was trained with other settings a ``ValueError`` says so.
    lr, epochs, batch_size, aux_k, holdout_fraction, split_seed
        See :class:`TrainConfig`; shared by the grid.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    fused
        Train the points sharing a seed together (one pass over each batch, one backward, one step); the
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
        raise ValueError(f"Duplicate sweep points in {points}.")
    cfgs = {sae_name(c, k, s): (SAEConfig(x_ND.shape[1], c, k), s) for c, k, s in points}
    todo = [name for name in cfgs if not _finished(run, name, cfgs[name][0], tcfg)]
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(todo):
        groups.setdefault(cfgs[name][1] if fused else i, []).append(name)
    dev = resolve_device(device)
    for names in tqdm(list(groups.values()), desc="SAE groups", disable=not progress or len(groups) < 2):
        seed = cfgs[names[0]][1]
        with _cpu_threads(dev, [cfgs[n][0] for n in names]):
            results = _train_group(x_ND, [cfgs[n][0] for n in names], tcfg, seed, dev, progress)
        for name, res in zip(names, results, strict=True):
            _write_result(run, name, res, tcfg, seed)
    table = pd.DataFrame([_row(run, name) for name in cfgs]).set_index("name")
    run.write_table("sae_sweep", table)
    return table


def _finished(run: RunDir, name: str, cfg: SAEConfig, tcfg: TrainConfig) -> bool:
    """Whether ``name`` is trained with these settings (``metrics.json`` is written last)."""
    if not run.done("sae", name) or not (run.path("sae", name) / METRICS_FILE).is_file():
        return False
    stored = json.loads((run.path("sae", name) / CONFIG_FILE).read_text())
    wanted = {**asdict(cfg), "train": asdict(tcfg)}
    if {key: stored.get(key) for key in wanted} != wanted:
        raise ValueError(
            f"{run.path('sae', name)} was trained with other settings ({stored}) than requested ({wanted}). "
            "Use overwrite=True to retrain, or another run_dir/run_name to keep both."
        )
    return True


def _write_result(run: RunDir, name: str, res: TrainResult, tcfg: TrainConfig, seed: int) -> None:
    """Write one trained SAE's folder; ``metrics.json`` last, as the completion mark."""
    path = run.path("sae", name)
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
            f"selected_sae={name!r} is not in the sweep; choose one of {list(sweep_table.index)}."
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
