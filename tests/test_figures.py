"""Every figure of cl.pl is readable: no two labels overlap (issue 25), checked on a finished pipeline run in
matplotlib's default style and in corelib's theme (cl.pl.set_theme, the notebooks' style).

:data:`FIGURES` draws each public plot from a run directory as the notebooks do; ``scripts`` can call
:func:`draw_all` on another run (e.g. runs/demo) to count overlaps there.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import seaborn as sns
import yaml
from matplotlib.figure import Figure

import corelib as cl
from corelib.pl._overlap import overlapping_texts
from corelib.runs.layout import RunDir

#: Public names of cl.pl that are not plots.
NOT_PLOTS = {"set_theme"}


# ---------------------------------------------------------------------------------------- the check itself
def test_overlapping_tick_labels_are_found():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.bar([f"a long label {i}" for i in range(6)], range(6))
    pairs = overlapping_texts(fig)
    assert ("tick label 'a long label 0'", "tick label 'a long label 1'") in pairs
    assert all(a.startswith("tick label 'a long") and b.startswith("tick label 'a long") for a, b in pairs)


def test_texts_titles_and_legends_that_overlap_are_found():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.text(0.5, 0.5, "first", ha="center")
    ax.text(0.5, 0.5, "second", ha="center")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 0.98))  # over the title
    ax.set_title("a title")
    pairs = overlapping_texts(fig)
    assert ("text 'first'", "text 'second'") in pairs
    assert ("text 'a title'", "legend ['a line']") in pairs


def test_clean_figures_and_hidden_labels_pass():
    fig, axes = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
    axes[0].bar(["a", "b", "c"], [1, 2, 3], label="bars")
    axes[0].set(xlabel="x", ylabel="y", title="clean", ylim=(0, 4))
    axes[0].legend(loc="upper left")
    axes[0].text(1, 3.1, "n=3", ha="center", va="bottom")
    axes[1].text(0.5, 0.5, "", transform=axes[1].transAxes)  # empty
    axes[1].text(0.5, 0.5, "hidden", transform=axes[1].transAxes, visible=False)
    axes[1].text(0.5, 0.5, "shown", transform=axes[1].transAxes)
    axes[1].set_axis_off()  # its tick labels are not drawn
    assert overlapping_texts(fig) == []


@pytest.mark.parametrize(("width", "overlaps"), [(2.0, True), (4.8, False)])
def test_rotated_labels_are_measured_by_their_rotated_box(width, overlaps):
    """At 30 degrees the labels' axis-aligned extents overlap at both widths; their letters only at 2 inches."""
    fig, ax = plt.subplots(figsize=(width, 3), layout="constrained")
    ax.bar(range(6), range(6))
    names = [f"c{100 * 2**i}_k{2**i}_s0" for i in range(6)]
    ax.set_xticks(range(6), names, rotation=30, ha="right", rotation_mode="anchor")
    fig.canvas.draw()
    extents = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert all(a.overlaps(b) for a, b in zip(extents, extents[1:], strict=False))
    assert bool(overlapping_texts(fig)) == overlaps


def test_tick_labels_outside_the_view_do_not_count():
    fig, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.plot([0, 10], [0, 1])
    ax.set_xticks([0, 5, 10, 10.05, 20], ["0", "5", "10", "10.05", "far"])  # 10 and 10.05 overlap
    ax.set_xlim(-1, 11)
    assert overlapping_texts(fig) == [("tick label '10'", "tick label '10.05'")]
    ax.set_xlim(-1, 10.02)
    assert overlapping_texts(fig) == []


# ------------------------------------------------------------------------------- every plot on a real run
def _card(run: RunDir) -> cl.tl.cards.CardData:
    data = cl.explorer.load_run_data(run, ["cell_type"])
    first = cl.explorer.interesting_order(cl.explorer.unit_summary(data, "concept"))[0]
    return cl.explorer.concept_card(data, first, "concept", n_top=20)


