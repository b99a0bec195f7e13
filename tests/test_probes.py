"""Tests of corelib.tl.probes: planted signals, sklearn reference, balanced splits, cell-cycle phase, markers."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import hand_attribution

import corelib as cl
from corelib.datasets import cell_cycle_genes
from corelib.runs.steps import interpret, probes

matplotlib.use("Agg")


def _planted(n_per_class: int = 200, n_features: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; feature 3 + class index carries the class, the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c"], n_per_class)
    X = rng.normal(size=(len(labels), n_features))
    for i, c in enumerate("abc"):
        X[labels == c, 3 + i] += 4.0
    return X, labels


def test_probe_finds_planted_signal() -> None:
    X, y = _planted()
    r = cl.tl.probes.probe(
        X,
        y,
        seeds=[0, 1, 2],
        min_cells_per_class=50,
        feature_names=[f"C{i}" for i in range(12)],
        progress=False,
    )
    assert r.classes == ["a", "b", "c"] and r.dropped == {}
    assert r.accuracy.min() > 0.95 and r.macro_f1.min() > 0.95
    top = cl.tl.probes.top_units(r, n_units=1)
    assert top["feature"].tolist() == ["C3", "C4", "C5"]
    s = r.summary()
    assert s["n_seeds"] == 3 and s["n_train_per_class"] + s["n_test_per_class"] == 200 and s["all_converged"]
    assert r.confusion.shape == (3, 3, 3) and r.coef.shape == (3, 3, 12)
    assert (r.confusion.sum(axis=(1, 2)) == 3 * s["n_test_per_class"]).all()


def test_probe_matches_sklearn_on_the_same_split() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5))
    y = np.where(X[:, 0] + 0.8 * rng.normal(size=300) > 0, "pos", "neg")
    X[:, 1] += (y == "pos") * 0.5
    r = cl.tl.probes.probe(X, y, seeds=[7], min_cells_per_class=10, progress=False)
    n = int(pd.Series(y).value_counts().min())
    tr, te = cl.tl.probes.balanced_split(y, r.classes, n_per_class=n, test_size=0.25, seed=7)
    clf = LogisticRegression().fit(X[tr], y[tr])
    pred = clf.predict(X[te])
    assert r.accuracy[0] == pytest.approx(accuracy_score(y[te], pred))
    assert r.macro_f1[0] == pytest.approx(f1_score(y[te], pred, average="macro"))
    np.testing.assert_allclose(r.coef[0][1], clf.coef_[0])  # binary: row of the positive class ("pos")


def test_probe_on_sparse_features_equals_the_dense_probe() -> None:
    X, y = _planted(n_per_class=150, n_features=30)
    X = np.where(X > 1.0, X, 0.0)  # sparse, non-negative, like SAE codes
    kw = dict(seeds=[0, 1], min_cells_per_class=50, progress=False)
    dense = cl.tl.probes.probe(X, y, **kw)
    sparse = cl.tl.probes.probe(sp.csr_matrix(X, dtype=np.float32), y, **kw)
    np.testing.assert_allclose(sparse.accuracy, dense.accuracy, atol=1 / 75)  # at most one test cell differs
    np.testing.assert_allclose(sparse.coef, dense.coef, rtol=1e-2, atol=1e-2)
    assert not sparse.subsampled and sparse.max_cells == cl.tl.probes.MAX_TRAIN_CELLS


def test_stratified_subsample_is_seeded_and_keeps_every_class() -> None:
    labels = np.array(["big"] * 5000 + ["mid"] * 900 + ["tiny"] * 3)
    idx = np.arange(len(labels))
    first = cl.tl.probes.stratified_subsample(idx, labels, 500, seed=3)
    np.testing.assert_array_equal(first, cl.tl.probes.stratified_subsample(idx, labels, 500, seed=3))
    assert not np.array_equal(first, cl.tl.probes.stratified_subsample(idx, labels, 500, seed=4))
    kept = pd.Series(labels[first]).value_counts()
    assert len(first) == len(np.unique(first)) == 500
    assert kept["big"] == 423 and kept["mid"] == 76 and kept["tiny"] == 1  # 500 * share, rounded down, >= 1
    np.testing.assert_array_equal(
        cl.tl.probes.stratified_subsample(idx[:400], labels, 500, seed=0), idx[:400]
    )


def test_probe_subsamples_training_cells_above_max_cells(capsys) -> None:
    X, y = _planted(n_per_class=200)
    r = cl.tl.probes.probe(X, y, seeds=[0, 1], min_cells_per_class=50, max_cells=90, progress=False)
    assert r.subsampled and r.n_train_per_class == 30 and r.n_test_per_class == 50
    assert r.accuracy.min() > 0.9
    full = cl.tl.probes.probe(X, y, seeds=[0], min_cells_per_class=50, max_cells=None, progress=False)
    assert not full.subsampled and full.n_train_per_class == 150
    cl.tl.probes.probe_features(
        {"concepts": X}, y, seeds=[0], min_cells_per_class=50, max_cells=90, progress=False
    )
    assert "stratified subsample of max_cells=90" in capsys.readouterr().out


def test_balanced_split_is_balanced_disjoint_and_seeded() -> None:
    y = np.array(["a"] * 50 + ["b"] * 80)
    tr, te = cl.tl.probes.balanced_split(y, ["a", "b"], n_per_class=40, test_size=0.25, seed=0)
    assert (pd.Series(y[tr]).value_counts() == 30).all() and (pd.Series(y[te]).value_counts() == 10).all()
    assert not set(tr) & set(te)
    tr2, _ = cl.tl.probes.balanced_split(y, ["a", "b"], n_per_class=40, test_size=0.25, seed=0)
    tr3, _ = cl.tl.probes.balanced_split(y, ["a", "b"], n_per_class=40, test_size=0.25, seed=1)
    np.testing.assert_array_equal(tr, tr2)
    assert set(tr) != set(tr3)


def test_probe_drops_small_classes_and_errors() -> None:
    X, y = _planted(n_per_class=60)
    y = y.astype(object)
    y[:50] = "rare"  # "a" keeps 10 cells, "rare" has 50
    y[50] = None  # an unlabelled cell is ignored
    r = cl.tl.probes.probe(X, y, seeds=[0, 1], min_cells_per_class=55, progress=False)
    assert r.classes == ["b", "c"] and r.dropped == {"rare": 50, "a": 9}
    with pytest.raises(
        cl.tl.probes.TooFewClasses, match=r"Only 0 class.*\(class sizes: b: 60, c: 60, rare: 50, a: 9\)"
    ):
        cl.tl.probes.probe(X, y, min_cells_per_class=1000, progress=False)
    with pytest.raises(ValueError, match="one label per row"):
        cl.tl.probes.probe(X, y[:-1], progress=False)
    with pytest.raises(ValueError, match="2-D"):
        cl.tl.probes.probe(X[:, 0], y, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        cl.tl.probes.probe(np.full_like(X, np.nan), y, progress=False)
    with pytest.raises(ValueError, match="n_per_class=70"):
        cl.tl.probes.probe(X, y, min_cells_per_class=55, n_per_class=70, progress=False)


def test_too_few_classes_skip_every_step_with_the_reason(tmp_path, capsys) -> None:
    """30 cells: nothing to probe; every later step of notebook 05 runs through on the empty result."""

    X, y = _planted(n_per_class=10)
    features = {"concepts": X, "neurons": X}
    results = cl.tl.probes.probe_features(features, y, min_cells_per_class=150, progress=False)
    assert results == {}
    assert (
        "Skipped the probes: Only 0 class(es) have at least min_cells_per_class=150"
        in capsys.readouterr().out
    )
    assert cl.tl.probes.task_classes(results) == ([], {})
    run = cl.runs.open_run(tmp_path / "run")
    assert cl.runs.steps.save_probe_results(run, "cell_type", results).empty
    adata = ad.AnnData(sp.csr_matrix(np.ones((len(y), 3), np.float32)))
    assert cl.tl.probe_labels.class_markers(adata, pd.Series(y).where(pd.Series(y).isin([]))) == {}
    tops = {k: cl.tl.probes.top_units(results[k]) for k in results}
    cl.runs.steps.save_top_units(run, "cell_type", tops)
    assert "skipped" in cl.pl.top_units(tops)[0].texts[0].get_text()
    assert "skipped" in cl.pl.confusion(results)[0].texts[0].get_text()
    kept = cl.tl.probes.probe_features(features, y, min_cells_per_class=5, seeds=[0, 1], progress=False)
    assert cl.tl.probes.task_classes(kept) == (["a", "b", "c"], {})
    cl.runs.steps.save_top_units(run, "cell_type", {k: cl.tl.probes.top_units(r) for k, r in kept.items()})
    assert len(run.read_table("probes", "cell_type_top_neurons.csv", index_col=None)) == 3 * 3


def test_unbalanced_probe_uses_all_cells() -> None:
    X, y = _planted(n_per_class=100)
    X, y = X[50:], y[50:]  # "a" has 50 cells, the others 100
    r = cl.tl.probes.probe(
        X, y, seeds=[0], balanced=False, test_size=0.2, min_cells_per_class=10, progress=False
    )
    assert r.confusion[0].sum() == 50  # 20% of 250 cells
    assert r.confusion[0].sum(axis=1).tolist() == [10, 20, 20]


def test_max_iter_is_raised_only_as_needed() -> None:
    X, y = _planted()
    r = cl.tl.probes.probe(
        X * 100, y, seeds=[0], max_iter=2, max_iter_limit=2, min_cells_per_class=50, progress=False
    )
    assert not r.converged[0] and not r.summary()["all_converged"] and r.max_iter.tolist() == [2]
    r = cl.tl.probes.probe(X * 100, y, seeds=[0], max_iter=2, min_cells_per_class=50, progress=False)
    assert r.converged[0] and r.max_iter[0] in (20, 200, 2000, 10_000)
    assert cl.tl.probes.probe(X, y, seeds=[0], min_cells_per_class=50, progress=False).max_iter.tolist() == [
        100
    ]


def _cell_cycle_adata(seed: int = 0) -> ad.AnnData:
    """300 cells: 100 with S genes up, 100 with G2M genes up, 100 with neither; 300 background genes whose
    mean expression spans the cell-cycle genes' (score_genes draws its control genes from them)."""
    s_genes, g2m_genes = cell_cycle_genes()
    genes = s_genes + g2m_genes + [f"bg{i}" for i in range(300)]
    rng = np.random.default_rng(seed)
    means = np.concatenate([np.full(97, 2.0), np.linspace(1, 15, 300)])
    X = rng.poisson(means, size=(300, len(genes))).astype(np.float32)
    X[:100, : len(s_genes)] += rng.poisson(20, size=(100, len(s_genes)))
    X[100:200, len(s_genes) : len(s_genes) + len(g2m_genes)] += rng.poisson(20, size=(100, len(g2m_genes)))
    return ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=genes))


