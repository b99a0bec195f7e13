"""``corelib.tl.spectrum``: the variance spectrum of an embedding, against cells of known shape."""

import numpy as np
import pytest

import corelib as cl

spectrum = cl.tl.spectrum


def _cells(variances: list[float], n: int = 4000, seed: int = 0) -> np.ndarray:
    """Cells with the given variance along each axis of a random rotation, plus an offset."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(len(variances), len(variances))))
    return (rng.normal(size=(n, len(variances))) * np.sqrt(variances)) @ rotation + 5.0


def test_effective_rank_counts_equally_used_directions():
    assert spectrum.effective_rank(_cells([1.0] * 6 + [0.0] * 4)) == pytest.approx(6.0, rel=0.05)
    assert spectrum.effective_rank(_cells([1.0] + [0.0] * 9)) == pytest.approx(1.0, rel=1e-6)
    # unequal: (sum l)^2 / sum l^2 of the variances 4, 1, 1
    assert spectrum.effective_rank(_cells([4.0, 1.0, 1.0])) == pytest.approx(36 / 18, rel=0.05)


def test_spectrum_table_reads_the_shares_of_each_embedding():
    table = spectrum.spectrum_table(
        {"flat": _cells([1.0] * 10), "steep": _cells([8.0, 1.0] + [0.1] * 8)}, top=2
    )
    assert list(table.columns) == ["dim", "effective_rank", "top1_share", "top2_share"]
    assert table.loc["flat", "top2_share"] == pytest.approx(0.2, abs=0.02)
    assert table.loc["steep", "top1_share"] == pytest.approx(8.0 / 9.8, abs=0.02)
    assert table.loc["steep", "effective_rank"] < table.loc["flat", "effective_rank"]
    assert np.allclose(spectrum.variance_shares(_cells([2.0, 1.0, 1.0])).sum(), 1.0)
