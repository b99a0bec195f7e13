"""Perturbation models: expression -> unit activations, for occlusion (concepts through an SAE, or neurons)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

from corelib.device import resolve_device
from corelib.tl import sae as sae_lib

if TYPE_CHECKING:
    from corelib.encoders.base import LinearHead


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

    def entries(
        self,
        slot_B: torch.Tensor,
        gene_B: torch.Tensor,
        value_B: torch.Tensor,
        row_E: torch.Tensor,
        col_E: torch.Tensor,
    ) -> torch.Tensor:
        """Some entries (e,) of :meth:`single`'s output: unit ``col_E`` of perturbed cell ``row_E``."""
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

    def entries(self, slot_B, gene_B, value_B, row_E, col_E) -> torch.Tensor:
        return self.single(slot_B, gene_B, value_B)[row_E, col_E]

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
    can select different concepts and that gene's score jumps (rare: ``benchmarks/attribution.py`` counts them). The
    readout reports such near-ties (``forward_with_ties``) and those cells are recomputed with the full
    forward (``plain``), which is what Captum does; the prototypes' own activations come from it too. A readout
    with ``bounds`` and ``entries`` (:class:`_SAEReadout`) computes :meth:`entries` without its full output.
    """

    def __init__(
        self, head: LinearHead, embed: torch.nn.Module, readout: torch.nn.Module, plain: _PlainModel
    ):
        self.preprocess, self.weight_MH, self.bias_H, self.head_rest = (
            head.preprocess,
            head.weight.T,
            head.bias,
            head.rest,
        )
        self.embed, self.readout, self.plain = embed, readout, plain
        self.device, self.dtype = head.weight.device, head.weight.dtype

    def rest(self, z_BH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit activations (b x units) of first-layer outputs, and which cells are at a Top-K near-tie (b,)."""
        emb_BD = self.head_rest(z_BH)
        with_ties = getattr(self.readout, "forward_with_ties", None)
        if with_ties is None:  # a continuous readout (neurons): no cell needs the full forward
            return self.readout(emb_BD), torch.zeros(len(emb_BD), dtype=torch.bool, device=emb_BD.device)
        return with_ties(emb_BD)

    def prepare(self, x_QM: torch.Tensor) -> torch.Tensor:
        self.pre_QM = self.preprocess(x_QM)
        self.z_QH = self.pre_QM @ self.weight_MH + self.bias_H
        bounds = getattr(self.readout, "bounds", None)
        self.bounds = None if bounds is None else bounds(self.embed(x_QM))
        return self.plain.prepare(x_QM)

    def _hidden(self, slot_B: torch.Tensor, gene_B: torch.Tensor, value_B: torch.Tensor) -> torch.Tensor:
        """First-layer outputs (b x h) of prototypes ``slot_B`` with gene ``gene_B`` set to ``value_B``."""
        d_B = self.preprocess(value_B) - self.pre_QM[slot_B, gene_B]
        return torch.addcmul(self.z_QH[slot_B], d_B[:, None], self.weight_MH[gene_B])

    def single(self, slot_B: torch.Tensor, gene_B: torch.Tensor, value_B: torch.Tensor) -> torch.Tensor:
        out_BU, tie_B = self.rest(self._hidden(slot_B, gene_B, value_B))
        return _recompute(out_BU, tie_B, lambda r: self.plain.single(slot_B[r], gene_B[r], value_B[r]))

    def entries(self, slot_B, gene_B, value_B, row_E, col_E) -> torch.Tensor:
        if self.bounds is None:
            return self.single(slot_B, gene_B, value_B)[row_E, col_E]
        emb_BD = self.head_rest(self._hidden(slot_B, gene_B, value_B))
        out_E, redo_B = self.readout.entries(emb_BD, slot_B, row_E, col_E, self.bounds)
        if bool(redo_B.any()):  # cells the readout could not decide: all their units, as single does
            rows = redo_B.nonzero().squeeze(1)
            full_RU = self.single(slot_B[rows], gene_B[rows], value_B[rows])
            redo_E = redo_B[row_E]
            local_B = torch.cumsum(redo_B, 0) - 1
            out_E[redo_E] = full_RU[local_B[row_E[redo_E]], col_E[redo_E]]
        return out_E

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


class _TopKBounds(NamedTuple):
    """Prototypes as :meth:`_SAEReadout.entries` reads them.

    Attributes
    ----------
    emb_QD
        Embeddings (q x d).
    pre_QC
        SAE pre-activations (q x c).
    kth_Q, next_Q
        Their k-th and (k+1)-th largest pre-activation.
    amax_Q
        Their largest absolute pre-activation.
    norm
        Largest norm of an encoder column ``w_j`` (scalar tensor).
    """

    emb_QD: torch.Tensor
    pre_QC: torch.Tensor
    kth_Q: torch.Tensor
    next_Q: torch.Tensor
    amax_Q: torch.Tensor
    norm: torch.Tensor


