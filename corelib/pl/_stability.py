"""Plots of dictionary stability."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, nothing
from corelib.tl.stability import THRESHOLDS


def cross_dataset_r2(r2_table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Bar chart of :func:`cross_dataset_r2`: per training dataset, R^2 on its own and on the other held-out
    cells (paper Fig. 4A)."""
    ax = new_axes(ax, (4.5, 3.2))
    if r2_table.empty:
        return nothing(ax, "no cross-dataset comparison (stability_dataset is None)")
    # one bar per (train, test) pair, grouped by training set: seaborn's grouped bars (nothing to aggregate)
    tests = list(r2_table["test_dataset"].unique())
    sns.barplot(
        r2_table,
        x="train_dataset",
        y="r2",
        hue="test_dataset",
        hue_order=tests,
        errorbar=None,
        legend=False,
        ax=ax,
    )
    trained = [t.get_text() for t in ax.get_xticklabels()]
    ax.set_xticks(ax.get_xticks(), [f"trained on\n{t}" for t in trained])
    ax.set_xlabel("")
    ax.set_ylabel("$R^2$ (held-out cells)")
    ax.set_ylim(min(0.0, float(r2_table["r2"].min()) - 0.05), 1.0)
    ax.legend(ax.containers, [f"test: {t}" for t in tests], frameon=False, fontsize=8)
    return ax


def matched_cosines(
    cosines: Mapping[str, np.ndarray], *, chance: float | None = None, bins: int = 30, ax: Axes | None = None
) -> Axes:
    """Histograms of matched cosines, one per labelled matching (paper Fig. 4B).

    ``chance`` (e.g. :func:`chance_matching`'s mean) is drawn as a dashed line.
    """
    ax = new_axes(ax, (4.5, 3.2))
    cosines = {label: np.asarray(c) for label, c in cosines.items() if len(c)}
    if not cosines:
        return nothing(ax, "no matched cosines to show")
    if chance is not None:
        ax.axvline(chance, color="black", ls="--", lw=1, label=f"chance mean ({chance:.2f})")
    edges = np.linspace(-1 if any(np.min(c) < 0 for c in cosines.values()) else 0, 1, bins + 1)
    for label, c in cosines.items():
        ax.hist(np.asarray(c), bins=edges, histtype="step", lw=1.5, label=f"{label} (mean {np.mean(c):.2f})")
    for t in THRESHOLDS:
        ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set_xlabel("cosine similarity of matched concepts")
    ax.set_ylabel("number of pairs")
    ax.legend(frameon=False, fontsize=8)
    return ax


def stability(
    table: pd.DataFrame, stat: str = "mean_cosine", *, sae_name: str | None = None, ax: Axes | None = None
) -> Axes:
    """Grouped bars with std error bars of one statistic of :func:`stability_table`, per method and mode.

    When the table holds the statistic's chance level (``chance_<stat>``, e.g. ``chance_mean_cosine``: random
    directions of the same shapes), each bar carries it as a black mark. ``sae_name`` (the selected SAE, whose
    settings the SAE rows use) titles the plot.
    """
    ax = new_axes(ax, (6, 3.2))
    means = table.pivot(index="method", columns="mode", values=f"{stat}_mean").loc[table["method"].unique()]
    stds = table.pivot(index="method", columns="mode", values=f"{stat}_std").loc[means.index]
    chance = f"chance_{stat}"
    chances = (
        table.pivot(index="method", columns="mode", values=chance).loc[means.index]
        if chance in table
        else None
    )
    width = 0.8 / means.shape[1]
    x = np.arange(len(means))
    for j, mode in enumerate(means.columns):
        ax.bar(x + j * width, means[mode], width, yerr=stds[mode].fillna(0), capsize=3, label=mode)
    if chances is not None:
        centres_MK = x[:, None] + np.arange(means.shape[1]) * width  # methods x modes, as the bars
        ax.hlines(
            chances.to_numpy().ravel(), (centres_MK - 0.45 * width).ravel(), (centres_MK + 0.45 * width).ravel(),
            color="black", lw=2, label="chance (random directions)",
        )  # fmt: skip
    # rotated with their end under the group: readable at any font size, however long the method's name
    ax.set_xticks(
        x + width * (means.shape[1] - 1) / 2, means.index, rotation=30, ha="right", rotation_mode="anchor"
    )
    ax.set_ylabel(stat.replace("_", " "))
    if sae_name:
        ax.set_title(f"SAE: the selected {sae_name}'s settings", fontsize=9)
    ax.legend(frameon=False, fontsize=8, title="across", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax
