"""Tests of corelib.tl.enrichment and corelib.tl.annotation: attribution-based GSEA on the real pbmc3k genes
and GO BP 2023 (offline), and the calibration of its annotation.

References: gseapy.prerank (multilevel and permutation methods) on the same rankings, a brute-force
running-sum enrichment score, synthetic score vectors with a planted GO set (known answer), statsmodels'
Benjamini-Hochberg, and synthetic sets planted on top of units or shuffled away (gene-label permutation null).
"""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import gseapy
import matplotlib
import numpy as np
import pandas as pd
import pytest

import corelib as cl

matplotlib.use("Agg")

GENES_PATH = Path(__file__).resolve().parents[1] / "corelib" / "datasets" / "pbmc3k" / "genes.txt.gz"
PLANTED = "Response To Type II Interferon (GO:0034341)"
PERMUTATIONS = 200
#: Sets of 10 genes drawn among the top 120 / 50 of 200 ranked genes: p ~ 4e-3 and 2e-4.
SPREADS = {"moderate": np.arange(120), "strong": np.arange(50)}


@pytest.fixture(scope="module")
def genes() -> list[str]:
    with gzip.open(GENES_PATH, "rt") as fh:
        return [line.strip() for line in fh if line.strip()]


@pytest.fixture(scope="module")
def go_sets(genes) -> dict[str, list[str]]:
    return cl.tl.enrichment.load_gene_sets(cl.tl.enrichment.GO_BP, genes=genes)


def _sparse_scores(genes: list[str], rng: np.random.Generator, n_nonzero: int = 60) -> np.ndarray:
    """Attribution-like scores: a few positive genes, many exact zeros, a few negatives."""
    s = np.zeros(len(genes))
    idx = rng.choice(len(genes), n_nonzero, replace=False)
    s[idx] = rng.exponential(0.1, n_nonzero)
    s[idx[:10]] *= -1
    return s


@pytest.fixture(scope="module")
def scores(genes, go_sets) -> pd.DataFrame:
    """Units: 0 planted GO set on top, 1-2 random sparse, 3 Gaussian, 4 zeros, 5 NaN, 6 negative only."""
    rng = np.random.default_rng(0)
    cols = {}
    planted = _sparse_scores(genes, rng)
    planted[[genes.index(g) for g in go_sets[PLANTED]]] = 1.0 + rng.random(len(go_sets[PLANTED]))
    cols[0] = planted
    cols[1] = _sparse_scores(genes, rng)
    cols[2] = _sparse_scores(genes, rng)
    cols[3] = rng.normal(size=len(genes))
    cols[4] = np.zeros(len(genes))
    cols[5] = np.full(len(genes), np.nan)
    cols[6] = -np.abs(_sparse_scores(genes, rng))
    return pd.DataFrame(cols, index=genes)


@pytest.fixture(scope="module")
def result(scores, go_sets) -> cl.tl.enrichment.GseaResult:
    """gsea() on all 259 GO sets, without the Gaussian unit 3."""
    return cl.tl.enrichment.gsea(
        scores.drop(columns=3), go_sets, permutations=PERMUTATIONS, seed=0, n_jobs=1, progress=False
    )


@pytest.fixture(scope="module")
def few_sets(go_sets) -> dict[str, list[str]]:
    """Every 5th GO set and the planted one: for the slower reference comparisons."""
    return {k: go_sets[k] for k in list(go_sets)[::5]} | {PLANTED: go_sets[PLANTED]}


def _gseapy_multilevel(ranking: pd.Series, sets: dict, seed: int = 0) -> pd.DataFrame:
    res = gseapy.prerank(
        ranking, sets, method="multilevel", permutation_num=PERMUTATIONS, seed=seed, threads=1,
        min_size=cl.tl.enrichment.MIN_SIZE, max_size=cl.tl.enrichment.MAX_SIZE, ascending=None, no_plot=True, eps=cl.tl.enrichment.MIN_PVALUE,
    )  # fmt: skip
    return res.res2d.set_index("Term")


