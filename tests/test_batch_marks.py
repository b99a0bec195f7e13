"""Batch concepts marked in the explorer and the atlas (issue 26): notebook 03's step, the cards, the overview.

The batch is planted in the codes: within one cell type, the cells where one concept is active form batch B, so
that concept marks B perfectly there. The reference for what is marked is ``cl.tl.batch.batch_concepts`` itself,
called on the same codes: the explorer must mark exactly the concepts it flags, and nothing without a batch key.
"""

from __future__ import annotations

import html
import re

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import SKIPPED_CONCEPT, make_run

import corelib as cl
import corelib.datasets._planted
from corelib.runs.steps.interpret import Inputs

SAE = "c12_k3_s0"


def _inputs(run) -> Inputs:
    """What notebook 03's steps read, for a run without an encoder checkpoint (the synthetic run)."""
    adata = ad.read_h5ad(run.path("embedded"))
    emb = adata.obsm["X_pca"]
    sae = cl.tl.sae.TopKSAE.load(run.path("sae", SAE))
    upstream = {"embedded": run.fingerprint("embedded"), "sae": run.fingerprint("sae", SAE)}
    return Inputs(adata, emb, None, None, 0, SAE, sae, cl.tl.sae.encode(sae, emb), upstream)


def _plant_batch(inputs: Inputs) -> tuple[str, int]:
    """Batch B: the cells of one cell type where one concept is active (at least 20 of them, and 20 not), and a
    seeded half of the other cells. Returns the cell type and the concept."""
    codes = inputs.codes.toarray()
    types = inputs.adata.obs["cell_type"].astype(str).to_numpy()
    cell_type, concept = next(
        (t, c)
        for t in np.unique(types)
        for c in range(codes.shape[1])
        if 20 <= (codes[types == t, c] > 0).sum() <= (types == t).sum() - 20
    )
    in_b = np.where(
        types == cell_type, codes[:, concept] > 0, np.random.default_rng(0).random(len(types)) < 0.5
    )
    inputs.adata.obs["batch"] = pd.Categorical(np.where(in_b, "B", "A"))
    return cell_type, concept


@pytest.fixture(scope="module")
def marked_run(tmp_path_factory):
    """A synthetic run with a planted batch, its batch marks computed by notebook 03's step."""
    run = make_run(tmp_path_factory.mktemp("batch") / "run")
    inputs = _inputs(run)
    cell_type, concept = _plant_batch(inputs)
    table = cl.runs.steps.batch_marks.batch_marks(run, inputs, "batch", "cell_type", seed=0)
    return run, inputs, table, cell_type, concept


def test_the_marked_concepts_are_those_batch_concepts_flags(marked_run):
    run, inputs, table, cell_type, concept = marked_run
    obs = inputs.adata.obs
    reference = cl.tl.batch.batch_concepts(inputs.codes, obs["batch"], labels_N=obs["cell_type"], seed=0)
    flagged = set(reference.index[reference["associated"]])
    assert concept in flagged  # the planted concept marks B perfectly within its cell type
    assert reference.loc[concept, ["batch", "auroc", "stratum"]].tolist() == ["B", 1.0, cell_type]
    cached = run.read_table("batch_marks")
    assert set(cached.index[cached["associated"]]) == set(table.index[table["associated"]]) == flagged
    assert (cached["null_auroc"] == reference.attrs["null_auroc"]).all()

    data = cl.explorer.load_run_data(run)
    summary = cl.explorer.unit_summary(data, "concept")
    marks = summary["batch_mark"]
    assert set(marks.index[marks != ""]) == flagged & set(summary.index)
    assert summary["batch_auroc"].dropna().index.tolist() == marks.index[marks != ""].tolist()
    null = reference.attrs["null_auroc"]
    expected = f"batch concept: AUROC 1.00 for batch B within {cell_type} (null {null:.2f})"
    assert marks[concept] == expected
    assert set(cl.explorer.search_units(summary, "batch concept")) == flagged & set(summary.index)
    first = cl.explorer.describe_first_card(summary.loc[[concept]])
    assert f"It is a {expected}: it marks a batch rather than biology." in first

    card = cl.explorer.concept_card(data, concept, steering_amount=None)
    assert html.escape(expected, quote=True) in cl.explorer.html.card_html(card)
    assert "batch concept" not in cl.explorer.html.card_html(card, blinded=True)
    other = next(u for u in data.units("concept") if u not in flagged)
    assert "batch concept" not in cl.explorer.html.card_html(cl.explorer.concept_card(data, other))
    neuron = cl.explorer.concept_card(data, concept, "neuron", steering_amount=None)  # neuron of the same id
    assert "batch concept" not in cl.explorer.html.card_html(neuron)
    # the static card figure carries the mark as its title, and only for a batch concept
    figure = cl.pl.card(card)[0].figure
    assert figure.get_suptitle() == f"{card.name}: {expected}"
    assert cl.pl.card(cl.explorer.concept_card(data, other))[0].figure.get_suptitle() == ""
    plt.close("all")


