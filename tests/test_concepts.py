"""Tests of corelib.tl.concepts: metadata composition and calls, against brute force and planted answers."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import corelib as cl

matplotlib.use("Agg")


@pytest.fixture
def cells() -> pd.DataFrame:
    """400 cells: cell type A/B/C/D (100 each, in blocks) and donor d0/d1 (alternating)."""
    return pd.DataFrame(
        {
            "cell_type": np.repeat(["A", "B", "C", "D"], 100),
            "donor": np.tile(["d0", "d1"], 200),
        }
    )


def planted_codes(n: int = 400) -> np.ndarray:
    """Units with a known call on :func:`cells`.

    0: active on 50 cells of type A                -> cell_type-specific
    1: 40 type-A + 20 type-B cells, all donor d0    -> donor-specific (A is 67% < 70%)
    2: active on 40 d1 cells spread over all types  -> donor-specific
    3: active on 5 cells of type C                  -> not enough data (min 10)
    4: never active                                 -> not enough data
    5: 30 A + 30 B cells, both donors               -> mixed
    """
    codes = np.zeros((n, 6))
    codes[0:50, 0] = 1.0
    codes[np.r_[0:80:2, 100:140:2], 1] = 2.0  # 40 A + 20 B, all donor d0
    codes[np.arange(1, 400, 10), 2] = 0.5  # odd rows: donor d1, all four types
    codes[200:205, 3] = 3.0
    codes[np.r_[0:30, 100:130], 5] = 1.0
    return codes


def test_calls_on_planted_units(cells):
    table = cl.tl.concepts.characterize(planted_codes(), cells, ["cell_type", "donor"], min_active_cells=10)
    assert table["call"].tolist() == [
        "cell_type-specific",
        "donor-specific",
        "donor-specific",
        "not enough data",
        "not enough data",
        "mixed",
    ]
    assert table["n_active"].tolist() == [50, 60, 40, 5, 0, 60]
    assert table.loc[1, "cell_type_top"] == "A"
    assert table.loc[1, "cell_type_fraction"] == pytest.approx(40 / 60)
    assert table.loc[2, "donor_top"] == "d1" and table.loc[2, "donor_fraction"] == 1.0
    assert table.loc[4, "cell_type_top"] is None


@pytest.mark.parametrize("assay", [["10x 3' v3"] * 400, ["10x 3' v3"] * 390 + ["Smart-seq2"] * 10])
def test_a_column_with_one_value_for_most_cells_gives_no_call(cells, assay):
    """CELLxGENE files carry assay, organism, tissue columns with one value: never a label (issue 23)."""
    obs = cells.assign(assay=assay)
    with pytest.warns(UserWarning, match=r"'assay': \"10x 3' v3\" covers (100|98)% of the cells"):
        table = cl.tl.concepts.characterize(
            planted_codes(), obs, ["assay", "cell_type", "donor"], min_active_cells=10
        )
    reference = cl.tl.concepts.characterize(
        planted_codes(), cells, ["cell_type", "donor"], min_active_cells=10
    )
    assert table["call"].tolist() == reference["call"].tolist()  # no "assay-specific"
    assert (table.loc[table["n_active"] > 0, "assay_top"] == "10x 3' v3").all()  # still reported


def test_cell_type_wins_when_both_pass(cells):
    codes = np.zeros((400, 1))
    codes[0:80:2, 0] = 1.0  # type A and donor d0: both 100%
    assert (
        cl.tl.concepts.characterize(codes, cells, ["cell_type", "donor"])["call"][0] == "cell_type-specific"
    )
    assert cl.tl.concepts.characterize(codes, cells, ["donor", "cell_type"])["call"][0] == "donor-specific"


def test_composition_matches_brute_force():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"tissue": rng.choice(["lung", "blood", "gut"], size=300)})
    codes = np.where(rng.random((300, 20)) < 0.1, rng.random((300, 20)), 0.0)
    codes[:, 7] = 0.0
    frac = cl.tl.concepts.composition(codes, obs, "tissue", active_threshold=0.2)
    for unit in range(20):
        active = codes[:, unit] > 0.2
        expected = obs.loc[active, "tissue"].value_counts(normalize=True)
        for label in frac.columns:
            assert frac.loc[unit, label] == pytest.approx(expected.get(label, 0.0))
    assert frac.loc[7].sum() == 0.0
    table = cl.tl.concepts.characterize(codes, obs, ["tissue"], active_threshold=0.2, min_active_cells=1)
    np.testing.assert_array_equal(table["n_active"], (codes > 0.2).sum(0))


def test_sparse_codes_give_the_tables_of_dense_codes(cells):
    rng = np.random.default_rng(1)
    codes = planted_codes()
    codes[rng.random(codes.shape) < 0.05] = 0.3  # more active cells, spread over labels
    sparse = sp.csr_matrix(codes, dtype=np.float32)
    for options in ({}, {"active_threshold": 0.5}, {"min_active_cells": 3}):
        pd.testing.assert_frame_equal(
            cl.tl.concepts.characterize(sparse, cells, ["cell_type", "donor"], **options),
            cl.tl.concepts.characterize(codes, cells, ["cell_type", "donor"], **options),
        )
    pd.testing.assert_frame_equal(
        cl.tl.concepts.composition(sparse.tocsc(), cells, "donor"),
        cl.tl.concepts.composition(codes, cells, "donor"),
    )
    with pytest.raises(ValueError, match="threshold >= 0 with sparse codes"):
        cl.tl.concepts.characterize(sparse, cells, ["donor"], active_threshold=-0.1)
    bad = sparse.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        cl.tl.concepts.characterize(bad, cells, ["donor"])


def test_neuron_activity_and_default_min_cells():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(1000, 4)) + np.array([0.0, 5.0, -3.0, 10.0])
    act = cl.tl.units.neuron_activity(emb, 0.9)
    assert act.dtype == bool
    np.testing.assert_array_equal(act.sum(0), [100, 100, 100, 100])
    np.testing.assert_array_equal(act[:, 1], emb[:, 1] > np.quantile(emb[:, 1], 0.9))
    assert cl.tl.concepts.default_min_active_cells(2638) == 14
    assert cl.tl.concepts.default_min_active_cells(600) == 10
    with pytest.raises(ValueError, match="quantile"):
        cl.tl.units.neuron_activity(emb, 1.5)


def test_summary_and_plot(cells):
    table = cl.tl.concepts.characterize(planted_codes(), cells, ["cell_type", "donor"], min_active_cells=10)
    tables = cl.tl.concepts.characterize_many({"sae": planted_codes(), "neurons": planted_codes() > 0}, cells,
                                        ["cell_type", "donor"], min_active_cells=10)  # fmt: skip
    summary = cl.tl.concepts.summarize_calls(tables)
    assert list(summary.columns) == [
        "cell_type-specific",
        "donor-specific",
        "mixed",
        "not enough data",
        "n_units",
    ]
    np.testing.assert_allclose(
        summary.loc["sae"].drop("n_units").to_numpy(float), [1 / 6, 2 / 6, 1 / 6, 2 / 6]
    )
    single = cl.tl.concepts.summarize_calls(table)
    assert single.index.tolist() == ["units"]
    np.testing.assert_allclose(
        single.iloc[0, :-1].to_numpy(float), summary.loc["sae"].iloc[:-1].to_numpy(float)
    )
    ax = cl.pl.call_shares(summary)
    calls = summary.columns.drop("n_units")
    widths = [p.get_width() for p in ax.patches]  # one bar per (call, SAE), call by call
    np.testing.assert_allclose(widths, summary[calls].to_numpy(float).T.ravel())


def test_bad_input(cells):
    with pytest.raises(ValueError, match="'tissue' is not in obs"):
        cl.tl.concepts.characterize(planted_codes(), cells, ["tissue"])
    with pytest.raises(ValueError, match="obs has 10 rows but codes have 400 cells"):
        cl.tl.concepts.characterize(planted_codes(), cells.iloc[:10], ["cell_type"])
    bad = planted_codes()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cl.tl.concepts.characterize(bad, cells, ["cell_type"])
