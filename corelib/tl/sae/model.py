"""The Top-K sparse autoencoder (Gao et al. 2024).

    u  = ReLU(TopK(W_enc (a - b_dec) + b_enc))      codes (n_cells x n_concepts), k non-zeros at most
    a' = u D + b_dec                                 D: the dictionary, unit-norm rows (n_concepts x d)

``b_dec`` starts at the geometric median of the training cells (Weiszfeld), the dictionary at random unit rows
and the encoder at the dictionary's transpose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from corelib._io import atomic_path, atomic_write
from corelib.device import resolve_device
from corelib.tl.sae._kernels import threshold_topk_rows

#: Tensor names in ``sae.safetensors`` (shape suffixes: D = input width, C = number of concepts).
WEIGHT_NAMES = ("W_enc_DC", "b_enc_C", "W_dec_CD", "b_dec_D")


CHECKPOINT_FILE = "sae.safetensors"


CONFIG_FILE = "cfg.json"


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

    def encode_topk(self, a_BD: Tensor) -> tuple[Tensor, Tensor]:
        """The k selected concepts of each cell: ``(acts_BK, idx_BK)``, values after the ReLU (some may be 0)
        and their concept indices; no decoding and no batch x c output."""
        top_vals_BK, top_idx_BK = topk(self.pre_acts(a_BD), self.cfg.k)
        return F.relu(top_vals_BK), top_idx_BK

    def encode(self, a_BD: Tensor) -> Tensor:
        """Dense codes u (batch x c), ReLU(TopK) of the pre-activations; no decoding (half the cost)."""
        acts_BK, idx_BK = self.encode_topk(a_BD)
        return acts_BK.new_zeros(a_BD.shape[0], self.cfg.n_concepts).scatter_(-1, idx_BK, acts_BK)

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
                    f"{CONFIG_FILE}, written by TopKSAE.save or corelib.tl.sae.sweep)."
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

    ``torch.topk`` on the CPU copies and partially sorts every row, and was the largest single cost of an SAE
    training step. On the CPU this takes one of two exact routes (speed: ``docs/decisions.md``):

    - one pass per row over blocks of 16 columns (:func:`corelib.tl.sae._kernels.threshold_topk_rows`,
      compiled with numba; :func:`_kernel_topk`), whenever torch runs on one thread or ``k <= 16``;
    - otherwise two stages of tensor operations, which torch's threads share (:func:`_two_stage_topk`).

    The selected *set* equals ``torch.topk``'s; which of several exactly equal values wins a tie may differ.
    Gradients flow to ``x_BC`` through the returned values.

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
    size = _group_size(x_BC.shape[1], k)
    if x_BC.device.type != "cpu" or size < 2 or k * size >= x_BC.shape[1]:
        return x_BC.topk(k, dim=-1, sorted=False)
    if x_BC.dtype in (torch.float32, torch.float64) and _kernel_pays(k, torch.get_num_threads()):
        return _kernel_topk(x_BC, k)
    return _two_stage_topk(x_BC, k)


def _kernel_pays(k: int, n_threads: int) -> bool:
    """Whether the compiled route of :func:`topk` beats two stages: always on one thread; with more, for few
    selected per row only (measured: faster at k = 8, even at k = 16, slower at k = 80 on 2 threads)."""
    return n_threads == 1 or k <= 16


def _kernel_topk(x_BC: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`topk` on the CPU in one compiled pass per row (float32 or float64)."""
    idx_BK = torch.empty(x_BC.shape[0], k, dtype=torch.long)
    threshold_topk_rows(x_BC.detach().contiguous().numpy(), k, idx_BK.numpy())
    return x_BC.gather(1, idx_BK), idx_BK


def _two_stage_topk(x_BC: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`topk` in two stages that touch far fewer elements than ``torch.topk``: split the c columns into g
    strided groups of s (:func:`_group_size`, ``s ~ sqrt(c / k)``), take each group's maximum, keep the k
    groups with the largest maxima and run ``topk`` on their k * s members. The k group maxima are k elements
    at least as large as the k-th largest group maximum, so no member of another group can be among the k
    largest."""
    n_rows, n_cols = x_BC.shape
    size = _group_size(n_cols, k)
    n_groups = -(-n_cols // size)  # group j holds columns j, j + n_groups, j + 2 n_groups, ...
    n_pad = n_groups * size - n_cols
    padded = F.pad(x_BC, (0, n_pad), value=-torch.inf) if n_pad else x_BC
    groups_BSG = padded.view(n_rows, size, n_groups)
    _, group_BK = groups_BSG.detach().amax(1).topk(k, dim=-1, sorted=False)
    members_BSK = groups_BSG.gather(2, group_BK.unsqueeze(1).expand(n_rows, size, k))
    values_BK, pos_BK = members_BSK.reshape(n_rows, size * k).topk(k, dim=-1, sorted=False)
    return values_BK, (pos_BK // k) * n_groups + group_BK.gather(1, pos_BK % k)


def _group_size(n_cols: int, k: int) -> int:
    """Group size s of :func:`_two_stage_topk`: ``round(sqrt(c / k))``, which minimises the ``c / s + k s``
    elements its two stages sort, or a divisor of c within 10% of that cost (no padding copy of the scores)."""
    best = round(math.sqrt(n_cols / k))
    cost = n_cols / max(best, 1) + k * best
    divisors = [s for s in range(2, 2 * best + 1) if n_cols % s == 0 and n_cols / s + k * s <= 1.1 * cost]
    return min(divisors, key=lambda s: n_cols / s + k * s) if divisors else best


def sparse_decode(top_acts_BK: Tensor, top_idx_BK: Tensor, W_dec_CD: Tensor) -> Tensor:
    """``sum_j acts_j D[idx_j]`` (batch x d) of the selected concepts; no bias added.

    Without autograd, ``embedding_bag`` (a weighted sum of gathered rows: 10-25x faster than dense codes
    times the dictionary on the CPU). With autograd, scattering into dense codes and one matrix product:
    ``embedding_bag``'s backward sorts the indices (``docs/decisions.md``).
    """
    if not (torch.is_grad_enabled() and (top_acts_BK.requires_grad or W_dec_CD.requires_grad)):
        return F.embedding_bag(top_idx_BK, W_dec_CD, per_sample_weights=top_acts_BK, mode="sum")
    codes_BC = top_acts_BK.new_zeros(top_acts_BK.shape[0], W_dec_CD.shape[0]).scatter(
        -1, top_idx_BK, top_acts_BK
    )
    return codes_BC @ W_dec_CD


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
