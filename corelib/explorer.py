"""Concept explorer (paper 3.3, appendix D): concept cards, expert labels, blinded study, ipywidgets UI.

Three layers, so that the notebook widget and the static atlas (:mod:`corelib.report`) can never disagree:

1. **Data** - :func:`load_run_data` reads a finished run directory once (tables of notebooks 01-04 only);
   :func:`concept_card` turns one concept or neuron into a :class:`CardData`; :func:`unit_summary` gives
   one searchable row per unit.
2. **Plots** (``pl``-like, never compute) - :func:`plot_gene_bars`, :func:`plot_umap`,
   :func:`plot_histogram`, :func:`plot_composition`, :func:`plot_card`, :func:`plot_interpretability`
   (paper Fig. 3A.a).
3. **Widgets** - :class:`Explorer` (browse and label) and :class:`StudyExplorer` (blinded study), thin
   ipywidgets layouts over the two layers above; the card itself is :func:`corelib.report.card_html`.

Expert answers go to ``run.path("labels")`` (``06_explorer/labels.jsonl``): one JSON object per submit,
appended, flushed and fsync-ed, so nothing is lost when the kernel dies. Reading takes the latest answer per
(rater, item). In a blinded study an item is an opaque token; the token -> unit key is a separate file
(``06_explorer/study_<id>_key.csv``) that the interface never shows.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from corelib.runs import RunDir, attribution_path, load_sae

if TYPE_CHECKING:
    from corelib.attribution import Attribution

KINDS: tuple[str, ...] = ("concept", "neuron")
#: Answers of the labelling form (paper appendix D, Fig. 9 right).
INTERPRETABLE_CHOICES: tuple[str, ...] = ("yes", "partly", "no")
CONFIDENCE_CHOICES: tuple[int, ...] = (1, 2, 3, 4, 5)
LABEL_KIND_CHOICES: tuple[str, ...] = ("cell type", "biological process", "tissue", "technical", "unknown")
#: Default importance thresholds on attribution scores: the paper's absolute 0.05 (SPEC 2), and relative to
#: the prototypes' activation (notebook 03's ``relative_threshold``).
DEFAULT_THRESHOLD = 0.05
DEFAULT_RELATIVE_THRESHOLD = 0.01
_PREFIX = {"concept": "C", "neuron": "N"}
#: Stability table the cards read (``run.path("stability", MATCHED_CONCEPTS)``): one row per match of a concept
#: of this run's selected SAE (column ``concept``) with a concept of another SAE (``matched_concept``,
#: ``cosine``, ``comparison`` such as "seed 1"). Tables that match other SAEs (e.g. the cross-dataset SAEs
#: trained on a shared embedding) do not belong on this run's cards.
MATCHED_CONCEPTS = "matched_concepts.csv"


# --------------------------------------------------------------------------------------------- data layer
@dataclass
class RunData:
    """Everything the explorer reads from a run directory, loaded once.

    Attributes
    ----------
    run
        The run directory.
    obs
        Cell metadata (n_cells rows).
    umap
        UMAP of the embedding (n_cells x 2).
    activations
        kind -> activations (n_cells x n_units): SAE concept codes, or the embedding for neurons.
    attribution
        kind -> the :class:`~corelib.attribution.Attribution` of notebook 03 (None when not computed).
    metadata
        kind -> per unit x metadata column calls (notebook 03), possibly empty.
    gsea
        kind -> per-unit top GSEA term (notebook 03), possibly empty.
    gsea_terms
        kind -> per-unit top terms (long table), possibly empty.
    deg
        kind -> DEG long table (unit, gene, ...), possibly empty.
    matched
        Matched concepts from the stability notebook (:data:`MATCHED_CONCEPTS`), possibly empty.
    metadata_keys
        The metadata columns whose composition a card shows.
    info
        What the run is: ``model``, ``dataset``, ``embedding`` (obsm key) and ``sae`` (selected SAE name).
    """

    run: RunDir
    obs: pd.DataFrame
    umap: np.ndarray
    activations: dict[str, np.ndarray]
    attribution: dict[str, Attribution | None]
    metadata: dict[str, pd.DataFrame]
    gsea: dict[str, pd.DataFrame]
    gsea_terms: dict[str, pd.DataFrame]
    deg: dict[str, pd.DataFrame]
    matched: pd.DataFrame
    metadata_keys: list[str]
    info: dict[str, str] = field(default_factory=dict)
    _summary: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    _scores: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    _important: dict[tuple[str, float, float], pd.DataFrame] = field(default_factory=dict, repr=False)

    def scores(self, kind: str) -> pd.DataFrame:
        """Attribution scores of the attributed units of ``kind`` (genes x unit ids); empty if none."""
        _check_kind(kind)
        attr = self.attribution[kind]
        if kind not in self._scores:
            self._scores[kind] = pd.DataFrame() if attr is None else attr.frame()
        return self._scores[kind]

    def important_genes(self, kind: str, threshold: float, relative_threshold: float) -> pd.DataFrame:
        """Important-gene counts per attributed unit (``corelib.attribution.important_gene_counts``), cached."""
        key = (kind, float(threshold), float(relative_threshold))
        if key not in self._important:
            from corelib.attribution import important_gene_counts

            attr = self.attribution[kind]
            self._important[key] = (
                pd.DataFrame(columns=["n_important", "n_important_relative"])
                if attr is None
                else important_gene_counts(attr, threshold=threshold, relative_threshold=relative_threshold)
            )
        return self._important[key]

    def units(self, kind: str) -> list[int]:
        """Unit ids of ``kind`` that have attribution scores, in increasing order."""
        return sorted(int(u) for u in self.scores(kind).columns)


@dataclass(frozen=True)
class CardData:
    """One concept's (or neuron's) card: what the explorer widget and the atlas show.

    Attributes
    ----------
    kind, unit, name
        ``"concept"``/``"neuron"``, the unit id and its display name (``C12``, ``N3``).
    genes
        Top attributed genes, highest score first: columns ``gene``, ``score``, ``description``.
    n_important
        Number of genes whose score exceeds ``threshold`` (paper 3.2: "important genes").
    n_important_relative
        Number of genes whose score exceeds ``relative_threshold`` x the prototypes' activation.
    threshold, relative_threshold
        The importance thresholds used.
    max_activation
        Highest activation over all cells.
    prototype_activation
        Mean activation of the attribution's prototypes (what an attribution score is a drop of), NaN when
        the unit was not attributed: the paper's threshold 0.05 is absolute, this gives its relative size.
    n_active
        Active cells (:func:`active_cells`).
    activation
        Activation per cell (n_cells,), for the UMAP and the histogram.
    umap
        UMAP coordinates (n_cells x 2).
    prototypes, counterfactuals
        Cell indices of the attribution's prototypes (N_p,) and counterfactuals (N_p * N_c,), empty if none.
    composition
        Metadata column -> fraction of the active cells carrying each label (sorted, sums to 1).
    metadata
        The unit's row of notebook 03's metadata table (calls per column), possibly empty.
    status
        Attribution status text (``"attributed"`` or why it was skipped).
    gsea
        Top GSEA terms: columns ``term``, ``nes``, ``pval`` (and ``fdr`` when present).
    annotation
        The unit's row of the per-unit GSEA table (top term, NES, p, annotation), possibly empty.
    deg
        DEG rows of this unit (top-activating vs counterfactual cells, appendix C), in DEG order, with
        ``top_attributed``: whether the gene is also among ``genes``.
    matched
        Matched concepts from the stability run (rows of :data:`MATCHED_CONCEPTS` for this concept).
    """

    kind: str
    unit: int
    name: str
    genes: pd.DataFrame
    n_important: int
    n_important_relative: int
    threshold: float
    relative_threshold: float
    max_activation: float
    prototype_activation: float
    n_active: int
    activation: np.ndarray
    umap: np.ndarray
    prototypes: np.ndarray
    counterfactuals: np.ndarray
    composition: dict[str, pd.Series]
    metadata: pd.Series
    status: str
    gsea: pd.DataFrame
    annotation: pd.Series
    deg: pd.DataFrame
    matched: pd.DataFrame


def unit_name(kind: str, unit: int) -> str:
    """Display name of a unit: ``C12`` for concept 12, ``N3`` for neuron 3."""
    _check_kind(kind)
    return f"{_PREFIX[kind]}{int(unit)}"


def run_title(data: RunData) -> str:
    """One line naming the run: model, dataset, SAE."""
    info = data.info
    return f"run {data.run.root.name}: {info['model']} on {info['dataset']}, SAE {info['sae']}"


def parse_unit(name: str) -> tuple[str, int]:
    """Inverse of :func:`unit_name`: ``"C12"`` -> ``("concept", 12)``."""
    text = str(name).strip()
    for kind, prefix in _PREFIX.items():
        if text[:1].upper() == prefix and text[1:].isdigit():
            return kind, int(text[1:])
    raise ValueError(f"{name!r} is not a unit name; use C<number> for a concept or N<number> for a neuron.")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not valid; use one of {', '.join(KINDS)}.")


def load_run_data(run: RunDir, metadata_keys: Sequence[str] | None = None) -> RunData:
    """Read the tables of a finished run directory that the explorer and the atlas show.

    Parameters
    ----------
    run
        A run directory with notebooks 01-03 done (04 optional: matched concepts).
    metadata_keys
        Metadata columns to show; default: the run's params file ``metadata_keys``, else the columns of
        notebook 03's metadata table, else every categorical ``obs`` column with 2-50 labels.

    Returns
    -------
    The loaded :class:`RunData`.
    """
    import anndata as ad

    if not isinstance(run, RunDir):
        raise TypeError(f"run must be a corelib.runs.RunDir (from runs.open_run), not {type(run).__name__}.")
    adata = ad.read_h5ad(run.require("embedded"), backed="r")  # the counts stay on disk
    try:
        embed_key = adata.uns.get("embed", {}).get("key")
        if embed_key not in adata.obsm:
            raise ValueError(
                f"{run.path('embedded')} has no embedding obsm[{embed_key!r}] (uns['embed']['key']); "
                "rerun notebook 01."
            )
        emb = np.asarray(adata.obsm[embed_key], dtype=np.float32)
        obs, umap = adata.obs.copy(), _umap(adata, embed_key)
        embed = dict(adata.uns["embed"])
    finally:
        adata.file.close()
    data = RunData(
        run=run,
        obs=obs,
        umap=umap,
        activations={"neuron": emb, "concept": _concept_activations(run, emb)},
        attribution={kind: _read_attribution(run, kind) for kind in KINDS},
        metadata={kind: _optional_table(run, f"metadata_{kind}s") for kind in KINDS},
        gsea={kind: _optional_table(run, f"gsea_{kind}s") for kind in KINDS},
        gsea_terms={
            kind: _optional_table(run, "interpret", f"gsea_terms_{kind}s.csv", None) for kind in KINDS
        },
        deg={kind: _optional_table(run, "interpret", f"deg_{kind}s.csv", None) for kind in KINDS},
        matched=_optional_table(run, "stability", MATCHED_CONCEPTS, None),
        metadata_keys=[],
        info={
            "model": str(embed.get("model", "")),
            "dataset": str(embed.get("dataset", "")),
            "embedding": str(embed_key),
            "sae": str(run.read_json("sae_selected")["sae"]),
        },
    )
    data.metadata_keys = list(metadata_keys) if metadata_keys else _default_metadata_keys(data)
    missing = [k for k in data.metadata_keys if k not in data.obs]
    if missing:
        raise ValueError(
            f"Metadata column(s) {', '.join(missing)} not in the run's cells; available: "
            f"{', '.join(map(str, data.obs.columns))}."
        )
    return data


def _umap(adata: Any, embed_key: str) -> np.ndarray:
    """The UMAP of the embedding: ``obsm["X_umap"]`` or ``obsm["X_umap_<model>"]``."""
    model_key = "X_umap_" + embed_key.removeprefix("X_")
    for key in ("X_umap", model_key):
        if key in adata.obsm:
            return np.asarray(adata.obsm[key], dtype=np.float32)[:, :2]
    raise ValueError(
        f"The embedded cells have no UMAP (obsm['X_umap'] or obsm[{model_key!r}]); rerun notebook 01."
    )


def _concept_activations(run: RunDir, emb_ND: np.ndarray) -> np.ndarray:
    """Concept activations (n_cells x n_concepts) of the selected SAE on the run's embedding."""
    from corelib import sae as sae_lib

    return sae_lib.encode(load_sae(run, emb_ND)[1], emb_ND)


