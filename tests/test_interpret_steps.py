"""Notebook 03's steps (corelib.runs.steps.interpret) and the tl tables they show, against brute force."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import hand_attribution

import corelib as cl
from corelib.runs.steps import interpret

KINDS = ["concept", "neuron"]


# ------------------------------------------------------------------------------------ tl tables, brute force
def _status(rng: np.random.Generator, n: int = 60) -> pd.DataFrame:
    status = rng.choice(["attributed", "skipped"], size=n, p=[0.7, 0.3])
    reasons = np.where(status == "skipped", rng.choice(["few active", "active everywhere"], size=n), "")
    values = rng.uniform(-1, 1, size=(n, 4))
    values[rng.random((n, 4)) < 0.15] = np.nan  # reliability not measured for some units
    return pd.DataFrame(
        {
            "kind": rng.choice(KINDS, size=n),
            "unit": np.arange(n),
            "status": status,
            "reason": reasons,
            **dict(zip(cl.tl.attribution.RELIABILITY_COLUMNS, values.T, strict=True)),
        }
    )


def test_skip_reasons_counts_each_kind_and_reason():
    status = _status(np.random.default_rng(0))
    got = cl.tl.attribution.skip_reasons(status)
    want = Counter(
        (k, r)
        for k, s, r in zip(status["kind"], status["status"], status["reason"], strict=True)
        if s == "skipped"
    )
    assert got["units"].to_dict() == dict(want)
    assert list(got.index.names) == ["kind", "reason"]
    assert cl.tl.attribution.skip_reasons(status.assign(status="attributed")).empty


@pytest.mark.parametrize("bar", [0.0, 0.5])
def test_reliability_summary_matches_a_loop_over_units(bar):
    status = _status(np.random.default_rng(1))
    got = cl.tl.attribution.reliability_summary(status, bar=bar)
    for kind in KINDS:
        rows = [r for _, r in status.iterrows() if r["kind"] == kind and r["status"] == "attributed"]
        for column in cl.tl.attribution.RELIABILITY_COLUMNS:
            assert got.loc[kind, column] == pytest.approx(np.nanmedian([r[column] for r in rows]))
        for share, column in [
            ("share_reliable", "split_half"),
            ("share_reliable_signed", "signed_split_half"),
        ]:
            reliable = sum(1 for r in rows if not np.isnan(r[column]) and r[column] >= bar)
            assert got.loc[kind, share] == pytest.approx(reliable / len(rows))


def test_top_gene_lists_join_each_units_best_genes_in_order():
    rng = np.random.default_rng(2)
    genes = [f"G{i}" for i in range(15)]
    scores = rng.normal(size=(15, 4))
    top = cl.tl.attribution.top_genes(hand_attribution(scores, genes, [3, 7, 8, 11]), n=50)
    got = cl.tl.attribution.top_gene_lists(top, [8, 3], n=4)
    assert list(got.index) == [8, 3] and list(got.columns) == ["top-4 genes"]
    for unit, column in [(8, 2), (3, 0)]:
        best = sorted(range(15), key=lambda g: -scores[g, column])[:4]
        assert got.loc[unit, "top-4 genes"] == ", ".join(genes[g] for g in best)


def test_deg_list_sizes_count_rows_and_give_zero_to_empty_lists():
    rng = np.random.default_rng(3)
    deg = pd.DataFrame({"unit": rng.choice([1, 4, 6], size=40), "gene": "g"})
    units = [0, 1, 4, 6, 9]
    got = cl.tl.deg.deg_list_sizes(deg, units)
    counts = Counter(deg["unit"])
    assert got.tolist() == [counts.get(u, 0) for u in units] and list(got.index) == units
    summary = cl.tl.deg.deg_size_summary(deg, units, label="sizes")
    sizes = np.array([counts.get(u, 0) for u in units], float)
    assert summary.index.tolist() == ["sizes"]
    assert summary.loc["sizes", "mean"] == pytest.approx(sizes.mean())
    assert summary.loc["sizes", "std"] == pytest.approx(sizes.std(ddof=1))
    assert summary.loc["sizes", "50%"] == pytest.approx(np.median(sizes))
    assert cl.tl.deg.deg_list_sizes(deg.iloc[:0], units).tolist() == [0] * 5


def _gsea_units(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({"pval": 10 ** rng.uniform(-7, 0, n), "qval": 10 ** rng.uniform(-3, 0, n)})


def test_annotation_shares_count_units_below_each_modes_thresholds():
    rng = np.random.default_rng(4)
    real = {"concepts": _gsea_units(rng, 30), "neurons": _gsea_units(rng, 12)}
    null = {"concepts": _gsea_units(rng, 9), "neurons": _gsea_units(rng, 7)}
    got = cl.tl.annotation.annotation_shares(real, null)
    cuts = {"calibrated": ("qval", cl.tl.annotation.WEAK_Q), "paper": ("pval", cl.tl.annotation.WEAK_P)}
    for mode, (column, cut) in cuts.items():
        for source, tables in [("real", real), ("null", null)]:
            for kind, table in tables.items():
                want = sum(1 for v in table[column] if v < cut) / len(table)
                assert got.loc[kind, (mode, source)] == pytest.approx(want)
        excess = cl.tl.annotation.annotation_excess(got, mode)
        assert excess.to_dict() == pytest.approx((got[(mode, "real")] - got[(mode, "null")]).to_dict())
    with pytest.raises(ValueError, match="annotation must be one of"):
        cl.tl.annotation.annotation_excess(got, "strict")


# ------------------------------------------------------------------------------------ the printed sentences
def test_describe_annotation_reads_the_shares():
    shares = pd.DataFrame(
        {
            ("calibrated", "real"): {"concepts": 0.5, "neurons": 0.2},
            ("calibrated", "null"): {"concepts": 0.1, "neurons": 0.1},
            ("paper", "real"): {"concepts": 0.9, "neurons": 0.8},
            ("paper", "null"): {"concepts": 0.6, "neurons": 0.5},
        }
    )
    text = cl.runs.prose.describe_annotation(
        shares, {"concepts": [0] * 6, "neurons": [0] * 10}, {"concepts": [0] * 4, "neurons": [0] * 5}
    )
    assert text.startswith(
        "Calibrated: 50% of 6 concepts and 20% of 10 neurons are annotated, against 10% and 10% of 4 and 5"
    )
    assert "Paper thresholds: 90% and 80%, against 60% and 50% by chance." in text
    assert text.endswith("concepts are more often annotated than neurons (+40% vs +10% over the null).")


def test_describe_ora_and_recovery():
    shares = pd.DataFrame(
        {"real": [0.5, 0.25], "permuted genes": [0.0, 0.1], "expression-matched": [0.05, 0.2]},
        index=["concepts", "neurons"],
    )
    assert cl.runs.prose.describe_ora(shares) == (
        "ORA annotates 50% of concepts and 25% of neurons; with permuted gene labels 0% and 10%, permuted within "
        "expression bins 5% and 20%."
    )
    assert "params/planted.yaml" in cl.runs.prose.describe_recovery()


# ------------------------------------------------------------------ the cache entries and inputs notebook 03 used
class RecordingRun:
    """Records each step's ``run.cached`` outputs and inputs instead of computing."""

    def __init__(self):
        self.calls = {}

    def cached(self, compute, *outputs, inputs, load=None, save=None):
        self.calls[outputs] = dict(inputs)
        return ("units", "terms") if len(outputs) == 2 else "result"

    def fingerprint(self, key, name=None):
        return f"fp({key}, {name})"


