"""Plots of SAE sweeps and training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, new_axes_row


def r2_vs_concepts(sweep_table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """R^2 (train and held-out) against the number of concepts, as in the paper's Fig. 2A.

    One marker per number of concepts: the mean over the SAEs of that size, error bars from min to max.
    """
    ax = new_axes(ax, (4.5, 3.2))
    for col, marker, label in (("r2_train", "o", "train"), ("r2_heldout", "s", "held-out")):
        agg = sweep_table.groupby("n_concepts")[col].agg(["mean", "min", "max"])
        ax.errorbar(
            agg.index, agg["mean"], yerr=[agg["mean"] - agg["min"], agg["max"] - agg["mean"]],
            marker=marker, capsize=3, label=label,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("number of concepts c")
    ax.set_ylabel("$R^2$")
    ax.legend(frameon=False)
    return ax


def r2_vs_k(
    sweep_table: pd.DataFrame,
    *,
    min_r2: float | None = None,
    selected: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """R^2 against k (concepts active per cell): held-out (solid) and train (dashed), one colour per c.

    Means over seeds. ``min_r2`` draws the selection threshold; ``selected`` (an SAE name in the table) is
    circled.
    """
    ax = new_axes(ax, (4.5, 3.2))
    for c, rows in sweep_table.groupby("n_concepts"):
        agg = rows.groupby("k")[["r2_heldout", "r2_train"]].mean()
        (line,) = ax.plot(agg.index, agg["r2_heldout"].to_numpy(), marker="o", label=f"c = {c}, held-out")
        ax.plot(agg.index, agg["r2_train"].to_numpy(), marker="o", linestyle="--", color=line.get_color(),
                label=f"c = {c}, train")  # fmt: skip
    if min_r2 is not None:
        ax.axhline(min_r2, color="grey", linestyle="--", linewidth=1, label=f"$R^2$ = {min_r2:g}")
    if selected is not None:
        row = sweep_table.loc[selected]
        ax.scatter([row["k"]], [row["r2_heldout"]], s=150, facecolors="none", edgecolors="black",
                   zorder=3, label=f"selected: {selected}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (concepts active per cell)")
    ax.set_ylabel("$R^2$")
    ax.legend(frameon=False, fontsize="small")
    return ax


def dead_concepts(sweep_table: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Active and dead concepts (over a full pass on training cells) per SAE, as stacked bars."""
    ax = new_axes(ax, (max(4.0, 0.8 * len(sweep_table)), 3.2))
    active = sweep_table["n_active_train"]
    dead = sweep_table["n_concepts"] - active
    ax.bar(sweep_table.index, active, label="active", color="tab:green")
    ax.bar(sweep_table.index, dead, bottom=active, label="dead", color="tab:red")
    ax.set_ylabel("concepts")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(frameon=False)
    return ax


def training_curves(
    histories: Mapping[str, pd.DataFrame], *, axes: Sequence[Axes] | None = None
) -> list[Axes]:
    """Training curves: loss (log), held-out R^2 and windowed dead fraction against epochs.

    Three panels, so it takes and returns three Axes (default: a new figure).
    """
    axes = new_axes_row(axes, 3, (12, 3.2))
    for name, hist in histories.items():
        axes[0].plot(hist["epoch"], hist["loss"], label=name)
        axes[1].plot(hist["epoch"], hist["r2_heldout"], label=name)
        axes[2].plot(hist["epoch"], hist["dead_fraction"], label=name)
    axes[0].set_yscale("log")
    for ax, ylabel in zip(
        axes, ("training loss (FVU + AuxK/32)", "held-out $R^2$", "dead fraction"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[1].set_ylim(max(0.0, min(float(h["r2_heldout"].min()) for h in histories.values())), 1.0)
    axes[2].legend(frameon=False, fontsize="small", bbox_to_anchor=(1.02, 1.0), loc="upper left")
    return axes