def _read_attribution(run: RunDir, kind: str) -> Attribution | None:
    """The attribution of notebook 03 for ``kind`` (required for concepts; None for neurons if not computed)."""
    from corelib.attribution import Attribution

    path = attribution_path(run, f"{kind}s")
    if path is None and kind == "concept":
        run.require(f"attribution_{kind}s")
    return Attribution.load(path) if path is not None else None


def _optional_table(
    run: RunDir, key: str, name: str | None = None, index_col: int | None = 0
) -> pd.DataFrame:
    """A CSV table of the run directory, or an empty DataFrame when the step did not write it."""
    path = run.path(key, name)
    return pd.read_csv(path, index_col=index_col) if path.exists() else pd.DataFrame()


def _default_metadata_keys(data: RunData) -> list[str]:
    """The params file's ``metadata_keys``, else the columns of notebook 03's metadata table
    (``<column>_top``), else every categorical ``obs`` column with 2-50 labels (``cell_type`` first)."""
    import yaml

    params = data.run.path("params")
    keys = (yaml.safe_load(params.read_text()) or {}).get("metadata_keys") if params.exists() else None
    if keys:
        return [str(k) for k in keys]
    table = data.metadata["concept"]
    characterised = [c.removesuffix("_top") for c in table.columns if c.endswith("_top")]
    if characterised:
        return [c for c in characterised if c in data.obs]
    categorical = [
        c
        for c in data.obs.columns
        if (isinstance(data.obs[c].dtype, pd.CategoricalDtype) or data.obs[c].dtype == object)
        and 1 < data.obs[c].nunique() <= 50
    ]
    return sorted(categorical, key=lambda c: c != "cell_type")


