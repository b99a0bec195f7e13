"""corelib.explorer: card data against the run's tables, widgets driven in Python, labels, blinded study.

The run directory is synthetic (``make_run`` in ``conftest.py``): a small AnnData with an embedding and its UMAP, a real
Top-K SAE (corelib.tl.sae) and attribution files written by corelib.tl.attribution's own ``Attribution.save``, so
the explorer reads exactly what notebook 03 writes. ``test_report.py`` shares it.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import DIM, GENES, N_CELLS, N_CONCEPTS, SKIPPED_CONCEPT, UNLABELLED, hand_attribution, make_run

import corelib as cl
from corelib.datasets import describe_genes
from corelib.tl.attribution import Attribution
from corelib.tl.cards import ConceptData
from corelib.tl.evidence import evidence_score, label_evidence, wilson_lower


@pytest.fixture(scope="module")
def data(run):
    return cl.explorer.load_run_data(run)


def _codes(run) -> np.ndarray:
    """Dense codes by the model's own forward pass: the reference for the explorer's sparse codes."""
    adata = ad.read_h5ad(run.path("embedded"))
    sae = cl.tl.sae.TopKSAE.load(run.path("sae", "c12_k3_s0"))
    return sae.encode(torch.as_tensor(adata.obsm["X_pca"], dtype=torch.float32)).detach().numpy()


# ---------------------------------------------------------------------------------------------- card data
def test_card_matches_the_run_tables(run, data):
    attr = Attribution.load(run.path("attribution_concepts"))
    codes = _codes(run)
    obs = ad.read_h5ad(run.path("embedded")).obs
    meta = run.read_table("metadata_concepts")
    for unit in data.units("concept"):
        card = cl.explorer.concept_card(data, unit, "concept", n_top=7, threshold=0.1)
        col = attr.scores[:, unit]
        ref = pd.Series(col, index=GENES).sort_values(ascending=False).head(7)
        assert card.name == f"C{unit}"
        assert card.genes["gene"].tolist() == ref.index.tolist()
        np.testing.assert_allclose(card.genes["score"], ref.to_numpy())
        assert card.genes["gene"].iloc[0] == GENES[unit % len(GENES)]
        assert card.n_important == int(np.sum(col > 0.1))
        assert card.n_important_relative == int(np.sum(col / attr.activation[unit] > 0.01))
        assert card.genes["description"].tolist() == describe_genes(ref.index).tolist()
        np.testing.assert_array_equal(card.activation, codes[:, unit])
        # composition by brute force over the cells
        active = [i for i in range(N_CELLS) if codes[i, unit] > 0]
        for column in ("cell_type", "donor"):
            counts = Counter(str(obs[column].iloc[i]) for i in active)
            for label, frac in card.composition[column].items():
                assert frac == pytest.approx(counts[label] / len(active))
        assert card.n_active == len(active)
        # ... and agrees with notebook 03's metadata table
        row = meta.loc[unit]
        assert card.metadata["call"] == row["call"] and card.n_active == row["n_active"]
        assert card.composition["cell_type"].index[0] == row["cell_type_top"]
        assert card.composition["cell_type"].iloc[0] == pytest.approx(row["cell_type_fraction"])
        assert set(card.prototypes) == set(attr.prototypes[unit])
        assert cl.explorer.gsea_label(card.annotation) == (
            "" if unit == UNLABELLED else f"term {unit} of concept"
        )
        assert card.gsea["term"].tolist() == [f"term {unit}.{j}" for j in range(3)]
        assert card.deg["gene"].tolist() == GENES[:3]
        assert card.deg["top_attributed"].tolist() == [g in set(ref.index) for g in GENES[:3]]
        assert card.matched["matched_concept"].tolist() == [N_CONCEPTS - 1 - unit]
        assert card.status == "attributed"
        assert card.prototype_activation == attr.activation[unit]


def test_card_status_shows_the_split_half_reliability(run):
    data = cl.explorer.load_run_data(run)
    attr = copy.deepcopy(data.attribution["concept"])
    attr.reliability = pd.DataFrame(
        {c: np.full(len(attr.units), 0.2) for c in cl.tl.attribution.RELIABILITY_COLUMNS}, index=attr.units
    )
    attr.reliability["signed_split_half"] = 0.8
    data.attribution["concept"] = attr
    unit = int(attr.units[attr.attributed][0])
    status = cl.explorer.concept_card(data, unit, steering_amount=None).status
    assert status == (
        "attributed (split-half reliability 0.20, expression-signed 0.80; the gene list varies with the "
        "prototypes drawn)"
    )


def test_descriptions_use_the_bundled_ncbi_table(data):
    card = cl.explorer.concept_card(data, 0, "concept", n_top=len(GENES))
    desc = dict(zip(card.genes["gene"], card.genes["description"], strict=True))
    assert desc["CD3E"] == "CD3e molecule"
    assert desc["NOT_A_GENE"] == ""
    assert "CENPU" in desc["MLF1IP"]  # alias fallback


def test_descriptions_follow_the_run_s_organism(data):
    assert data.info["organism"] == "human"  # a run whose notebook 01 recorded none
    mouse = copy.copy(data)
    mouse.info = {**data.info, "organism": "mouse"}  # as notebook 01 records it (uns["embed"]["organism"])
    with pytest.warns(UserWarning, match="under organism mouse. .*set organism: human"):
        card = cl.explorer.concept_card(mouse, 0, "concept", n_top=len(GENES))
    assert set(card.genes["description"]) == {""}  # human symbols under mouse: none known


def test_skipped_unit_and_neurons(data):
    assert SKIPPED_CONCEPT not in data.units("concept")
    card = cl.explorer.concept_card(data, SKIPPED_CONCEPT, "concept")
    assert card.genes.empty and card.n_important == 0
    assert card.status.startswith("skipped: 3 active cells")
    neuron = cl.explorer.concept_card(data, 2, "neuron")
    assert neuron.name == "N2" and neuron.matched.empty
    # a neuron is dense: its active cells are its top 10%, as in notebook 03's metadata table
    values = data.activations["neuron"][:, 2]
    assert neuron.n_active == int(np.sum(values > np.quantile(values, 0.9))) == N_CELLS // 10
    assert neuron.metadata["n_active"] == neuron.n_active
    assert neuron.genes["gene"].iloc[0] == GENES[2]


def test_bad_input_errors(run, data):
    with pytest.raises(ValueError, match="kind='gene' is not valid"):
        cl.explorer.concept_card(data, 0, "gene")
    with pytest.raises(ValueError, match="this run has 12 concepts"):
        cl.explorer.concept_card(data, 99, "concept")
    with pytest.raises(TypeError, match="RunDir"):
        cl.explorer.load_run_data("not a run")
    with pytest.raises(ValueError, match="not in the run's cells"):
        cl.explorer.load_run_data(run, metadata_keys=["tissue"])
    with pytest.raises(ValueError, match="not a unit name"):
        cl.tl.units.parse_unit("X1")


def test_summary_search_and_order(data):
    summary = cl.explorer.unit_summary(data, "concept")
    assert list(summary.index) == data.units("concept")
    assert cl.explorer.search_units(summary, "C3") == [3]
    assert summary.loc[UNLABELLED, "gsea_term"] == ""
    hits = cl.explorer.search_units(summary, "TERM 11 of")  # every word must match (case-insensitive)
    assert 11 in hits and 1 not in hits
    assert 4 in cl.explorer.search_units(summary, GENES[4].lower())
    order = cl.explorer.interesting_order(summary)
    assert sorted(order) == sorted(summary.index)
    assert summary.loc[order, "evidence"].is_monotonic_decreasing
    assert cl.explorer.interesting_order(summary, exclude=[order[0]])[0] == order[1]
    # the search reads each unit's top 20 attributed genes and its DEG genes, not only the 5 listed
    fifteenth = data.scores("concept")[order[0]].nlargest(15).index[-1]
    assert fifteenth not in summary.loc[order[0], "top_genes"].split()
    assert order[0] in cl.explorer.search_units(summary, fifteenth)


# ------------------------------------------------------------------------------------- order by evidence
def _planted_data(planted: int = 5, n_units: int = 8) -> ConceptData:
    """400 cells of four types; concept ``planted`` fires on 55 of the 60 NK cells, has a reproducible
    attribution, a significant GSEA label and 30 DEG genes. Decoys each have one piece of evidence: a few
    cells of one type (C0), a reproducible attribution of mixed cells (C1), a significant label (C2), many
    DEG genes of mixed cells (C3)."""
    rng = np.random.default_rng(0)
    cell_type = np.repeat(["B", "T", "NK", "Mono"], [100, 200, 60, 40])
    nk = np.flatnonzero(cell_type == "NK")
    acts = np.zeros((len(cell_type), n_units), np.float32)
    for u in range(n_units):
        acts[rng.choice(len(cell_type), 120, replace=False), u] = rng.uniform(0.1, 1, 120)
    acts[:, 0] = 0
    acts[nk[:10], 0] = 1.0
    acts[:, planted] = 0
    acts[nk[:55], planted] = 2.0
    acts[rng.choice(np.flatnonzero(cell_type != "NK"), 5, replace=False), planted] = 0.5
    genes = [f"G{i}" for i in range(50)]
    attr = hand_attribution(rng.uniform(0, 0.1, (50, n_units)), genes, list(range(n_units)))
    reliability = np.full(n_units, 0.05)
    reliability[[1, planted]] = [0.9, 0.8]
    attr.reliability = pd.DataFrame(
        {"split_half": reliability, "signed_split_half": reliability},
        index=pd.Index(range(n_units), name="unit"),
    )
    qval = np.ones(n_units)
    qval[[2, planted]] = [1e-4, 1e-3]
    deg_rows = [(u, r + 1, genes[r]) for u, n in ((3, 40), (planted, 30)) for r in range(n)]
    empty = {"concept": pd.DataFrame(), "neuron": pd.DataFrame()}
    return ConceptData(
        obs=pd.DataFrame({"cell_type": pd.Categorical(cell_type)}),
        umap=None,
        activations={"concept": sp.csc_matrix(acts)},
        attribution={"concept": attr, "neuron": None},
        metadata=dict(empty),
        gsea={**empty, "concept": pd.DataFrame({"term": "t", "qval": qval}, index=range(n_units))},
        gsea_terms=dict(empty),
        deg={**empty, "concept": pd.DataFrame(deg_rows, columns=["unit", "rank", "gene"])},
        matched=pd.DataFrame(),
        metadata_keys=["cell_type"],
    )


def test_the_planted_program_comes_first_by_evidence():
    data = _planted_data(planted=5)
    summary = cl.explorer.unit_summary(data, "concept")
    assert cl.explorer.interesting_order(summary)[0] == 5
    row = summary.loc[5]
    assert row["metadata_label"] == "NK" and row["top_share"] == 55 / 60 and row["n_deg"] == 30
    assert row["label_share_all"] == 60 / 400 and row["reliability"] == 0.8 and row["label_q"] == 1e-3
    # C0: all of its 10 cells are NK, but 10 cells are weaker evidence of specificity than 55 of 60
    assert summary.loc[0, "top_share"] == 1.0 and summary.loc[0, "specificity"] < row["specificity"]
    text = cl.explorer.describe_first_card(summary)
    assert text.startswith("The explorer opens on C5, first of 8 by evidence")
    assert "92% of its 60 active cells are NK" in text and "in 30 genes (first G0, G1, G2, G3, G4)" in text
    assert "reliability is 0.80 (the gene list comes back" in text and "q = 0.001 (significant)" in text
    explorer = cl.explorer.Explorer(data)
    assert explorer.current == ("concept", 5)  # the first card, and "next interesting" follows the order
    explorer.next_interesting()
    assert explorer.current == ("concept", cl.explorer.interesting_order(summary)[1])


def test_wilson_bound_and_evidence_score_against_references():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for count, n in ((10, 15), (300, 400), (0, 7), (7, 7)):
        low, _ = proportion.proportion_confint(count, n, alpha=0.05, method="wilson")
        np.testing.assert_allclose(wilson_lower(count / n, n), low, atol=1e-6)
    assert wilson_lower(0.5, 0) == 0
    table = pd.DataFrame(
        {
            "n_active": [5, 9, 9],
            "specificity": [0.9, 0.1, np.nan],  # a unit without a measurement ranks last on it
            "reliability": [np.nan] * 3,  # measured for no unit: left out
            "label_evidence": [0.0, 0.0, 0.0],
            "n_deg": [0, 3, 1],
        },
        index=[4, 7, 2],
    )
    # by hand: specificity ranks 3/3, 2/3, 1/3; label ties at 2/3; DEG 1/3, 3/3, 2/3
    expected = pd.Series([(1 + 2 / 3 + 1 / 3) / 3, (2 / 3 + 2 / 3 + 1) / 3, (1 / 3 + 2 / 3 + 2 / 3) / 3])
    np.testing.assert_allclose(evidence_score(table), expected)
    assert cl.explorer.interesting_order(table.assign(evidence=[0.5, 0.5, 0.4])) == [
        7,
        4,
        2,
    ]  # tie: more cells
    assert label_evidence(pd.Series([1e-3, 0.049, 0.05, 0.6, np.nan])).round(6).tolist()[:4] == [
        3.0,
        round(-np.log10(0.049), 6),
        0.0,
        0.0,
    ]


# ------------------------------------------------------------------------------------------------ labels
def test_labels_append_validate_and_latest(fresh_run):
    cl.explorer.save_label(fresh_run, "C1", rater="ann", interpretable="no", confidence=2, kind="unknown")
    cl.explorer.save_label(
        fresh_run, "C1", rater="ann", interpretable="yes", confidence=4, kind="cell type", label="B cells"
    )
    cl.explorer.save_label(fresh_run, "C1", rater="bob", interpretable="partly", confidence=3, kind="tissue")
    with pytest.raises(ValueError, match="confidence=7"):
        cl.explorer.save_label(fresh_run, "C1", rater="ann", interpretable="yes", confidence=7, kind="tissue")
    with pytest.raises(ValueError, match="rater is empty"):
        cl.explorer.save_label(fresh_run, "C1", rater=" ", interpretable="yes", confidence=3, kind="tissue")
    lines = fresh_run.path("labels").read_text().splitlines()
    assert len(lines) == 3  # rejected answers are not written
    # a crash in the middle of a write leaves a partial line: it is skipped, the rest survives
    with open(fresh_run.path("labels"), "a") as fh:
        fh.write('{"rater": "ann", "item": "C2"')
    with pytest.warns(UserWarning, match="not valid JSON"):
        latest = cl.explorer.read_labels(fresh_run)
    assert len(latest) == 2
    ann = latest[latest["rater"] == "ann"].iloc[0]
    assert (ann["label"], ann["interpretable"], ann["confidence"]) == ("B cells", "yes", 4)
    with pytest.warns(UserWarning):
        assert len(cl.explorer.read_labels(fresh_run, latest=False)) == 3


# ------------------------------------------------------------------------------------------------ widgets
def _fill(form: cl.explorer.LabelForm, **values) -> None:
    for name, value in values.items():
        getattr(form, name).value = value


def test_explorer_select_submit_reopen(fresh_run):
    ui = cl.explorer.Explorer(fresh_run, rater="ann", seed=0)
    assert len(ui.select.options) == N_CONCEPTS - 1
    ui.search.value = "C3"
    assert [u for _, u in ui.select.options] == [3]
    ui.select.value = 3
    assert ui.current == ("concept", 3)
    assert GENES[3] in ui.card.value and 'class="cx-gene-bar"' in ui.card.value
    _fill(
        ui.form,
        label="monocyte <concept>",
        description="LYZ high",
        interpretable="yes",
        confidence=4,
        kind="cell type",
    )
    ui.form.submit.click()
    saved = [json.loads(line) for line in fresh_run.path("labels").read_text().splitlines()]
    assert saved[-1]["item"] == "C3" and saved[-1]["label"] == "monocyte <concept>"
    assert "Saved" in ui.form.message.value
    # the label shows on the card at once, escaped, and the count of saved answers follows
    assert "monocyte &lt;concept&gt;" in ui.card.value
    assert "1 saved answers" in ui.info.value

    reopened = cl.explorer.Explorer(fresh_run, rater="ann")
    assert "1 saved answers" in reopened.info.value
    reopened.show(3)
    form = reopened.form
    assert (form.label.value, form.interpretable.value, form.confidence.value, form.kind.value) == (
        "monocyte <concept>",
        "yes",
        4,
        "cell type",
    )
    reopened.show(4)
    assert form.label.value == "" and form.interpretable.value is None
    # another rater does not see ann's answer in the form
    other = cl.explorer.Explorer(fresh_run, rater="bob")
    other.show(3)
    assert other.form.label.value == ""


def test_explorer_buttons_and_kinds(fresh_run):
    ui = cl.explorer.Explorer(fresh_run, rater="ann", seed=1)
    order = cl.explorer.interesting_order(cl.explorer.unit_summary(ui.data, "concept"))
    assert ui.current == ("concept", order[0])  # opens on the most interesting unit
    _fill(ui.form, interpretable="no", confidence=1, kind="unknown")
    ui.submit()
    ui.next_button.click()
    assert ui.current == ("concept", order[1])
    ui.next_button.click()
    assert ui.current == ("concept", order[2])
    ui.random_button.click()
    assert ui.current[1] in order
    ui.kind.value = "neuron"
    assert [u for _, u in ui.select.options] == list(range(DIM))
    ui.show(1, "neuron")
    assert ui.current == ("neuron", 1)


def _assert_in_agreement(ui: cl.explorer.Explorer) -> None:
    """The card on display, the dropdown, the search and the form agree (what a user sees)."""
    options = [u for _, u in ui.select.options]
    assert options == cl.explorer.search_units(
        cl.explorer.unit_summary(ui.data, ui.kind.value), ui.search.value
    )
    if ui.current is None:
        assert ui.select.value is None and 'class="cx-card"' not in ui.card.value
        assert ui.steering.box.layout.display == "none"  # no steering of a card no longer on display
        assert ui.form.label.value == "" and ui.form.interpretable.value is None
        return
    kind, unit = ui.current
    name = cl.tl.units.unit_name(kind, unit)
    assert ui.kind.value == kind and ui.select.value == unit and unit in options
    assert ui.steering.box.layout.display is None and ui.steering.result is not None
    assert re.findall(r"<h2>([^<]*)</h2>", ui.card.value) == [name]
    saved = ui.form.saved(ui.labels, name)
    assert ui.form.label.value == ("" if saved is None else saved["label"])


def test_card_dropdown_search_and_form_always_agree(fresh_run):
    ui = cl.explorer.Explorer(fresh_run, rater="ann", seed=0)
    order = cl.explorer.interesting_order(cl.explorer.unit_summary(ui.data, "concept"))
    assert ui.current == ("concept", order[0])  # a card from the start, selected in the dropdown
    _assert_in_agreement(ui)
    for action in (ui.next_button.click, ui.random_button.click, ui.random_button.click):
        action()
        _assert_in_agreement(ui)
    other = next(u for _, u in ui.select.options if u != ui.current[1])
    ui.select.value = other  # choosing in the dropdown shows the unit
    assert ui.current == ("concept", other)
    ui.search.value = "C3"
    assert ui.current == ("concept", 3)
    _assert_in_agreement(ui)
    ui.search.value = "term"  # C3 still matches: the card stays
    assert ui.current == ("concept", 3)
    _assert_in_agreement(ui)
    summary = cl.explorer.unit_summary(ui.data, "concept")
    other_type = next(
        t.lower() for t in summary["metadata_label"] if t.lower() not in summary.loc[3, "search"]
    )
    ui.search.value = other_type  # C3 does not match: the match with the most evidence is shown
    _assert_in_agreement(ui)
    matches = cl.explorer.search_units(summary, other_type)
    assert ui.current[1] == cl.explorer.interesting_order(summary.loc[matches])[0] != 3

    ui.search.value = "no such unit"
    assert ui.current is None and "No concept matches the search &#x27;no such unit&#x27;" in ui.card.value
    _assert_in_agreement(ui)
    _fill(ui.form, interpretable="yes", confidence=3, kind="tissue")
    ui.form.submit.click()  # a click raises nothing (Jupyter would hide it in its log): the form says why
    assert "Not saved: no unit on display" in ui.form.message.value
    with pytest.raises(cl.explorer.widgets.NotSavedError, match="no unit on display"):
        ui.submit()
    assert not fresh_run.path("labels").exists()

    ui.random_button.click()  # the search hid every unit: it is cleared
    assert ui.search.value == "" and ui.current is not None
    _assert_in_agreement(ui)
    ui.search.value = "C3"
    ui.next_button.click()  # the next unit is not C3: the search is cleared
    assert ui.search.value == ""
    _assert_in_agreement(ui)
    ui.kind.value = "neuron"
    assert ui.current[0] == "neuron"
    _assert_in_agreement(ui)
    ui.show(SKIPPED_CONCEPT, "concept")  # no attribution scores, so in no option: the dropdown is blank
    assert ui.current == ("concept", SKIPPED_CONCEPT) and ui.select.value is None


def test_saved_answers_count_leaves_out_the_study(fresh_run):
    cl.explorer.save_label(fresh_run, "C1", rater="ann", interpretable="no", confidence=2, kind="unknown")
    for token in ("s-01", "s-02"):
        cl.explorer.save_label(
            fresh_run, token, rater="ann", interpretable="yes", confidence=2, kind="tissue", study="s"
        )
    assert "<i>1 saved answers loaded" in cl.explorer.Explorer(fresh_run).info.value


def test_incomplete_form_is_not_saved(fresh_run):
    ui = cl.explorer.Explorer(fresh_run, rater="ann")
    ui.show(0)
    _fill(ui.form, label="x", confidence=3, kind="tissue")  # interpretable missing
    with pytest.raises(ValueError, match="interpretable=None"):
        ui.submit()
    assert "Not saved" in ui.form.message.value
    ui.form.message.value = ""
    ui.form.submit.click()  # the same from the button: shown in the form, not raised into Jupyter's log
    assert "Not saved: interpretable=None" in ui.form.message.value
    assert not fresh_run.path("labels").exists()


# ------------------------------------------------------------------------------------------ blinded study
def _visible_text(html: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


def test_study_is_seeded_and_hides_identities(fresh_run):
    study = cl.explorer.make_study(fresh_run, n_concepts=4, n_neurons=3, seed=7)
    again = cl.explorer.make_study(fresh_run, n_concepts=4, n_neurons=3, seed=7)
    other = cl.explorer.make_study(fresh_run, n_concepts=4, n_neurons=3, seed=8)
    assert study == again and study.key == again.key
    assert study.key != other.key
    kinds = Counter(kind for kind, _ in study.key.values())
    assert kinds == {"concept": 4, "neuron": 3}
    assert all(unit in cl.explorer.load_run_data(fresh_run).units(kind) for kind, unit in study.key.values())
    assert "key" not in repr(study)
    key_file = fresh_run.path("study_key", study.id)
    assert pd.read_csv(key_file)["token"].tolist() == list(study.tokens)

    ui = cl.explorer.StudyExplorer(fresh_run, study, rater="ann")
    for i, token in enumerate(study.tokens):
        ui.show(i)
        kind, unit = study.key[token]
        text = _visible_text(ui.card.value + ui.position.value)
        assert token in text
        assert not re.search(rf"\b{cl.tl.units.unit_name(kind, unit)}\b", text)
        assert "concept" not in text.lower() and "neuron" not in text.lower()
        assert "term " not in text  # no GSEA label
        assert "active cells" not in text and "cx-histogram" not in text  # no activation scale
        assert 'class="cx-gene-bar"' in text


def test_study_answers_unblind_and_plot(fresh_run):
    import matplotlib

    matplotlib.use("Agg")
    study = cl.explorer.make_study(fresh_run, n_concepts=3, n_neurons=3, seed=0)
    for rater in ("ann", "bob"):
        ui = cl.explorer.StudyExplorer(fresh_run, study, rater=rater)
        for _ in study.tokens:
            kind, _unit = study.key[ui.token]
            answer = "yes" if kind == "concept" else ("no" if rater == "ann" else "partly")
            _fill(ui.form, interpretable=answer, confidence=3, kind="cell type")
            ui.form.submit.click()
    # reopening resumes at the first unanswered item and reloads answers
    ui = cl.explorer.StudyExplorer(fresh_run, study, rater="ann")
    assert ui.form.interpretable.value in ("yes", "no")
    assert "6 answered" in ui.position.value

    table = cl.explorer.unblind(fresh_run, study)
    assert len(table) == 12
    for row in table.itertuples():
        assert study.key[row.token] == (row.kind, row.unit)
    summary = cl.explorer.interpretability_table(table)
    assert summary.loc[("ann", "concept"), "yes"] == 1.0
    assert summary.loc[("ann", "neuron"), "no"] == 1.0
    assert summary.loc[("bob", "neuron"), "partly"] == 1.0
    assert summary.loc[("all raters", "neuron"), "no"] == 0.5
    assert summary.loc[("all raters", "concept"), "n"] == 6
    ax = cl.pl.interpretability(summary)
    assert len(ax.patches) == 3 * len(summary)
    for rows in (summary, summary.loc[["ann"]]):  # the legend overlapped the axis label on short tables
        ax = cl.pl.interpretability(rows)
        ax.figure.canvas.draw()
        renderer = ax.figure.canvas.get_renderer()
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.xaxis.get_tightbbox(renderer)) and not legend.overlaps(ax.bbox)
        assert ax.figure.bbox.contains(legend.x0, legend.y0) and ax.figure.bbox.contains(legend.x1, legend.y1)


def test_plots_take_card_data(data):
    import matplotlib

    matplotlib.use("Agg")
    card = cl.explorer.concept_card(data, 1, "concept")
    assert len(cl.pl.gene_bars(card).patches) == len(card.genes)
    assert cl.pl.composition(card, "cell_type").get_xlim() == (0, 1)
    axes = cl.pl.card(card)
    assert len(axes) == 4 and len(axes[0].figure.axes) == 5  # genes, umap + colorbar, histogram, composition
    assert len(cl.pl.umap(card, clip_negative=True, colorbar=False).figure.axes) == 1
    with pytest.raises(ValueError, match="No composition for 'tissue'"):
        cl.pl.composition(card, "tissue")


def test_metadata_columns_default_to_notebook_03s(fresh_run):
    assert cl.explorer.load_run_data(fresh_run).metadata_keys == [
        "cell_type",
        "donor",
    ]  # notebook 03's columns
    fresh_run.path("params").write_text(
        "run_name: x\nmetadata_keys: [tissue]\n"
    )  # not a second parameter path
    assert cl.explorer.load_run_data(fresh_run).metadata_keys == ["cell_type", "donor"]
    data = cl.explorer.load_run_data(fresh_run, ["donor"])
    assert data.metadata_keys == ["donor"]
    assert list(cl.explorer.concept_card(data, 0).composition) == ["donor"]


def test_unfinished_run_gets_a_clear_error(tmp_path):
    run = make_run(tmp_path / "run")
    run.path("attribution_concepts").unlink()
    with pytest.raises(FileNotFoundError, match="run the earlier steps first"):
        cl.explorer.load_run_data(run)


def test_attribution_of_another_sae_is_refused(tmp_path):
    """An SAE retrained after notebook 03 (``--only 02``): the cards would mix two runs, so loading stops."""
    run = make_run(tmp_path / "run")
    sae_dir = run.path("sae", run.read_json("sae_selected")["sae"])
    cl.runs.record_provenance(
        sae_dir, {"embeddings": cl.runs.steps.embeddings_fingerprint(np.zeros((3, DIM)))}
    )
    with pytest.raises(cl.runs.StaleOutputError, match=r"rerun step 'sae' \(notebook 02_sae_scale_sweep\)"):
        cl.explorer.load_run_data(run)
    emb = ad.read_h5ad(run.path("embedded")).obsm["X_pca"]
    retrained = {
        "embeddings": cl.runs.steps.embeddings_fingerprint(emb),
        "train": {"epochs": 5},
    }  # same cells
    cl.runs.record_provenance(sae_dir, retrained)
    with pytest.raises(
        cl.runs.StaleOutputError, match=r"attribution_concepts.npz was not made from the current sae"
    ):
        cl.explorer.load_run_data(run)


def test_umap_of_an_atlas_sample_draws_only_the_sampled_cells(data):
    """Notebook 01 gives cells outside its UMAP sample NaN coordinates: the card draws the others, as if the
    unsampled cells were not there (prototypes among them are not drawn)."""
    from dataclasses import replace

    from corelib.explorer.html import umap_png

    card = cl.explorer.concept_card(data, 1, "concept")
    sampled = np.ones(len(card.umap), dtype=bool)
    sampled[card.prototypes[::2]] = sampled[1::3] = False  # some prototypes too
    unsampled = replace(card, umap=np.where(sampled[:, None], card.umap, np.nan))
    kept = np.flatnonzero(sampled)
    only_sampled = replace(
        card,
        umap=card.umap[kept],
        activation=card.activation[kept],
        prototypes=np.searchsorted(kept, card.prototypes[sampled[card.prototypes]]),
    )
    assert umap_png(unsampled) == umap_png(only_sampled) != umap_png(card)
    assert umap_png(replace(card, umap=np.full_like(card.umap, np.nan))) == ""


# ------------------------------------------------------------------------------------------ atlas overview
def test_atlas_overview_lists_every_card_in_order_of_evidence(fresh_run):
    cl.explorer.save_label(
        fresh_run,
        "C4",
        rater="ann",
        interpretable="yes",
        confidence=4,
        kind="cell type",
        label="my <b> label",
    )
    page = cl.explorer.write_atlas(fresh_run).read_text()
    summary = cl.explorer.unit_summary(cl.explorer.load_run_data(fresh_run), "concept")
    order = [f"C{u}" for u in cl.explorer.interesting_order(summary)]
    overview = re.search(r'<table class="cx-sortable" id="overview">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td><td[^>]*><a href=\"#([^\"]+)\">", overview)
    assert [name for _, name in rows] == order  # one row per card, most evidence first
    assert [int(rank) for rank, _ in rows] == list(range(1, len(order) + 1))
    assert re.findall(r'<section class="cx-card" id="([^"]+)"', page) == order  # the cards in the same order
    assert page.index('id="overview"') < page.index('<section class="cx-card"')
    headers = re.findall(r"<th data-type=\"(number|text)\"[^>]*>([^<]+)</th>", overview)
    assert [h for _, h in headers][:4] == ["#", "unit", "label", "cell type"] and (
        "number",
        "evidence",
    ) in headers
    assert "function sortBy(th)" in page and "addEventListener('click'" in page  # offline, inline
    c4 = re.search(r'<tr><td[^>]*>\d+</td><td[^>]*><a href="#C4">.*?</tr>', overview).group(0)
    assert "my &lt;b&gt; label" in c4  # the expert label, escaped, before the GSEA term
    c3 = re.search(r'<tr><td[^>]*>\d+</td><td[^>]*><a href="#C3">.*?</tr>', overview).group(0)
    assert "GSEA: term 3 of concept" in c3 and summary.loc[3, "metadata_label"] in c3
