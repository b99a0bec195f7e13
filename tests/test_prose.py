"""``cl.runs.prose``: what a notebook shows under a result, a table or the sentence that it is empty, and
repeated warnings told once."""

import warnings

import pandas as pd
import pytest

import corelib as cl


def test_show_gives_the_table_or_prints_the_sentence(capsys):
    table = pd.DataFrame({"unit": [1]})
    assert cl.runs.prose.show(table, "nothing") is table
    assert capsys.readouterr().out == ""
    assert cl.runs.prose.show(table.iloc[:0], "No unit was skipped.") is None
    assert capsys.readouterr().out == "No unit was skipped.\n"


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