def _as_data(run: RunDir | RunData) -> RunData:
    return run if isinstance(run, RunData) else load_run_data(run)


def concept_card(
    run: RunDir | RunData,
    unit: int,
    kind: str = "concept",
    *,
    n_top: int = 20,
    threshold: float = DEFAULT_THRESHOLD,
    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
) -> CardData:
    """Build the card of one concept or neuron from the run directory's tables.

    Parameters
    ----------
    run
        A :class:`~corelib.runs.RunDir`, or the :class:`RunData` loaded from it (faster for many cards).
    unit
        Concept index (SAE latent) or neuron index (embedding dimension).
    kind
        ``"concept"`` or ``"neuron"``.
    n_top
        Number of top genes on the bar chart.
    threshold, relative_threshold
        Importance thresholds on attribution scores: absolute (paper: 0.05) and relative to the prototypes'
        activation (as notebook 03's ``important_genes.csv``).

    Returns
    -------
    The :class:`CardData`.
    """
    _check_kind(kind)
    data = _as_data(run)
    acts_NU = data.activations[kind]
    unit = int(unit)
    if not 0 <= unit < acts_NU.shape[1]:
        raise ValueError(
            f"{kind} {unit} does not exist: this run has {acts_NU.shape[1]} {kind}s "
            f"(0..{acts_NU.shape[1] - 1})."
        )
    activation = acts_NU[:, unit]
    scores = data.scores(kind).get(unit)
    genes = pd.DataFrame({"gene": [], "score": [], "description": []})
    if scores is not None:
        top = scores.sort_values(ascending=False).head(n_top)
        genes = pd.DataFrame({"gene": top.index.astype(str), "score": top.to_numpy(float)})
        genes["description"] = _describe(genes["gene"])
    counts = _row(data.important_genes(kind, threshold, relative_threshold), unit)
    active = active_cells(activation, kind)
    return CardData(
        kind=kind,
        unit=unit,
        name=unit_name(kind, unit),
        genes=genes,
        n_important=int(counts.get("n_important", 0)),
        n_important_relative=int(counts.get("n_important_relative", 0)),
        threshold=float(threshold),
        relative_threshold=float(relative_threshold),
        max_activation=float(activation.max()) if activation.size else 0.0,
        prototype_activation=_prototype_activation(data.attribution[kind], unit),
        n_active=int(active.sum()),
        activation=activation,
        umap=data.umap,
        prototypes=_cells(data.attribution[kind], unit, "prototypes"),
        counterfactuals=_cells(data.attribution[kind], unit, "counterfactuals"),
        composition={col: _composition(data.obs[col], active) for col in data.metadata_keys},
        metadata=_row(data.metadata[kind], unit),
        status=_status(data, kind, unit),
        gsea=_rows(data.gsea_terms[kind], unit),
        annotation=_row(data.gsea[kind], unit),
        deg=_with_overlap(_rows(data.deg[kind], unit), genes["gene"]),
        matched=_rows(data.matched, unit, "concept") if kind == "concept" else pd.DataFrame(),
    )


def active_cells(activation_N: np.ndarray, kind: str) -> np.ndarray:
    """Cells that activate a unit, by notebook 03's metadata rule (paper 3.1): a concept is active where its
    activation is > 0; a neuron has no natural zero, so its active cells are its top 10%
    (:func:`corelib.concepts.neuron_activity`).

    Returns
    -------
    Boolean (n_cells,).
    """
    _check_kind(kind)
    if kind == "concept":
        return activation_N > 0
    from corelib.concepts import neuron_activity

    return neuron_activity(np.asarray(activation_N, dtype=float)[:, None])[:, 0]


