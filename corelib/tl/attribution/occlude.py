"""Counterfactual occlusion attribution (Eq. 2-3): gene scores of each concept or neuron."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from corelib.cluster import map_chunks
from corelib.tl.attribution.pairs import _pair_scores, _Uses
from corelib.tl.attribution.perturb import PerturbationModel, _PlainModel, concept_model, perturbation_model
from corelib.tl.attribution.result import Attribution, dense_rows, split_half_reliability
from corelib.tl.attribution.select import ATTRIBUTED, Selection, as_columns, select_cells
from corelib.tl.sae import encode
from corelib.tl.units import neuron_inactive

if TYPE_CHECKING:
    from distributed import Client

#: Bytes allowed for one block's per-pair scores (units x N_p x N_c x genes); more units are done in blocks.
_BLOCK_BYTES = 2**28


# --------------------------------------------------------------------------------------------------------------
# Occlusion (Eq. 2)
# --------------------------------------------------------------------------------------------------------------
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
    dev = prototypes.device
    model = _PlainModel(lambda x: f(x).reshape(len(x), 1), dev, prototypes.dtype)
    pair_J = torch.arange(n_p * n_c, device=dev)
    zero_J = torch.zeros_like(pair_J)
    uses = _Uses(torch.arange(n_p * n_c + 1, device=dev), zero_J, pair_J // n_c, pair_J % n_c, zero_J)
    with torch.no_grad():
        base_Q1 = model.prepare(prototypes)
        cf_JM = counterfactuals.reshape(n_p * n_c, n_genes)
        scores = _pair_scores(
            model,
            base_Q1,
            prototypes,
            np.arange(n_p).repeat(n_c),
            lambda j: cf_JM[j],
            uses,
            (1, n_p, n_c),
            batch_size,
            progress,
        )
    return scores[0]


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


def attribute_selected(
    model: PerturbationModel,
    X_NM,
    selection: Selection,
    *,
    columns: Sequence[int] | None = None,
    genes: Sequence[str],
    kind: str = "concept",
    batch_size: int = 2048,
    progress: bool = True,
    client: Client | None = None,
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
    client
        A ``dask.distributed`` client (:func:`corelib.cluster.dask_client`): chunks of units run on its
        workers, each task receiving only the expression rows of its units' prototypes and counterfactuals
        (the model goes to every worker once). None: in this process.

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

    def cells(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return selection.prototypes[units], selection.counterfactuals[units]

    if client is None:
        parts = (
            (b, _attribute_block(model, X_NM, *cells(b), columns[b], batch_size, progress))
            for b in (done[start : start + per_block] for start in range(0, len(done), per_block))
        )
    else:
        bar = tqdm(total=len(done), desc="occlusion", unit="unit", disable=not progress)
        parts = map_chunks(
            client,
            _remote_block,
            done,
            lambda b: (*_chunk_rows(X_NM, *cells(b)), columns[b]),
            (model, batch_size),
            bar=bar,
            max_chunk=per_block,
        )
        bar.close()
    signed = np.full((n_genes, n_units), np.nan)
    halves = np.full((2, 2, n_genes, n_units), np.nan)  # (paper, signed) x (even, odd prototypes)
    for block, (scores_2UM, act_U, halves_22UM) in parts:
        scores[:, block], signed[:, block] = scores_2UM.transpose(0, 2, 1)
        activation[block] = act_U
        halves[..., block] = halves_22UM.transpose(0, 1, 3, 2)
    reliability = pd.DataFrame(
        {
            f"{prefix}{name}": values
            for prefix, pair in zip(("", "signed_"), halves, strict=True)
            for name, values in zip(("split_half", "top_overlap"), split_half_reliability(*pair), strict=True)
        },
        index=pd.Index(selection.status.index, name="unit"),
    )
    return Attribution(
        scores=scores,
        genes=np.asarray(genes, dtype=str),
        units=np.asarray(selection.status.index),
        activation=activation,
        prototypes=selection.prototypes,
        counterfactuals=selection.counterfactuals,
        status=selection.status.copy(),
        kind=kind,
        signed=signed,
        reliability=reliability,
    )


def _chunk_rows(X_NM, protos_UP: np.ndarray, cfs_UPC: np.ndarray) -> tuple:
    """What a worker needs of the cells to attribute some units: their rows only, and local indices.

    Returns
    -------
    ``(X_KM, protos_UP, cfs_UPC)``: the k distinct prototype and counterfactual cells of these units (rows of
    ``X_NM``, dense or sparse as it is, in cell order) and the units' cells as rows of ``X_KM``.
    """
    cells_K, local = np.unique(np.concatenate([protos_UP.ravel(), cfs_UPC.ravel()]), return_inverse=True)
    split = protos_UP.size
    return X_NM[cells_K], local[:split].reshape(protos_UP.shape), local[split:].reshape(cfs_UPC.shape)


def _remote_block(
    shared: tuple[PerturbationModel, int],
    X_KM,
    protos_UP: np.ndarray,
    cfs_UPC: np.ndarray,
    columns_U: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_attribute_block` in a Dask task, on a copy of the worker's model (``prepare`` stores cells on it
    and tasks may share a worker's threads; a pickled copy, as ``deepcopy`` refuses non-leaf weights)."""
    import cloudpickle

    model, batch_size = shared
    copy = cloudpickle.loads(cloudpickle.dumps(model))
    return _attribute_block(copy, X_KM, protos_UP, cfs_UPC, columns_U, batch_size, False)