def _overview(page: str) -> dict[str, dict[str, str]]:
    """The atlas overview as {unit: {header: the cell's data-sort value}}."""
    table = page[page.index('<table class="cx-sortable"') : page.index("</table>")]
    headers = re.findall(r"<th [^>]*>([^<]*)</th>", table)
    rows = [re.findall(r'<td data-sort="([^"]*)"', row) for row in table.split("<tr>")[2:]]
    return {row[1]: dict(zip(headers, row, strict=True)) for row in rows}


def test_the_atlas_overview_has_a_batch_column(marked_run, tmp_path):
    run, _, table, _, concept = marked_run
    page = cl.explorer.write_atlas(run, tmp_path / "atlas.html").read_text()
    overview = _overview(page)
    auroc = {unit: row["batch AUROC"] for unit, row in overview.items()}
    flagged = set(table.index[table["associated"]])
    assert {unit for unit, value in auroc.items() if value} == {f"C{u}" for u in flagged} & set(overview)
    assert auroc[f"C{concept}"] == "1"  # the value it sorts by
    assert all(float(auroc[f"C{u}"]) == pytest.approx(table.loc[u, "auroc"], abs=1e-6) for u in flagged)


def test_a_batch_concept_without_attribution_gets_a_card_too(tmp_path):
    """Notebook 03 may attribute a sample of the concepts: a batch concept outside it still gets a card (after
    the attributed ones), marked, with its AUROC in the overview."""
    run = make_run(tmp_path / "run")
    inputs = _inputs(run)
    _plant_batch(inputs)
    table = cl.runs.steps.batch_marks.batch_marks(run, inputs, "batch", "cell_type")
    table.loc[SKIPPED_CONCEPT, "associated"] = True  # as if the skipped concept marked the batch
    run.write_table("batch_marks", table)
    data = cl.explorer.load_run_data(run)
    assert SKIPPED_CONCEPT not in data.units("concept")
    flagged = set(table.index[table["associated"]])
    page = cl.explorer.write_atlas(data, tmp_path / "atlas.html").read_text()
    overview, names = _overview(page), list(_overview(page))
    assert "batch concept: AUROC" in page.split(f'id="C{SKIPPED_CONCEPT}"')[1].split("</section>")[0]
    assert names[-1] == f"C{SKIPPED_CONCEPT}" and {f"C{u}" for u in flagged} <= set(names)
    assert float(overview[f"C{SKIPPED_CONCEPT}"]["batch AUROC"]) == pytest.approx(
        table.loc[SKIPPED_CONCEPT, "auroc"]
    )
    assert len(names) == len(data.units("concept")) + 1