def test_cell_cycle_phase_on_planted_cells() -> None:
    adata = _cell_cycle_adata()
    s_genes, g2m_genes = cell_cycle_genes()
    table, counts = cl.tl.probe_labels.cell_cycle_phase(adata, model_genes=s_genes[:5] + ["bg1"])
    assert (table["phase"].iloc[:100] == "S").mean() > 0.9
    assert (table["phase"].iloc[100:200] == "G2M").mean() > 0.9
    assert (table["phase"].iloc[200:] == "G1").mean() > 0.5
    assert counts == {
        "n_s_list": 43,
        "n_g2m_list": 54,
        "n_s_data": 43,
        "n_g2m_data": 54,
        "n_s_model": 5,
        "n_g2m_model": 0,
    }
    assert list(table["phase"].cat.categories) == ["G1", "S", "G2M"]


def test_cell_cycle_phase_without_genes() -> None:
    adata = ad.AnnData(sp.csr_matrix(np.ones((5, 3), np.float32)), var=pd.DataFrame(index=["X1", "X2", "X3"]))
    with pytest.raises(ValueError, match="the data have 0 of the 43 S and 0 of the 54 G2M genes"):
        cl.tl.probe_labels.cell_cycle_phase(adata)


def test_cell_cycle_phase_needs_the_minimum_of_genes_of_each_phase(capsys) -> None:
    adata = _cell_cycle_adata()
    s_genes, _ = cell_cycle_genes()
    n_min = cl.tl.probe_labels.MIN_CELL_CYCLE_GENES
    few = adata[:, [g for g in adata.var_names if g not in set(s_genes[n_min - 1 :])]].copy()
    message = (
        f"at least {n_min} S and {n_min} G2M genes \\(fewer make the phases noise\\); the data have {n_min - 1} of "
        "the 43 S and 54 of the 54 G2M genes of Tirosh et al. \\(2016\\), matched under organism human. Keep all genes"
    )
    with pytest.raises(ValueError, match=message):
        cl.tl.probe_labels.cell_cycle_phase(few)
    table, counts = cl.tl.probe_labels.cell_cycle_phase(few, model_genes=s_genes[:2], missing="skip")
    assert table["phase"].isna().all() and table["S_score"].isna().all()
    assert counts == {
        "n_s_list": 43, "n_g2m_list": 54, "n_s_data": n_min - 1, "n_g2m_data": 54, "n_s_model": 2, "n_g2m_model": 0,
    }  # fmt: skip
    assert "Skipped the cell-cycle phases: Cell-cycle scoring needs at least" in capsys.readouterr().out
    at_min = adata[:, [g for g in adata.var_names if g not in set(s_genes[n_min:])]].copy()
    assert cl.tl.probe_labels.cell_cycle_phase(at_min)[0]["phase"].notna().all()


