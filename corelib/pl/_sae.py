"""Plots of SAE sweeps and training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes

from corelib.pl._utils import new_axes, new_axes_row


def r2_vs_concepts(
    sweep_table: pd.DataFrame, *, selected: pd.Series | None = None, ax: Axes | None = None
) -> Axes:
    """R^2 (train and held-out) against the number of concepts, as in the paper's Fig. 2A.

    One marker per number of concepts: the mean over the SAEs of that size, error bars from min to max.
    ``selected`` (the selected SAE's row of the sweep table, named by its SAE) is drawn as a star at its
    held-out R^2, whether or not it is one of the grid's SAEs.
    """
    ax = new_axes(ax, (4.5, 3.2))
    for col, marker, label in (("r2_train", "o", "train"), ("r2_heldout", "s", "held-out")):
        agg = sweep_table.groupby("n_concepts")[col].agg(["mean", "min", "max"])
        ax.errorbar(
            agg.index, agg["mean"], yerr=[agg["mean"] - agg["min"], agg["max"] - agg["mean"]],
            marker=marker, capsize=3, label=label,
        )  # fmt: skip
    if selected is not None:
        _star(ax, selected["n_concepts"], selected["r2_heldout"], f"selected: {selected.name} (held-out)")
    ax.set_xscale("log")
    ax.set_xlabel("number of concepts c")
    ax.set_ylabel("R²")
    ax.legend(frameon=False, fontsize="small")
    return ax


def _star(ax: Axes, x: float, y: float, label: str) -> None:
    """The selected SAE's mark, the same in every sweep plot."""
    ax.scatter([x], [y], marker="*", s=220, color="black", zorder=4, label=label)


def r2_vs_k(
    sweep_table: pd.DataFrame,
    *,
    min_r2: float | None = None,
    selected: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """R^2 against k (concepts active per cell): held-out (solid) and train (dashed), one colour per c.

    Means over seeds. ``min_r2`` draws the selection threshold; ``selected`` (an SAE name) is starred when the
    table holds it (the selected SAE can come from the grid, outside the k sweep).
    """
    ax = new_axes(ax, (4.5, 3.2))
    for c, rows in sweep_table.groupby("n_concepts"):
        agg = rows.groupby("k")[["r2_heldout", "r2_train"]].mean()
        (line,) = ax.plot(agg.index, agg["r2_heldout"].to_numpy(), marker="o", label=f"c = {c}, held-out")
        ax.plot(agg.index, agg["r2_train"].to_numpy(), marker="o", linestyle="--", color=line.get_color(),
                label=f"c = {c}, train")  # fmt: skip
    if min_r2 is not None:
        ax.axhline(min_r2, color="grey", linestyle="--", linewidth=1, label=f"$R^2$ = {min_r2:g}")
    if selected in sweep_table.index:
        row = sweep_table.loc[selected]
        _star(ax, row["k"], row["r2_heldout"], f"selected: {selected}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (concepts active per cell)")
    ax.set_ylabel("R²")
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def dead_concepts(sweep_table: pd.DataFrame, *, selected: str | None = None, ax: Axes | None = None) -> Axes:
    """Active and dead concepts (over a full pass on training cells) per SAE, as stacked bars; ``selected`` (an
    SAE name in the table) is outlined and its tick label set in bold."""
    ax = new_axes(ax, (max(4.0, 0.8 * len(sweep_table)), 3.2))
    active = sweep_table["n_active_train"]
    dead = sweep_table["n_concepts"] - active
    edges = ["black" if name == selected else "none" for name in sweep_table.index]
    ax.bar(sweep_table.index, active, label="active", color="tab:green", edgecolor=edges, linewidth=2)
    ax.bar(
        sweep_table.index, dead, bottom=active, label="dead", color="tab:red", edgecolor=edges, linewidth=2
    )
    ax.set_ylabel("concepts")
    ticks = ax.set_xticks(range(len(sweep_table)), [_mark(n, selected) for n in sweep_table.index])
    for tick, name in zip(ticks, sweep_table.index, strict=True):
        tick.label1.set_fontweight("bold" if name == selected else "normal")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(frameon=False)
    return ax


def _mark(name: str, selected: str | None) -> str:
    """An SAE's label, with "(selected)" after the selected one."""
    return f"{name} (selected)" if name == selected else str(name)


def training_curves(
    histories: Mapping[str, pd.DataFrame], *, selected: str | None = None, axes: Sequence[Axes] | None = None
) -> list[Axes]:
    """Training curves: loss (log), held-out R^2 and windowed dead fraction against epochs; ``selected`` (a
    key of ``histories``) is drawn in black, thicker.

    Three panels, so it takes and returns three Axes (default: a new figure).
    """
    axes = new_axes_row(axes, 3, (12, 3.2))
    for name, hist in histories.items():
        style = {"color": "black", "linewidth": 2.5, "zorder": 3} if name == selected else {}
        for ax, column in zip(axes, ("loss", "r2_heldout", "dead_fraction"), strict=True):
            ax.plot(hist["epoch"], hist[column], label=_mark(name, selected), **style)
    axes[0].set_yscale("log")
    for ax, ylabel in zip(
        axes, ("training loss (FVU + AuxK/32)", "held-out R²", "dead fraction"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[1].set_ylim(max(0.0, min(float(h["r2_heldout"].min()) for h in histories.values())), 1.0)
    axes[2].legend(frameon=False, fontsize="small", bbox_to_anchor=(1.02, 1.0), loc="upper left")
    return axes