@pytest.fixture()
def recorded():
    rng = np.random.default_rng(5)
    codes = sp.csr_matrix(np.where(rng.random((30, 4)) < 0.4, rng.random((30, 4)), 0.0))
    emb = rng.normal(size=(30, 3))
    obs = pd.DataFrame({"cell_type": rng.choice(["B", "T"], 30), "batch": "a"})
    inputs = interpret.Inputs(
        adata=type("A", (), {"obs": obs, "uns": {}})(),
        emb=emb,
        encoder=type("E", (), {"genes": ["g0", "g1"], "has_model": True})(),
        X=None,
        n_missing=0,
        sae_name="c4_k2",
        sae=None,
        codes=codes,
        upstream={"embedded": "E", "sae": "S"},
    )
    attr = hand_attribution(np.zeros((2, 2)), ["g0", "g1"], [0, 2])
    run = RecordingRun()
    deg_options = {"max_cells": 100, "method": "t-test", "order": "score", "pval_cutoff": 5e-3}
    gsea_options = {
        "gene_sets": "GO",
        "organism": "human",
        "permutations": 20,
        "seed": 0,
        "annotation": "calibrated",
    }
    interpret.characterize(run, inputs, ["cell_type"])
    interpret.attribute_concepts(run, inputs, None, 3, 2, seed=0)
    interpret.attribute_neurons(run, inputs, 0.5, 3, 2)
    interpret.deg_baselines(run, inputs, attr, attr, deg_options, 0.5)
    interpret.gsea(run, attr, attr, gsea_options)
    interpret.gsea_null(run, attr, attr, 50, gsea_options)
    return run.calls, obs[["cell_type"]], deg_options, gsea_options


def test_steps_cache_under_the_notebooks_entries(recorded):
    calls, *_ = recorded
    assert set(calls) == {
        ("metadata_concepts",),
        ("metadata_neurons",),
        ("attribution_concepts",),
        ("attribution_neurons",),
        (("deg", "concepts", False),),
        (("deg", "neurons", False),),
        ("gsea_concepts", ("gsea_terms", "concepts", False)),
        ("gsea_neurons", ("gsea_terms", "neurons", False)),
        (("gsea_null", "concepts"),),
        (("gsea_null", "neurons"),),
    }


def test_steps_record_the_notebooks_provenance_inputs(recorded):
    calls, obs, deg_options, gsea_options = recorded
    fp = cl.runs.fingerprint
    assert fp(calls[("metadata_concepts",)]) == fp({"embedded": "E", "sae": "S", "obs": obs})
    assert fp(calls[("metadata_neurons",)]) == fp({"embedded": "E", "obs": obs})
    concepts = calls[("attribution_concepts",)]
    assert fp(concepts) == fp(
        {"embedded": "E", "sae": "S", "concepts": np.arange(4), "n_prototypes": 3, "n_counterfactuals": 2}
    )
    assert calls[("attribution_neurons",)] == {
        "embedded": "E",
        "inactive_quantile": 0.5,
        "n_prototypes": 3,
        "n_counterfactuals": 2,
    }
    assert calls[(("deg", "concepts", False),)] == {
        "embedded": "E",
        "sae": "S",
        "attribution": "fp(attribution_concepts, None)",
        **deg_options,
    }
    assert calls[(("deg", "neurons", False),)] == {
        "embedded": "E",
        "attribution": "fp(attribution_neurons, None)",
        "inactive_quantile": 0.5,
        **deg_options,
    }
    for kind in ["concepts", "neurons"]:
        attribution = f"fp(attribution_{kind}, None)"
        assert calls[(f"gsea_{kind}", ("gsea_terms", kind, False))] == {
            "attribution": attribution,
            **gsea_options,
        }
        assert calls[(("gsea_null", kind),)] == {"attribution": attribution, "n_units": 50, **gsea_options}