def _label(table: pd.DataFrame, p: str, nes: str) -> str:
    """The labelling rule applied to a gseapy result table (ES > 0, smallest p, then largest NES, name)."""
    pos = table[(table["ES"] > 0) & table[p].notna()]
    pos = pos.assign(_term=pos.index, _p=pos[p].astype(float), _nes=pos[nes].astype(float))
    return pos.sort_values(["_p", "_nes", "_term"], ascending=[True, False, True]).index[0]


def _running_sum_es(ranking: pd.Series, members: list[str]) -> float:
    """Brute-force weighted (p=1) GSEA enrichment score: max deviation of the running sum from zero."""
    w = np.abs(ranking.to_numpy())
    hit = ranking.index.isin(members)
    walk = np.cumsum(np.where(hit, w / w[hit].sum(), -1.0 / (~hit).sum()))
    return float(walk[np.argmax(np.abs(walk))])


# --- gene sets ------------------------------------------------------------------------------------------
def test_go_bp_restricted_to_universe(genes, go_sets):
    assert cl.tl.enrichment.GO_BP in cl.tl.enrichment.available_libraries()
    assert len(go_sets) == 259  # of 5,407 GO BP 2023 terms, 15..500 genes among the 2,000 pbmc3k genes
    universe = set(genes)
    assert all(
        set(v) <= universe and cl.tl.enrichment.MIN_SIZE <= len(v) <= cl.tl.enrichment.MAX_SIZE
        for v in go_sets.values()
    )
    assert len(cl.tl.enrichment.load_gene_sets(genes=genes, min_size=5)) == 1254
    assert len(cl.tl.enrichment.load_gene_sets()) == 5407  # no universe: every term, unfiltered


def test_gene_sets_from_gmt_and_dict(tmp_path, genes):
    gmt = tmp_path / "tiny.gmt"
    gmt.write_text("SET_A\tdesc\tCD79B\tCD79A\tnot_a_gene\nSET_B\t\tLYZ,1.0\tS100A9\n")
    assert cl.tl.enrichment.load_gene_sets(gmt, genes=genes, min_size=2) == {
        "SET_A": ["CD79A", "CD79B"],
        "SET_B": ["LYZ", "S100A9"],
    }
    # a file read once per process is read again when it changes
    gmt.write_text("SET_C\tdesc\tCD79B\tLYZ\tS100A9\n")
    os.utime(gmt, ns=(1, 1))
    assert cl.tl.enrichment.load_gene_sets(gmt, genes=genes, min_size=2) == {
        "SET_C": ["CD79B", "LYZ", "S100A9"]
    }
    with pytest.warns(
        UserWarning, match=r"No gene set of the gene set dict has 3\.\.500 genes .*2 of them are in"
    ):
        assert cl.tl.enrichment.load_gene_sets({"X": ["CD79A", "CD79B"]}, genes=genes, min_size=3) == {}
    with pytest.warns(
        UserWarning, match="GO_Biological_Process_2023 has 15..500 genes among the 3 genes given"
    ):
        assert cl.tl.enrichment.load_gene_sets(genes=["Cd3e", "Xist1", "Gm123"]) == {}
    # human: Enrichr upper-cases mixed-case human symbols, matched case-insensitively in the universe's spelling
    assert cl.tl.enrichment.load_gene_sets(
        {"T": ["C1ORF162", "CD3D"]}, genes=["C1orf162", "CD3D", "LYZ"], min_size=2
    ) == {"T": ["C1orf162", "CD3D"]}


