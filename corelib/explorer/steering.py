"""Concept steering on the card: one concept's steering, and the widget's amount slider.

A card steers a concept's attribution prototypes (:func:`corelib.tl.steering.steer`) with the data's decoder
(:meth:`corelib.tl.cards.ConceptData.steering_decoder`): for a run, the encoder that embedded it (notebook 01's
checkpoint, safetensors: no pickle) and the selected SAE's dictionary row; for an AnnData, the encoder and SAE
given. The atlas shows a fixed amount (:data:`DEFAULT_AMOUNT`); the explorer widget adds a slider.
"""

from __future__ import annotations

import numpy as np

from corelib._optional import require
from corelib.explorer.html import steering_html
from corelib.tl.cards import CardData, ConceptData
from corelib.tl.steering import SteeringResult, steer

#: The atlas' amount: the concept doubled on its prototypes (one more prototype activation along its direction).
DEFAULT_AMOUNT = 1.0

#: The widget slider's range of amounts (multiples of the prototypes' activation) and its step.
AMOUNT_RANGE = (-2.0, 3.0, 0.25)

#: Class of the widgets whose keys stay their own (:data:`KEEP_KEYS_JS`).
KEEP_KEYS_CLASS = "cx-keep-keys"

#: Keeps a focused slider's keys (arrows) from the notebook's command-mode shortcuts. Notebook 7 listens for
#: shortcuts on the document in the capture phase, before the slider sees the key (JupyterLab listens in the
#: bubbling phase and skips keys the slider handled), so ArrowLeft on a clicked slider also collapsed the
#: notebook's heading. Lumino skips shortcuts for a focused element carrying ``data-lm-suppress-shortcuts``:
#: this marks the element inside a :data:`KEEP_KEYS_CLASS` widget before the document sees the key (a window
#: capture listener runs first), once per page.
KEEP_KEYS_JS = (
    "(function(){if(window.cxKeepKeys){return;}window.cxKeepKeys=true;"
    "window.addEventListener('keydown',function(e){var t=e.target;"
    f"if(t&&t.closest&&t.closest('.{KEEP_KEYS_CLASS}')){{t.setAttribute('data-lm-suppress-shortcuts','true');}}"
    "},true);})();"
)


def card_steering(
    data: ConceptData,
    kind: str,
    unit: int,
    prototypes: np.ndarray,
    activation: float,
    amount: float = DEFAULT_AMOUNT,
) -> SteeringResult | str:
    """Steering of one concept on its prototypes, or the reason it is absent (a sentence for the card).

    Parameters
    ----------
    data
        The :class:`~corelib.tl.cards.ConceptData`.
    kind, unit
        The card's unit: only concepts are steered (a neuron has no dictionary direction).
    prototypes
        Cell indices of the attribution's prototypes.
    activation
        Their mean activation of the concept: the unit of ``amount``.
    amount
        Multiples of ``activation`` added along the concept's dictionary row.
    """
    if kind != "concept":
        return "steering moves cells along an SAE concept's dictionary direction; neurons have none."
    if len(prototypes) == 0 or not np.isfinite(activation):  # without any attribution (no model): why
        return data.absent.get(
            "attribution", "this concept was not attributed, so it has no prototype cells to steer."
        )
    decoder = data.steering_decoder()
    if isinstance(decoder, str):
        return decoder
    decode, genes, dictionary_CD = decoder
    emb_PD = np.asarray(data.activations["neuron"][np.asarray(prototypes)], dtype=np.float32)
    return steer(decode, emb_PD, dictionary_CD[unit], genes, amount=amount, activation=activation)


def describe_steering(card: CardData, *, n_genes: int = 15) -> str:
    """What the card's steering plot (:func:`corelib.pl.steering`, ``n_genes`` bars) shows of the overlap
    between the most moved and the top attributed genes, in a sentence (or why there is no steering)."""
    result = card.steering
    if isinstance(result, str):
        return f"No steering for {card.name}: {result}"
    shared = result.overlap(card.genes["gene"], n_genes)
    if not shared:
        return (
            f"None of {card.name}'s {n_genes} most moved genes is among its {n_genes} top attributed genes, "
            "so no bar is orange: what the encoder reads to switch the concept on is not what the decoder "
            "writes when it is raised."
        )
    return (
        f"{len(shared)} of {card.name}'s {n_genes} most moved genes are among its {n_genes} top attributed "
        f"genes (orange): {', '.join(shared)}."
    )


class SteeringPanel:
    """The explorer's steering panel: an amount slider that re-steers the card on display.

    Attributes
    ----------
    slider
        ``ipywidgets.FloatSlider`` of the amount (multiples of the prototypes' activation).
    html
        The panel (``corelib.explorer.html.steering_html``).
    box
        Both, for the explorer's layout (with an output that runs :data:`KEEP_KEYS_JS` in the page, so that
        the slider keeps its arrow keys in Notebook 7).
    result
        The steering on display (or why it is absent); None before the first card.
    """

    def __init__(self, data: ConceptData, amount: float = DEFAULT_AMOUNT) -> None:
        w = require("ipywidgets", "The explorer's widgets")

        low, high, step = AMOUNT_RANGE
        self.data = data
        self.slider = w.FloatSlider(
            value=amount,
            min=low,
            max=high,
            step=step,
            description="steer by",
            continuous_update=False,
            readout_format="+.2f",
        )
        self.slider.add_class(KEEP_KEYS_CLASS)
        self.html = w.HTML()
        keys = w.Output(layout=w.Layout(display="none"))
        keys.outputs = (
            {"output_type": "display_data", "data": {"application/javascript": KEEP_KEYS_JS}, "metadata": {}},
        )
        self.box = w.VBox([self.slider, self.html, keys])
        self.result: SteeringResult | str | None = None
        self._card: CardData | None = None
        self.slider.observe(lambda _: self._update(), names="value")

    def show(self, card: CardData) -> None:
        """Show ``card``'s concept steered by the slider's amount: the card's own steering when it was made at
        that amount, else steered anew (hidden slider when steering is absent)."""
        self._card = card
        steered = card.steering
        if not (isinstance(steered, SteeringResult) and steered.amount == self.slider.value):
            steered = self._steer()
        self._display(steered)

    def _update(self) -> None:
        """The slider moved: steer the card on display by the new amount."""
        if self._card is not None:
            self._display(self._steer())

    def _steer(self) -> SteeringResult | str:
        card = self._card
        return card_steering(
            self.data, card.kind, card.unit, card.prototypes, card.prototype_activation, self.slider.value
        )

    def _display(self, result: SteeringResult | str) -> None:
        self.result = result
        self.slider.layout.display = "none" if isinstance(result, str) else None
        self.html.value = f"<div class='cx-card'>{steering_html(result, self._card.genes['gene'])}</div>"
