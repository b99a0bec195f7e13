"""corelib.explorer on an AnnData of the README snippet (cl.tl.train_sae, attribute, annotate): no run directory.

Cards, the atlas, the widgets and the blinded study read the AnnData's slots; what it lacks (DEG table, top GSEA
terms, matched concepts, a UMAP, a labels file, a decoder) each says so in one line, and nothing crashes.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

import corelib as cl


@pytest.fixture(scope="module")
def adata(readme_adata):
    return readme_adata[0]


@pytest.fixture(scope="module")
def data(adata):
    return cl.explorer.ConceptData.from_anndata(adata)


def _attributed(adata) -> list[int]:
    return [int(u) for u in np.flatnonzero(~np.isnan(adata.varm["concepts_attribution"]).all(axis=0))]


def test_cards_read_the_anndata_slots(adata, data):
    units = _attributed(adata)
    assert data.units("concept") == units == [0, 1, 2, 3]
    codes = adata.obsm["X_concepts"].toarray()
    annotation = adata.uns["concepts"]["annotation"]
    reliability = adata.uns["concepts"]["attribution_reliability"]
    for unit in units:
        card = cl.explorer.concept_card(data, unit, n_top=7)
        scores = pd.Series(adata.varm["concepts_attribution"][:, unit], index=adata.var_names).dropna()
        top = scores.sort_values(ascending=False).head(7)
        assert card.genes["gene"].tolist() == top.index.tolist()
        np.testing.assert_allclose(card.genes["score"], top.to_numpy())
        assert card.n_important == int((scores > cl.explorer.DEFAULT_THRESHOLD).sum())
        np.testing.assert_array_equal(card.activation, codes[:, unit])
        active = codes[:, unit] > 0
        assert card.n_active == active.sum()
        expected = adata.obs["cell_type"][active].astype(str).value_counts(normalize=True)
        pd.testing.assert_series_equal(card.composition["cell_type"], expected, check_names=False)
        # the AnnData keeps no prototypes: the card marks the 10 most activating cells, attribute's default
        assert set(card.prototypes) == set(np.argsort(-codes[:, unit], kind="stable")[:10])
        assert card.prototype_activation == pytest.approx(codes[card.prototypes, unit].mean())
        assert cl.explorer.gsea_label(card.annotation) == annotation.loc[str(unit), "term"]
        rho = reliability.loc[str(unit), "split_half"]
        assert card.status.startswith(f"attributed (split-half reliability {rho:.2f}")
        assert card.deg.empty and card.gsea.empty and card.matched.empty
        assert "run cl.tl.rank_genes" in card.absent["deg"] and "best term only" in card.absent["gsea_terms"]
        assert "no encoder" in card.steering or "an encoder" in card.steering
    # the UMAP: the dataset's own (obsm["X_umap_seurat"]) when there is no X_umap
    np.testing.assert_array_equal(data.umap, adata.obsm["X_umap_seurat"][:, :2].astype(np.float32))
    assert data.metadata_keys[0] == "cell_type"
    unattributed = cl.explorer.concept_card(data, 9)
    assert unattributed.genes.empty and unattributed.status == "not attributed"
    assert "not attributed" in unattributed.steering
    neuron = cl.explorer.concept_card(data, 2, "neuron")  # the embedding's dimension: no attribution
    values = adata.obsm["X_pca"][:, 2]
    assert neuron.name == "N2" and neuron.genes.empty
    assert neuron.n_active == int(np.sum(values > np.quantile(values, 0.9)))  # a neuron's top 10%
    with pytest.raises(ValueError, match="this AnnData has 16 concepts"):
        cl.explorer.concept_card(data, 16)


def test_steering_with_the_encoder_and_sae(readme_adata):
    adata, encoder, sae = readme_adata
    card = cl.explorer.concept_card(adata, 0, encoder=encoder, sae=sae)
    assert card.steering == encoder.decoder_absent()  # PCA has no generative decoder: the card says so
    assert f"No steering: {html.escape(card.steering)}" in cl.explorer.html.card_html(card)


def test_atlas_of_an_anndata(adata, data, tmp_path):
    path = cl.explorer.write_atlas(adata, tmp_path / "atlas" / "index.html")
    page = path.read_text()
    units = data.units("concept")
    assert page.count('<section class="cx-card"') == len(units)
    assert "<title>Concept atlas - AnnData: pca on pbmc3k" in page
    for unit in units:
        card = cl.explorer.concept_card(data, unit)
        section = re.search(rf'<section class="cx-card" id="C{unit}".*?</section>', page, re.S).group(0)
        for gene in card.genes["gene"]:  # every top attributed gene, on its own card
            assert f'text-anchor="end">{html.escape(gene)}</text>' in section
        assert html.escape(cl.explorer.gsea_label(card.annotation), quote=True) in section
        assert "absent: no uns[&#x27;concepts&#x27;][&#x27;deg&#x27;]: run cl.tl.rank_genes(adata)" in section
        assert "No steering: no decoder: pass an encoder" in section
        assert "data:image/png;base64," in section  # the UMAP
    with pytest.raises(ValueError, match="pass path="):
        cl.explorer.write_atlas(adata)


def test_missing_pieces_are_absent_with_a_reason(adata, tmp_path):
    bare = adata.copy()
    for key in [k for k in bare.obsm if k.startswith("X_umap")]:
        del bare.obsm[key]
    del bare.uns["concepts"]["annotation"]
    data = cl.explorer.ConceptData.from_anndata(bare)
    card = cl.explorer.concept_card(data, 1)
    assert card.umap is None and "no obsm['X_umap']" in card.absent["umap"]
    page = cl.explorer.html.card_html(card)
    assert "No UMAP: the AnnData has no obsm[&#x27;X_umap&#x27;]" in page
    assert "no GSEA label: no uns[&#x27;concepts&#x27;][&#x27;annotation&#x27;]" in page
    assert len(cl.pl.card(card)) == 4  # the UMAP panel says why it is empty
    del bare.varm["concepts_attribution"]
    del bare.varm["concepts_attribution_signed"]
    ui = cl.explorer.Explorer(bare)
    assert ui.current is None and "No concept has attribution scores in this AnnData" in ui.card.value
    page = cl.explorer.write_atlas(bare, tmp_path / "atlas.html").read_text()
    assert "(0 cards)" in page


def test_explorer_on_an_anndata(adata, tmp_path):
    ui = cl.explorer.Explorer(adata, rater="ann")
    assert [u for _, u in ui.select.options] == [0, 1, 2, 3]
    assert ui.current[0] == "concept" and 'class="cx-gene-bar"' in ui.card.value
    assert "answers are not saved: no labels file" in ui.info.value
    ui.search.value = "C2"
    assert ui.current == ("concept", 2)
    ui.form.interpretable.value, ui.form.confidence.value, ui.form.kind.value = "yes", 3, "cell type"
    ui.form.submit.click()  # nowhere to save: the form says so, nothing raises into Jupyter's log
    assert "Not saved: answers are not saved" in ui.form.message.value
    with pytest.raises(cl.explorer.widgets.NotSavedError):
        ui.submit()
    ui.search.value = ""
    ui.kind.value = "neuron"
    assert ui.current is None and "No neuron has attribution scores in this AnnData" in ui.card.value
    assert isinstance(ui.steering.result, str)

    labels = tmp_path / "labels.jsonl"
    ui = cl.explorer.Explorer(adata, rater="ann", labels=labels)
    ui.show(1)
    ui.form.label.value = "platelets <x>"
    ui.form.interpretable.value, ui.form.confidence.value, ui.form.kind.value = "partly", 2, "cell type"
    ui.form.submit.click()
    assert json.loads(labels.read_text().splitlines()[-1])["item"] == "C1"
    assert "platelets &lt;x&gt;" in ui.card.value and "1 saved answers" in ui.info.value
    reopened = cl.explorer.Explorer(adata, rater="ann", labels=labels)
    reopened.show(1)
    assert reopened.form.label.value == "platelets <x>"
    page = cl.explorer.write_atlas(adata, tmp_path / "atlas.html", labels=labels).read_text()
    assert "platelets &lt;x&gt;" in page


def test_blinded_study_on_an_anndata(adata, tmp_path):
    labels = tmp_path / "study" / "labels.jsonl"
    study = cl.explorer.make_study(adata, n_concepts=3, n_neurons=0, seed=0, store=labels)
    assert (labels.parent / f"study_{study.id}_key.csv").exists()
    ui = cl.explorer.StudyExplorer(adata, study, rater="ann", labels=labels)
    for _ in study.tokens:
        ui.form.interpretable.value, ui.form.confidence.value, ui.form.kind.value = "yes", 4, "tissue"
        ui.form.submit.click()
    table = cl.explorer.unblind(labels, study)
    assert len(table) == 3 and set(table["kind"]) == {"concept"}
    assert cl.explorer.interpretability_table(table).loc[("ann", "concept"), "yes"] == 1.0
    with pytest.warns(UserWarning, match="key file is not written"):
        unsaved = cl.explorer.make_study(adata, n_concepts=2, n_neurons=0, seed=1)
    # no answers yet; the key comes from the Study itself
    assert len(cl.explorer.unblind(tmp_path / "none.jsonl", unsaved)) == 0


def test_metadata_calls_and_the_deg_baseline_are_anndata_slots_the_cards_read(adata, tmp_path):
    """cl.tl.characterize and cl.tl.rank_genes write uns tables equal to the array functions' (the reference),
    they survive an .h5ad round trip, and a card of the read-back AnnData shows them instead of an absence."""
    import anndata as ad

    own = adata.copy()
    calls = cl.tl.characterize(own, ["cell_type"])
    reference = cl.tl.concepts.characterize(own.obsm["X_concepts"], own.obs[["cell_type"]], ["cell_type"])
    pd.testing.assert_frame_equal(calls, reference)
    deg = cl.tl.rank_genes(own, max_cells=100, progress=False)
    units = _attributed(own)
    emb = np.asarray(own.obsm["X_pca"], dtype=np.float32)
    expected = cl.tl.deg.deg_units(
        own.X,
        own.obsm["X_concepts"],
        emb,
        units=units,
        genes=list(own.var_names),
        max_cells=100,
        progress=False,
    )
    pd.testing.assert_frame_equal(deg, expected)
    assert set(deg["unit"]) <= set(units) and not deg.empty

    own.write_h5ad(tmp_path / "cells.h5ad")
    back = ad.read_h5ad(tmp_path / "cells.h5ad")
    data = cl.explorer.ConceptData.from_anndata(back)
    assert "deg" not in data.absent and "metadata" not in data.absent
    assert data.metadata_keys == ["cell_type"]
    unit = int(deg["unit"].iloc[0])
    card = cl.explorer.concept_card(data, unit)
    assert list(card.deg["gene"]) == list(deg.loc[deg["unit"] == unit, "gene"])[: len(card.deg)]
    assert card.metadata["cell_type_top"] == calls.loc[unit, "cell_type_top"]
    bare = cl.explorer.concept_card(cl.explorer.ConceptData.from_anndata(adata), unit)
    assert "run cl.tl.rank_genes(adata)" in bare.absent["deg"]


def test_a_study_is_unblinded_only_for_raters_who_finished_it(adata, tmp_path):
    """After one answer, unblinding would reveal item 1 mid-study (issue 25): an unfinished rater is withheld,
    with a warning saying how to finish or reveal anyway."""
    labels = tmp_path / "labels.jsonl"
    study = cl.explorer.make_study(adata, n_concepts=3, n_neurons=0, seed=0, store=labels)
    for rater, n_answers in (("ann", 3), ("bob", 1)):
        ui = cl.explorer.StudyExplorer(adata, study, rater=rater, labels=labels)
        for _ in range(n_answers):
            ui.form.interpretable.value, ui.form.confidence.value, ui.form.kind.value = "yes", 4, "tissue"
            ui.form.submit.click()
    with pytest.warns(UserWarning, match=r"Not unblinded: bob \(1 of 3\).*reveal_anyway=True"):
        table = cl.explorer.unblind(labels, study)
    assert set(table["rater"]) == {"ann"} and len(table) == 3
    everyone = cl.explorer.unblind(labels, study, reveal_anyway=True)
    assert len(everyone) == 4 and (everyone["rater"] == "bob").sum() == 1
