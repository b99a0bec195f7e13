"""The project's plot style: seaborn's theme with corelib's choices, set once per session (as scanpy's
``sc.set_figure_params``); a plot function never changes the style of the session that calls it."""

from __future__ import annotations

import seaborn as sns

#: rcParams on top of seaborn's "ticks" style: no top/right spines, a layout that makes room for labels
#: (figures made outside corelib too), and figures saved at their drawn size.
THEME_RC = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.constrained_layout.use": True,
    "savefig.bbox": "tight",
    "legend.frameon": False,
}


def set_theme(*, dpi: int = 90, font_scale: float = 0.85, palette: str = "colorblind") -> None:
    """Set corelib's plot style for this Python session: seaborn's "ticks" theme and :data:`THEME_RC`.

    Call it once at the top of a notebook; every figure drawn afterwards (``cl.pl`` or not) uses it.
    Undo it with ``matplotlib.rcdefaults()``, or scope it with ``with matplotlib.rc_context(): set_theme()``.

    Parameters
    ----------
    dpi
        Resolution of figures shown in a notebook (``figure.dpi``).
    font_scale
        Scale of seaborn's "notebook" font sizes (0.85: labels of about 10 pt, ticks and legends 9 pt).
    palette
        seaborn palette of the colour cycle (the default tells colours apart under colour blindness).
    """
    rc = {**THEME_RC, "figure.dpi": dpi}
    sns.set_theme(context="notebook", style="ticks", palette=palette, font_scale=font_scale, rc=rc)
