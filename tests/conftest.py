"""Shared test settings: the project's float32 determinism promise (README, "Determinism").

Same inputs, seed, batch size, thread count and device give the same bits, and tests assert bit equality
only there (or where a result is integer / exact by construction). Another batch size, thread count or
device lets BLAS and oneDNN pick other kernels, which add the same terms in another order: results then
agree within :data:`FLOAT32_RTOL` / :data:`FLOAT32_ATOL`, never bit for bit.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

#: Relative tolerance between float32 results computed with other batch sizes or thread counts. float32
#: keeps 24 bits (eps 1.2e-7); a reordered sum of n terms moves by about eps * sqrt(n) of their magnitude.
#: Measured across batch sizes 1-256 and 1-2 threads (scVI, scGPT and PCA encoders): at most 4e-7 of the
#: embedding's largest value, so 1e-5 leaves a margin of 25x and still fails on any real change.
FLOAT32_RTOL = 1e-5

#: Absolute tolerance for the same comparisons: entries near 0 come from cancelling terms of magnitude ~1,
#: whose rounding no relative tolerance covers (measured: at most 1.9e-6, on a PCA embedding up to 13).
FLOAT32_ATOL = 1e-5


@pytest.fixture(autouse=True)
def _close_figures():
    """Plots leave their figure open (Jupyter shows it); a test closes what it drew."""
    yield
    plt.close("all")