def _gsea(run: RunDir, key: str, kind: str | None = None) -> pd.DataFrame:
    return run.read_table(key, kind, index_col=None)


def _probes(run: RunDir) -> dict[str, cl.tl.probes.ProbeResult]:
    adata = run.read_h5ad("embedded")
    emb = adata.obsm[adata.uns["embed"]["key"]]
    selected = cl.runs.steps.selected_sae(run, emb)
    codes = cl.tl.sae.encode(cl.tl.sae.TopKSAE.load(selected["path"], d_in=emb.shape[1]), emb)
    features = {"concepts": codes, "neurons": emb}
    return cl.tl.probes.probe_features(features, adata.obs["cell_type"], seeds=[0, 1], min_cells_per_class=20)


def _top_units(run: RunDir) -> dict[str, pd.DataFrame]:
    return {
        kind: run.read_table("probe_top_units", f"cell_type_top_{kind}", index_col=None).fillna(
            {"top_genes": "", "marker_genes": ""}  # a unit without attributed genes: empty in the CSV
        )
        for kind in ("concepts", "neurons")
    }


def _answers(run: RunDir) -> pd.DataFrame:
    """Two raters' answers to a study of the run's units (a ci run has no expert answers)."""
    study = cl.explorer.make_study(cl.explorer.load_run_data(run), 4, 4, seed=0)
    rows = [
        {"rater": rater, "kind": kind, "unit": unit, "interpretable": ("yes", "partly", "no")[(i + j) % 3]}
        for j, rater in enumerate(("ann", "bob"))
        for i, (kind, unit) in enumerate(study.key.values())
    ]
    return pd.DataFrame(rows)


def _sweep(run: RunDir) -> pd.DataFrame:
    return run.read_table("sae_sweep")


#: One recipe per public plot: the run directory in, the drawn figure out (inputs read as the notebooks do).
FIGURES: dict[str, Callable[[RunDir], Figure]] = {
    "r2_vs_concepts": lambda run: cl.pl.r2_vs_concepts(_sweep(run)).figure,
    "r2_vs_k": lambda run: cl.pl.r2_vs_k(_sweep(run), min_r2=0.9, selected=_sweep(run).index[0]).figure,
    "dead_concepts": lambda run: cl.pl.dead_concepts(_sweep(run)).figure,
    "training_curves": lambda run: (
        cl.pl.training_curves(cl.runs.steps.load_histories(run, _sweep(run).index))[0].figure
    ),
    "call_shares": lambda run: (
        cl.pl.call_shares(
            cl.tl.concepts.summarize_calls(
                {k: run.read_table(f"metadata_{k}") for k in ("concepts", "neurons")}
            )
        ).figure
    ),
    "important_genes": lambda run: (
        cl.pl.important_genes(
            cl.tl.attribution.important_gene_shares(
                run.read_table("important_genes", index_col=None).query("kind == 'concept'").set_index("unit")
            )
        ).figure
    ),
    "deletion_curves": lambda run: (
        cl.pl.deletion_curves(run.read_table("deletion_curves", index_col=None)).figure
    ),
    "annotation_shares": lambda run: (
        cl.pl.annotation_shares(
            {k: _gsea(run, f"gsea_{k}") for k in ("concepts", "neurons")},
            null={k: _gsea(run, "gsea_null", k) for k in ("concepts", "neurons")},
        ).figure
    ),
    "top_terms": lambda run: (
        cl.pl.top_terms(
            _gsea(run, "gsea_terms", "concepts"), _gsea(run, "gsea_terms", "concepts")["unit"].iloc[0]
        ).figure
    ),
    "cross_dataset_r2": lambda run: (
        cl.pl.cross_dataset_r2(run.read_table("stability", "cross_r2.csv", index_col=None)).figure
    ),
    "matched_cosines": lambda run: (
        cl.pl.matched_cosines(
            {"A vs B": run.read_table("cross_matching", index_col=None)["cosine"].to_numpy()},
            chance=json.loads(run.path("cross_info").read_text())["matching"]["chance_mean_cosine"],
        ).figure
    ),
    "stability": lambda run: (
        cl.pl.stability(run.read_table("seeds_baselines", index_col=None), sae_name="c500_k32_s0").figure
    ),
    "batch_umaps": lambda run: cl.pl.batch_umaps(run.read_table("batch_umap", index_col=None))[0].figure,
    "confusion": lambda run: cl.pl.confusion(_probes(run))[0].figure,
    "top_units": lambda run: cl.pl.top_units(_top_units(run))[0].figure,
    "gene_bars": lambda run: cl.pl.gene_bars(_card(run)).figure,
    "umap": lambda run: cl.pl.umap(_card(run)).figure,
    "histogram": lambda run: cl.pl.histogram(_card(run)).figure,
    "composition": lambda run: cl.pl.composition(_card(run), "cell_type").figure,
    "card": lambda run: cl.pl.card(_card(run))[0].figure,
    "steering": lambda run: cl.pl.steering(_card(run).steering, attributed=_card(run).genes["gene"]).figure,
    "interpretability": lambda run: (
        cl.pl.interpretability(cl.explorer.interpretability_table(_answers(run))).figure
    ),
    "claims_forest": lambda run: cl.pl.claims_forest(run.read_table("claims")).figure,
}