def test_gene_sets_follow_the_organism(capsys):
    from corelib.datasets._organism import note_mapping

    note_mapping.cache_clear()
    mouse, human = ["Cd3e", "Cd3d", "Lyz2"], ["CD3E", "CD3D", "LYZ"]
    sets = {"T": ["CD3E", "CD3D"]}
    # mouse: the human symbols mapped by case (CD3E -> Cd3e), said once
    assert cl.tl.enrichment.load_gene_sets(sets, genes=mouse, min_size=2, organism="mouse") == {
        "T": ["Cd3d", "Cd3e"]
    }
    assert cl.tl.enrichment.load_gene_sets(sets, organism="mouse") == {"T": ["Cd3d", "Cd3e"]}
    assert capsys.readouterr().out.count("the gene set dict are mapped to mouse symbols by case") == 1
    # the wrong setting is never silent: mouse-like genes under human warn, human genes under mouse find nothing
    with pytest.warns(
        UserWarning, match=r"100% of the 3 genes are written like mouse symbols .*set organism: mouse"
    ):
        assert cl.tl.enrichment.load_gene_sets(sets, genes=mouse, min_size=2) == {"T": ["Cd3d", "Cd3e"]}
    with pytest.warns(
        UserWarning,
        match=r"No gene set of the gene set dict .* organism setting is mouse\. .*written like human symbols "
        r"\(e\.g\. CD3E, CD3D, LYZ\) but organism is mouse: set organism: human\.",
    ):
        assert cl.tl.enrichment.load_gene_sets(sets, genes=human, min_size=2, organism="mouse") == {}
    with pytest.raises(ValueError, match="organism must be one of human, mouse"):
        cl.tl.enrichment.load_gene_sets(sets, organism="Human")


def test_gsea_and_ora_of_mouse_genes_equal_the_human_ones(scores, few_sets):
    """The same scores on genes written as mouse symbols, with organism mouse, give the same labels."""
    to_mouse = {g: g[:1].upper() + g[1:].lower() for g in scores.index}
    mouse_scores = scores[[0, 1]].rename(index=to_mouse)
    options = {"permutations": PERMUTATIONS, "n_jobs": 1, "progress": False}
    human = cl.tl.enrichment.gsea(scores[[0, 1]], few_sets, **options).units
    mouse = cl.tl.enrichment.gsea(mouse_scores, few_sets, organism="mouse", **options).units
    pd.testing.assert_frame_equal(mouse.drop(columns="lead_genes"), human.drop(columns="lead_genes"))
    assert mouse.loc[0, "term"] == PLANTED
    ora_human = cl.tl.enrichment.ora(scores[[0, 1]], few_sets)[0]
    ora_mouse = cl.tl.enrichment.ora(mouse_scores, few_sets, organism="mouse")[0]
    pd.testing.assert_frame_equal(ora_mouse.drop(columns="lead_genes"), ora_human.drop(columns="lead_genes"))


def test_unknown_library_lists_the_available_ones():
    with pytest.raises(ValueError, match="GO_Biological_Process_2023"):
        cl.tl.enrichment.load_gene_sets("GO_Biological_Process_1999")
    with pytest.raises(TypeError, match="library must be"):
        cl.tl.enrichment.load_gene_sets(42)


# --- one ranking ----------------------------------------------------------------------------------------
def test_rank_genes_ties_and_floor():
    s = pd.Series([0.0, 2.0, 0.0, -1.0, 0.0, 1e-9], index=list("abcdef"))
    r = cl.tl.enrichment.rank_genes(s, seed=0)
    assert list(r.index[:1]) == ["b"] and r.index[-1] == "d"
    floor = cl.tl.enrichment.WEIGHT_FLOOR * 2.0
    assert np.allclose(r.iloc[1:-1], floor, rtol=1e-9)  # zeros and the tiny score: floored, between + and -
    # No two weights are equal, so a tool that re-sorts the ranking keeps the seeded order.
    assert np.all(np.diff(r.to_numpy()) < 0)
    assert r.sort_values(ascending=False, kind="quicksort").index.equals(r.index)
    assert r.index.equals(cl.tl.enrichment.rank_genes(s, seed=0).index)  # deterministic under the seed
    orders = {tuple(cl.tl.enrichment.rank_genes(s, seed=k).index) for k in range(20)}
    assert len(orders) > 1  # ties are broken by the seed, not by name


def test_prerank_equals_gseapy_multilevel(scores, few_sets):
    """Our direct fgsea call gives gseapy.prerank(method="multilevel")'s ES, NES, p-values and label."""
    for unit in [0, 1, 3]:
        ranking = cl.tl.enrichment.rank_genes(scores[unit], seed=0)
        ours = cl.tl.enrichment.prerank(ranking, few_sets, permutations=PERMUTATIONS, seed=0).set_index(
            "term"
        )
        ref = _gseapy_multilevel(ranking, few_sets)
        assert set(ours.index) == set(ref.index)
        ref = ref.loc[ours.index]
        np.testing.assert_allclose(ours["es"], ref["ES"].astype(float), rtol=1e-6)
        np.testing.assert_allclose(ours["nes"], ref["NES"].astype(float), rtol=1e-6)
        np.testing.assert_allclose(ours["pval"], ref["NOM p-val"].astype(float), rtol=1e-6)
        assert ours.index[0] == _label(ref, "NOM p-val", "NES")