def test_pbmc68k_reduced_skips_the_phase_task_with_the_reason(capsys) -> None:
    """The ci dataset (params/ci.yaml) has 1 S and 2 G2M genes: notebook 05 skips the phase probes, no crash."""
    adata = cl.datasets.load_dataset("pbmc68k_reduced")
    table, counts = cl.tl.probe_labels.cell_cycle_phase(adata, missing="skip")
    assert (counts["n_s_data"], counts["n_g2m_data"]) == (1, 2)
    features = {"neurons": np.random.default_rng(0).normal(size=(adata.n_obs, 4))}
    assert cl.tl.probes.probe_features(features, table["phase"], min_cells_per_class=10, progress=False) == {}
    printed = capsys.readouterr().out
    assert "the data have 1 of the 43 S and 2 of the 54 G2M genes" in printed
    assert "Skipped the probes: No cell has a label: there is nothing to probe." in printed


def test_cell_cycle_phase_of_mouse_symbols() -> None:
    adata = _cell_cycle_adata()
    human, _ = cl.tl.probe_labels.cell_cycle_phase(adata)
    adata.var_names = [g[:1].upper() + g[1:].lower() for g in adata.var_names]  # Mcm5, ..., Bg0
    mouse, counts = cl.tl.probe_labels.cell_cycle_phase(adata, organism="mouse")
    pd.testing.assert_frame_equal(mouse, human)
    assert (counts["n_s_data"], counts["n_g2m_data"]) == (43, 54)
    with pytest.raises(
        ValueError, match="the data have 0 of the 43 S .*organism human. .*set organism: mouse"
    ):
        cl.tl.probe_labels.cell_cycle_phase(adata)