class _SAEReadout(torch.nn.Module):
    """Embedding -> all concept activations (``sae.encode``: codes only, no reconstruction).

    Parameters
    ----------
    sae
        A :class:`corelib.tl.sae.TopKSAE`.
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

    def bounds(self, emb_QD: torch.Tensor) -> _TopKBounds:
        """What :meth:`entries` needs of the unperturbed cells ``emb_QD`` (the prototypes)."""
        k = self.sae.cfg.k
        pre_QC = self.sae.pre_acts(emb_QD)
        top_QK = pre_QC.topk(k + 1, dim=1).values
        norm = self.sae.W_enc_DC.norm(dim=0).max()
        return _TopKBounds(emb_QD, pre_QC, top_QK[:, k - 1], top_QK[:, k], pre_QC.abs().amax(1), norm)

    def entries(
        self,
        emb_BD: torch.Tensor,
        slot_B: torch.Tensor,
        row_E: torch.Tensor,
        col_E: torch.Tensor,
        bounds: _TopKBounds,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``forward(emb_BD)[row_E, col_E]`` (e,) of cells near prototypes ``slot_B``, and the cells that
        must take the full path (b,).

        Only concept c's pre-activation ``p = w_c . (e - b_dec) + b_c`` is computed. Whether c is in the cell's
        Top-K is first decided from its prototype: every pre-activation j moves by at most ``||w_j|| rho``
        (``rho = ||e - e_prototype||``), so c is in when p exceeds the k-th largest of the prototype's other
        pre-activations by ``max_j ||w_j|| rho`` plus a margin (twice :meth:`forward_with_ties`'s tie width, on
        a bound of the cell's largest ``|pre-activation|``). Entries this leaves open get the cell's
        pre-activations: c is in when fewer than k others exceed ``p - margin``, out when k or more exceed
        ``p + margin``. Cells with an entry still open (p > 0 within the margin of the k-th) are flagged: only
        there could rounding or a near-tie decide, as in :meth:`forward_with_ties`.
        """
        sae, k = self.sae, self.sae.cfg.k
        w_EC = sae.W_enc_DC.T[col_E]
        pre_E = torch.einsum("ed,ed->e", emb_BD[row_E] - sae.b_dec_D, w_EC) + sae.b_enc_C[col_E]
        rho_B = bounds.norm * (emb_BD - bounds.emb_QD[slot_B]).norm(dim=1)
        margin_B = 2 * self.tie_rtol * (bounds.amax_Q[slot_B] + rho_B)
        slot_E = slot_B[row_E]
        proto_kth_E = bounds.kth_Q[slot_E]
        others_kth_E = torch.where(
            bounds.pre_QC[slot_E, col_E] >= proto_kth_E, bounds.next_Q[slot_E], proto_kth_E
        )
        inside_E = pre_E > others_kth_E + rho_B[row_E] + margin_B[row_E]
        redo_B = torch.zeros_like(slot_B, dtype=torch.bool)
        open_O = (~inside_E).nonzero().squeeze(1)
        if len(open_O):
            rows, local_O = torch.unique(row_E[open_O], return_inverse=True)
            pre_OC = sae.pre_acts(emb_BD[rows])[local_O]
            col_O = col_E[open_O]
            p_O = pre_OC.gather(1, col_O[:, None])
            pre_OC.scatter_(1, col_O[:, None], -torch.inf)  # c's rivals only
            m_O = margin_B[rows][local_O, None]
            inside_O = (pre_OC > p_O - m_O).sum(1) < k
            outside_O = (pre_OC > p_O + m_O).sum(1) >= k
            pre_E[open_O], inside_E[open_O] = p_O[:, 0], inside_O
            redo_B[row_E[open_O[~inside_O & ~outside_O & (p_O[:, 0] > 0)]]] = True
        return torch.where(inside_E, pre_E.clamp_min(0), 0.0), redo_B


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
        ``rest`` (``corelib.encoders.LinearHead``), and ``use_linear_head`` is True, only the changed columns of
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
    cast = {name: getattr(head, name).to(device=dev, dtype=dtype) for name in ("weight", "bias")}
    return _LinearHeadModel(dataclasses.replace(head, **cast), enc, out, plain)


def concept_model(encoder: torch.nn.Module, sae: torch.nn.Module, **options) -> PerturbationModel:
    """:func:`perturbation_model` whose outputs are all concept activations ``sae.encode(encoder(x))``.

    ``options`` are those of :func:`perturbation_model` (``use_linear_head``, ``dtype``, ``device``).
    """
    return perturbation_model(encoder, _SAEReadout(sae), **options)
