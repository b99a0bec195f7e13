"""The explorer's HTML: a card (:func:`card_html`) and the atlas page around cards (:func:`atlas_html`), pure text.

The card is the HTML of a :class:`corelib.tl.cards.CardData`, the same in the notebook explorer and the atlas,
so the widget and the atlas cannot disagree. Gene bars are inline SVG whose ``<title>`` elements give each
gene's NCBI description on hover; the UMAP is an inline base64 PNG and the histogram an inline SVG; the search
box is a few lines of inline JavaScript. Nothing is fetched from the network, and every piece of text that
comes from data (gene names and descriptions, labels, GSEA terms, metadata labels) is HTML-escaped. A piece the
card's data lacks (``CardData.absent``) is shown as absent, with its reason.

The search box also reads the page address: ``index.html#q=<query>`` (or ``?q=<query>``) opens the atlas
with that search applied, which is how a link (or a headless browser) points at one concept.

This module reads nothing and writes nothing: :mod:`corelib.explorer.atlas` writes the page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from corelib.tl.attribution import CORRELATIONAL
from corelib.tl.cards import CardData, gsea_label
from corelib.tl.evidence import unit_batch_mark
from corelib.tl.steering import SteeringResult

#: Genes listed in the steering panel and compared with the top attributed genes.
N_GENES = 10

#: Page layout of the atlas.
_PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f5f5;color:#222}
header{position:sticky;top:0;background:#fff;padding:10px 18px;border-bottom:1px solid #ddd;z-index:1}
header h1{font-size:18px;margin:0 0 6px 0}
#search{width:420px;font-size:14px;padding:4px 8px}
#count{margin-left:12px;color:#666;font-size:13px}
main{padding:12px 18px}
details.cx-overview{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:0 0 14px 0}
details.cx-overview summary{font-weight:600;cursor:pointer}
table.cx-sortable{border-collapse:collapse;font-size:12px;margin-top:6px}
table.cx-sortable th{cursor:pointer;text-align:left;background:#f0f0f0;padding:3px 6px;white-space:nowrap}
table.cx-sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.cx-sortable th[aria-sort=descending]::after{content:" \\25BC"}
table.cx-sortable td{border-bottom:1px solid #eee;padding:2px 6px;vertical-align:top}
"""
#: Style of a card; its classes start with ``cx-`` so that it can live inside a Jupyter page (the widget).
CARD_CSS = """
.cx-card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:0 0 14px 0;color:#222}
.cx-card[hidden]{display:none}
.cx-card h2{font-size:16px;margin:0 0 4px 0}
.cx-card h3{font-size:13px;margin:10px 0 4px 0;color:#444}
.cx-meta{color:#555;font-size:12px;margin:0 0 6px 0}
.cx-cols{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.cx-gene-bars text{font-size:11px;font-family:inherit}
.cx-comp-row{display:flex;align-items:center;font-size:11px;margin:1px 0}
.cx-comp-label{width:150px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cx-comp-bar{background:#55a868;height:10px;margin-right:4px}
table.cx-tbl{border-collapse:collapse;font-size:11px}
table.cx-tbl td,table.cx-tbl th{border-bottom:1px solid #eee;padding:2px 6px;text-align:left}
.cx-labels{background:#fffbe6;border:1px solid #f0e0a0;padding:4px 8px;font-size:12px}
.cx-batch{background:#fdecea;border:1px solid #f0b8b0;padding:4px 8px;font-size:12px;font-weight:600}
"""