def draw_all(run: RunDir, *, theme: bool) -> dict[str, list[tuple[str, str]]]:
    """Each plot of :data:`FIGURES` drawn from ``run`` (in corelib's theme or matplotlib's default style) ->
    its overlapping labels."""
    found = {}
    for name, draw in FIGURES.items():
        with mpl.rc_context():
            if theme:
                cl.pl.set_theme()
            fig = draw(run)
            found[name] = overlapping_texts(fig)
            plt.close(fig)
    return found


def test_every_plot_has_a_recipe():
    plots = set(cl.pl.__all__) - NOT_PLOTS
    assert plots <= set(FIGURES), f"draw these in FIGURES: {sorted(plots - set(FIGURES))}"
    assert set(FIGURES) <= plots, f"not public plots: {sorted(set(FIGURES) - plots)}"


@pytest.mark.parametrize("theme", [False, True], ids=["matplotlib", "corelib-theme"])
def test_no_plot_of_a_run_has_overlapping_labels(ci_run, theme):
    found = draw_all(ci_run, theme=theme)
    assert {name: pairs for name, pairs in found.items() if pairs} == {}


def test_set_theme_is_seaborns_and_plots_leave_the_style_alone():
    with mpl.rc_context():
        mpl.rcdefaults()
        before = dict(mpl.rcParams)
        cl.pl.claims_forest(
            pd.DataFrame(
                {
                    "value": [0.5],
                    "std": [0.1],
                    "comparison": ["x"],
                    "comparison_value": [0.4],
                    "comparison_std": [0.0],
                    "null": ["y"],
                    "null_value": [0.1],
                    "null_std": [0.05],
                    "verdict": ["holds"],
                },
                index=["one"],
            )  # fmt: skip
        )
        assert dict(mpl.rcParams) == before
        cl.pl.set_theme()
        assert not mpl.rcParams["axes.spines.top"] and mpl.rcParams["axes.grid"] is False
        assert (
            mpl.colors.to_hex(mpl.rcParams["axes.prop_cycle"].by_key()["color"][0])
            == sns.color_palette("colorblind").as_hex()[0]
        )
    assert mpl.rcParams["axes.spines.top"]  # rc_context restored the defaults


