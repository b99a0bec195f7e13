"""ipywidgets front-ends: the concept explorer, its label form and the blinded study."""

from __future__ import annotations

import contextlib
import html
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from corelib._optional import require
from corelib.explorer.cards import concept_card
from corelib.explorer.data import Source, as_data, run_title
from corelib.explorer.html import card_html, widget_html
from corelib.explorer.labels import (
    CONFIDENCE_CHOICES,
    INTERPRETABLE_CHOICES,
    LABEL_COLUMNS,
    LABEL_KIND_CHOICES,
    LabelStore,
    labels_file,
    labels_for,
    read_labels,
    save_label,
)
from corelib.explorer.steering import SteeringPanel
from corelib.explorer.study import Study
from corelib.explorer.summary import interesting_order, search_units, unit_summary
from corelib.runs import RunDir
from corelib.tl.cards import CardData, ConceptData, check_kind
from corelib.tl.units import KINDS, parse_unit, unit_name

#: What the form says when answers have nowhere to go (an explorer on an AnnData opened without ``labels``).
NO_STORE = "answers are not saved: no labels file (open the explorer with labels='labels.jsonl')."


# ---------------------------------------------------------------------------------------------- widgets
class NotSavedError(ValueError):
    """An answer was not saved; the form already shows why (the message a Jupyter user sees)."""


def _on_click(action: Callable[[], object]) -> Callable[[object], None]:
    """A button callback running ``action``.

    A :class:`NotSavedError` is already on display in the form: raised from a click, it would only reach
    JupyterLab's log console, which nobody reads, so the click swallows it (scripted calls still raise).
    """

    def click(_: object) -> None:
        with contextlib.suppress(NotSavedError):
            action()

    return click


class LabelForm:
    """The expert form (paper appendix D, Fig. 9 right): label, description and three fixed questions.

    Attributes
    ----------
    rater, label, description, interpretable, confidence, kind, submit, message
        The ipywidgets; ``box`` lays them out.
    """

    def __init__(self, rater: str = "") -> None:
        w = require("ipywidgets", "The explorer's widgets")

        self.rater = w.Text(value=rater, description="rater", placeholder="your name or initials")
        self.label = w.Text(
            description="label", placeholder="short expert label", layout=w.Layout(width="460px")
        )
        self.description = w.Textarea(
            description="description", layout=w.Layout(width="460px", height="70px")
        )
        self.interpretable = w.ToggleButtons(
            options=INTERPRETABLE_CHOICES, value=None, description="interpretable?"
        )
        self.confidence = w.ToggleButtons(
            options=CONFIDENCE_CHOICES, value=None, description="confidence", style={"button_width": "36px"}
        )
        self.kind = w.Dropdown(options=LABEL_KIND_CHOICES, value=None, description="kind")
        self.submit = w.Button(description="Submit", button_style="primary", icon="check")
        self.message = w.HTML()
        self.box = w.VBox(
            [
                self.rater,
                self.label,
                self.description,
                self.interpretable,
                self.confidence,
                self.kind,
                w.HBox([self.submit, self.message]),
            ]
        )

    def fill(self, record: pd.Series | None) -> None:
        """Show a saved answer (or clear the form when ``record`` is None); the rater is kept."""
        self.label.value = "" if record is None else str(record["label"])
        self.description.value = "" if record is None else str(record["description"])
        self.interpretable.value = None if record is None else record["interpretable"]
        self.confidence.value = None if record is None else int(record["confidence"])
        self.kind.value = None if record is None else record["kind"]

    def save(self, store: LabelStore | None, item: str, study: str | None = None) -> dict[str, Any]:
        """Validate and append the form's answer for ``item`` to ``store`` (a run directory or a labels file);
        errors (no store, an incomplete form) are shown in the form and re-raised."""
        if store is None:
            self.refuse(NO_STORE)
            raise NotSavedError(NO_STORE)
        try:
            record = save_label(
                store,
                item,
                rater=self.rater.value,
                interpretable=self.interpretable.value,
                confidence=self.confidence.value,
                kind=self.kind.value,
                label=self.label.value,
                description=self.description.value,
                study=study,
            )
        except ValueError as err:
            self.refuse(str(err))
            raise NotSavedError(str(err)) from err
        self.message.value = f"<span style='color:#080'>Saved {record['time'][:19]} UTC</span>"
        return record

    def refuse(self, reason: str) -> None:
        """Show in the form why an answer was not saved."""
        self.message.value = f"<span style='color:#b00'>Not saved: {_html_text(reason)}</span>"

    def saved(self, labels: pd.DataFrame, item: str, study: str | None = None) -> pd.Series | None:
        """This rater's latest saved answer for ``item``, or None."""
        mine = labels_for(labels, item, study)
        mine = mine[mine["rater"] == self.rater.value.strip()] if len(mine) else mine
        return mine.iloc[-1] if len(mine) else None