_JS = """
function applySearch(query){
  var q=(query||'').trim().toLowerCase(), words=q.split(/\\s+/).filter(Boolean);
  var cards=Array.prototype.slice.call(document.querySelectorAll('section.cx-card'));
  var exact=cards.filter(function(c){return c.dataset.name.toLowerCase()===q;});
  var shown=0;
  cards.forEach(function(c){
    var ok=!q||(exact.length?exact.indexOf(c)>=0:words.every(function(w){return c.dataset.search.indexOf(w)>=0;}));
    c.hidden=!ok; if(ok){shown++;}
  });
  document.getElementById('count').textContent=shown+' of '+cards.length+' cards';
}
function queryFromAddress(){
  var m=location.hash.match(/[#&]q=([^&]*)/);
  if(m){return decodeURIComponent(m[1].replace(/\\+/g,' '));}
  return new URLSearchParams(location.search).get('q')||'';
}
function sortBy(th){
  var table=th.closest('table'), body=table.tBodies[0], col=th.cellIndex;
  var numeric=th.dataset.type==='number', dir=th.getAttribute('aria-sort')==='descending'?1:-1;
  if(!th.hasAttribute('aria-sort')&&!numeric){dir=1;}
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
    var x=a.cells[col].dataset.sort, y=b.cells[col].dataset.sort;
    if(numeric){x=parseFloat(x); y=parseFloat(y);
      if(isNaN(x)||isNaN(y)){return isNaN(x)-isNaN(y);} return dir*(x-y);}
    return dir*x.localeCompare(y);
  });
  rows.forEach(function(r){body.appendChild(r);});
  Array.prototype.forEach.call(th.parentNode.cells,function(c){c.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',dir>0?'ascending':'descending');
}
function showCard(){
  var card=document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if(card&&card.classList.contains('cx-card')&&card.hidden){
    var box=document.getElementById('search'); box.value=''; applySearch(''); card.scrollIntoView();
  }
}
window.addEventListener('DOMContentLoaded',function(){
  var box=document.getElementById('search');
  box.value=queryFromAddress();
  box.addEventListener('input',function(){applySearch(box.value);});
  applySearch(box.value);
  Array.prototype.forEach.call(document.querySelectorAll('table.cx-sortable th'),function(th){
    th.addEventListener('click',function(){sortBy(th);});
  });
});
window.addEventListener('hashchange',showCard);
"""