def _prototype_activation(attr: Attribution | None, unit: int) -> float:
    """Mean activation of the unit's prototypes as recomputed by the attribution (NaN if not attributed)."""
    if attr is None or unit not in attr.units:
        return float("nan")
    return float(attr.activation[int(np.flatnonzero(attr.units == unit)[0])])


def _cells(attr: Attribution | None, unit: int, which: str) -> np.ndarray:
    """Prototype or counterfactual cell indices of ``unit`` (flattened, without the -1 padding)."""
    if attr is None or unit not in attr.units:
        return np.zeros(0, dtype=int)
    cells = np.asarray(getattr(attr, which)[int(np.flatnonzero(attr.units == unit)[0])]).ravel()
    return cells[cells >= 0]


def _describe(genes: pd.Series) -> list[str]:
    """NCBI one-line descriptions (bundled table, alias fallback)."""
    from corelib.data import describe_genes

    return describe_genes(genes).reindex(genes).fillna("").tolist()


def _composition(labels: pd.Series, active: np.ndarray) -> pd.Series:
    """Fraction of the active cells carrying each label, largest first."""
    counts = labels[active].astype(str).value_counts()
    return counts / counts.sum() if counts.sum() else counts.astype(float)


def _row(table: pd.DataFrame, unit: int) -> pd.Series:
    """The row of a per-unit table (unit ids as index), or an empty Series."""
    if table.empty or unit not in table.index:
        return pd.Series(dtype=object)
    row = table.loc[unit]
    return row.iloc[0] if isinstance(row, pd.DataFrame) else row


def _rows(table: pd.DataFrame, unit: int, column: str = "unit") -> pd.DataFrame:
    """The rows of a long table for one unit (``table[column] == unit``), without that column."""
    if table.empty or column not in table:
        return pd.DataFrame()
    return table[table[column] == unit].drop(columns=column).reset_index(drop=True)


def gsea_label(annotation: pd.Series) -> str:
    """The unit's GSEA label (top term) from its row of the per-unit GSEA table; ``""`` when it has none."""
    term = annotation.get("term", "") if len(annotation) else ""
    return "" if pd.isna(term) else str(term)


def _with_overlap(deg: pd.DataFrame, top_genes: pd.Series) -> pd.DataFrame:
    """DEG rows with ``top_attributed``: whether the gene is among the card's top attributed genes."""
    if deg.empty or "gene" not in deg:
        return deg
    return deg.assign(top_attributed=deg["gene"].isin(set(top_genes)))


def _status(data: RunData, kind: str, unit: int) -> str:
    """Attribution status of a unit: ``"attributed"``, the skip reason, or ``"not attributed"``."""
    attr = data.attribution[kind]
    if attr is None or unit not in attr.status.index:
        return "not attributed"
    row = attr.status.loc[unit]
    return f"{row['status']}: {row['reason']}" if str(row.get("reason", "")) else str(row["status"])


def unit_summary(run: RunDir | RunData, kind: str = "concept", *, n_genes: int = 5) -> pd.DataFrame:
    """One row per unit with attribution scores: what the search box and "next interesting" use.

    Parameters
    ----------
    run
        Run directory or loaded :class:`RunData`.
    kind
        ``"concept"`` or ``"neuron"``.
    n_genes
        Number of top genes listed in ``top_genes``.

    Returns
    -------
    DataFrame indexed by unit id with columns ``name``, ``top_genes`` (space separated), ``gsea_term``,
    ``metadata_label`` (top label of the first metadata column), ``n_important``, ``n_active``, ``search``
    (lower-case text matched by the search box).
    """
    _check_kind(kind)
    data = _as_data(run)
    if kind in data._summary:
        return data._summary[kind]
    scores = data.scores(kind)
    important = data.important_genes(kind, DEFAULT_THRESHOLD, DEFAULT_RELATIVE_THRESHOLD)
    acts_NU = data.activations[kind]
    rows = []
    for unit in data.units(kind):
        col = scores[unit]
        active = active_cells(acts_NU[:, unit], kind)
        first = data.metadata_keys[0] if data.metadata_keys else None
        comp = _composition(data.obs[first], active) if first else pd.Series(dtype=float)
        annotation = _row(data.gsea[kind], unit)
        rows.append(
            {
                "unit": unit,
                "name": unit_name(kind, unit),
                "top_genes": " ".join(col.nlargest(n_genes).index.astype(str)),
                "gsea_term": gsea_label(annotation),
                "metadata_label": str(comp.index[0]) if len(comp) else "",
                "n_important": int(important.loc[unit, "n_important"]),
                "n_active": int(active.sum()),
            }
        )
    table = pd.DataFrame(
        rows, columns=["unit", "name", "top_genes", "gsea_term", "metadata_label", "n_important", "n_active"]
    ).set_index("unit")
    table["search"] = (
        table[["name", "gsea_term", "top_genes", "metadata_label"]]
        .astype(str)
        .agg(" ".join, axis=1)
        .str.lower()
    )
    data._summary[kind] = table
    return table


def search_units(summary: pd.DataFrame, query: str) -> list[int]:
    """Units whose summary matches every word of ``query`` (id, GSEA term, top gene or metadata label).

    An exact unit name (``"C12"``) matches only that unit.
    """
    words = str(query).lower().split()
    if not words:
        return list(summary.index)
    exact = summary.index[summary["name"].str.lower() == " ".join(words)]
    if len(exact):
        return list(exact)
    mask = np.ones(len(summary), dtype=bool)
    for word in words:
        mask &= summary["search"].str.contains(word, regex=False).to_numpy()
    return list(summary.index[mask])


def interesting_order(summary: pd.DataFrame, exclude: Sequence[int] = ()) -> list[int]:
    """Units in the order "next interesting" visits them: most important genes first, then most active cells.

    Parameters
    ----------
    summary
        Output of :func:`unit_summary`.
    exclude
        Units to skip (e.g. the ones the rater already labelled).
    """
    order = summary.sort_values(["n_important", "n_active"], ascending=False, kind="stable")
    return [u for u in order.index if u not in set(exclude)]