def _attribute_block(
    model: PerturbationModel,
    X_NM,
    protos_UP: np.ndarray,
    cfs_UPC: np.ndarray,
    columns_U: np.ndarray,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 3 scores of one block of units, as published and signed by the expression change (2 x units x m),
    the mean prototype activation (units,), and the same scores of the even- and odd-ranked prototypes
    (2 x 2 x units x m, for :func:`split_half_reliability`)."""
    n_units, n_p, n_c = cfs_UPC.shape
    # Distinct prototype cells and distinct (prototype cell, counterfactual cell) pairs of the block.
    proto_cells, proto_slot_UP = np.unique(protos_UP, return_inverse=True)
    proto_slot_UP = proto_slot_UP.reshape(n_units, n_p)
    pair_keys = np.stack([np.broadcast_to(protos_UP[..., None], cfs_UPC.shape), cfs_UPC], -1).reshape(-1, 2)
    pairs, pair_of_use = np.unique(pair_keys, axis=0, return_inverse=True)
    pair_of_use = pair_of_use.reshape(-1)
    cf_cells, cf_slot_J = np.unique(pairs[:, 1], return_inverse=True)
    proto_J = np.searchsorted(proto_cells, pairs[:, 0])
    # Uses of each pair (unit, p, c), grouped by pair.
    by_pair = np.argsort(pair_of_use, kind="stable")
    use_u, use_p, use_c = np.unravel_index(by_pair, (n_units, n_p, n_c))
    ptr = np.concatenate([[0], np.cumsum(np.bincount(pair_of_use, minlength=len(pairs)))])

    with torch.no_grad():
        dev = model.device
        x_QM = torch.as_tensor(dense_rows(X_NM, proto_cells), device=dev, dtype=model.dtype)
        base_QU = model.prepare(x_QM)
        cf_KM = torch.as_tensor(dense_rows(X_NM, cf_cells), device=dev)
        cf_slot = torch.as_tensor(cf_slot_J, device=dev)
        uses = _Uses(*(torch.as_tensor(v, device=dev) for v in (ptr, use_u, use_p, use_c, columns_U[use_u])))
        scores = _pair_scores(
            model,
            base_QU,
            x_QM,
            proto_J,
            lambda j: cf_KM[cf_slot[j]].to(model.dtype),
            uses,
            (n_units, n_p, n_c),
            batch_size,
            progress,
        )
        act_U = base_QU[
            torch.as_tensor(proto_slot_UP, device=dev), torch.as_tensor(columns_U, device=dev)[:, None]
        ]
        # Signed by the expression change: positive = more of the gene, more of the unit (Attribution.signed).
        cf_UPCM = cf_KM[torch.as_tensor(np.searchsorted(cf_cells, cfs_UPC), device=dev)].to(model.dtype)
        sign = torch.sign(x_QM[torch.as_tensor(proto_slot_UP, device=dev)][:, :, None] - cf_UPCM)
        both = torch.stack([scores, scores * sign])
    halves = torch.stack([aggregate_attributions(both[:, :, h::2]) for h in (0, 1)], dim=1)
    return aggregate_attributions(both).cpu().numpy(), act_U.mean(1).cpu().numpy(), halves.cpu().numpy()


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
    client: Client | None = None,
) -> Attribution:
    """Counterfactual occlusion attribution of SAE concepts (paper section 3.2, Eqs. 1-3).

    Parameters
    ----------
    encoder
        The model's encoder (``corelib.encoders.Encoder``): raw counts in ``encoder.genes`` order -> embedding.
    sae
        SAE with ``encode(emb_BD) -> codes_BC``.
    X_NM
        Expression of all cells (n_cells x m), raw counts aligned to ``encoder.genes`` (``encoders.align``).
    emb_ND
        Embeddings of the same cells (n_cells x d), as stored by notebook 01.
    codes_NC
        Concept activations of all cells (default: ``corelib.tl.sae.encode(sae, emb_ND)``).
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
    client
        A ``dask.distributed`` client to run the occlusion on (see :func:`attribute_selected`); None: this process.

    Returns
    -------
    An :class:`Attribution` of kind ``"concept"``; concepts with fewer active cells than N_p, or fewer
    non-activating cells than N_c, are skipped with the reason in ``status``.
    """
    _check_inputs(encoder, X_NM, emb_ND)
    if codes_NC is None:
        codes_NC = encode(sae, emb_ND)
    codes_NC = as_columns(codes_NC) if sp.issparse(codes_NC) else np.asarray(codes_NC)
    concepts = np.arange(codes_NC.shape[1]) if concepts is None else np.asarray(concepts, dtype=np.int64)
    acts_NU = codes_NC[:, concepts]
    model = concept_model(encoder, sae, use_linear_head=use_linear_head, dtype=dtype, device=device)
    return _attribute_units(
        model,
        X_NM,
        emb_ND,
        acts_NU,
        None,  # select_cells: a concept's non-activating cells are those at exactly 0
        units=concepts,
        genes=encoder.genes,
        kind="concept",
        n_prototypes=n_prototypes,
        n_counterfactuals=n_counterfactuals,
        batch_size=batch_size,
        progress=progress,
        client=client,
    )


def _attribute_units(
    model: PerturbationModel,
    X_NM,
    emb_ND: np.ndarray,
    acts_NU: np.ndarray,
    inactive_NU: np.ndarray | None,
    *,
    units: np.ndarray,
    genes: Sequence[str],
    kind: str,
    n_prototypes: int,
    n_counterfactuals: int,
    batch_size: int,
    progress: bool,
    client: Client | None,
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
    return attribute_selected(
        model,
        X_NM,
        selection,
        columns=units,
        genes=genes,
        kind=kind,
        batch_size=batch_size,
        progress=progress,
        client=client,
    )


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
    client: Client | None = None,
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
        client=client,
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
        raise ValueError("The embedding contains NaN or inf; re-embed the cells (the embed step, 01_embed).")