def esc(value: object) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def gene_bars_svg(genes: pd.DataFrame, threshold: float, *, width: int = 480, row: int = 17) -> str:
    """Top genes as an inline SVG bar chart; hovering a bar shows the gene's NCBI description.

    Parameters
    ----------
    genes
        ``CardData.genes``: columns ``gene``, ``score``, ``description``, highest score first.
    threshold
        Importance threshold, drawn as a dashed line.
    width, row
        Width of the chart and height of one bar, in pixels.

    Returns
    -------
    An ``<svg>`` element (one ``<g class="cx-gene-bar">`` per gene, each with a ``<title>``).
    """
    if genes.empty:
        return '<p class="cx-meta">No attribution scores for this unit.</p>'
    # Room for the longest gene name (about 7 px per character at the page's font size, e.g. RP11-139H15.1).
    label_w, value_w = max(80, 7 * int(genes["gene"].astype(str).str.len().max()) + 8), 56
    plot_w = width - label_w - value_w
    top = max(float(genes["score"].max()), threshold, 1e-12)
    height = row * len(genes) + 6
    parts = [
        f'<svg class="cx-gene-bars" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (gene, score, desc) in enumerate(genes[["gene", "score", "description"]].itertuples(index=False)):
        y = 3 + i * row
        bar = max(float(score), 0.0) / top * plot_w
        tip = f"{gene} (score {score:.3g}): {desc or 'no NCBI description'}"
        parts.append(
            f'<g class="cx-gene-bar"><title>{esc(tip)}</title>'
            f'<text x="{label_w - 4}" y="{y + row - 5}" text-anchor="end">{esc(gene)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{bar:.1f}" height="{row - 4}" fill="#4c72b0"/>'
            f'<text x="{label_w + bar + 3:.1f}" y="{y + row - 5}" fill="#555">{score:.3g}</text></g>'
        )
    x = label_w + threshold / top * plot_w
    parts.append(
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#888" stroke-dasharray="3,3"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def composition_html(composition: dict[str, pd.Series], *, n_labels: int = 6) -> str:
    """Metadata composition of the active cells as small HTML bars, one block per column."""
    blocks = []
    for column, comp in composition.items():
        rows = "".join(
            f'<div class="cx-comp-row"><span class="cx-comp-label" title="{esc(label)}">{esc(label)}</span>'
            f'<span class="cx-comp-bar" style="width:{frac * 120:.0f}px"></span>{frac:.0%}</div>'
            for label, frac in comp.head(n_labels).items()
        )
        rows = rows or '<p class="cx-meta">no active cells</p>'
        blocks.append(f"<div><h3>{esc(column)}</h3>{rows}</div>")
    return "".join(blocks)


def _shorten(column: pd.Series, limit: int = 80) -> pd.Series:
    """Text cells cut to ``limit`` characters (long leading-edge gene lists), other columns unchanged."""
    if column.dtype != object:
        return column
    return column.map(lambda v: v[: limit - 1] + "…" if isinstance(v, str) and len(v) > limit else v)


def metadata_call_html(metadata: pd.Series) -> str:
    """Notebook 03's metadata call of the unit (paper 3.1): ``"cell_type-specific"``, ``"mixed"``, ..."""
    if metadata is None or metadata.empty or "call" not in metadata:
        return ""
    return f"<h3>Metadata call</h3><p class='cx-meta'>{esc(metadata['call'])}</p>"


def table_html(
    table: pd.DataFrame, columns: Sequence[str] | None = None, *, max_rows: int = 10, empty: str = "none"
) -> str:
    """A small escaped HTML table (numbers with 3 significant digits), restricted to ``columns`` if given;
    the text ``empty`` when there are no rows."""
    if table.empty:
        return f'<p class="cx-meta">{esc(empty)}</p>'
    if columns is not None:
        table = table[[c for c in columns if c in table.columns]]
    table = table.head(max_rows).apply(_shorten)
    return table.to_html(index=False, escape=True, border=0, classes="cx-tbl", float_format="{:.3g}".format)


def umap_png(card: CardData, *, size: int = 200, blinded: bool = False) -> str:
    """The UMAP coloured by activation (viridis; where cells overlap, the highest activation shows;
    prototypes as red squares), as a PNG data URI.

    Points are drawn straight into a pixel grid with numpy (no per-cell Python loop), so an atlas of
    thousands of concepts over many cells stays fast; :func:`corelib.pl.umap` is the matplotlib
    version for figures. ``blinded`` shows negative activations (neurons) as 0, as the blinded study does.
    Cells without UMAP coordinates (NaN: outside a sampled UMAP) are left out, prototypes among them too.
    """
    import matplotlib
    import matplotlib.image

    if card.umap is None:  # the data has no UMAP (card.absent["umap"] says why)
        return ""
    # cells outside notebook 01's UMAP sample (an atlas above umap_max_cells) have no coordinates: not drawn
    shown = np.isfinite(card.umap).all(axis=1)
    if not shown.any():
        return ""
    xy, prototypes = card.umap[shown], (np.cumsum(shown) - 1)[card.prototypes[shown[card.prototypes]]]
    margin = 4
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    scaled = (xy - lo) / np.where(hi > lo, hi - lo, 1.0) * (size - 2 * margin - 1)
    col, row = np.round(margin + scaled).astype(int).T
    row = size - 1 - row  # image rows grow downwards
    values = np.clip(card.activation, 0, None) if blinded else np.asarray(card.activation, dtype=float)
    values = values[shown]
    center = np.full((size, size), -np.inf)
    np.maximum.at(center, (row, col), values)
    padded = np.pad(center, 1, constant_values=-np.inf)
    grid = np.max(
        [padded[1 + dr : size + 1 + dr, 1 + dc : size + 1 + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)],
        axis=0,
    )  # each cell: 3 x 3 pixels
    span = values.max() - values.min()
    image = matplotlib.colormaps["viridis"]((grid - values.min()) / (span if span > 0 else 1.0))
    image[np.isinf(grid)] = 1.0  # white background
    for r, c in zip(row[prototypes], col[prototypes], strict=True):
        image[max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3] = (0.84, 0.15, 0.16, 1.0)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, image, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_svg(activation: np.ndarray, *, bins: int = 30, width: int = 220, height: int = 120) -> str:
    """Histogram of activations over all cells as inline SVG (log-scaled counts; hover gives each bin)."""
    counts, edges = np.histogram(activation, bins=bins)
    scale = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
    bar_w = width / bins
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{(1 - h) * (height - 14):.1f}" width="{bar_w - 1:.1f}" '
        f'height="{h * (height - 14):.1f}" fill="#4c72b0"><title>{edges[i]:.3g} to {edges[i + 1]:.3g}: '
        f"{c} cells</title></rect>"
        for i, (c, h) in enumerate(zip(counts, scale, strict=True))
    )
    axis = (
        f'<text x="0" y="{height - 2}" font-size="10">{edges[0]:.3g}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>'
    )
    svg = f'<svg class="cx-histogram" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    return f"{svg}{bars}{axis}</svg>"


def _annotation_text(card: CardData) -> str:
    """One line for the unit's top GSEA term from the per-unit GSEA table."""
    a = card.annotation
    label = gsea_label(a)
    if not label:
        reason = a.get("reason", "") if len(a) else card.absent.get("gsea", "")
        return "no GSEA label" + (f": {reason}" if isinstance(reason, str) and reason else "")
    parts = [label]
    for key in ("nes", "pval", "qval", "annotation"):
        if key in a and pd.notna(a[key]):
            value = a[key]
            parts.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return " - ".join(parts)


def labels_html(labels: pd.DataFrame) -> str:
    """Expert answers (latest per rater) as an escaped list."""
    if labels is None or labels.empty:
        return ""
    items = "".join(
        f"<li><b>{esc(r.label) or '(no label)'}</b> - {esc(r.rater)}: interpretable {esc(r.interpretable)}, "
        f"confidence {esc(r.confidence)}, {esc(r.kind)}. {esc(r.description)}</li>"
        for r in labels.itertuples(index=False)
    )
    return f'<div class="cx-labels"><b>Expert labels</b><ul>{items}</ul></div>'


#: Columns of the GSEA and DEG tables shown on a card (when present).
GSEA_COLUMNS = ["term", "nes", "pval", "fdr", "set_size", "lead_genes"]
DEG_COLUMNS = ["rank", "gene", "logfoldchange", "pval_adj", "top_attributed"]


def steering_html(result: SteeringResult | str, attributed: Sequence[str], *, n_genes: int = N_GENES) -> str:
    """The steering panel: the most moved genes and their overlap with the top attributed, or why absent."""
    head = "<h3>Steering (decoder side: what the model's decoder makes of the concept)</h3>"
    if isinstance(result, str):
        return f"{head}<p class='cx-meta'>No steering: {esc(result)}</p>"
    shared = result.overlap(attributed, n_genes)
    text = (
        f"{result.n_cells} prototypes moved by {result.amount:+g} x their activation ({result.activation:.3g}) "
        f"along the concept's dictionary row and decoded; expected counts per 10k before/after. "
        f"{len(shared)} of the top {n_genes} moved genes are among the top {n_genes} attributed"
        + (f": {', '.join(shared)}." if shared else ".")
    )
    top = result.top(n_genes).assign(attributed=lambda t: np.where(t["gene"].isin(shared), "yes", ""))
    return f"{head}<p class='cx-meta'>{esc(text)}</p>{table_html(top, max_rows=n_genes)}"


def _absent(card: CardData, piece: str, empty: str) -> str:
    """What an empty table of the card says: why the data lacks the piece, else ``empty`` (it has no rows)."""
    return f"absent: {card.absent[piece]}" if piece in card.absent else empty


def _genes_html(card: CardData) -> str:
    """The card's top attributed genes as bars, or, without an attribution, why its genes are only the DEG's."""
    if "attribution" in card.absent:
        return (
            f"<div><h3>Genes: {esc(CORRELATIONAL)}</h3><p class='cx-meta'>"
            f"{esc(_absent(card, 'attribution', ''))}; the DEG table below lists them.</p></div>"
        )
    return (
        "<div><h3>Top attributed genes (hover for the NCBI description)</h3>"
        f"{gene_bars_svg(card.genes, card.threshold)}</div>"
    )


def card_html(
    card: CardData,
    *,
    blinded: bool = False,
    title: str | None = None,
    labels: pd.DataFrame | None = None,
    steering: bool = True,
) -> str:
    """The HTML of one card (used by the notebook explorer and the atlas).

    Parameters
    ----------
    card
        The card data.
    blinded
        Blinded study: hide the unit's identity (name, kind, status), its GSEA terms, matched concepts, the
        activation scale (histogram, negative values) and the number of active cells; show ``title``
        instead of the name. The UMAP pattern stays: it is part of what the expert judges.
    title
        Heading; default the unit name.
    labels
        Expert answers to list on the card (e.g. ``explorer.labels_for(read_labels(run), card.name)``).
    steering
        Show a concept's steering panel (:func:`steering_html`); the explorer widget draws its own, with a slider.

    Returns
    -------
    A ``<section class="cx-card">`` element whose ``data-search`` holds the searchable text.
    """
    title = title or (card.name if not blinded else "item")
    summary = (
        f"{card.n_important} genes above the importance threshold {card.threshold:g}, "
        f"{card.n_important_relative} above {card.relative_threshold:.0%} of the prototypes' activation"
        if "attribution" not in card.absent
        else f"no attributed genes ({card.absent['attribution']}): its genes are correlational (DEG)"
    )
    if not blinded:  # a neuron's scale, and its fixed 10% of active cells, would give it away
        scale = f" ({card.prototype_activation:.3g})" if "attribution" not in card.absent else ""
        summary += f"{scale}; {card.n_active} active cells"
    if card.umap is None:
        activation = f"<p class='cx-meta'>No UMAP: {esc(card.absent.get('umap', 'the data has none.'))}</p>"
    else:
        activation = f"<img alt='UMAP coloured by activation' src='{umap_png(card, blinded=blinded)}'/>"
    if not blinded:
        activation += f"<br>{histogram_svg(card.activation)}"
    parts = [f"<h2>{esc(title)}</h2>"]
    batch = (
        unit_batch_mark(card.metadata) if not blinded else ""
    )  # a neuron is never one: it would give it away
    if not blinded:
        parts.append(
            f"<p class='cx-meta'>{esc(card.kind)} - attribution: {esc(_absent(card, 'attribution', card.status))}</p>"
        )
    if batch:
        parts.append(f"<p class='cx-batch'>{esc(batch)}</p>")
    parts += [
        f"<p class='cx-meta'>{esc(summary)}</p>",
        labels_html(labels),
        "<div class='cx-cols'>",
        _genes_html(card),
        f"<div><h3>Activation on the UMAP</h3>{activation}</div>",
        f"<div>{metadata_call_html(card.metadata)}{composition_html(card.composition)}</div></div>",
        "<div class='cx-cols'>",
    ]
    if not blinded:
        parts.append(
            f"<div><h3>GSEA (attribution-ranked)</h3><p class='cx-meta'>{esc(_annotation_text(card))}</p>"
            f"{table_html(card.gsea, GSEA_COLUMNS, empty=_absent(card, 'gsea_terms', 'none'))}</div>"
        )
    deg = table_html(card.deg, DEG_COLUMNS, empty=_absent(card, "deg", "no significant DEG gene"))
    parts.append(f"<div><h3>DEG: top-activating vs counterfactual cells</h3>{deg}</div>")
    if not blinded and card.kind == "concept":
        none = "none (matched_concepts.csv of the stability step lists none)"
        matched = table_html(card.matched, empty=_absent(card, "matched", none))
        parts.append(f"<div><h3>Matched concepts (stability)</h3>{matched}</div>")
    parts.append("</div>")
    if steering and not blinded and card.kind == "concept":
        parts.append(f"<div>{steering_html(card.steering, card.genes['gene'])}</div>")
    search = (
        title
        if blinded
        else " ".join(
            [
                card.name,
                gsea_label(card.annotation),
                *card.genes["gene"],  # the card's top attributed genes (n_top, 20 by default)
                *(card.deg["gene"].head(20) if "gene" in card.deg else []),
                *(str(c.index[0]) for c in card.composition.values() if len(c)),
                *([batch] if batch else []),
            ]
        )
    )
    if labels is not None and not labels.empty:
        search += " " + " ".join(labels["label"].astype(str))
    return (
        f'<section class="cx-card" id="{esc(title)}" data-name="{esc(title.lower())}" '
        f'data-search="{esc(search.lower())}">{"".join(parts)}</section>'
    )


def widget_html(card: str) -> str:
    """A card's HTML with its style, for an ``ipywidgets.HTML`` in a notebook (the explorer)."""
    return f"<style>{CARD_CSS}</style>{card}"


#: The atlas overview's columns: header -> (column of the table of :func:`overview_html`, type, hover text).
OVERVIEW_COLUMNS = {
    "#": ("rank", "number", "order by evidence (within each kind)"),
    "unit": ("name", "text", "open the card"),
    "label": ("label", "text", "expert label if any, else the GSEA label (with its annotation)"),
    "cell type": ("metadata_label", "text", "most common label of the first metadata column, active cells"),
    "share": ("top_share", "number", "its share of the unit's active cells"),
    "active": ("n_active", "number", "active cells"),
    "specificity": ("specificity", "number", "share, 95% Wilson lower bound"),
    "reliability": ("reliability", "number", "attribution split-half Spearman"),
    "label q": ("label_q", "number", "GSEA label q (set-adjusted, BH across units)"),
    "DEG genes": ("n_deg", "number", "genes DEG between top-activating and counterfactual cells"),
    "evidence": ("evidence", "number", "mean percentile over specificity, reliability, label, DEG genes"),
    "batch AUROC": (
        "batch_auroc",
        "number",
        "batch concepts only (with a batch_key): AUROC of the batch they mark against the other cells of a cell "
        "type; the card names the batch. Sort on it to set them apart",
    ),
    "top genes": ("top_genes", "text", "top attributed genes"),
    "DEG (first)": ("deg_genes", "text", "first DEG genes"),
}


def _overview_cell(value: object, kind: str, column: str) -> str:
    """One ``<td>`` of the overview, with the value it sorts by (``data-sort``)."""
    if kind == "text":
        return f'<td data-sort="{esc(value)}">{esc(value)}</td>'
    number = float(value) if pd.notna(value) else float("nan")
    if np.isnan(number):
        return '<td data-sort="">-</td>'
    shown = (
        f"{number:.0%}"
        if column in ("top_share", "specificity")
        else f"{number:.2g}"
        if column == "label_q"
        else f"{number:.2f}"
        if column in ("reliability", "evidence", "batch_auroc")
        else f"{number:.0f}"
    )
    return f'<td data-sort="{number:.6g}">{shown}</td>'


def overview_html(table: pd.DataFrame) -> str:
    """The atlas' overview: one row per card, in the table's order, sortable by clicking a header (inline
    JavaScript of :func:`atlas_html`); each unit links to its card.

    ``table``: one row per card with the columns of :data:`OVERVIEW_COLUMNS` (``rank``, ``name``, ``label``,
    ``metadata_label``, ``top_share``, ``n_active``, ``specificity``, ``reliability``, ``label_q``, ``n_deg``,
    ``evidence``, ``top_genes``, ``deg_genes``; ``batch_auroc`` only with batch marks, else no such column).
    """
    shown = {h: c for h, c in OVERVIEW_COLUMNS.items() if c[0] != "batch_auroc" or "batch_auroc" in table}
    head = "".join(
        f'<th data-type="{kind}" title="{esc(tip)}">{esc(header)}</th>'
        for header, (_, kind, tip) in shown.items()
    )
    rows = []
    for _, row in table.iterrows():
        cells = []
        for column, kind, _ in shown.values():
            cell = _overview_cell(row[column], kind, column)
            if column == "name":
                cell = f'<td data-sort="{esc(row[column])}"><a href="#{esc(row[column])}">{esc(row[column])}</a></td>'
            cells.append(cell)
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<details class="cx-overview" open><summary>Overview: {len(rows)} units, most evidence first '
        "(click a header to sort, a unit to open its card)</summary>"
        f'<table class="cx-sortable" id="overview"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></details>"
    )


def atlas_html(cards_html: Sequence[str], *, title: str, overview: str = "") -> str:
    """A complete, self-contained HTML page around card elements, with the search box and, above the cards,
    ``overview`` (:func:`overview_html`) when given."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_PAGE_CSS}{CARD_CSS}</style><script>{_JS}</script></head><body>"
        f"<header><h1>{esc(title)}</h1><input id='search' type='search' "
        "placeholder='search: C12, a gene, a GSEA term, a cell type, a label' autocomplete='off'>"
        f"<span id='count'></span></header><main>{overview}{''.join(cards_html)}</main></body></html>"
    )
