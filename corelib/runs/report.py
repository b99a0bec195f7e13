"""The run report: its claims page (the paper's claims with this run's values, nulls and verdicts) and the
notebooks rendered as self-contained HTML pages that open offline."""

from __future__ import annotations

import html as html_lib
import io
import json
import os
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd

from corelib import pl
from corelib._io import atomic_write
from corelib.runs.layout import LAYOUT, RunDir
from corelib.runs.prose import summarize_verdicts
from corelib.runs.registry import step
from corelib.tl.attribution import RELIABLE_SPEARMAN
from corelib.tl.claims import format_mean_std

#: Style of ``index.html``: verdict rows are coloured.
REPORT_CSS = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    ".holds{background:#d9f2d9}.fails{background:#f8d7d7}.at-the-margin{background:#fff3cd}"
    ".no-power{background:#e2e3e5}.not-measured{background:#eee}"
)


def reliability_paragraph(run_dir: RunDir) -> str:
    """One paragraph on the attribution's split-half reliability (notebook 03's ``attribution_status.csv``):
    per kind, the median Spearman of the paper's and of the expression-signed scores and the share of units at
    or above :data:`~corelib.tl.attribution.RELIABLE_SPEARMAN`; empty when not measured."""
    path = run_dir.root / LAYOUT["attribution_status"]
    if not path.exists():
        return ""
    status = pd.read_csv(path)
    if "signed_split_half" not in status or status["split_half"].isna().all():
        return ""
    status = status[status["status"] == "attributed"]
    parts = []
    for kind, group in status.groupby("kind"):
        paper, signed = group["split_half"], group["signed_split_half"]
        parts.append(
            f"{html_lib.escape(str(kind))}s: median {paper.median():.2f} (paper's scores, "
            f"{(paper >= RELIABLE_SPEARMAN).mean():.0%} of {len(group)} at or above {RELIABLE_SPEARMAN}), "
            f"{signed.median():.2f} signed by the expression change ({(signed >= RELIABLE_SPEARMAN).mean():.0%})"
        )
    return (
        "<p><b>Attribution reliability</b> (split-half Spearman of each unit's gene scores, even vs odd "
        f"prototypes; notebook 03 section 7): {'; '.join(parts)}. Gene lists of units below the bar vary with "
        "the prototypes drawn.</p>"
    )


def run_summary(run_dir: RunDir) -> str:
    """One line under the report's title: the dataset, the model and the SAE this run is about (each once the
    step that chooses it has run)."""
    parts = []
    embed_path, sae_path = run_dir.root / LAYOUT["embed_summary"], run_dir.root / LAYOUT["sae_selected"]
    if embed_path.exists():
        embed = json.loads(embed_path.read_text())
        parts.append(f"dataset <b>{html_lib.escape(str(embed.get('dataset', '?')))}</b>")
        parts.append(
            f"model <b>{html_lib.escape(str(embed.get('model', '?')))}</b> ({embed.get('dim', '?')} dimensions)"
        )
    if sae_path.exists():
        sae = json.loads(sae_path.read_text())
        details = [
            *([f"{sae['n_concepts']} concepts"] if "n_concepts" in sae else []),
            *([f"k {sae['k']}"] if "k" in sae else []),
            *([f"held-out R<sup>2</sup> {sae['r2_heldout']:.3f}"] if "r2_heldout" in sae else []),
        ]
        parts.append(
            f"SAE <b>{html_lib.escape(str(sae.get('sae', '?')))}</b>"
            + (f" ({', '.join(details)})" if details else "")
        )
    return f"<p>{', '.join(parts)}.</p>" if parts else ""


def claims_figure(table: pd.DataFrame) -> str:
    """The claims' forest plot (:func:`corelib.pl.claims_forest`, in corelib's theme) as an inline SVG
    ``<figure>``: the page keeps no file beside it and loads nothing; text is drawn as paths, so the page shows
    the labels exactly where the overlap check measured them."""
    with mpl.rc_context():
        pl.set_theme()
        mpl.rcParams["svg.hashsalt"] = "corelib"  # the same ids, so the same page, from the same table
        fig = pl.claims_forest(table).figure
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    return (
        f"<figure>{svg[svg.index('<svg') :].strip()}<figcaption>Each claim: this run's value (filled circle, in its "
        "verdict's colour), what it is compared with (open square) and its null (grey diamond), mean ± std "
        "over SAE seeds (batch_suppression: changes of scib's scores, the spread over random-concept seeds)."
        "</figcaption></figure>"
    )


def claims_section(run_dir: RunDir) -> str:
    """The claims page at the top of ``index.html``: one row per paper claim from the run's
    ``07_claims/claims.csv`` (:func:`corelib.tl.claims.evaluate_claims`), or why there is none yet, then the
    attribution's reliability (:func:`reliability_paragraph`)."""
    path = run_dir.root / LAYOUT["claims"]
    if not path.exists():
        return (
            "<h2>Claims</h2><p>Not measured yet: notebook 07_claims writes the claims table "
            f"({html_lib.escape(str(path.relative_to(run_dir.root)))}) after notebooks 01-05.</p>"
            + reliability_paragraph(run_dir)
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
        f"<h2>Claims</h2><p><b>In short.</b> {html_lib.escape(summarize_verdicts(table))}</p>"
        "<p>Every headline claim of the paper measured on this run, over SAE seeds, beside "
        "what it is compared with and its null; the verdict is computed from these numbers "
        "(rules in <code>corelib.tl.claims.verdict</code>). Details: "
        f"<a href='{LAYOUT['html'].format(name=step('claims').notebook)}'>notebook {step('claims').notebook}</a>.</p>"
        f"{claims_figure(table)}<table><tr>{header}</tr>{''.join(rows)}</table>"
        + reliability_paragraph(run_dir)
    )


#: nbconvert's lab template without the scripts it loads from CDNs (require.js, MathJax, mermaid, the widget
#: renderer), so that a page opens offline: math stays as TeX source, widgets are not drawn.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def render_html(notebook: str | os.PathLike, html: str | os.PathLike) -> Path:
    """Render an executed notebook to a self-contained HTML file (atomically) that opens offline.

    Images are embedded and nothing is loaded from the network (:data:`OFFLINE_TEMPLATE`).
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="offline.html.j2",
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    with atomic_write(html) as fh:
        fh.write(body)
    return Path(html)


def mark_unfinished_cells(notebook: str | os.PathLike) -> None:
    """Correct papermill's cell statuses in a notebook whose execution was interrupted.

    papermill marks every cell ``completed`` when execution stops, including the one that was running and
    those never started. Here a cell that never started is ``pending`` and a code cell that got no reply
    from the kernel is ``interrupted``.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        meta = cell.metadata.get("papermill", {})
        if meta.get("start_time") is None:
            meta["status"] = "pending"
        elif cell.cell_type == "code" and "shell.execute_reply" not in cell.metadata.get("execution", {}):
            meta["status"] = "interrupted"
    with atomic_write(notebook) as fh:
        nbformat.write(nb, fh)