def test_gsea_labels_equal_gseapy_on_go_bp(scores, go_sets, result):
    """The labels (and top-10 tables) of gsea() on all 259 GO sets equal a direct gseapy.prerank call's."""
    for unit in [0, 1]:
        ref = _gseapy_multilevel(cl.tl.enrichment.rank_genes(scores[unit], seed=0), go_sets)
        assert result.units.loc[unit, "term"] == _label(ref, "NOM p-val", "NES")
        top = result.terms[result.terms["unit"] == unit].set_index("term")
        np.testing.assert_allclose(top["nes"], ref.loc[top.index, "NES"].astype(float), rtol=1e-6)
        np.testing.assert_allclose(top["pval"], ref.loc[top.index, "NOM p-val"].astype(float), rtol=1e-6)


def test_enrichment_score_matches_brute_force(scores, few_sets, go_sets, result):
    ranking = cl.tl.enrichment.rank_genes(scores[3], seed=0)
    table = cl.tl.enrichment.prerank(ranking, few_sets, permutations=PERMUTATIONS, seed=0).set_index("term")
    for term in table.index[:5].tolist() + table.index[-5:].tolist():
        assert table.loc[term, "es"] == pytest.approx(_running_sum_es(ranking, few_sets[term]), abs=1e-9)
    # Leading edge of the planted unit: its planted genes, every one ranked at the top.
    lead = set(result.units.loc[0, "lead_genes"].split(";"))
    assert lead == set(go_sets[PLANTED])


def test_leading_edges_match_the_running_sum_maximum(scores, go_sets):
    """Every positively enriched set's leading edge: its genes ranked at or before the brute-force walk's peak."""
    for unit in [1, 3]:
        ranking = cl.tl.enrichment.rank_genes(scores[unit], seed=0)
        table = cl.tl.enrichment.prerank(ranking, go_sets, permutations=PERMUTATIONS, seed=0)
        w = np.abs(ranking.to_numpy())
        assert (table["lead_genes"] == "").equals(table["es"] <= 0)
        for term, lead in zip(table["term"], table["lead_genes"], strict=True):
            hit = ranking.index.isin(go_sets[term])
            peak = int(np.argmax(np.cumsum(np.where(hit, w / w[hit].sum(), -1.0 / (~hit).sum())))) + 1
            if lead:
                assert lead.split(";") == ranking.index[:peak][hit[:peak]].tolist(), term


def test_prerank_agrees_with_pyfgsea(scores, go_sets):
    """pyfgsea (an independent Rust port of fgsea multilevel) on the same ranking: same ES, close p, same label."""
    pyfgsea = pytest.importorskip("pyfgsea")
    labels = {}
    for unit in [0, 3]:
        ranking = cl.tl.enrichment.rank_genes(scores[unit], seed=0)
        ours = cl.tl.enrichment.prerank(ranking, go_sets, permutations=1000, seed=0).set_index("term")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on tied or unbalanced scores
            ref = pyfgsea.run_gsea(
                ranking, go_sets, min_size=cl.tl.enrichment.MIN_SIZE, max_size=cl.tl.enrichment.MAX_SIZE,
                seed=1, nperm_nes=1000, eps=cl.tl.enrichment.MIN_PVALUE,
            ).set_index("Pathway").loc[ours.index]  # fmt: skip
        np.testing.assert_allclose(ours["es"], ref["ES"], rtol=1e-4)  # ours is exact (brute force, above)
        both = ours["pval"].notna() & ref["P-value"].notna()
        log_ratio = np.abs(np.log10(ours.loc[both, "pval"] / ref.loc[both, "P-value"]))
        assert np.median(log_ratio) < 0.05 and both.mean() > 0.95  # Monte-Carlo noise only
        labels[unit] = ours.index[0], _label(ref, "P-value", "NES")
    assert labels[0] == (PLANTED, PLANTED)