def test_class_markers_find_planted_markers() -> None:
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(120, 30)).astype(np.float32)
    labels = np.repeat(["x", "y", "z"], 40)
    for i in range(3):
        X[labels == "xyz"[i], i] += 30
    adata = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    markers = cl.tl.probe_labels.class_markers(adata, labels, n_genes=3)
    assert [m[0] for m in (markers["x"], markers["y"], markers["z"])] == ["g0", "g1", "g2"]


def test_top_units_gene_overlap() -> None:
    X, y = _planted()
    r = cl.tl.probes.probe(
        X, y, seeds=[0, 1], min_cells_per_class=50, feature_names=[f"C{i}" for i in range(12)], progress=False
    )
    # the attribution covers only units 3 and 4: unit 3 -> M1, M2, Z1; unit 4 -> Z1, Z2
    attr = hand_attribution([[3, 0], [2, 0], [1, 2], [0, 1]], ["M1", "M2", "Z1", "Z2"], [3, 4])
    t = cl.tl.probes.top_units(
        r, n_units=1, attribution=attr, markers={"a": ["M1", "M2"], "b": ["M1"]}, n_genes=3
    )
    t = t.set_index("class")
    assert t.loc["a", "top_genes"] == "M1, M2, Z1" and t.loc["a", "n_markers"] == 2
    assert t.loc["b", "top_genes"] == "Z1, Z2" and t.loc["b", "n_markers"] == 0
    assert not t.loc["c", "attributed"] and np.isnan(t.loc["c", "n_markers"])


