"""Concept cards: everything the explorer and the atlas show of one concept or neuron, steering included.

The card's data is :func:`corelib.tl.cards.card_data` (what ``corelib.pl.card`` plots too); the explorer adds the
concept's steering on its prototypes (:func:`corelib.explorer.steering.card_steering`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from corelib.explorer.data import Source, as_data
from corelib.explorer.steering import DEFAULT_AMOUNT, card_steering
from corelib.tl.attribution import CORRELATIONAL
from corelib.tl.cards import DEFAULT_RELATIVE_THRESHOLD, DEFAULT_THRESHOLD, CardData, card_data


def concept_card(
    source: Source,
    unit: int,
    kind: str = "concept",
    *,
    n_top: int = 20,
    threshold: float = DEFAULT_THRESHOLD,
    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
    steering_amount: float | None = DEFAULT_AMOUNT,
    **load: Any,
) -> CardData:
    """Build the card of one concept or neuron.

    Parameters
    ----------
    source
        The :class:`~corelib.tl.cards.ConceptData` (faster for many cards), a run directory, or an AnnData of
        ``cl.tl`` (see :func:`corelib.explorer.data.as_data`).
    unit
        Concept index (SAE latent) or neuron index (embedding dimension).
    kind
        ``"concept"`` or ``"neuron"``.
    n_top
        Number of top genes on the bar chart.
    threshold, relative_threshold
        Importance thresholds on attribution scores: absolute (paper: 0.05) and relative to the prototypes'
        activation (as notebook 03's ``important_genes.csv``).
    steering_amount
        Amount of the card's steering, in multiples of the prototypes' activation; None leaves it out (a card
        that does not show it, such as a blinded study item, then decodes nothing).
    load
        Settings of loading a run directory or an AnnData (``metadata_keys``; ``encoder`` and ``sae`` for an
        AnnData), see :func:`~corelib.explorer.data.as_data`.

    Returns
    -------
    The :class:`~corelib.tl.cards.CardData`.
    """
    data = as_data(source, **load)
    card = card_data(
        data, unit, kind, n_top=n_top, threshold=threshold, relative_threshold=relative_threshold
    )
    if steering_amount is None:
        return card
    steered = card_steering(
        data, card.kind, card.unit, card.prototypes, card.prototype_activation, steering_amount
    )
    return replace(card, steering=steered)


def card_genes(card: CardData, n: int = 10) -> pd.DataFrame:
    """The card's first ``n`` top attributed genes or, without an attribution (no model), its first ``n`` DEG
    genes, said to be correlational."""
    if "attribution" not in card.absent:
        return card.genes.head(n)
    print(f"{card.name}'s genes are {CORRELATIONAL}: {card.absent['attribution']}.")
    return card.deg.head(n)