# ------------------------------------------------------------------------------------------- expert labels
def save_label(
    run: RunDir,
    item: str,
    *,
    rater: str,
    interpretable: str,
    confidence: int,
    kind: str,
    label: str = "",
    description: str = "",
    study: str | None = None,
) -> dict[str, Any]:
    """Append one expert answer to ``run.path("labels")``, flushed and fsync-ed before returning.

    Parameters
    ----------
    run
        The run directory.
    item
        What was labelled: a unit name (``"C12"``, ``"N3"``) or, in a blinded study, the item's token.
    rater
        Who answered (several raters may label the same items).
    interpretable
        One of :data:`INTERPRETABLE_CHOICES`.
    confidence
        One of :data:`CONFIDENCE_CHOICES` (1 = guess, 5 = certain).
    kind
        One of :data:`LABEL_KIND_CHOICES`.
    label, description
        The expert label and a free-text description.
    study
        Id of the blinded study the item belongs to, if any.

    Returns
    -------
    The record written (with its UTC ``time``).
    """
    if not str(rater).strip():
        raise ValueError(
            "rater is empty; enter your name or initials so that answers of several raters stay apart."
        )
    if interpretable not in INTERPRETABLE_CHOICES:
        raise ValueError(
            f"interpretable={interpretable!r}; choose one of {', '.join(INTERPRETABLE_CHOICES)}."
        )
    if confidence not in CONFIDENCE_CHOICES:
        raise ValueError(
            f"confidence={confidence!r}; choose an integer in {', '.join(map(str, CONFIDENCE_CHOICES))}."
        )
    if kind not in LABEL_KIND_CHOICES:
        raise ValueError(f"kind={kind!r}; choose one of {', '.join(LABEL_KIND_CHOICES)}.")
    record = {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
        "rater": str(rater).strip(),
        "item": str(item),
        "study": study,
        "label": str(label),
        "description": str(description),
        "interpretable": interpretable,
        "confidence": int(confidence),
        "kind": kind,
    }
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(run.path("labels"), "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    return record


LABEL_COLUMNS = [
    "time",
    "rater",
    "item",
    "study",
    "label",
    "description",
    "interpretable",
    "confidence",
    "kind",
]


def read_labels(run: RunDir, *, latest: bool = True) -> pd.DataFrame:
    """Expert answers saved in the run directory.

    Parameters
    ----------
    run
        The run directory.
    latest
        Keep only the latest answer per (rater, study, item); else every submit, in file order.

    Returns
    -------
    DataFrame with columns :data:`LABEL_COLUMNS` (empty when nobody answered yet). A line that cannot be
    parsed (a crash in the middle of a write) is skipped with a warning.
    """
    path = run.path("labels")
    records = []
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{n} is not valid JSON (interrupted write?); skipped.", stacklevel=2)
    table = pd.DataFrame(records, columns=LABEL_COLUMNS)
    if latest and len(table):
        table = table.assign(_study=table["study"].fillna(""))
        table = table.drop_duplicates(["rater", "_study", "item"], keep="last").drop(columns="_study")
    return table.reset_index(drop=True)


def labels_for(labels: pd.DataFrame, item: str, study: str | None = None) -> pd.DataFrame:
    """The latest answers (all raters) for one item, from :func:`read_labels`."""
    if labels.empty:
        return labels
    same_study = labels["study"].isna() if study is None else labels["study"] == study
    return labels[(labels["item"] == item) & same_study].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ blinded study
@dataclass(frozen=True)
class Study:
    """A blinded study (paper 4.3): a seeded, shuffled mix of concepts and neurons behind opaque tokens.

    Attributes
    ----------
    id
        Study id (``seed<seed>_<n>c<m>n``), stored with every answer.
    tokens
        The items in presentation order; a token says nothing about the unit behind it.
    key
        token -> (kind, unit). Used to draw the cards; never displayed. Also written to the key file.
    """

    id: str
    tokens: tuple[str, ...]
    key: dict[str, tuple[str, int]] = field(repr=False)


def make_study(run: RunDir | RunData, n_concepts: int = 20, n_neurons: int = 20, *, seed: int = 0) -> Study:
    """Draw a blinded study and write its key file ``06_explorer/study_<id>_key.csv``.

    Concepts and neurons are drawn uniformly without replacement among the units with attribution scores
    (the paper: 20 + 20), then shuffled together. The same seed and sizes give the same study.

    Parameters
    ----------
    run
        Run directory or loaded :class:`RunData`.
    n_concepts, n_neurons
        Items of each kind (fewer when the run has fewer attributed units; a warning says so).
    seed
        Seed of the draw and of the order.

    Returns
    -------
    The :class:`Study`.
    """
    data = _as_data(run)
    rng = np.random.default_rng(seed)
    drawn: list[tuple[str, int]] = []
    for kind, n in (("concept", n_concepts), ("neuron", n_neurons)):
        pool = data.units(kind)
        if len(pool) < n:
            warnings.warn(
                f"Only {len(pool)} {kind}s have attribution scores; the study uses all of them.", stacklevel=2
            )
        chosen = rng.choice(np.asarray(pool, dtype=int), size=min(n, len(pool)), replace=False)
        drawn += [(kind, int(u)) for u in sorted(chosen)]
    if not drawn:
        raise ValueError("No unit has attribution scores: run notebook 03 before drawing a study.")
    study_id = f"seed{seed}_{n_concepts}c{n_neurons}n"
    order = rng.permutation(len(drawn))
    tokens = tuple(f"{study_id}-{i + 1:02d}" for i in range(len(drawn)))
    key = {tok: drawn[j] for tok, j in zip(tokens, order, strict=True)}
    table = pd.DataFrame(
        [(tok, kind, unit, unit_name(kind, unit)) for tok, (kind, unit) in key.items()],
        columns=["token", "kind", "unit", "name"],
    )
    data.run.write_table("explorer", table, name=f"study_{study_id}_key.csv", index=False)
    return Study(id=study_id, tokens=tokens, key=key)


def unblind(run: RunDir, study: Study | str) -> pd.DataFrame:
    """Join a study's latest answers (every rater) with its key file.

    Parameters
    ----------
    run
        The run directory.
    study
        The :class:`Study` or its id.

    Returns
    -------
    DataFrame with one row per (rater, item): ``rater``, ``token``, ``kind`` (concept/neuron), ``unit``,
    ``name``, ``interpretable``, ``confidence``, ``label_kind``, ``label``, ``description``.
    """
    study_id = study.id if isinstance(study, Study) else str(study)
    key = run.read_table("explorer", name=f"study_{study_id}_key.csv", index_col=None)
    labels = read_labels(run)
    labels = labels[labels["study"] == study_id].rename(columns={"item": "token", "kind": "label_kind"})
    out = labels.merge(key, on="token", how="inner", validate="many_to_one")
    cols = [
        "rater",
        "token",
        "kind",
        "unit",
        "name",
        "interpretable",
        "confidence",
        "label_kind",
        "label",
        "description",
    ]
    return out[cols].sort_values(["rater", "token"]).reset_index(drop=True)


def interpretability_table(unblinded: pd.DataFrame) -> pd.DataFrame:
    """Fraction of concepts and of neurons judged interpretable, per rater and over all raters (Fig. 3A.a).

    Parameters
    ----------
    unblinded
        Output of :func:`unblind`.

    Returns
    -------
    DataFrame indexed by (rater, kind), ``rater == "all raters"`` pooling everyone, with one column per
    answer of :data:`INTERPRETABLE_CHOICES` (fractions) and ``n`` (answers).
    """
    if unblinded.empty:
        empty = pd.MultiIndex.from_tuples([], names=["rater", "kind"])
        return pd.DataFrame(columns=[*INTERPRETABLE_CHOICES, "n"], index=empty, dtype=float)
    pooled = unblinded.assign(rater="all raters")
    both = pd.concat([unblinded, pooled]) if unblinded["rater"].nunique() > 1 else unblinded
    counts = both.groupby(["rater", "kind"])["interpretable"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(INTERPRETABLE_CHOICES), fill_value=0)
    n = counts.sum(axis=1)
    table = counts.div(n, axis=0)
    table["n"] = n
    return table


# ------------------------------------------------------------------------------------------------ plots
def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def plot_gene_bars(card: CardData, ax: Any = None) -> Any:
    """Top attributed genes as horizontal bars, the importance threshold as a dashed line (static version).

    The hover descriptions are in :func:`corelib.report.gene_bars_svg`; this one is for papers and PDFs.
    Returns the Axes.
    """
    ax = _axes(ax, (4, 0.25 * max(len(card.genes), 4) + 0.8))
    genes = card.genes.iloc[::-1]
    ax.barh(genes["gene"], genes["score"], color="#4c72b0")
    ax.axvline(card.threshold, color="0.4", ls="--", lw=1)
    ax.set_xlabel("attribution score")
    ax.set_title(f"{card.name}: {card.n_important} genes > {card.threshold:g}")
    return ax


def plot_umap(card: CardData, ax: Any = None, *, clip_negative: bool = False, colorbar: bool = True) -> Any:
    """Activation of the unit on the UMAP of the embedding; active cells drawn on top. Returns the Axes.

    The attribution's prototypes (triangles) and counterfactuals (open circles) are marked.

    ``clip_negative`` shows negative activations (neurons) as 0 and ``colorbar=False`` hides the scale:
    both are used in the blinded study, where the sign and scale of a neuron would give its identity away.
    """
    ax = _axes(ax, (3.2, 3))
    values = np.clip(card.activation, 0, None) if clip_negative else card.activation
    order = np.argsort(values, kind="stable")
    points = ax.scatter(
        card.umap[order, 0],
        card.umap[order, 1],
        c=values[order],
        s=3,
        cmap="viridis",
        linewidths=0,
        rasterized=True,
    )
    if colorbar:
        ax.figure.colorbar(points, ax=ax, shrink=0.8, label="activation")
    cf, proto = card.umap[card.counterfactuals], card.umap[card.prototypes]
    ax.scatter(
        cf[:, 0], cf[:, 1], s=22, facecolors="none", edgecolors="k", linewidths=0.8, label="counterfactuals"
    )
    ax.scatter(proto[:, 0], proto[:, 1], s=26, marker="^", color="#d62728", label="prototypes")
    if len(proto):
        ax.legend(loc="lower left", fontsize=6, frameon=False, handletextpad=0.2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("activation on the UMAP")
    return ax


def plot_histogram(card: CardData, ax: Any = None) -> Any:
    """Histogram of the unit's activation over all cells (log counts). Returns the Axes."""
    ax = _axes(ax, (3.2, 3))
    ax.hist(card.activation, bins=40, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("cells")
    ax.set_title(f"{card.n_active} active cells")
    return ax


def plot_composition(card: CardData, column: str, ax: Any = None, *, n_labels: int = 8) -> Any:
    """Labels of ``column`` among the unit's active cells, as fractions. Returns the Axes."""
    if column not in card.composition:
        raise ValueError(f"No composition for {column!r}; the card has {', '.join(card.composition)}.")
    ax = _axes(ax, (3.5, 0.25 * n_labels + 0.8))
    comp = card.composition[column].head(n_labels).iloc[::-1]
    ax.barh(comp.index.astype(str), comp.to_numpy(), color="#55a868")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of active cells ({column})")
    return ax


def plot_card(card: CardData) -> Any:
    """A static figure of a card (for reports and papers): top genes, UMAP, histogram, composition.

    The composition panel shows the first metadata column. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    panels = 4 if card.composition else 3
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4), layout="constrained")
    plot_gene_bars(card, axes[0])
    plot_umap(card, axes[1])
    plot_histogram(card, axes[2])
    if card.composition:
        plot_composition(card, next(iter(card.composition)), axes[3])
    return fig


def plot_interpretability(table: pd.DataFrame, ax: Any = None) -> Any:
    """Concepts vs neurons interpretability by expert answers, one stacked bar per (rater, kind) (Fig. 3A.a).

    Parameters
    ----------
    table
        Output of :func:`interpretability_table`.
    ax
        Axes to draw on (a new figure when None).

    Returns
    -------
    The Axes.
    """
    ax = _axes(ax, (5.5, 0.45 * len(table) + 1.2))
    if table.empty:
        ax.text(0.5, 0.5, "no answers yet: label the study items first", ha="center", va="center")
        ax.set_axis_off()
        return ax
    colors = {"yes": "#2a9d8f", "partly": "#e9c46a", "no": "#bbbbbb"}
    names = [f"{rater}: {kind}s (n={n})" for (rater, kind), n in table["n"].items()]
    left = np.zeros(len(table))
    for answer in INTERPRETABLE_CHOICES:
        ax.barh(
            names, table[answer].to_numpy(), left=left, color=colors[answer], label=f"interpretable: {answer}"
        )
        left += table[answer].to_numpy()
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of items")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    return ax


# ---------------------------------------------------------------------------------------------- widgets
class LabelForm:
    """The expert form (paper appendix D, Fig. 9 right): label, description and three fixed questions.

    Attributes
    ----------
    rater, label, description, interpretable, confidence, kind, submit, message
        The ipywidgets; ``box`` lays them out.
    """

    def __init__(self, rater: str = "") -> None:
        import ipywidgets as w

        self.rater = w.Text(value=rater, description="rater", placeholder="your name or initials")
        self.label = w.Text(
            description="label", placeholder="short expert label", layout=w.Layout(width="460px")
        )
        self.description = w.Textarea(
            description="description", layout=w.Layout(width="460px", height="70px")
        )
        self.interpretable = w.ToggleButtons(
            options=INTERPRETABLE_CHOICES, value=None, description="interpretable?"
        )
        self.confidence = w.ToggleButtons(
            options=CONFIDENCE_CHOICES, value=None, description="confidence", style={"button_width": "36px"}
        )
        self.kind = w.Dropdown(options=LABEL_KIND_CHOICES, value=None, description="kind")
        self.submit = w.Button(description="Submit", button_style="primary", icon="check")
        self.message = w.HTML()
        self.box = w.VBox(
            [
                self.rater,
                self.label,
                self.description,
                self.interpretable,
                self.confidence,
                self.kind,
                w.HBox([self.submit, self.message]),
            ]
        )

    def fill(self, record: pd.Series | None) -> None:
        """Show a saved answer (or clear the form when ``record`` is None); the rater is kept."""
        self.label.value = "" if record is None else str(record["label"])
        self.description.value = "" if record is None else str(record["description"])
        self.interpretable.value = None if record is None else record["interpretable"]
        self.confidence.value = None if record is None else int(record["confidence"])
        self.kind.value = None if record is None else record["kind"]

    def save(self, run: RunDir, item: str, study: str | None = None) -> dict[str, Any]:
        """Validate and append the form's answer for ``item``; errors are shown in the form and re-raised."""
        try:
            record = save_label(
                run,
                item,
                rater=self.rater.value,
                interpretable=self.interpretable.value,
                confidence=self.confidence.value,
                kind=self.kind.value,
                label=self.label.value,
                description=self.description.value,
                study=study,
            )
        except ValueError as err:
            self.message.value = f"<span style='color:#b00'>Not saved: {_html_text(err)}</span>"
            raise
        self.message.value = f"<span style='color:#080'>Saved {record['time'][:19]} UTC</span>"
        return record

    def saved(self, labels: pd.DataFrame, item: str, study: str | None = None) -> pd.Series | None:
        """This rater's latest saved answer for ``item``, or None."""
        mine = labels_for(labels, item, study)
        mine = mine[mine["rater"] == self.rater.value.strip()] if len(mine) else mine
        return mine.iloc[-1] if len(mine) else None


def _html_text(value: object) -> str:
    import html

    return html.escape(str(value))


class Explorer:
    """Browse and label concepts or neurons of a finished run (notebook 06).

    Parameters
    ----------
    run
        Run directory (or :class:`RunData`).
    rater
        Name stored with every answer.
    kind
        Start with ``"concept"`` or ``"neuron"``.
    seed
        Seed of the "random" button.
    n_top
        Genes on the bar chart.

    Attributes
    ----------
    widget
        The ipywidgets layout (displaying the Explorer displays it).
    kind, search, select, next_button, random_button, card, form
        The controls, for scripted use and tests.
    current
        ``(kind, unit)`` on display.
    """

    def __init__(
        self,
        run: RunDir | RunData,
        *,
        rater: str = "",
        kind: str = "concept",
        seed: int | None = None,
        n_top: int = 20,
    ) -> None:
        import ipywidgets as w

        _check_kind(kind)
        self.data = _as_data(run)
        self.n_top = n_top
        self.rng = np.random.default_rng(seed)
        self.labels = read_labels(self.data.run)
        self.current: tuple[str, int] | None = None
        self.kind = w.ToggleButtons(options=KINDS, value=kind, description="show")
        self.search = w.Text(
            placeholder="id (C12), gene, GSEA term, cell type", description="search", continuous_update=True
        )
        self.select = w.Dropdown(description="unit", layout=w.Layout(width="640px"))
        self.next_button = w.Button(description="next interesting", icon="forward")
        self.random_button = w.Button(description="random", icon="random")
        self.card = w.HTML()
        self.form = LabelForm(rater)
        self.info = w.HTML(
            f"<b>{_html_text(run_title(self.data))}</b> - <i>{len(self.labels)} saved answers loaded from "
            f"{_html_text(self.data.run.path('labels'))}</i>"
        )
        self.widget = w.VBox(
            [
                w.HBox([self.kind, self.next_button, self.random_button]),
                w.HBox([self.search, self.select]),
                self.info,
                self.card,
                w.HTML("<h3>Your answer</h3>"),
                self.form.box,
            ]
        )
        self.kind.observe(lambda _: self._refresh_options(), names="value")
        self.search.observe(lambda _: self._refresh_options(), names="value")
        self.select.observe(self._on_select, names="value")
        self.next_button.on_click(lambda _: self.next_interesting())
        self.random_button.on_click(lambda _: self.random())
        self.form.submit.on_click(lambda _: self.submit())
        self._refresh_options()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _summary(self) -> pd.DataFrame:
        return unit_summary(self.data, self.kind.value)

    def _refresh_options(self) -> None:
        summary = self._summary()
        units = search_units(summary, self.search.value)
        options = [(_option_text(summary.loc[u]), u) for u in units]
        self.select.options = options
        if options and self.select.value is not None:
            self._on_select({"new": self.select.value})

    def _on_select(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.show(int(change["new"]))

    def show(self, unit: int, kind: str | None = None) -> CardData:
        """Display the card of ``unit`` (of ``kind``, default the current one) and its saved answer."""
        from corelib import report

        if kind is not None and kind != self.kind.value:
            self.kind.value = kind
        kind = self.kind.value
        card = concept_card(self.data, unit, kind, n_top=self.n_top)
        self.current = (kind, card.unit)
        self.card.value = report.widget_html(
            report.card_html(card, labels=labels_for(self.labels, card.name))
        )
        self.form.fill(self.form.saved(self.labels, card.name))
        self.form.message.value = ""
        return card

    def next_interesting(self) -> int | None:
        """Show the next unit in :func:`interesting_order` that this rater has not labelled yet."""
        summary = self._summary()
        mine = self.labels[
            (self.labels["rater"] == self.form.rater.value.strip()) & self.labels["study"].isna()
        ]
        done = {parse_unit(n)[1] for n in mine["item"] if parse_unit(n)[0] == self.kind.value}
        if self.current is not None:
            done.add(self.current[1])
        order = interesting_order(summary, exclude=sorted(done))
        if not order:
            self.form.message.value = "<i>Every unit is labelled.</i>"
            return None
        self.show(order[0])
        return order[0]

    def random(self) -> int | None:
        """Show a random unit (of the current kind, among those with attribution scores)."""
        units = self._summary().index.to_numpy()
        if not len(units):
            self.form.message.value = f"<i>No {self.kind.value} has attribution scores in this run.</i>"
            return None
        unit = int(self.rng.choice(units))
        self.show(unit)
        return unit

    def submit(self) -> dict[str, Any]:
        """Save the form's answer for the unit on display (appended to the labels file at once)."""
        if self.current is None:
            raise ValueError("No unit on display: select a concept or neuron first.")
        record = self.form.save(self.data.run, unit_name(*self.current))
        self.labels = read_labels(self.data.run)
        return record


def _option_text(row: pd.Series) -> str:
    """Dropdown text of a unit: name, GSEA term, top genes, top metadata label."""
    term = row["gsea_term"][:50]
    return f"{row['name']} | {term} | {row['top_genes']} | {row['metadata_label']}"


class StudyExplorer:
    """Blinded study (paper 4.3): items shown one by one under opaque tokens, answers saved per token.

    Parameters
    ----------
    run
        Run directory (or :class:`RunData`).
    study
        From :func:`make_study`.
    rater
        Name stored with every answer.
    n_top
        Genes on the bar chart.

    Attributes
    ----------
    widget, card, form, prev_button, next_button, position
        The ipywidgets.
    index
        Position of the item on display in ``study.tokens``.
    """

    def __init__(self, run: RunDir | RunData, study: Study, *, rater: str = "", n_top: int = 20) -> None:
        import ipywidgets as w

        self.data = _as_data(run)
        self.study = study
        self.n_top = n_top
        self.labels = read_labels(self.data.run)
        self.index = 0
        self.position = w.HTML()
        self.prev_button = w.Button(description="previous", icon="backward")
        self.next_button = w.Button(description="next", icon="forward")
        self.card = w.HTML()
        self.form = LabelForm(rater)
        self.widget = w.VBox(
            [
                w.HBox([self.prev_button, self.next_button, self.position]),
                self.card,
                w.HTML("<h3>Your answer</h3>"),
                self.form.box,
            ]
        )
        self.prev_button.on_click(lambda _: self.show(self.index - 1))
        self.next_button.on_click(lambda _: self.show(self.index + 1))
        self.form.submit.on_click(lambda _: self.submit())
        self.show(self._first_unanswered())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _first_unanswered(self) -> int:
        for i, token in enumerate(self.study.tokens):
            if self.form.saved(self.labels, token, self.study.id) is None:
                return i
        return 0

    @property
    def token(self) -> str:
        """Token of the item on display."""
        return self.study.tokens[self.index]

    def show(self, index: int) -> None:
        """Display item ``index`` (wrapped around) with its identity hidden, and this rater's saved answer."""
        from corelib import report

        self.index = index % len(self.study.tokens)
        kind, unit = self.study.key[self.token]
        card = concept_card(self.data, unit, kind, n_top=self.n_top)
        answered = sum(self.form.saved(self.labels, t, self.study.id) is not None for t in self.study.tokens)
        self.position.value = (
            f"item {self.index + 1} of {len(self.study.tokens)} "
            f"({answered} answered) - <code>{_html_text(self.token)}</code>"
        )
        self.card.value = report.widget_html(report.card_html(card, blinded=True, title=self.token))
        self.form.fill(self.form.saved(self.labels, self.token, self.study.id))

    def submit(self) -> dict[str, Any]:
        """Save the answer for the item on display, then move to the next item."""
        record = self.form.save(self.data.run, self.token, study=self.study.id)
        self.labels = read_labels(self.data.run)
        self.show(self.index + 1)
        return record
