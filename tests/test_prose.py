"""``cl.runs.prose``: what a notebook shows under a result, a table or the sentence that it is empty, and
repeated warnings told once."""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import hand_attribution

import corelib as cl


def test_show_gives_the_table_or_prints_the_sentence(capsys):
    table = pd.DataFrame({"unit": [1]})
    assert cl.runs.prose.show(table, "nothing") is table
    assert capsys.readouterr().out == ""
    assert cl.runs.prose.show(table.iloc[:0], "No unit was skipped.") is None
    assert capsys.readouterr().out == "No unit was skipped.\n"


def test_say_prints_nothing_for_nothing(capsys):
    cl.runs.prose.say("")
    assert capsys.readouterr().out == ""
    cl.runs.prose.show(pd.DataFrame(), "")
    assert capsys.readouterr().out == ""


def test_describe_phases_reads_the_counts_and_is_silent_when_no_phase_was_called():
    counts = {
        "n_s_list": 43,
        "n_g2m_list": 54,
        "n_s_data": 40,
        "n_g2m_data": 51,
        "n_s_model": 12,
        "n_g2m_model": 15,
    }
    phase = pd.Series(pd.Categorical(["G1", "S", "G1", "G2M"], categories=["G1", "S", "G2M"]))
    assert cl.runs.prose.describe_phases(counts, phase) == (
        "The data have 40 of the 43 S and 51 of the 54 G2M genes (the model sees 12 and 15). "
        "Cells per phase: G1 2, S 1, G2M 1."
    )
    skipped = pd.Series(pd.Categorical([None] * 4, categories=["G1", "S", "G2M"]))
    assert cl.runs.prose.describe_phases(counts, skipped) == ""


def test_describe_classes_names_kept_and_dropped_classes():
    rng = np.random.default_rng(0)
    labels = pd.Series(np.repeat(["A", "B", "C"], [60, 60, 5]))
    X = rng.normal(size=(125, 4)) + (labels == "A").to_numpy()[:, None]
    task = cl.tl.probes.probe_features(
        {"neurons": X}, labels, min_cells_per_class=20, seeds=[0], progress=False
    )
    assert (
        cl.runs.prose.describe_classes(task) == "Classes kept: A, B. Dropped for too few cells: C (5 cells)."
    )
    assert cl.runs.prose.describe_classes({}) == ""


def test_warnings_once_tells_each_kind_once_with_the_count():
    with pytest.warns(UserWarning) as caught:
        with cl.runs.prose.warnings_once():
            for n in (4, 12, 55):
                warnings.warn(f"GSEA: {n} gene-set tests have no p-value", UserWarning, stacklevel=1)
            warnings.warn("ORA: one set", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == [
        "GSEA: 4 gene-set tests have no p-value (2 more like it in this step)",
        "ORA: one set",
    ]


def test_warnings_once_is_silent_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with cl.runs.prose.warnings_once():
            pass


def test_summarize_verdicts_counts_and_names_each_verdict():
    claims = pd.DataFrame(
        {"verdict": ["holds", "fails", "holds", "not measured"]},
        index=pd.Index(["deletion", "reconstruction", "stability", "planted_recovery"], name="claim"),
    )
    assert cl.runs.prose.summarize_verdicts(claims) == (
        "Of this run's 4 claims, 2 hold (deletion, stability); 1 fails (reconstruction); "
        "1 not measured (planted_recovery)."
    )


def test_describe_shown_attribution_counts_where_each_concepts_genes_come_from():
    from_03 = hand_attribution(np.ones((2, 3)), ["A", "B"], [1, 2, 9])
    added = hand_attribution(np.ones((2, 2)), ["A", "B"], [4, 5])
    added.status.loc[5, "status"] = "skipped"
    text = cl.runs.prose.describe_shown_attribution(from_03, added, [1, 4, 5])
    assert text == (
        "The top units show 3 concepts: notebook 03 attributed 1 of them (a sample of its concepts), the other 1 "
        "are attributed by this notebook with the same engine and settings (N_p = 1 prototypes, N_c = 1 counterfactuals); "
        "1 could not be (too few active or inactive cells)."
    )
    assert "attributed 0 of them" in cl.runs.prose.describe_shown_attribution(None, added, [4])


def test_describe_top_units_counts_units_with_genes_and_markers():
    concepts = pd.DataFrame(
        {"attributed": [True, True, False], "n_markers": [2, 0, np.nan]}  # the third has no genes
    )
    text = cl.runs.prose.describe_top_units(
        {"concepts": concepts, "neurons": concepts.drop(columns="n_markers")}
    )
    assert text == (
        "concepts: 2 of 3 top units have attributed genes; 1 of 2 with a marker list have at least one marker of "
        "their class among their top genes (mean 1.0 markers per unit).\n"
        "neurons: no attributed genes to compare with markers."
    )


def test_describe_random_reconstruction_reads_r2_against_the_effective_rank():
    r2 = pd.DataFrame({"claim": "reconstruction", "arm": ["run", "random encoder"], "mean": [0.924, 0.961]})
    spectra = pd.DataFrame(
        {"dim": 50, "effective_rank": [23.4, 7.5], "top1_share": [0.1, 0.3], "top10_share": [0.52, 0.70]},
        index=["run", "random encoder"],
    )
    text = cl.runs.prose.describe_random_reconstruction(r2, spectra)
    assert text.startswith(
        "Held-out R²: 0.924 on the trained encoder, 0.961 on the random encoder. Effective rank of the embedding "
        "(of 50 dimensions): 23.4 trained, 7.5 random; its first 10 directions hold 52% and 70% of the variance."
    )
    assert "its higher R² says that its embedding is simpler" in text
    flat = spectra.assign(effective_rank=[7.5, 23.4])
    assert "the rank does not explain it" in cl.runs.prose.describe_random_reconstruction(r2, flat)
    worse = r2.assign(mean=[0.97, 0.5])
    assert text != (out := cl.runs.prose.describe_random_reconstruction(worse, spectra))
    assert out.endswith("The trained encoder reconstructs at least as well as the random one.")


def test_describe_important_genes_reads_both_thresholds():
    counts = pd.DataFrame(
        {
            "activation": [0.5, 0.7, 0.9, 1.2],
            "n_important": [0, 0, 0, 3],
            "n_important_relative": [4, 0, 12, 30],
        }
    )
    text = cl.runs.prose.describe_important_genes(counts, 0.05, 0.01)
    assert text.startswith(
        "75% of the 4 attributed concepts have no gene scoring above 0.05, and 25% none above 1% of their own "
        "activation (median prototype activation 0.80)."
    )
    assert "driven by many genes a little each" in text
    same = counts.assign(n_important_relative=counts["n_important"])
    assert cl.runs.prose.describe_important_genes(same, 0.05, 0.01).endswith("not what decides here.")


def test_describe_examples_counts_significant_labels_and_explains_none():
    gsea = pd.DataFrame({"annotation": ["weak", "none", "none", "strong", "none"]})
    examples = pd.DataFrame({"annotation": ["strong", "weak", "none"]})
    text = cl.runs.prose.describe_examples(examples, gsea)
    assert text.startswith(
        "2 of 5 attributed concepts carry a significant GSEA label; 2 of the 3 examples below do."
    )
    assert "it is not evidence of that process" in text
    assert cl.runs.prose.describe_examples(examples.iloc[:2], gsea).endswith("2 of the 2 examples below do.")