def test_claims_forest_draws_one_row_per_claim():
    claims = pd.DataFrame(
        {
            "value": [0.9, 0.2, np.nan],
            "std": [0.01, 0.05, np.nan],
            "comparison": ["threshold", "neurons", "random encoder"],
            "comparison_value": [0.95, 0.1, np.nan],
            "comparison_std": [0.0, 0.02, np.nan],
            "null": ["random encoder", "permuted genes", "permuted genes"],
            "null_value": [0.96, 0.0, np.nan],
            "null_std": [0.004, 0.0, np.nan],
            "verdict": ["fails", "holds", "not measured"],
        },
        index=pd.Index(["reconstruction", "gsea", "planted"], name="claim"),
    )
    ax = cl.pl.claims_forest(claims)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["reconstruction\n(fails)", "gsea\n(holds)", "planted\n(not measured)"]
    rows = dict(zip(labels, ax.get_yticks(), strict=True))
    # each arm is an errorbar container: its marker at (mean, row), its bar from mean - std to mean + std
    points = [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0], c) for c in ax.containers]
    assert len(points) == 3 * 2  # the claim not measured draws no marker
    for name, r in claims.iloc[:2].iterrows():
        row = rows[f"{name}\n({r['verdict']})"]
        near = sorted((p for p in points if abs(p[1] - row) < 0.4), key=lambda p: -p[1])
        for (x, _, container), (mean, std) in zip(
            near,
            [("value", "std"), ("comparison_value", "comparison_std"), ("null_value", "null_std")],
            strict=True,
        ):
            assert x == pytest.approx(r[mean])
            segment = container.lines[2][0].get_segments()[0]
            assert [segment[0][0], segment[1][0]] == pytest.approx([r[mean] - r[std], r[mean] + r[std]])
    assert any("not measured" == t.get_text() for t in ax.texts)
    assert overlapping_texts(ax.figure) == []


def test_stability_bars_carry_their_chance_level():
    """Notebook 04's bars had no chance mark: each bar's mark is its row's chance_mean_cosine."""
    table = pd.DataFrame(
        {
            "method": ["SAE", "SAE", "PCA"],
            "mode": ["seeds", "halves", "seeds"],
            "mean_cosine_mean": [0.44, 0.42, 1.0],
            "mean_cosine_std": [0.01, 0.01, 0.0],
            "frac_ge_0.9_mean": [0.0, 0.0, 1.0],
            "frac_ge_0.9_std": [0.0, 0.0, 0.0],
            "chance_mean_cosine": [0.40, 0.39, 0.33],
        }
    )
    ax = cl.pl.stability(table)
    (marks,) = [c for c in ax.collections if c.get_label() == "chance (random directions)"]
    bars = {round(p.get_x() + p.get_width() / 2, 6): p for p in ax.patches if np.isfinite(p.get_height())}
    found = sorted(
        (round(s[:, 0].mean(), 6), s[0, 1])
        for s in marks.get_segments()
        if len(s) == 2 and np.isfinite(s).all()
    )
    assert [x for x, _ in found] == sorted(bars)  # one mark per drawn bar, centred on it
    heights = {round(bars[x].get_height(), 6): y for x, y in found}
    assert heights == {0.42: 0.39, 0.44: 0.40, 1.0: 0.33}
    assert not [
        c for c in cl.pl.stability(table, "frac_ge_0.9").collections if c.get_label().startswith("chance")
    ]
    assert (
        ax.get_title() == "" and "c500_k32_s0" in cl.pl.stability(table, sae_name="c500_k32_s0").get_title()
    )
    plt.close("all")


@pytest.mark.parametrize("theme", [False, True], ids=["matplotlib", "corelib-theme"])
def test_notebook_01s_scanpy_umap_has_no_overlapping_labels(ci_run, theme):
    """Notebook 01 draws scanpy's own UMAP figure (one panel per metadata key, legends on the right)."""
    adata = ci_run.read_h5ad("embedded")
    keys = yaml.safe_load(ci_run.path("params").read_text())["metadata_keys"]
    shown = cl.tl.neighbors.umap_cells(adata, use_rep=adata.uns["embed"]["key"], stratify_key=keys[0])
    with mpl.rc_context():
        if theme:
            cl.pl.set_theme()
        fig = sc.pl.umap(shown, color=keys, ncols=2, wspace=0.4, frameon=False, show=False, return_fig=True)
        assert len(fig.axes) >= len(keys)
        assert overlapping_texts(fig) == []
        plt.close(fig)