def _null_es(weights: np.ndarray, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Brute-force null: ES of ``n`` uniformly random gene sets of ``size`` genes (vectorised running sums)."""
    out = []
    for _ in range(n // 10_000):
        hit = np.zeros((10_000, len(weights)), dtype=bool)
        np.put_along_axis(hit, np.argsort(rng.random(hit.shape), axis=1)[:, :size], True, axis=1)
        w = np.where(hit, np.abs(weights), 0.0)
        walk = np.cumsum(w / w.sum(axis=1, keepdims=True) - ~hit / (len(weights) - size), axis=1)
        top, bottom = walk.max(axis=1), walk.min(axis=1)
        out.append(np.where(top > -bottom, top, bottom))
    return np.concatenate(out)


def test_multilevel_pvalues_match_the_exact_null():
    """fgsea p-values equal P(ES_null >= ES | ES_null > 0) over random same-size sets (brute force, tiny case)."""
    rng = np.random.default_rng(1)
    n_genes, size = 200, 10
    ranking = pd.Series(np.sort(rng.normal(size=n_genes))[::-1], index=[f"G{i}" for i in range(n_genes)])
    sets = {name: [f"G{i}" for i in rng.choice(top, size, replace=False)] for name, top in SPREADS.items()}
    table = cl.tl.enrichment.prerank(ranking, sets, permutations=1000, seed=0).set_index("term")
    null = _null_es(ranking.to_numpy(), size, 300_000, rng)
    null = null[null > 0]
    for term in sets:
        es, pval = table.loc[term, "es"], table.loc[term, "pval"]
        assert es == pytest.approx(_running_sum_es(ranking, sets[term]), abs=1e-9)
        hits = (null >= es).sum()
        assert hits >= 20  # the reference resolves this p-value (precondition)
        assert pval == pytest.approx(hits / len(null), rel=0.35), term


# --- every unit -----------------------------------------------------------------------------------------
def test_planted_set_is_the_strong_label(result, go_sets):
    assert sum(set(v) == set(go_sets[PLANTED]) for v in go_sets.values()) == 1  # precondition: unique content
    row = result.units.loc[0]
    assert row["term"] == PLANTED
    assert (
        row["annotation"] == "strong" and row["pval"] == cl.tl.enrichment.MIN_PVALUE
    )  # far below 1 / permutations
    assert row["n_sets_tested"] == len(go_sets) and row["reason"] == ""


def test_random_scores_get_no_strong_annotation(result, scores, go_sets):
    gauss = cl.tl.enrichment.gsea(
        scores[[3]], go_sets, permutations=PERMUTATIONS, n_jobs=1, progress=False
    ).units
    units = pd.concat([result.units.loc[[1, 2]], gauss])
    assert not (units["annotation"] == "strong").any()
    assert (units["term"] != "").all()


def test_skip_reasons(result):
    reasons = result.units["reason"]
    assert reasons[4] == "all attribution scores are zero"
    assert reasons[5].startswith("not attributed")
    assert reasons[6] == "no positive attribution score"
    skipped = result.units.loc[[4, 5, 6]]
    assert (skipped["term"] == "").all() and (skipped["annotation"] == "none").all()
    assert set(result.terms["unit"]) == {0, 1, 2}
    assert (result.terms.groupby("unit")["rank"].min() == 1).all()
    top = result.terms[result.terms["rank"] == 1].set_index("unit")["term"]
    assert (top == result.units.loc[top.index, "term"]).all()


def test_no_set_survives_the_size_filter(scores, go_sets):
    out = cl.tl.enrichment.gsea(scores[[0, 4]], go_sets, min_size=400, max_size=500, n_jobs=1, progress=False)
    assert out.units.loc[0, "reason"].startswith("no gene set has 400..500 genes")
    assert out.units.loc[4, "reason"] == "all attribution scores are zero"
    assert out.terms.empty and (out.units["term"] == "").all()


def test_weight_floor_prevents_fgsea_panic(scores, few_sets, monkeypatch):
    """Without the floor, fgsea panics on sparse scores; the unit then gets a reason, the others still run."""
    monkeypatch.setattr(cl.tl.enrichment._ranking, "WEIGHT_FLOOR", 0.0)
    out = cl.tl.enrichment.gsea(
        scores[[1, 3]], few_sets, permutations=PERMUTATIONS, n_jobs=1, progress=False
    ).units
    assert out.loc[1, "reason"].startswith("fgsea failed: PanicException")
    assert out.loc[3, "reason"] == "" and out.loc[3, "term"] != ""  # Gaussian scores: no zeros, no panic


def test_labels_agree_with_gseapy_permutation(scores, go_sets):
    """The planted label is also the permutation method's label (on a subset of sets, to stay fast)."""
    subset = {k: go_sets[k] for k in list(go_sets)[::8]} | {PLANTED: go_sets[PLANTED]}
    ranking = cl.tl.enrichment.rank_genes(scores[0], seed=0)
    ref = gseapy.prerank(
        ranking, subset, permutation_num=1000, seed=0, threads=1, min_size=cl.tl.enrichment.MIN_SIZE,
        max_size=cl.tl.enrichment.MAX_SIZE, ascending=None, no_plot=True,
    ).res2d.set_index("Term")  # fmt: skip
    assert _label(ref, "NOM p-val", "NES") == PLANTED
    ours = cl.tl.enrichment.gsea(
        scores[[0]], subset, permutations=PERMUTATIONS, n_jobs=1, progress=False
    ).units
    assert ours.loc[0, "term"] == PLANTED


def test_parallel_equals_serial(scores, few_sets):
    kw = dict(permutations=PERMUTATIONS, seed=3, progress=False)
    serial = cl.tl.enrichment.gsea(scores[[1, 3, 4]], few_sets, n_jobs=1, **kw)
    parallel = cl.tl.enrichment.gsea(scores[[1, 3, 4]], few_sets, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(serial.units, parallel.units)
    pd.testing.assert_frame_equal(serial.terms, parallel.terms)
    alone = cl.tl.enrichment.gsea(
        scores[[3]], few_sets, n_jobs=1, **kw
    )  # a unit's result does not depend on the batch
    pd.testing.assert_series_equal(alone.units.loc[3], serial.units.loc[3])


def test_bad_input(scores, go_sets):
    with pytest.raises(TypeError, match="DataFrame"):
        cl.tl.enrichment.gsea(scores.to_numpy(), go_sets)
    partial = scores[[0]].copy()
    partial.iloc[:5, 0] = np.nan
    with pytest.raises(ValueError, match="fillna"):
        cl.tl.enrichment.gsea(partial, go_sets)
    dup = scores[[0]].copy()
    dup.index = [dup.index[0]] * len(dup)
    with pytest.raises(ValueError, match="Duplicate gene names"):
        cl.tl.enrichment.gsea(dup, go_sets)


# --- plots ----------------------------------------------------------------------------------------------
def test_plots(result):
    ax = cl.pl.annotation_shares({"concepts": result.units, "neurons": result.units.iloc[2:]})
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 6 and sum(heights) == pytest.approx(2.0)
    null = {"concepts": result.units.iloc[:3]}
    ax = cl.pl.annotation_shares(
        {"concepts": result.units, "neurons": result.units}, null=null, annotation="paper"
    )
    assert len(ax.patches) == 9 and sum(p.get_height() for p in ax.patches) == pytest.approx(3.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["concepts", "neurons", "concepts\npermuted"]
    assert "p < 5e-05" in [t.get_text() for t in ax.get_legend().get_texts()][0]
    with pytest.raises(ValueError, match="not in units"):
        cl.pl.annotation_shares({"concepts": result.units}, null={"neurons": result.units})
    ax = cl.pl.top_terms(result.terms, 0, n=5)
    assert len(ax.patches) == 5
    with pytest.raises(ValueError, match="no enriched term"):
        cl.pl.top_terms(result.terms, 4)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_missing_pvalues_are_one_warning_not_fgsea_notes(scores, few_sets, capfd, n_jobs):
    """fgsea prints a note per unit on stderr; gsea() says it once, with the counts, and gives stderr back."""
    with pytest.warns(UserWarning, match=r"gene-set tests in \d+ of 2 units have no p-value") as caught:
        out = cl.tl.enrichment.gsea(scores[[1, 2]], few_sets, permutations=20, n_jobs=n_jobs, progress=False)
    assert len(caught) == 1
    os.write(2, b"stderr is back\n")
    err = capfd.readouterr().err
    assert "Warning" not in err and "stderr is back" in err
    assert not out.units["term"].eq("").any()


# --- calibrated annotation and the gene-label permutation null --------------------------------------------
#: Synthetic universe: 600 genes, 60 random sets of 15-40 genes (known members).
SYN_GENES = [f"G{i:03d}" for i in range(600)]


@pytest.fixture(scope="module")
def syn_sets() -> dict[str, list[str]]:
    rng = np.random.default_rng(1)
    return {
        f"set{k:02d}": sorted(rng.choice(SYN_GENES, rng.integers(15, 41), replace=False).tolist())
        for k in range(60)
    }


@pytest.fixture(scope="module")
def planted_scores(syn_sets) -> pd.DataFrame:
    """Unit k: attribution-like sparse scores with set k's members scored on top (known answer: set k)."""
    rng = np.random.default_rng(2)
    cols = {}
    for k, members in enumerate(syn_sets.values()):
        s = _sparse_scores(SYN_GENES, rng, n_nonzero=40)
        s[[SYN_GENES.index(g) for g in members]] = 1.0 + rng.random(len(members))
        cols[k] = s
    return pd.DataFrame(cols, index=SYN_GENES)


@pytest.fixture(scope="module")
def null_units(planted_scores, syn_sets) -> pd.DataFrame:
    """GSEA of 120 units with the planted units' score shapes and permuted gene labels (2 per unit)."""
    twice = pd.concat([planted_scores, planted_scores.set_axis(planted_scores.columns + 60, axis=1)], axis=1)
    permuted = cl.tl.annotation.permute_gene_labels(twice, seed=0)
    with pytest.warns(UserWarning, match="no p-value"):  # a few sets in unbalanced units (counted, fine)
        return cl.tl.enrichment.gsea(
            permuted, syn_sets, permutations=PERMUTATIONS, n_jobs=2, progress=False
        ).units


def test_permute_gene_labels_keeps_each_units_scores(planted_scores):
    permuted = cl.tl.annotation.permute_gene_labels(planted_scores, seed=0)
    assert permuted.index.equals(planted_scores.index) and permuted.columns.equals(planted_scores.columns)
    for u in planted_scores.columns:  # same values per unit, other genes on top
        np.testing.assert_array_equal(np.sort(permuted[u]), np.sort(planted_scores[u]))
    assert (permuted.idxmax() != planted_scores.idxmax()).mean() > 0.9
    assert not np.array_equal(permuted[0].to_numpy(), permuted[1].to_numpy())  # one permutation per unit
    sample = cl.tl.annotation.permute_gene_labels(planted_scores, n_units=7, seed=3)
    assert sample.shape == (len(SYN_GENES), 7) and sample.columns.is_monotonic_increasing
    pd.testing.assert_frame_equal(
        sample, cl.tl.annotation.permute_gene_labels(planted_scores, n_units=7, seed=3)
    )
    with pytest.raises(ValueError, match="n_units"):
        cl.tl.annotation.permute_gene_labels(planted_scores, n_units=0)


def test_benjamini_hochberg_matches_statsmodels_and_brute_force():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(40), rng.random(10) * 1e-3, [np.nan, np.nan], [0.5, 0.5]])
    q = cl.tl.annotation.benjamini_hochberg(p)
    ok = ~np.isnan(p)
    assert np.isnan(q[~ok]).all()
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1], rtol=1e-12)
    m = ok.sum()
    brute = [min(min(1.0, pj * m / (p[ok] <= pj).sum()) for pj in p[ok] if pj >= pi) for pi in p[ok]]
    np.testing.assert_allclose(q[ok], brute, rtol=1e-12)