def test_no_batch_key_computes_nothing_and_marks_nothing(marked_run, tmp_path):
    run = make_run(tmp_path / "run")
    before = cl.explorer.unit_summary(cl.explorer.load_run_data(run), "concept")
    inputs = _inputs(run)
    _plant_batch(inputs)
    cl.runs.steps.batch_marks.batch_marks(run, inputs, "batch", "cell_type")
    assert run.locate("batch_marks").exists()
    # batch_key back to None: the table of the earlier run goes, and the explorer reads the run as before
    assert cl.runs.steps.batch_marks.batch_marks(run, inputs, None) is None
    assert not run.locate("batch_marks").exists()
    assert not cl.runs.provenance_path(run.locate("batch_marks")).exists()
    summary = cl.explorer.unit_summary(cl.explorer.load_run_data(run), "concept")
    pd.testing.assert_frame_equal(summary, before)
    page = cl.explorer.write_atlas(run).read_text()
    assert "batch AUROC" not in page and "batch concept" not in page
    assert "No batch_key" in cl.runs.steps.batch_marks.describe(None, None)


def test_describe_lists_the_marked_concepts(marked_run):
    _, _, table, cell_type, concept = marked_run
    text = cl.runs.steps.batch_marks.describe(table, "batch")
    n = int(table["associated"].sum())
    assert text.startswith(f"{n} of {len(table)} concepts mark a batch of obs['batch'] (AUROC at least 0.70")
    assert f"C{concept}: AUROC 1.00 for batch B within {cell_type}" in text


def test_without_label_key_the_cells_are_one_stratum(tmp_path):
    run = make_run(tmp_path / "run")
    inputs = _inputs(run)
    _plant_batch(inputs)
    table = cl.runs.steps.batch_marks.batch_marks(run, inputs, "batch", None)
    assert set(table["stratum"]) == {cl.tl.batch.ALL_CELLS}
    with pytest.raises(ValueError, match="donors not in the embedded cells' obs"):
        cl.runs.steps.batch_marks.batch_marks(run, inputs, "donors", None)


def test_a_planted_batch_is_marked_on_an_anndata_s_cards_and_atlas(tmp_path):
    """cl.datasets.plant_batch on pbmc3k, a PCA embedding, a small SAE: the concepts that
    cl.tl.batch.remove_batch_concepts finds are those the cards and the atlas of the AnnData mark."""
    adata = cl.datasets.plant_batch(cl.datasets.load_dataset("pbmc3k"), seed=0)
    assert adata.uns["planted_batch"]["batch_key"] == "batch" and set(adata.obs["batch"]) == {"A", "B"}
    encoder = cl.encoders.load("pca", adata=adata, n_comps=20, progress=False)
    cl.encoders.embed(encoder, adata, key_added="X_pca", progress=False)
    sae = cl.tl.train_sae(adata, use_rep="X_pca", n_concepts=32, k=4, epochs=20, progress=False, seed=0)
    table = cl.tl.batch.remove_batch_concepts(adata, sae, "batch", label_key="cell_type")
    flagged = set(table.index[table["associated"]])
    assert flagged  # the planted batch is found
    data = cl.explorer.as_data(adata)
    marks = {u: cl.tl.evidence.unit_batch_mark(cl.explorer.concept_card(data, u).metadata) for u in range(32)}
    assert {u for u, m in marks.items() if m} == flagged
    top = table.index[0]
    row = table.loc[top]
    null = adata.uns["concepts"]["batch"]["null_auroc"]
    assert marks[top] == (
        f"batch concept: AUROC {row['auroc']:.2f} for batch {row['batch']} within {row['stratum']} (null {null:.2f})"
    )
    units = list(range(32))  # the AnnData has no attribution: every concept gets a card
    overview = _overview(cl.explorer.write_atlas(adata, tmp_path / "atlas.html", units=units).read_text())
    assert {name for name, cells in overview.items() if cells["batch AUROC"]} == {f"C{u}" for u in flagged}


def test_plant_batch_is_public():
    assert cl.datasets.plant_batch is corelib.datasets._planted.plant_batch  # benchmarks import the latter
    assert "plant_batch" in cl.datasets.__all__
