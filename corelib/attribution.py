"""Counterfactual occlusion attribution: which genes drive a concept (paper section 3.2).

For a unit i (an SAE concept or a neuron of the embedding), a prototype cell ``x_p`` that activates it and a
counterfactual cell ``x_c`` (the nearest cell in embedding space that does not activate it, Eq. 1), the score
of gene ``l`` is the drop of the unit's activation when gene ``l`` of ``x_p`` takes ``x_c``'s value (Eq. 2).
Scores are averaged over ``N_p`` prototypes and ``N_c`` counterfactuals per prototype (Eq. 3).

The perturbation happens in expression space, before the model's own preprocessing: the encoder's forward
takes raw counts. This is exactly Captum's ``FeatureAblation`` with the counterfactual as baseline, computed
faster:

- genes with the same value in the prototype and the counterfactual are never evaluated (score exactly 0);
- many perturbed cells share one forward pass, and one forward pass of a perturbed cell serves every unit
  that uses the same (prototype, counterfactual) pair: the readout returns all units at once;
- when the encoder exposes ``linear_head()`` (elementwise preprocessing, then a linear layer), the first
  layer's output of a perturbed cell is the prototype's plus one changed column of the weight, instead of a
  full ``h x m`` product. That rounds differently, which a Top-K SAE can turn into a jump where a cell sits
  at a near-tie for the k-th concept; such cells are recomputed with the full forward, so the scores equal
  Captum's.

Compute: :func:`occlusion` (Eq. 2 for any function), :func:`prototypes`, :func:`counterfactuals` (Eq. 1),
:func:`select_cells`, :func:`aggregate_attributions` (Eq. 3), :func:`perturbation_model` /
:func:`concept_model`, :func:`attribute` (the shared-pair engine), :func:`attribute_concepts`,
:func:`attribute_neurons` (counterfactuals of a neuron: cells at or below a quantile, :func:`neuron_inactive`).
Read: :class:`Attribution` (``save``/``load`` as ``.npz``, ``frame()``), :func:`ranked_genes`, :func:`top_genes`,
:func:`important_gene_counts`, :func:`status_table`, :func:`worked_examples`. Plot: :func:`plot_important_genes`
(Fig. 2C). Notebook helper: :func:`sample_concepts`.

Typical use::

    attr = attribution.attribute_concepts(encoder, sae, X, emb)          # X: counts, model's gene order
    attr.save(run.path("attribution_concepts"))
    attribution.ranked_genes(attr, unit=12)                              # C_i of Eq. 3
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from corelib import sae as sae_lib
from corelib.device import resolve_device

#: Bytes allowed for one block's per-pair scores (units x N_p x N_c x genes); more units are done in blocks.
_BLOCK_BYTES = 2**28

ATTRIBUTED = "attributed"
SKIPPED = "skipped"


# --------------------------------------------------------------------------------------------------------------
# Perturbation models: evaluate a readout (all units at once) on prototypes with a few genes replaced.
# --------------------------------------------------------------------------------------------------------------
class PerturbationModel(Protocol):
    """Evaluates unit activations of prototype cells with some genes set to other values.

    Build one with :func:`perturbation_model`. Call :meth:`prepare` with the prototype cells first; the other
    methods refer to prototypes by their row (``slot``) in that matrix. Inputs are expected on ``device`` in
    ``dtype``.
    """

    device: torch.device
    dtype: torch.dtype

    def prepare(self, x_QM: torch.Tensor) -> torch.Tensor:
        """Store the prototypes ``x_QM`` (q cells x m genes); return their unit activations (q x units)."""
        ...

    def single(self, slot_B: torch.Tensor, gene_B: torch.Tensor, value_B: torch.Tensor) -> torch.Tensor:
        """Activations (b x units) of prototypes ``slot_B`` with gene ``gene_B`` set to ``value_B`` (one each)."""
        ...

    def prefixes(self, slot_R: torch.Tensor, genes_RK: torch.Tensor, values_RK: torch.Tensor) -> torch.Tensor:
        """Activations (r x (k + 1) x units) after setting the first 0..k genes of ``genes_RK`` cumulatively.

        A gene index of -1 is padding: no change at that step.
        """
        ...


class _PlainModel:
    """Perturbs the expression vector and runs the full forward: the reference path."""

    def __init__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype
    ):
        self.forward, self.device, self.dtype = forward, device, dtype

    def prepare(self, x_QM: torch.Tensor) -> torch.Tensor:
        self.x_QM = x_QM
        return self.forward(x_QM)

    def single(self, slot_B: torch.Tensor, gene_B: torch.Tensor, value_B: torch.Tensor) -> torch.Tensor:
        x_BM = self.x_QM[slot_B].clone()
        x_BM[torch.arange(len(slot_B), device=x_BM.device), gene_B] = value_B
        return self.forward(x_BM)

    def prefixes(self, slot_R: torch.Tensor, genes_RK: torch.Tensor, values_RK: torch.Tensor) -> torch.Tensor:
        n_r, n_k = genes_RK.shape
        x_RSM = self.x_QM[slot_R][:, None].repeat(1, n_k + 1, 1)
        # Step s applies the changes j < s.
        applied_SK = torch.arange(n_k + 1, device=x_RSM.device)[:, None] > torch.arange(
            n_k, device=x_RSM.device
        )
        r, s, j = torch.nonzero(applied_SK[None] & (genes_RK[:, None, :] >= 0), as_tuple=True)
        x_RSM[r, s, genes_RK[r, j]] = values_RK[r, j]
        return self.forward(x_RSM.reshape(n_r * (n_k + 1), -1)).reshape(n_r, n_k + 1, -1)


class _LinearHeadModel:
    """Updates the encoder's first linear layer by the changed columns only (``z = z_p + d * W[:, l]``).

    The update rounds differently from the full product. Through a Top-K readout that matters where a
    perturbed cell's k-th and (k+1)-th pre-activations are within rounding of each other: there the two paths
    can select different concepts and that gene's score jumps (2 of 100,000 scores in the demo benchmark). The
    readout reports such near-ties (``rest`` returns them) and those cells are recomputed with the full
    forward (``plain``), which is what Captum does; the prototypes' own activations come from it too.
    """

    def __init__(
        self,
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        weight_HM: torch.Tensor,
        bias_H: torch.Tensor,
        rest: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        plain: _PlainModel,
    ):
        self.preprocess, self.weight_MH, self.bias_H, self.rest = preprocess, weight_HM.T, bias_H, rest
        self.plain, self.device, self.dtype = plain, weight_HM.device, weight_HM.dtype

    def prepare(self, x_QM: torch.Tensor) -> torch.Tensor:
        self.pre_QM = self.preprocess(x_QM)
        self.z_QH = self.pre_QM @ self.weight_MH + self.bias_H
        return self.plain.prepare(x_QM)

    def single(self, slot_B: torch.Tensor, gene_B: torch.Tensor, value_B: torch.Tensor) -> torch.Tensor:
        d_B = self.preprocess(value_B) - self.pre_QM[slot_B, gene_B]
        out_BU, tie_B = self.rest(torch.addcmul(self.z_QH[slot_B], d_B[:, None], self.weight_MH[gene_B]))
        return _recompute(out_BU, tie_B, lambda r: self.plain.single(slot_B[r], gene_B[r], value_B[r]))

    def prefixes(self, slot_R: torch.Tensor, genes_RK: torch.Tensor, values_RK: torch.Tensor) -> torch.Tensor:
        valid_RK = genes_RK >= 0
        g_RK = genes_RK.clamp(min=0)
        d_RK = torch.where(valid_RK, self.preprocess(values_RK) - self.pre_QM[slot_R[:, None], g_RK], 0.0)
        cum_RKH = torch.cumsum(d_RK[..., None] * self.weight_MH[g_RK], dim=1)
        z_RSH = self.z_QH[slot_R][:, None] + torch.cat([torch.zeros_like(cum_RKH[:, :1]), cum_RKH], dim=1)
        n_r, n_s, n_h = z_RSH.shape
        out, tie = self.rest(z_RSH.reshape(n_r * n_s, n_h))
        return _recompute(
            out.reshape(n_r, n_s, -1),
            tie.reshape(n_r, n_s).any(1),
            lambda r: self.plain.prefixes(slot_R[r], genes_RK[r], values_RK[r]),
        )


def _recompute(
    out_B: torch.Tensor, redo_B: torch.Tensor, full: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``out_B`` with the rows flagged in ``redo_B`` replaced by ``full(their indices)``."""
    if bool(redo_B.any()):
        rows = redo_B.nonzero().squeeze(1)
        out_B[rows] = full(rows)
    return out_B