def _html_text(value: object) -> str:
    return html.escape(str(value))


def _store(data: ConceptData, labels: LabelStore | None) -> LabelStore | None:
    """Where answers go: ``labels`` if given, else the data's run directory, else nowhere (None)."""
    if labels is not None:
        return labels
    return data.source if isinstance(data.source, RunDir) else None


def _read(store: LabelStore | None) -> pd.DataFrame:
    """The latest answers of a store (none without one)."""
    return pd.DataFrame(columns=LABEL_COLUMNS) if store is None else read_labels(store)


class Explorer:
    """Browse and label concepts or neurons of a finished run (notebook 06) or of an AnnData.

    The card on display, the dropdown's selection, the search box and the form always agree: the explorer
    opens on the most interesting unit (:func:`interesting_order`); a search keeps the card when it matches,
    else shows the most interesting match, or no card (and says so) when nothing matches; a unit shown by a
    button or by :meth:`show` that the search hides clears the search.

    Parameters
    ----------
    source
        A run directory, its loaded data (:func:`~corelib.explorer.load_run_data`), or an AnnData of
        ``cl.tl.train_sae``, ``attribute`` and ``annotate`` (what it lacks, the card says).
    rater
        Name stored with every answer.
    kind
        Start with ``"concept"`` or ``"neuron"``.
    labels
        Where answers go: a labels file (JSON lines) or a run directory; default the data's run directory.
        An AnnData opened without it browses, and the form says that answers are not saved.
    metadata_keys, encoder, sae
        Settings of loading a run directory or an AnnData (:func:`~corelib.explorer.data.as_data`): with the
        encoder and the SAE, an AnnData's concepts are steered.
    seed
        Seed of the "random" button.
    n_top
        Genes on the bar chart.

    Attributes
    ----------
    widget
        The ipywidgets layout (displaying the Explorer displays it).
    kind, search, select, next_button, random_button, card, form
        The controls, for scripted use and tests.
    current
        ``(kind, unit)`` on display, None when no card is.
    """

    def __init__(
        self,
        source: Source,
        *,
        rater: str = "",
        kind: str = "concept",
        seed: int | None = None,
        n_top: int = 20,
        labels: LabelStore | None = None,
        **load: Any,
    ) -> None:
        w = require("ipywidgets", "The explorer's widgets")

        check_kind(kind)
        self.data = as_data(source, **load)
        self.store = _store(self.data, labels)
        self.n_top = n_top
        self.rng = np.random.default_rng(seed)
        self.labels = _read(self.store)
        self.current: tuple[str, int] | None = None
        self._card: CardData | None = None
        self._syncing = False
        self.kind = w.ToggleButtons(options=KINDS, value=kind, description="show")
        self.search = w.Text(
            placeholder="id (C12), gene, GSEA term, cell type", description="search", continuous_update=True
        )
        self.select = w.Dropdown(description="unit", layout=w.Layout(width="640px"))
        self.next_button = w.Button(description="next interesting", icon="forward")
        self.random_button = w.Button(description="random", icon="random")
        self.card = w.HTML()
        self.form = LabelForm(rater)
        self.steering = SteeringPanel(self.data)
        self.info = w.HTML()
        self.widget = w.VBox(
            [
                w.HBox([self.kind, self.next_button, self.random_button]),
                w.HBox([self.search, self.select]),
                self.info,
                self.card,
                self.steering.box,
                w.HTML("<h3>Your answer</h3>"),
                self.form.box,
            ]
        )
        self.kind.observe(self._on_filter, names="value")
        self.search.observe(self._on_filter, names="value")
        self.select.observe(self._on_select, names="value")
        self.next_button.on_click(lambda _: self.next_interesting())
        self.random_button.on_click(lambda _: self.random())
        self.form.submit.on_click(_on_click(self.submit))
        self._show_info()
        self._on_filter()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @contextlib.contextmanager
    def _sync(self) -> Iterator[None]:
        """Set widgets from code without their observers acting on it."""
        before, self._syncing = self._syncing, True
        try:
            yield
        finally:
            self._syncing = before

    def _summary(self) -> pd.DataFrame:
        return unit_summary(self.data, self.kind.value)

    def _fill_options(self) -> list[int]:
        """Fill the dropdown with the units of the current kind that match the search; return them."""
        summary = self._summary()
        units = search_units(summary, self.search.value)
        with self._sync():
            self.select.options = [(_option_text(summary.loc[u]), u) for u in units]
        return units

    def _on_filter(self, _: object = None) -> None:
        """The kind or the search changed: keep a matching card, else show the most interesting match."""
        if self._syncing:
            return
        units = self._fill_options()
        if not units and self.search.value.strip():
            self._show_nothing(f"No {self.kind.value} matches the search {self.search.value!r}.")
        elif not units:
            self._show_nothing(f"No {self.kind.value} has attribution scores in this {self.data.origin}.")
        elif self.current in [(self.kind.value, u) for u in units]:
            with self._sync():
                self.select.value = self.current[1]
        else:
            self.show(interesting_order(self._summary().loc[units])[0])

    def _on_select(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"] is not None:
            self.show(int(change["new"]))

    def _show_info(self) -> None:
        n_answers = int(self.labels["study"].isna().sum())  # the blinded study's answers are not shown here
        saved = (
            NO_STORE
            if self.store is None
            else f"{n_answers} saved answers loaded from {labels_file(self.store)}"
        )
        self.info.value = f"<b>{_html_text(run_title(self.data))}</b> - <i>{_html_text(saved)}</i>"

    def _show_card(self) -> None:
        """Draw the card on display with every rater's latest label of it (steering has its own panel)."""
        card = self._card
        self.card.value = widget_html(
            card_html(card, labels=labels_for(self.labels, card.name), steering=False)
        )

    def _show_nothing(self, reason: str) -> None:
        self.current = self._card = None
        with self._sync():
            self.select.value = None
        self.card.value = f"<p><i>{_html_text(reason)}</i></p>"
        self.steering.box.layout.display = "none"
        self.form.fill(None)
        self.form.message.value = ""

    def show(self, unit: int, kind: str | None = None) -> CardData:
        """Display the card of ``unit`` (of ``kind``, default the current one) and its saved answer.

        The dropdown selects the unit (the search is cleared when it hides the unit); a unit without
        attribution scores is in no option, so the dropdown is then left blank.
        """
        kind = self.kind.value if kind is None else kind
        card = concept_card(
            self.data, unit, kind, n_top=self.n_top, steering_amount=self.steering.slider.value
        )
        self.current, self._card = (kind, card.unit), card
        with self._sync():
            self.kind.value = kind
            units = self._fill_options()
            if card.unit not in units and self.search.value:
                self.search.value = ""
                units = self._fill_options()
            self.select.value = card.unit if card.unit in units else None
        self._show_card()
        self.steering.box.layout.display = None
        self.steering.show(card)
        self.form.fill(self.form.saved(self.labels, card.name))
        self.form.message.value = ""
        return card

    def next_interesting(self) -> int | None:
        """Show the next unit in :func:`interesting_order` that this rater has not labelled yet."""
        summary = self._summary()
        mine = self.labels[
            (self.labels["rater"] == self.form.rater.value.strip()) & self.labels["study"].isna()
        ]
        done = {parse_unit(n)[1] for n in mine["item"] if parse_unit(n)[0] == self.kind.value}
        if self.current is not None:
            done.add(self.current[1])
        order = interesting_order(summary, exclude=sorted(done))
        if not order:
            self.form.message.value = "<i>Every unit is labelled.</i>"
            return None
        self.show(order[0])
        return order[0]

    def random(self) -> int | None:
        """Show a random unit (of the current kind, among those with attribution scores)."""
        units = self._summary().index.to_numpy()
        if not len(units):
            self.form.message.value = (
                f"<i>No {self.kind.value} has attribution scores in this {self.data.origin}.</i>"
            )
            return None
        unit = int(self.rng.choice(units))
        self.show(unit)
        return unit

    def submit(self) -> dict[str, Any]:
        """Save the form's answer for the unit on display (appended to the labels file at once).

        Raises :class:`NotSavedError` (also shown in the form) when no card is on display or the form is
        incomplete.
        """
        if self.current is None:
            reason = "no unit on display; pick one in the dropdown, search, or press next interesting."
            self.form.refuse(reason)
            raise NotSavedError(reason)
        record = self.form.save(self.store, unit_name(*self.current))
        self.labels = _read(self.store)
        self._show_card()
        self._show_info()
        return record


def _option_text(row: pd.Series) -> str:
    """Dropdown text of a unit: name, GSEA term, top genes, top metadata label."""
    term = row["gsea_term"][:50]
    return f"{row['name']} | {term} | {row['top_genes']} | {row['metadata_label']}"


class StudyExplorer:
    """Blinded study (paper 4.3): items shown one by one under opaque tokens, answers saved per token.

    Parameters
    ----------
    source
        A run directory, its loaded data, or an AnnData (as for :class:`Explorer`).
    study
        From :func:`make_study`.
    rater
        Name stored with every answer.
    n_top
        Genes on the bar chart.
    labels
        Where answers go (as for :class:`Explorer`); default the data's run directory.

    Attributes
    ----------
    widget, card, form, prev_button, next_button, position
        The ipywidgets.
    index
        Position of the item on display in ``study.tokens``.
    """

    def __init__(
        self,
        source: Source,
        study: Study,
        *,
        rater: str = "",
        n_top: int = 20,
        labels: LabelStore | None = None,
        **load: Any,
    ) -> None:
        w = require("ipywidgets", "The explorer's widgets")

        self.data = as_data(source, **load)
        self.store = _store(self.data, labels)
        self.study = study
        self.n_top = n_top
        self.labels = _read(self.store)
        self.index = 0
        self.position = w.HTML()
        self.prev_button = w.Button(description="previous", icon="backward")
        self.next_button = w.Button(description="next", icon="forward")
        self.card = w.HTML()
        self.form = LabelForm(rater)
        self.widget = w.VBox(
            [
                w.HBox([self.prev_button, self.next_button, self.position]),
                self.card,
                w.HTML("<h3>Your answer</h3>"),
                self.form.box,
            ]
        )
        self.prev_button.on_click(lambda _: self.show(self.index - 1))
        self.next_button.on_click(lambda _: self.show(self.index + 1))
        self.form.submit.on_click(_on_click(self.submit))
        self.show(self._first_unanswered())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _first_unanswered(self) -> int:
        for i, token in enumerate(self.study.tokens):
            if self.form.saved(self.labels, token, self.study.id) is None:
                return i
        return 0

    @property
    def token(self) -> str:
        """Token of the item on display."""
        return self.study.tokens[self.index]

    def show(self, index: int) -> None:
        """Display item ``index`` (wrapped around) with its identity hidden, and this rater's saved answer."""
        self.index = index % len(self.study.tokens)
        kind, unit = self.study.key[self.token]
        # blinded: no steering panel, so nothing to decode
        card = concept_card(self.data, unit, kind, n_top=self.n_top, steering_amount=None)
        answered = sum(self.form.saved(self.labels, t, self.study.id) is not None for t in self.study.tokens)
        self.position.value = (
            f"item {self.index + 1} of {len(self.study.tokens)} "
            f"({answered} answered) - <code>{_html_text(self.token)}</code>"
        )
        self.card.value = widget_html(card_html(card, blinded=True, title=self.token))
        self.form.fill(self.form.saved(self.labels, self.token, self.study.id))

    def submit(self) -> dict[str, Any]:
        """Save the answer for the item on display, then move to the next item."""
        record = self.form.save(self.store, self.token, study=self.study.id)
        self.labels = _read(self.store)
        self.show(self.index + 1)
        return record
