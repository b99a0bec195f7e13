"""The run report's claims page: the paper's claims with this run's values, nulls and verdicts."""

from __future__ import annotations

import html as html_lib

import pandas as pd

from corelib.runs.layout import LAYOUT, RunDir
from corelib.tl.claims import format_mean_std

#: Style of ``index.html``: verdict rows are coloured.
REPORT_CSS = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    ".holds{background:#d9f2d9}.fails{background:#f8d7d7}.at-the-margin{background:#fff3cd}"
    ".no-power{background:#e2e3e5}.not-measured{background:#eee}"
)


def claims_section(run_dir: RunDir) -> str:
    """The claims page at the top of ``index.html``: one row per paper claim from the run's
    ``07_claims/claims.csv`` (:func:`corelib.tl.claims.evaluate_claims`), or why there is none yet."""
    path = run_dir.root / LAYOUT["claims"]
    if not path.exists():
        return (
            "<h2>Claims</h2><p>Not measured yet: notebook 07_claims writes the claims table "
            f"({html_lib.escape(str(path.relative_to(run_dir.root)))}) after notebooks 01-05.</p>"
        )
    table = pd.read_csv(path, index_col="claim")
    head = ["claim", "this run (mean ± std)", "n", "compared with", "null", "paper", "verdict"]
    rows = []
    for name, r in table.iterrows():
        cells = [
            f"<b>{html_lib.escape(str(r['statement']))}</b><br><small>{html_lib.escape(str(name))}, "
            f"{html_lib.escape(str(r['source']))}</small>",
            format_mean_std(r["value"], r["std"]),
            f"{int(r['n'])}",
            f"{html_lib.escape(str(r['comparison']))}: {format_mean_std(r['comparison_value'], r['comparison_std'])}",
            f"{html_lib.escape(str(r['null']))}: {format_mean_std(r['null_value'], r['null_std'])}",
            html_lib.escape(str(r["paper"])),
            f"<b>{html_lib.escape(str(r['verdict']))}</b><br><small>{html_lib.escape(str(r['reason']))}</small>",
        ]
        css = str(r["verdict"]).replace(" ", "-")
        rows.append(f"<tr class='{css}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return (
        "<h2>Claims</h2><p>Every headline claim of the paper measured on this run, over SAE seeds, beside "
        "what it is compared with and its null; the verdict is computed from these numbers "
        "(rules in <code>corelib.tl.claims.verdict</code>). Details: notebook 07_claims.</p>"
        f"<table><tr>{header}</tr>{''.join(rows)}</table>"
    )