def test_plots_draw_the_results() -> None:
    X, y = _planted()
    r = cl.tl.probes.probe(X, y, seeds=[0, 1], min_cells_per_class=50, progress=False)
    axes = cl.pl.confusion({"concepts": r, "neurons": r})
    m = r.confusion.sum(axis=0).astype(float)
    np.testing.assert_allclose(axes[0].images[0].get_array(), m / m.sum(axis=1, keepdims=True))
    attr = hand_attribution(np.ones((2, 12)), ["A", "B"], list(range(12)))
    t = cl.tl.probes.top_units(r, n_units=2, attribution=attr, markers={"a": ["A"]})
    axes = cl.pl.top_units({"concepts": t, "neurons": t})
    np.testing.assert_allclose([p.get_width() for p in axes[1].patches], t["coef_mean"].to_numpy()[::-1])
    assert cl.tl.probes.probe_summary({"concepts": r}).loc["concepts", "n_seeds"] == 2


def test_run_directory_helpers(tmp_path, capsys) -> None:

    run = cl.runs.open_run(tmp_path / "run")
    assert cl.runs.steps.model_genes(run) is None
    assert cl.runs.steps.load_attribution(run, "concepts") is None
    assert "attribution_concepts.npz is missing" in capsys.readouterr().out
    X, y = _planted(n_per_class=60)
    r = cl.tl.probes.probe(X, y, seeds=[0, 1], min_cells_per_class=50, progress=False)
    summary = cl.runs.steps.save_probe_results(run, "task", {"concepts": r})
    assert summary.loc["concepts", "n_classes"] == 3
    confusion = run.read_table("probes", "task_confusion.csv", index_col=None)
    assert len(confusion) == 2 * 9 and confusion["count"].sum() == r.confusion.sum()
    assert len(run.read_table("probes", "task_per_seed.csv", index_col=None)) == 2


def test_describe_probes_reads_concepts_against_neurons_and_chance():
    summary = pd.DataFrame(
        {
            "accuracy_mean": [0.90, 0.95, 0.40, 0.38],
            "accuracy_std": [0.01, 0.01, 0.02, 0.02],
            "n_classes": [7, 7, 3, 3],
        },
        index=["cell type / concepts", "cell type / neurons", "phase / concepts", "phase / neurons"],
    )
    text = cl.runs.prose.describe_probes(summary).splitlines()
    assert text[0].startswith("cell type: concepts 0.900 ± 0.010, neurons 0.950 ± 0.010 (chance 0.143)")
    assert "not within 0.03 of neurons (-0.050)" in text[0]
    assert "chance 0.333" in text[1] and "are within 0.03 of neurons (+0.020)" in text[1]