class _SAEReadout(torch.nn.Module):
    """Embedding -> all concept activations (``sae.encode``: codes only, no reconstruction).

    Parameters
    ----------
    sae
        A :class:`corelib.sae.TopKSAE`.
    tie_rtol
        :meth:`forward_with_ties` flags a cell when its k-th and (k+1)-th pre-activations are closer than
        ``tie_rtol`` times its largest absolute pre-activation (float32 rounding is ~1e-7 of it) and the k-th
        is positive (below zero the ReLU makes either choice give the same codes).
    """

    def __init__(self, sae: torch.nn.Module, tie_rtol: float = 1e-4):
        super().__init__()
        self.sae, self.tie_rtol = sae, tie_rtol

    def forward(self, emb_BD: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(emb_BD)

    def forward_with_ties(self, emb_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (b x c) as :meth:`forward`, and which cells are at a Top-K near-tie (b,)."""
        k = self.sae.cfg.k
        pre_BC = self.sae.pre_acts(emb_BD)
        vals_BK, idx_BK = sae_lib.topk(pre_BC, k + 1)
        vals_BK, order_BK = vals_BK.sort(dim=1, descending=True)
        idx_BK = idx_BK.gather(1, order_BK)
        codes_BC = torch.zeros_like(pre_BC).scatter_(1, idx_BK[:, :k], vals_BK[:, :k].clamp_min(0))
        gap_B = vals_BK[:, k - 1] - vals_BK[:, k]
        tie_B = (vals_BK[:, k - 1] > 0) & (gap_B <= self.tie_rtol * pre_BC.abs().amax(1))
        return codes_BC, tie_B


def perturbation_model(
    encoder: torch.nn.Module,
    readout: torch.nn.Module | None = None,
    *,
    use_linear_head: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "auto",
) -> PerturbationModel:
    """Wrap ``readout(encoder(x))`` for evaluating perturbed prototypes.

    Parameters
    ----------
    encoder
        Maps expression (b x m, raw counts in the model's gene order) to embeddings (b x d). When it has a
        ``linear_head()`` method returning an object with ``preprocess``, ``weight (h x m)``, ``bias (h,)`` and
        ``rest`` (the CONTRACT's ``LinearHead``), and ``use_linear_head`` is True, only the changed columns of
        the first layer are recomputed.
    readout
        Maps embeddings (b x d) to unit activations (b x units); None for the embedding itself (neurons).
    use_linear_head
        Use the first-layer shortcut when the encoder offers one (False: always the full forward).
    dtype
        Precision of the computation. Copies of ``encoder`` and ``readout`` are cast to it, the originals are
        untouched. The default float32 is the precision the embeddings and codes were computed in, and what
        Captum uses: scores agree with Captum to ~1e-6. float64 makes the shortcut and the full forward agree to
        ~1e-12 (used by the tests). A Top-K SAE is discontinuous: where a perturbation brings two concepts' pre-
        activations within rounding error of each other, the shortcut recomputes that cell with the full
        forward (see ``_LinearHeadModel``), but float64 and float32 can still disagree on such a gene.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``.

    Returns
    -------
    A :class:`PerturbationModel`.
    """
    dev = resolve_device(device)
    modules = torch.nn.ModuleList([encoder, readout if readout is not None else torch.nn.Identity()])
    enc, out = copy.deepcopy(modules).to(device=dev, dtype=dtype).eval()
    head = enc.linear_head() if use_linear_head and hasattr(enc, "linear_head") else None
    plain = _PlainModel(lambda x: out(enc(x)), dev, dtype)
    if head is None:
        return plain
    with_ties = getattr(out, "forward_with_ties", None)

    def rest(z_BH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb_BD = head.rest(z_BH)
        if with_ties is None:  # a continuous readout (neurons): no cell needs the full forward
            return out(emb_BD), torch.zeros(len(emb_BD), dtype=torch.bool, device=emb_BD.device)
        return with_ties(emb_BD)

    return _LinearHeadModel(
        head.preprocess,
        head.weight.to(device=dev, dtype=dtype),
        head.bias.to(device=dev, dtype=dtype),
        rest,
        plain,
    )


def concept_model(encoder: torch.nn.Module, sae: torch.nn.Module, **options) -> PerturbationModel:
    """:func:`perturbation_model` whose outputs are all concept activations ``sae.encode(encoder(x))``.

    ``options`` are those of :func:`perturbation_model` (``use_linear_head``, ``dtype``, ``device``).
    """
    return perturbation_model(encoder, _SAEReadout(sae), **options)


# --------------------------------------------------------------------------------------------------------------
# Occlusion (Eq. 2)
# --------------------------------------------------------------------------------------------------------------
def _pair_deltas(
    model: PerturbationModel,
    base_QU: torch.Tensor,
    x_QM: torch.Tensor,
    proto_J: torch.Tensor,
    cf_JM: Callable[[torch.Tensor], torch.Tensor],
    n_pairs: int,
    batch_size: int,
    progress: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Eq. 2 for every gene that differs in each (prototype, counterfactual) pair, batched.

    Parameters
    ----------
    proto_J
        Prototype slot (row of ``x_QM``) of each pair.
    cf_JM
        Function of pair indices -> their counterfactual cells (len x m).

    Yields
    ------
    ``(pair_B, gene_B, delta_BU)``: pair index, gene index and score of every unit, for one batch of
    perturbed cells.
    """
    n_genes = x_QM.shape[1]
    pairs_per_chunk = max(1, 8 * batch_size // n_genes)
    with tqdm(total=n_pairs, desc="occlusion", unit="pair", disable=not progress) as bar:
        for start in range(0, n_pairs, pairs_per_chunk):
            pairs = torch.arange(start, min(start + pairs_per_chunk, n_pairs), device=x_QM.device)
            x_cf = cf_JM(pairs)
            local, gene = torch.nonzero(x_QM[proto_J[pairs]] != x_cf, as_tuple=True)
            for b in range(0, len(local), batch_size):
                loc_B, gene_B = local[b : b + batch_size], gene[b : b + batch_size]
                slot_B = proto_J[pairs[loc_B]]
                out_BU = model.single(slot_B, gene_B, x_cf[loc_B, gene_B])
                yield pairs[loc_B], gene_B, base_QU[slot_B] - out_BU
            bar.update(len(pairs))


def occlusion(
    f: Callable[[torch.Tensor], torch.Tensor],
    prototypes: torch.Tensor,
    counterfactuals: torch.Tensor,
    *,
    batch_size: int = 1024,
    progress: bool = False,
) -> torch.Tensor:
    """Counterfactual occlusion scores of every gene (paper Eq. 2).

    ``score[p, c, l] = f(x_p) - f(x_p with gene l set to counterfactual c's value)``. Genes with the same value
    in both cells are not evaluated: their score is exactly 0. Equal to Captum's ``FeatureAblation`` with the
    counterfactual as baseline.

    Parameters
    ----------
    f
        Maps a batch of expression vectors (b x m) to one scalar per row (b,).
    prototypes
        Prototype cells (n_p x m).
    counterfactuals
        Counterfactual cells (n_p x n_c x m) of each prototype.
    batch_size
        Perturbed cells per call of ``f``.
    progress
        Show a progress bar.

    Returns
    -------
    Scores (n_p x n_c x m), in the dtype of ``prototypes``.
    """
    if prototypes.ndim != 2 or counterfactuals.ndim != 3 or counterfactuals.shape[::2] != prototypes.shape:
        raise ValueError(
            f"occlusion needs prototypes (n_p x m) and counterfactuals (n_p x n_c x m); got shapes "
            f"{tuple(prototypes.shape)} and {tuple(counterfactuals.shape)}. Stack counterfactuals per prototype."
        )
    n_p, n_c, n_genes = counterfactuals.shape
    model = _PlainModel(lambda x: f(x).reshape(len(x), 1), prototypes.device, prototypes.dtype)
    with torch.no_grad():
        base_Q1 = model.prepare(prototypes)
        cf_JM = counterfactuals.reshape(n_p * n_c, n_genes)
        proto_J = torch.arange(n_p, device=prototypes.device).repeat_interleave(n_c)
        scores_JM = torch.zeros(n_p * n_c, n_genes, dtype=base_Q1.dtype, device=prototypes.device)
        for pair_B, gene_B, delta_B1 in _pair_deltas(
            model, base_Q1, prototypes, proto_J, lambda j: cf_JM[j], n_p * n_c, batch_size, progress
        ):
            scores_JM[pair_B, gene_B] = delta_B1[:, 0]
    return scores_JM.reshape(n_p, n_c, n_genes)


def aggregate_attributions(scores: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Average occlusion scores over prototypes and counterfactuals (paper Eq. 3, before sorting).

    Parameters
    ----------
    scores
        (..., n_p, n_c, m) scores from Eq. 2.

    Returns
    -------
    (..., m): one score per gene; sorting it gives C_i (see :func:`ranked_genes`).
    """
    return scores.mean(axis=(-3, -2)) if isinstance(scores, np.ndarray) else scores.mean(dim=(-3, -2))


# --------------------------------------------------------------------------------------------------------------
# Prototypes and counterfactuals (Eq. 1)
# --------------------------------------------------------------------------------------------------------------
def prototypes(acts_N: np.ndarray, n_prototypes: int = 10) -> np.ndarray:
    """The ``n_prototypes`` cells with the highest activation (ties: lower cell index first).

    Parameters
    ----------
    acts_N
        Activation of one unit in every cell (n_cells,).
    n_prototypes
        N_p.

    Returns
    -------
    Cell indices (n_p,), highest activation first.
    """
    return np.argsort(-np.asarray(acts_N), kind="stable")[:n_prototypes]


def counterfactuals(
    emb_ND: np.ndarray | torch.Tensor,
    prototype_idx: np.ndarray,
    inactive_N: np.ndarray,
    n_counterfactuals: int = 3,
) -> np.ndarray:
    """Counterfactuals of each prototype: its nearest non-activating cells in embedding space (paper Eq. 1).

    ``x_c = argmin_j { ||f(x_p) - f(x_j)||_2 : (psi o f)_i(x_j) = 0 }``, and the ``N_c`` nearest for robustness
    (ties: lower cell index first).

    Parameters
    ----------
    emb_ND
        Embeddings f(x) of all cells (n_cells x d).
    prototype_idx
        Prototype cell indices (n_p,).
    inactive_N
        Boolean (n_cells,): cells that do not activate the unit.
    n_counterfactuals
        N_c.

    Returns
    -------
    Cell indices (n_p x n_c), nearest first.
    """
    emb = torch.as_tensor(emb_ND)
    candidates = np.flatnonzero(inactive_N)
    dist_PK = torch.cdist(emb[prototype_idx].double(), emb[candidates].double())
    order_PK = np.argsort(dist_PK.cpu().numpy(), axis=1, kind="stable")[:, :n_counterfactuals]
    return candidates[order_PK]


@dataclass(frozen=True)
class Selection:
    """Prototypes and counterfactuals of every unit, and which units were skipped and why.

    Attributes
    ----------
    prototypes
        (n_units x n_p) cell indices; -1 for skipped units.
    counterfactuals
        (n_units x n_p x n_c) cell indices; -1 for skipped units.
    status
        DataFrame indexed by unit id: ``status`` ("attributed" / "skipped"), ``reason``, ``n_active``,
        ``n_inactive``.
    """

    prototypes: np.ndarray
    counterfactuals: np.ndarray
    status: pd.DataFrame


def select_cells(
    acts_NU: np.ndarray,
    emb_ND: np.ndarray,
    inactive_NU: np.ndarray,
    *,
    units: Sequence[int] | None = None,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    progress: bool = True,
) -> Selection:
    """Choose prototypes (top activations) and counterfactuals (Eq. 1) for every unit, or skip it.

    A unit is skipped, with the reason recorded, when fewer cells activate it than ``n_prototypes`` (a dead
    or rare concept) or fewer cells do not activate it than ``n_counterfactuals`` (a concept active
    everywhere).

    Parameters
    ----------
    acts_NU
        Unit activations of all cells (n_cells x n_units).
    emb_ND
        Embeddings of all cells (n_cells x d), for the distances of Eq. 1.
    inactive_NU
        Boolean (n_cells x n_units): cells that do not activate each unit (concepts: activation exactly 0).
    units
        Unit ids, one per column (default 0..n_units-1), used in the status table.
    n_prototypes, n_counterfactuals
        N_p and N_c.
    progress
        Show a progress bar.
    """
    n_cells, n_units = acts_NU.shape
    if emb_ND.shape[0] != n_cells or inactive_NU.shape != acts_NU.shape:
        raise ValueError(
            f"acts ({acts_NU.shape}), emb ({emb_ND.shape}) and inactive ({inactive_NU.shape}) must describe the "
            "same cells in the same order; pass arrays computed from the same AnnData."
        )
    if n_prototypes < 1 or n_counterfactuals < 1:
        raise ValueError(
            f"n_prototypes and n_counterfactuals must be >= 1, got {n_prototypes}, {n_counterfactuals}."
        )
    units = np.arange(n_units) if units is None else np.asarray(units)
    protos = np.full((n_units, n_prototypes), -1)
    cfs = np.full((n_units, n_prototypes, n_counterfactuals), -1)
    rows = []
    for u in tqdm(range(n_units), desc="prototypes", disable=not progress):
        inactive = inactive_NU[:, u]
        n_active, n_inactive = int((~inactive).sum()), int(inactive.sum())
        reason = ""
        if n_active < n_prototypes:
            reason = f"{n_active} active cells, fewer than n_prototypes={n_prototypes}"
        elif n_inactive < n_counterfactuals:
            reason = f"{n_inactive} non-activating cells, fewer than n_counterfactuals={n_counterfactuals}"
        else:
            protos[u] = prototypes(np.where(inactive, -np.inf, acts_NU[:, u]), n_prototypes)
            cfs[u] = counterfactuals(emb_ND, protos[u], inactive, n_counterfactuals)
        rows.append((units[u], SKIPPED if reason else ATTRIBUTED, reason, n_active, n_inactive))
    status = pd.DataFrame(rows, columns=["unit", "status", "reason", "n_active", "n_inactive"]).set_index(
        "unit"
    )
    return Selection(protos, cfs, status)


# --------------------------------------------------------------------------------------------------------------
# Whole-model attribution
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Attribution:
    """Gene x unit attribution scores (Eq. 3) with everything needed to reproduce or inspect them.

    Attributes
    ----------
    scores
        (n_genes x n_units) mean occlusion score (Eq. 3); NaN columns for skipped units.
    genes
        (n_genes,) gene names, the encoder's input order.
    units
        (n_units,) unit ids (concept or neuron index).
    activation
        (n_units,) mean activation of the unit over its prototypes (as recomputed by the model); NaN if skipped.
    prototypes, counterfactuals
        (n_units x n_p) and (n_units x n_p x n_c) cell indices (-1 if skipped).
    status
        DataFrame indexed by unit id (see :class:`Selection`).
    kind
        ``"concept"`` or ``"neuron"``; labels are ``C<id>`` / ``N<id>``.
    """

    scores: np.ndarray
    genes: np.ndarray
    units: np.ndarray
    activation: np.ndarray
    prototypes: np.ndarray
    counterfactuals: np.ndarray
    status: pd.DataFrame
    kind: str = "concept"

    @property
    def labels(self) -> list[str]:
        """Display names of the units (``C12`` for concept 12, ``N3`` for neuron 3)."""
        prefix = "C" if self.kind == "concept" else "N"
        return [f"{prefix}{u}" for u in self.units]

    @property
    def attributed(self) -> np.ndarray:
        """Boolean (n_units,): units that were attributed (not skipped)."""
        return (self.status["status"] == ATTRIBUTED).to_numpy()

    def frame(self) -> pd.DataFrame:
        """Scores of the attributed units as a DataFrame (genes x unit ids), the input of GSEA."""
        keep = self.attributed
        return pd.DataFrame(
            self.scores[:, keep], index=pd.Index(self.genes, name="gene"), columns=self.units[keep]
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write to an ``.npz`` file atomically (status columns stored as arrays, no pickle)."""
        from corelib.runs import atomic_path

        with atomic_path(path) as tmp:
            np.savez_compressed(
                tmp,
                scores=self.scores,
                genes=self.genes.astype(str),
                units=self.units.astype(np.int64),  # an empty status index is an object array
                activation=self.activation,
                prototypes=self.prototypes,
                counterfactuals=self.counterfactuals,
                kind=np.array(self.kind),
                **{
                    f"status_{c}": self.status[c].to_numpy().astype(str if c in ("status", "reason") else int)
                    for c in self.status.columns
                },
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Attribution:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            status = pd.DataFrame(
                {k.removeprefix("status_"): z[k] for k in z.files if k.startswith("status_")},
                index=pd.Index(z["units"], name="unit"),
            )
            return cls(
                scores=z["scores"],
                genes=z["genes"],
                units=z["units"],
                activation=z["activation"],
                prototypes=z["prototypes"],
                counterfactuals=z["counterfactuals"],
                status=status,
                kind=str(z["kind"]),
            )


def dense_rows(X, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a dense or sparse cells x genes matrix, as a dense float32 array."""
    rows = X[idx]
    return np.asarray(rows.toarray() if sp.issparse(rows) else rows, dtype=np.float32)


def attribute(
    model: PerturbationModel,
    X_NM,
    selection: Selection,
    *,
    columns: Sequence[int] | None = None,
    genes: Sequence[str],
    kind: str = "concept",
    batch_size: int = 2048,
    progress: bool = True,
) -> Attribution:
    """Attribution of every selected unit (Eqs. 2-3), sharing forward passes across units.

    The distinct (prototype, counterfactual) pairs of all units are enumerated; each perturbed cell of a pair
    goes through the model once and its output serves every unit that uses the pair.

    Parameters
    ----------
    model
        From :func:`perturbation_model`; its readout returns all units.
    X_NM
        Expression (n_cells x m genes; raw counts in the encoder's gene order), dense or sparse.
    selection
        From :func:`select_cells`.
    columns
        Column of the readout's output for each unit of ``selection`` (default 0..n_units-1).
    genes
        The m gene names.
    kind
        ``"concept"`` or ``"neuron"``.
    batch_size
        Perturbed cells per forward pass.
    progress
        Show progress bars.

    Returns
    -------
    An :class:`Attribution`.
    """
    n_units, n_p, n_c = selection.counterfactuals.shape
    n_genes = X_NM.shape[1]
    if len(genes) != n_genes:
        raise ValueError(
            f"{len(genes)} gene names for {n_genes} expression columns; pass the encoder's genes."
        )
    columns = np.arange(n_units) if columns is None else np.asarray(columns)
    done = np.flatnonzero(selection.status["status"].to_numpy() == ATTRIBUTED)
    scores = np.full((n_genes, n_units), np.nan)
    activation = np.full(n_units, np.nan)
    per_block = max(1, _BLOCK_BYTES // (8 * n_p * n_c * n_genes))
    for start in range(0, len(done), per_block):
        block = done[start : start + per_block]
        scores_UPCM, act_U = _attribute_block(
            model,
            X_NM,
            selection.prototypes[block],
            selection.counterfactuals[block],
            columns[block],
            batch_size,
            progress,
        )
        scores[:, block] = aggregate_attributions(scores_UPCM).cpu().numpy().T
        activation[block] = act_U
    return Attribution(
        scores=scores,
        genes=np.asarray(genes, dtype=str),
        units=np.asarray(selection.status.index),
        activation=activation,
        prototypes=selection.prototypes,
        counterfactuals=selection.counterfactuals,
        status=selection.status.copy(),
        kind=kind,
    )


def _attribute_block(
    model: PerturbationModel,
    X_NM,
    protos_UP: np.ndarray,
    cfs_UPC: np.ndarray,
    columns_U: np.ndarray,
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, np.ndarray]:
    """Eq. 2 scores (units x n_p x n_c x m) and mean prototype activation (units,) for one block of units."""
    n_units, n_p, n_c = cfs_UPC.shape
    # Distinct prototype cells and distinct (prototype cell, counterfactual cell) pairs of the block.
    proto_cells, proto_slot_UP = np.unique(protos_UP, return_inverse=True)
    proto_slot_UP = proto_slot_UP.reshape(n_units, n_p)
    pair_keys = np.stack([np.broadcast_to(protos_UP[..., None], cfs_UPC.shape), cfs_UPC], -1).reshape(-1, 2)
    pairs, pair_of_use = np.unique(pair_keys, axis=0, return_inverse=True)
    pair_of_use = pair_of_use.reshape(-1)
    cf_cells, cf_slot_J = np.unique(pairs[:, 1], return_inverse=True)
    proto_J = np.searchsorted(proto_cells, pairs[:, 0])
    # Uses of each pair (unit, p, c), grouped by pair (CSR).
    by_pair = np.argsort(pair_of_use, kind="stable")
    use_u, use_p, use_c = np.unravel_index(by_pair, (n_units, n_p, n_c))
    ptr = np.concatenate([[0], np.cumsum(np.bincount(pair_of_use, minlength=len(pairs)))])

    with torch.no_grad():
        dev = model.device
        x_QM = torch.as_tensor(dense_rows(X_NM, proto_cells), device=dev, dtype=model.dtype)
        base_QU = model.prepare(x_QM)
        cf_KM = torch.as_tensor(dense_rows(X_NM, cf_cells), device=dev)
        cf_slot = torch.as_tensor(cf_slot_J, device=dev)
        t = {
            k: torch.as_tensor(v, device=dev)
            for k, v in dict(u=use_u, p=use_p, c=use_c, col=columns_U[use_u], ptr=ptr).items()
        }
        scores = torch.zeros(n_units, n_p, n_c, x_QM.shape[1], dtype=base_QU.dtype, device=dev)
        for pair_B, gene_B, delta_BU in _pair_deltas(
            model,
            base_QU,
            x_QM,
            torch.as_tensor(proto_J, device=dev),
            lambda j: cf_KM[cf_slot[j]].to(model.dtype),
            len(pairs),
            batch_size,
            progress,
        ):
            # Every use of a row's pair gets the row's score for its unit; most pairs have one use.
            first_B, count_B = t["ptr"][pair_B], t["ptr"][pair_B + 1] - t["ptr"][pair_B]
            for extra in range(int(count_B.max())):
                row = torch.nonzero(count_B > extra).squeeze(1)
                use = first_B[row] + extra
                scores[t["u"][use], t["p"][use], t["c"][use], gene_B[row]] = delta_BU[row, t["col"][use]]
        act_U = base_QU[
            torch.as_tensor(proto_slot_UP, device=dev), torch.as_tensor(columns_U, device=dev)[:, None]
        ]
    return scores, act_U.mean(1).cpu().numpy()


def attribute_concepts(
    encoder: torch.nn.Module,
    sae: torch.nn.Module,
    X_NM,
    emb_ND: np.ndarray,
    *,
    codes_NC: np.ndarray | None = None,
    concepts: Sequence[int] | None = None,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    use_linear_head: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "auto",
    batch_size: int = 2048,
    progress: bool = True,
) -> Attribution:
    """Counterfactual occlusion attribution of SAE concepts (paper section 3.2, Eqs. 1-3).

    Parameters
    ----------
    encoder
        The model's encoder (CONTRACT ``Encoder``): raw counts in ``encoder.genes`` order -> embedding.
    sae
        SAE with ``encode(emb_BD) -> codes_BC``.
    X_NM
        Expression of all cells (n_cells x m), raw counts aligned to ``encoder.genes`` (``encoders.align``).
    emb_ND
        Embeddings of the same cells (n_cells x d), as stored by notebook 01.
    codes_NC
        Concept activations of all cells (default: ``corelib.sae.encode(sae, emb_ND)``).
    concepts
        Concept indices to attribute (default: all).
    n_prototypes, n_counterfactuals
        N_p (top-activating cells) and N_c (nearest non-activating cells per prototype).
    use_linear_head, dtype, device
        See :func:`perturbation_model`.
    batch_size
        Perturbed cells per forward pass.
    progress
        Show progress bars.

    Returns
    -------
    An :class:`Attribution` of kind ``"concept"``; concepts with fewer active cells than N_p, or fewer
    non-activating cells than N_c, are skipped with the reason in ``status``.
    """
    _check_inputs(encoder, X_NM, emb_ND)
    if codes_NC is None:
        from corelib.sae import encode

        codes_NC = encode(sae, emb_ND)
    codes_NC = np.asarray(codes_NC)
    concepts = np.arange(codes_NC.shape[1]) if concepts is None else np.asarray(concepts, dtype=np.int64)
    acts_NU = codes_NC[:, concepts]
    model = concept_model(encoder, sae, use_linear_head=use_linear_head, dtype=dtype, device=device)
    return _attribute_units(
        model,
        X_NM,
        emb_ND,
        acts_NU,
        acts_NU == 0,
        units=concepts,
        genes=encoder.genes,
        kind="concept",
        n_prototypes=n_prototypes,
        n_counterfactuals=n_counterfactuals,
        batch_size=batch_size,
        progress=progress,
    )


def _attribute_units(
    model: PerturbationModel,
    X_NM,
    emb_ND: np.ndarray,
    acts_NU: np.ndarray,
    inactive_NU: np.ndarray,
    *,
    units: np.ndarray,
    genes: Sequence[str],
    kind: str,
    n_prototypes: int,
    n_counterfactuals: int,
    batch_size: int,
    progress: bool,
) -> Attribution:
    """Select prototypes and counterfactuals of each unit (Eq. 1), then attribute them (Eqs. 2-3).

    ``acts_NU`` and ``inactive_NU`` (n_cells x units) are the units' activations and the cells that may serve
    as counterfactuals; ``units`` are the model output columns they correspond to.
    """
    selection = select_cells(
        acts_NU,
        emb_ND,
        inactive_NU,
        units=units,
        n_prototypes=n_prototypes,
        n_counterfactuals=n_counterfactuals,
        progress=progress,
    )
    return attribute(
        model,
        X_NM,
        selection,
        columns=units,
        genes=genes,
        kind=kind,
        batch_size=batch_size,
        progress=progress,
    )


def neuron_inactive(emb_ND: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """Cells where a neuron counts as "not active": at or below its ``quantile`` over cells.

    Neurons are dense (an activation of exactly 0, the concepts' rule in Eq. 1, almost never happens) and
    not always centred (scGPT embeddings are L2-normalised), so the counterfactual pool of a neuron is the
    cells in its lower ``quantile`` (default: below the median). Prototypes are its highest values.

    Returns
    -------
    Boolean (n_cells x d).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}; 0.5 means 'below the median'.")
    return emb_ND <= np.quantile(emb_ND, quantile, axis=0, keepdims=True)


def attribute_neurons(
    encoder: torch.nn.Module,
    X_NM,
    emb_ND: np.ndarray,
    *,
    neurons: Sequence[int] | None = None,
    inactive_quantile: float = 0.5,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    use_linear_head: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "auto",
    batch_size: int = 2048,
    progress: bool = True,
) -> Attribution:
    """The same attribution for neurons (embedding dimensions), for the concepts-vs-neurons comparison.

    Neuron j's activation is ``f(x)_j``; prototypes are its N_p highest cells; counterfactuals are the
    nearest cells among those at or below its ``inactive_quantile`` (see :func:`neuron_inactive`).
    Parameters are those of :func:`attribute_concepts`.

    Returns
    -------
    An :class:`Attribution` of kind ``"neuron"``.
    """
    _check_inputs(encoder, X_NM, emb_ND)
    neurons = np.arange(emb_ND.shape[1]) if neurons is None else np.asarray(neurons)
    model = perturbation_model(encoder, None, use_linear_head=use_linear_head, dtype=dtype, device=device)
    return _attribute_units(
        model,
        X_NM,
        emb_ND,
        emb_ND[:, neurons],
        neuron_inactive(emb_ND, inactive_quantile)[:, neurons],
        units=neurons,
        genes=encoder.genes,
        kind="neuron",
        n_prototypes=n_prototypes,
        n_counterfactuals=n_counterfactuals,
        batch_size=batch_size,
        progress=progress,
    )


def _check_inputs(encoder: torch.nn.Module, X_NM, emb_ND: np.ndarray) -> None:
    """Clear errors for expression / embedding inputs that do not fit the encoder."""
    n_genes = len(encoder.genes)
    if X_NM.ndim != 2 or X_NM.shape[1] != n_genes:
        raise ValueError(
            f"Expression has shape {X_NM.shape} but the encoder takes {n_genes} genes; align the counts to the "
            "model's genes first: X, _ = corelib.encoders.align(adata, encoder.genes)."
        )
    if len(emb_ND) != X_NM.shape[0]:
        raise ValueError(
            f"{X_NM.shape[0]} cells of expression but {len(emb_ND)} embeddings; use the same AnnData for both."
        )
    if not np.isfinite(emb_ND).all():
        raise ValueError("The embedding contains NaN or inf; re-embed the cells (notebook 01).")


# --------------------------------------------------------------------------------------------------------------
# Reading results
# --------------------------------------------------------------------------------------------------------------
def ranked_genes(attr: Attribution, unit: int, *, threshold: float = 0.05) -> pd.DataFrame:
    """C_i of Eq. 3: the genes of one unit sorted by attribution score.

    Parameters
    ----------
    attr
        An :class:`Attribution`.
    unit
        Unit id (concept or neuron index).
    threshold
        Importance threshold on the score (paper: 0.05).

    Returns
    -------
    DataFrame indexed by gene, highest score first: ``score``, ``relative`` (score / the unit's mean
    prototype activation), ``important`` (score > threshold).
    """
    where = np.flatnonzero(attr.units == unit)
    if len(where) == 0:
        raise KeyError(
            f"Unit {unit} is not in this attribution (units {', '.join(map(str, attr.units[:5]))}, ...)."
        )
    j = where[0]
    if not attr.attributed[j]:
        raise ValueError(f"Unit {unit} was skipped: {attr.status['reason'].iloc[j]}.")
    df = pd.DataFrame(
        {"score": attr.scores[:, j], "relative": attr.scores[:, j] / attr.activation[j]},
        index=pd.Index(attr.genes, name="gene"),
    )
    df["important"] = df["score"] > threshold
    return df.sort_values("score", ascending=False, kind="stable")


def top_genes(attr: Attribution, n: int = 10) -> pd.DataFrame:
    """The ``n`` highest-scoring genes of every attributed unit, as a long table.

    Returns
    -------
    DataFrame with columns ``unit``, ``rank`` (1 = highest), ``gene``, ``score``, ``relative``.
    """
    keep = np.flatnonzero(attr.attributed)
    order_NU = np.argsort(-attr.scores[:, keep], axis=0, kind="stable")[:n]
    rank_N = np.arange(1, len(order_NU) + 1)
    return pd.DataFrame(
        {
            "unit": np.repeat(attr.units[keep], len(rank_N)),
            "rank": np.tile(rank_N, len(keep)),
            "gene": attr.genes[order_NU.T.ravel()],
            "score": np.take_along_axis(attr.scores[:, keep], order_NU, 0).T.ravel(),
            "relative": (
                np.take_along_axis(attr.scores[:, keep], order_NU, 0) / attr.activation[keep]
            ).T.ravel(),
        }
    )


def important_gene_counts(
    attr: Attribution, *, threshold: float = 0.05, relative_threshold: float = 0.01
) -> pd.DataFrame:
    """Number of important genes per unit (paper Fig. 2C), absolute and relative to the unit's activation.

    The paper's threshold (score > 0.05) is in activation units, so its meaning changes with the scale of a
    concept; the relative count uses score / mean prototype activation > ``relative_threshold`` instead.

    Returns
    -------
    DataFrame indexed by unit id (attributed units only): ``activation``, ``n_important`` (score >
    threshold), ``threshold_relative`` (threshold / activation: what the absolute threshold means for this
    unit), ``n_important_relative``.
    """
    keep = attr.attributed
    scores, act = attr.scores[:, keep], attr.activation[keep]
    return pd.DataFrame(
        {
            "activation": act,
            "n_important": (scores > threshold).sum(0),
            "threshold_relative": threshold / act,
            "n_important_relative": (scores / act > relative_threshold).sum(0),
        },
        index=pd.Index(attr.units[keep], name="unit"),
    )


def sample_concepts(
    codes_NC: np.ndarray,
    max_concepts: int | None,
    *,
    n_prototypes: int = 10,
    n_counterfactuals: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Concepts to attribute: all of them, or a seeded random sample of the attributable ones.

    Attributing every concept of a large SAE takes long on a CPU; a random sample (as the paper's expert
    study did with 20 concepts) keeps the summaries unbiased.

    Parameters
    ----------
    codes_NC
        Concept activations of all cells.
    max_concepts
        How many concepts to keep; None keeps all (skipped ones are then recorded with their reason).
    n_prototypes, n_counterfactuals
        A sampled concept has at least this many active and non-activating cells.
    seed
        Seed of the sample.

    Returns
    -------
    Sorted concept indices.
    """
    if max_concepts is None:
        return np.arange(codes_NC.shape[1])
    n_active = (codes_NC > 0).sum(0)
    ok = np.flatnonzero((n_active >= n_prototypes) & (len(codes_NC) - n_active >= n_counterfactuals))
    if len(ok) < max_concepts:
        print(
            f"Only {len(ok)} of {codes_NC.shape[1]} concepts are active on at least n_prototypes={n_prototypes} "
            f"cells and inactive on at least n_counterfactuals={n_counterfactuals}: all of them are attributed."
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ok, size=min(int(max_concepts), len(ok)), replace=False))


def status_table(*attrs: Attribution) -> pd.DataFrame:
    """Per-unit status of several attributions (concepts and neurons) as one table.

    Returns
    -------
    DataFrame with columns ``kind``, ``unit``, ``label``, ``status``, ``reason``, ``n_active``, ``n_inactive``,
    ``activation`` (mean prototype activation).
    """
    return pd.concat(
        [
            a.status.reset_index().assign(kind=a.kind, label=a.labels, activation=a.activation)[
                ["kind", "unit", "label", "status", "reason", "n_active", "n_inactive", "activation"]
            ]
            for a in attrs
        ],
        ignore_index=True,
    )


#: Bins of the number of important genes per unit (paper Fig. 2C).
GENE_COUNT_BINS = (0, 1, 4, 11, 51, np.inf)


def plot_important_genes(counts: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Share of units by number of important genes, absolute and relative threshold (paper Fig. 2C).

    Parameters
    ----------
    counts
        From :func:`important_gene_counts`.
    ax
        Axes to draw on (default: a new figure).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    labels = ["0", "1-3", "4-10", "11-50", ">50"]
    shares = pd.DataFrame(
        {
            name: pd.cut(counts[col], GENE_COUNT_BINS, right=False, labels=labels).value_counts(
                normalize=True
            )
            for name, col in [
                ("score > threshold", "n_important"),
                ("relative to activation", "n_important_relative"),
            ]
        }
    ).loc[labels]
    bottom = np.zeros(shares.shape[1])
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(labels)))
    for label, color in zip(labels, colors, strict=True):
        ax.bar(shares.columns, shares.loc[label], bottom=bottom, color=color, label=f"{label} genes")
        bottom += shares.loc[label].to_numpy()
    ax.set_ylabel("fraction of units")
    ax.set_title(f"Important genes per unit (n={len(counts)})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return ax


def worked_examples(
    attr: Attribution, gsea_units: pd.DataFrame, metadata: pd.DataFrame, *, n: int = 4, n_genes: int = 10
) -> pd.DataFrame:
    """A few interpreted units in the layout of the paper's Table 4: top genes, metadata, GSEA label.

    Units with the most significant GSEA label come first (then the most important genes, for units GSEA
    could not label).

    Parameters
    ----------
    attr
        An :class:`Attribution`.
    gsea_units
        ``corelib.enrichment.gsea(...).units`` (indexed by unit; ``term``, ``pval``, ``annotation``).
    metadata
        ``corelib.concepts.characterize`` table (indexed by unit; ``call``, ``<column>_top``,
        ``<column>_fraction``).
    n, n_genes
        Number of units, and of top genes listed per unit.

    Returns
    -------
    DataFrame indexed by label (``C12``): ``top_genes``, ``metadata``, ``gsea_label``, ``gsea_pval``,
    ``annotation``.
    """
    top = top_genes(attr, n=n_genes).groupby("unit")["gene"].agg(", ".join)
    gsea = gsea_units.reindex(top.index)
    n_important = pd.Series((attr.scores > 0.05).sum(0), index=attr.units).reindex(top.index)
    order = (
        pd.DataFrame({"p": gsea["pval"].fillna(np.inf), "g": -n_important}).sort_values(["p", "g"]).index[:n]
    )
    columns = [c.removesuffix("_top") for c in metadata.columns if c.endswith("_top")]

    def describe(unit: int) -> str:
        if unit not in metadata.index:
            return ""
        row = metadata.loc[unit]
        labels = "; ".join(f"{c}: {row[f'{c}_top']} ({row[f'{c}_fraction']:.0%})" for c in columns)
        return f"{row['call']} ({row['n_active']} active cells); {labels}"

    prefix = "C" if attr.kind == "concept" else "N"
    return pd.DataFrame(
        {
            "top_genes": top.loc[order].to_numpy(),
            "metadata": [describe(u) for u in order],
            "gsea_label": gsea.loc[order, "term"].to_numpy(),
            "gsea_pval": gsea.loc[order, "pval"].to_numpy(),
            "annotation": gsea.loc[order, "annotation"].to_numpy(),
        },
        index=pd.Index([f"{prefix}{u}" for u in order], name="unit"),
    )
