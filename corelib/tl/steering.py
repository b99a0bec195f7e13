"""Concept steering: move cells along a concept's decoder direction and decode them with the model's own decoder.

Attribution (``corelib.tl.attribution``) is the encoder side of a concept: which input genes the encoder and
the SAE read to turn it on. Steering is the decoder side: what the concept writes into the embedding (its SAE
dictionary row ``D[c]``) and what the model's generative path makes of that. The SAE reconstructs a cell as
``a' = u D + b_dec``, so raising concept ``c``'s activation by ``s`` moves the reconstruction by ``s * D[c]``;
steering applies that step to the prototypes' embeddings and decodes them before and after.

The amount is in units a card already shows: multiples of the prototypes' mean activation of the concept
(amount 1 doubles the concept on its prototypes, -1 removes as much of it as they carry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from corelib.device import small_model_threads

#: Expected expression is shown per 10,000 counts (scVI's normalised expression x 1e4).
PER_COUNTS = 1e4

#: Pseudocount (expected counts per 10,000) in the fold change: the fold change is that of the familiar
#: ``log1p`` of counts per 10k (scanpy's ``normalize_total`` + ``log1p``), so that genes near zero cannot top the
#: ranking with large ratios of tiny values.
DEFAULT_PSEUDOCOUNT = 1.0


@dataclass(frozen=True)
class SteeringResult:
    """What steering one concept does to the expected expression of its prototypes.

    Attributes
    ----------
    table
        One row per gene, the most moved first: ``gene``, ``before`` and ``after`` (mean expected counts per
        10,000 of the cells, at amount 0 and ``amount``), ``log2fc`` (``log2((after + p) / (before + p))``,
        ``p`` the pseudocount) and ``rank`` (1 = largest ``|log2fc|``).
    amount
        The amount, in multiples of ``activation``.
    activation
        The unit of the amount: the prototypes' mean activation of the concept.
    step
        Length of the move in the embedding space (``|amount * activation| * ||direction||``).
    n_cells
        Cells decoded (the prototypes).
    """

    table: pd.DataFrame
    amount: float
    activation: float
    step: float
    n_cells: int

    def top(self, n: int = 20) -> pd.DataFrame:
        """The ``n`` most moved genes (rows of :attr:`table`)."""
        return self.table.head(n)

    def overlap(self, genes: Sequence[str], n: int = 20) -> list[str]:
        """Genes among both the ``n`` most moved and the first ``n`` of ``genes`` (e.g. the top attributed)."""
        attributed = set(map(str, list(genes)[:n]))
        return [g for g in self.top(n)["gene"] if g in attributed]


def encoder_decoder(encoder: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``emb_BD -> expr_BG`` (numpy, float32 in) through ``encoder.decode`` (``corelib.encoders.Encoder``).

    Raises
    ------
    ValueError
        The encoder has no generative decoder (the message says why).
    """
    reason = encoder.decoder_absent()
    if reason is not None:
        raise ValueError(reason)

    def decode(emb_BD: np.ndarray) -> np.ndarray:
        emb = torch.as_tensor(np.asarray(emb_BD, dtype=np.float32), device=encoder.device)
        # a few cells: one CPU thread whatever the model's size (threads spin against each other on shared cores)
        with torch.no_grad(), small_model_threads(emb.device, 0, threads=1):
            return encoder.decode(emb).double().cpu().numpy()

    return decode


def steer(
    decode: Callable[[np.ndarray], np.ndarray],
    emb_PD: np.ndarray,
    direction_D: np.ndarray,
    genes: Sequence[str],
    *,
    amount: float = 1.0,
    activation: float = 1.0,
    pseudocount: float = DEFAULT_PSEUDOCOUNT,
) -> SteeringResult:
    """Move cells by ``amount * activation * direction_D`` and rank genes by how much their expression moves.

    Parameters
    ----------
    decode
        ``emb_BD -> expr_BG``: the model's expected normalised expression (rows sum to 1), e.g.
        :func:`encoder_decoder` of an scVI encoder.
    emb_PD
        Embeddings of the cells to steer (the concept's prototypes), in the encoder's latent space.
    direction_D
        The concept's SAE dictionary row ``D[c]`` (``TopKSAE.W_dec_CD[c]``), in the same space.
    genes
        Names of the decoded genes (the encoder's ``genes``).
    amount
        Multiples of ``activation`` to add to the concept (negative: remove it).
    activation
        Unit of ``amount``: the prototypes' mean activation of the concept (the card's
        ``prototype_activation``); 1 makes ``amount`` a raw SAE activation.
    pseudocount
        Added to both means (expected counts per 10,000) before the fold change.

    Returns
    -------
    The :class:`SteeringResult`.
    """
    emb_PD = np.atleast_2d(np.asarray(emb_PD, dtype=np.float32))
    direction_D = np.asarray(direction_D, dtype=np.float32).ravel()
    if emb_PD.shape[0] == 0:
        raise ValueError("no cells to steer: pass the concept's prototypes' embeddings (at least one row).")
    if direction_D.shape[0] != emb_PD.shape[1]:
        raise ValueError(
            f"the direction has {direction_D.shape[0]} dimensions but the embeddings {emb_PD.shape[1]}: pass the "
            "SAE dictionary row of an SAE trained on this embedding."
        )
    if not np.isfinite(activation) or not np.isfinite(amount):
        raise ValueError(f"amount ({amount}) and activation ({activation}) must be finite numbers.")
    shift_D = np.float32(amount * activation) * direction_D
    before_G = decode(emb_PD).mean(axis=0) * PER_COUNTS
    after_G = decode(emb_PD + shift_D).mean(axis=0) * PER_COUNTS
    if before_G.shape[0] != len(genes):
        raise ValueError(
            f"the decoder gives {before_G.shape[0]} genes but {len(genes)} gene names were passed."
        )
    log2fc_G = np.log2((after_G + pseudocount) / (before_G + pseudocount))
    order = np.argsort(-np.abs(log2fc_G), kind="stable")
    table = pd.DataFrame(
        {
            "gene": np.asarray(genes, dtype=str)[order],
            "before": before_G[order],
            "after": after_G[order],
            "log2fc": log2fc_G[order],
            "rank": np.arange(1, len(order) + 1),
        }
    )
    return SteeringResult(
        table=table,
        amount=float(amount),
        activation=float(activation),
        step=float(np.linalg.norm(shift_D)),
        n_cells=int(emb_PD.shape[0]),
    )