def test_unit_pvalue_is_bonferroni_over_the_units_sets():
    units = pd.DataFrame({"pval": [1e-4, 0.01, np.nan, np.nan], "n_sets_tested": [50, 259, 259, 0]})
    expected = [5e-3, 1.0, 1.0, np.nan]  # capped at 1; tested without label: 1; not tested: NaN
    np.testing.assert_allclose(cl.tl.annotation.unit_pvalues(units), expected)


def test_planted_units_are_annotated_calibrated(planted_scores, syn_sets):
    """Planted units among null ones: each gets its set and a calibrated annotation, the null units none."""
    permuted = cl.tl.annotation.permute_gene_labels(planted_scores, seed=1)
    mixed = pd.concat([planted_scores.iloc[:, :5], permuted.set_axis(permuted.columns + 100, axis=1)], axis=1)
    with pytest.warns(UserWarning, match="no p-value"):
        units = cl.tl.enrichment.gsea(
            mixed, syn_sets, permutations=PERMUTATIONS, n_jobs=2, progress=False
        ).units
    planted = units.loc[:4]
    assert (planted["term"] == [f"set{k:02d}" for k in range(5)]).all()
    assert (planted["annotation"] == "strong").all() and (planted["qval"] < cl.tl.annotation.STRONG_Q).all()
    np.testing.assert_allclose(units["pval_unit"], np.minimum(1, units["pval"] * len(syn_sets)))
    np.testing.assert_allclose(units["qval"], cl.tl.annotation.benjamini_hochberg(units["pval_unit"]))
    assert (units.loc[100:, "annotation"] == "none").mean() >= 0.95


