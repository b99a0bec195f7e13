"""Tests of the simulated atlas of benchmarks/scale.py (seeded, cell-type composition kept) and its tables."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import corelib as cl

SCALE_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCALE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source():
    return cl.datasets.load_dataset("pbmc3k")


def test_atlas_is_seeded(scale, source):
    a, b = (scale.simulate_atlas(source, 500, seed=3) for _ in range(2))
    c = scale.simulate_atlas(source, 500, seed=4)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0
    assert "seed 3" in a.uns["simulated"]["note"]


def test_atlas_keeps_cell_type_composition(scale, source):
    n = 1000
    atlas = scale.simulate_atlas(source, n)
    want = source.obs["cell_type"].value_counts(normalize=True) * n
    got = atlas.obs["cell_type"].value_counts().reindex(want.index)
    assert atlas.n_obs == n and got.sum() == n
    assert np.all(np.abs(got - want) < 1)  # largest remainders: each type within one cell of its share
    back = source.obs.loc[atlas.obs["source_cell"], "cell_type"].to_numpy()
    np.testing.assert_array_equal(back, atlas.obs["cell_type"].to_numpy())  # every cell keeps its label


def test_atlas_counts_are_poisson_resampled(scale, source):
    """Non-zero counts are Poisson draws with the source count as mean: zeros stay zeros and the totals match
    the source's in expectation (here within 2% over 2,000 cells)."""
    atlas = scale.simulate_atlas(source, 2000)
    src_X = source[atlas.obs["source_cell"].to_numpy()].X
    assert ((atlas.X != 0) > (src_X != 0)).nnz == 0
    assert atlas.X.sum() == pytest.approx(src_X.sum(), rel=0.02)
    assert (atlas.X != src_X).nnz > 0.3 * src_X.nnz
    assert np.all(atlas.X.data == np.round(atlas.X.data))


def test_growth_exponents(scale):
    results = pd.DataFrame(
        {"stage": ["a", "a"], "n_cells": [10, 1000], "seconds": [1.0, 100.0], "peak_gib": [2.0, 2.0]}
    )
    table = scale.growth_table(results)
    assert math.isnan(table["time_exponent"].iloc[0])
    assert table["time_exponent"].iloc[1] == pytest.approx(1.0)
    assert table["memory_exponent"].iloc[1] == pytest.approx(0.0)