def test_shown_units_are_the_units_top_units_shows() -> None:
    X, y = _planted()
    results = [cl.tl.probes.probe(X, y, seeds=[s], min_cells_per_class=50, progress=False) for s in (0, 1)]
    shown = cl.tl.probes.shown_units(results, n_units=2)
    want = sorted({u for r in results for u in cl.tl.probes.top_units(r, n_units=2)["unit"]})
    assert shown.tolist() == want
    assert cl.tl.probes.shown_units([], n_units=2).size == 0


def test_top_units_take_genes_from_the_first_attribution_that_covers_a_unit() -> None:
    X, y = _planted()
    r = cl.tl.probes.probe(X, y, seeds=[0, 1], min_cells_per_class=50, progress=False)
    # notebook 03 attributed unit 3 only; the rest of the shown units (4, 5) come from a second attribution
    from_03 = hand_attribution([[1.0], [0.5]], ["M1", "Z1"], [3])
    added = hand_attribution([[0.0, 2.0], [1.0, 0.0]], ["M1", "Z1"], [4, 5])
    t = cl.tl.probes.top_units(r, n_units=1, attribution=[None, from_03, added], n_genes=2).set_index("class")
    assert t["unit"].to_dict() == {"a": 3, "b": 4, "c": 5}
    assert t["top_genes"].to_dict() == {"a": "M1, Z1", "b": "Z1", "c": "M1"}
    assert t["attributed"].all()


def test_notebook_05_attributes_every_concept_it_shows_with_notebook_03s_settings(
    ci_run, monkeypatch
) -> None:
    tables = [ci_run.locate("probe_top_units", f"{task}_top_concepts") for task in ("cell_type", "phase")]
    shown = sorted({u for t in tables if t.exists() for u in pd.read_csv(t)["unit"]})
    assert shown
    from_03, added = (
        cl.runs.steps.load_attribution(ci_run, "concepts"),
        cl.tl.attribution.Attribution.load(ci_run.locate("probes", "attribution_concepts.npz")),
    )
    covered = set(from_03.units[from_03.attributed]) | set(added.units[added.attributed])
    assert set(shown) <= covered
    assert set(added.units) == set(shown) - set(from_03.units)
    # the same engine and settings as notebook 03 (params/ci.yaml: N_p = 3, N_c = 2), against a direct call
    assert added.prototypes.shape[1] == from_03.prototypes.shape[1] == 3
    assert added.counterfactuals.shape[2] == from_03.counterfactuals.shape[2] == 2
    inputs = interpret.load_inputs(ci_run, device="cpu")
    direct = cl.tl.attribution.attribute_concepts(
        inputs.encoder, inputs.sae, inputs.X, inputs.emb, concepts=added.units, n_prototypes=3,
        n_counterfactuals=2, device="cpu", progress=False,
    )  # fmt: skip
    np.testing.assert_allclose(added.scores, direct.scores, rtol=1e-4, atol=1e-6)
    # a rerun reuses the cached attribution: nothing is attributed again
    monkeypatch.setattr(
        cl.tl.attribution, "attribute_concepts", lambda *a, **k: pytest.fail("attributed again")
    )
    again = probes.attribute_shown(ci_run, inputs, shown, progress=False)[1]
    np.testing.assert_array_equal(again.scores, added.scores)


def test_not_attributed_leaves_out_the_units_an_attribution_tried() -> None:
    earlier = hand_attribution(np.ones((1, 3)), ["A"], [2, 7, 9])
    earlier.status.loc[9, "status"] = "skipped"  # tried: not tried again
    assert cl.tl.probes.not_attributed([9, 1, 7, 4], earlier).tolist() == [1, 4]
    assert cl.tl.probes.not_attributed([3, 1], None).tolist() == [1, 3]