def test_permuted_labels_are_rarely_annotated_calibrated_but_often_paper(null_units):
    """The bound holds with margin: measured rates are in docs/decisions.md (2026-11-29)."""
    calibrated = cl.tl.annotation.annotation_rates(null_units)
    paper = cl.tl.annotation.annotation_rates(null_units, "paper")
    assert calibrated["any"] <= 0.05
    assert paper["any"] >= 0.15 and paper["any"] >= calibrated["any"] + 0.1
    assert cl.tl.annotation.annotation_levels(null_units, "paper").equals(
        null_units["pval"].map(cl.tl.annotation.annotation_strength).rename("annotation")
    )


def test_annotation_modes(scores, go_sets, result):
    """Paper mode keeps the raw thresholds; the calibrated columns are the same in both modes."""
    paper = cl.tl.enrichment.gsea(
        scores.drop(columns=3),
        go_sets,
        permutations=PERMUTATIONS,
        n_jobs=1,
        annotation="paper",
        progress=False,
    ).units
    pd.testing.assert_frame_equal(paper.drop(columns="annotation"), result.units.drop(columns="annotation"))
    assert (paper["annotation"] == paper["pval"].map(cl.tl.annotation.annotation_strength)).all()
    assert result.units.loc[[4, 5, 6], "qval"].isna().all()  # skipped units are not in the BH family
    assert (result.units.loc[[1, 2], "annotation"] == "none").all()  # random sparse scores, real GO sets
    rates = cl.tl.annotation.annotation_rates(result.units)
    assert rates["any"] == pytest.approx(rates["strong"] + rates["weak"])
    with pytest.raises(ValueError, match="calibrated, paper"):
        cl.tl.enrichment.gsea(scores[[0]], go_sets, annotation="strict")
    with pytest.raises(ValueError, match="no qval column"):
        cl.tl.annotation.annotation_levels(result.units.drop(columns="qval"))


def test_gsea_null_is_gsea_of_permuted_labels(scores, few_sets):
    kw = dict(permutations=PERMUTATIONS, n_jobs=1, progress=False)
    null = cl.tl.enrichment.gsea_null(scores[[0, 1, 3]], few_sets, n_units=2, seed=4, **kw)
    permuted = cl.tl.annotation.permute_gene_labels(scores[[0, 1, 3]], n_units=2, seed=4)
    pd.testing.assert_frame_equal(null, cl.tl.enrichment.gsea(permuted, few_sets, seed=4, **kw).units)
