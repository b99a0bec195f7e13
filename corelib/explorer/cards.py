"""Concept cards: everything the explorer and the atlas show of one concept or neuron."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.explorer.steering import DEFAULT_AMOUNT, card_steering
from corelib.runs import RunDir, attribution_path, load_sae

if TYPE_CHECKING:
    from corelib.tl.attribution import Attribution
    from corelib.tl.steering import SteeringResult
from corelib.tl.attribution import RELIABLE_SPEARMAN
from corelib.tl.units import KINDS, _check_kind, active_cells, unit_activation, unit_name

#: Default importance thresholds on attribution scores: the paper's absolute 0.05 (Sec. 3.2), and relative to
#: the prototypes' activation (notebook 03's ``relative_threshold``).
DEFAULT_THRESHOLD = 0.05


DEFAULT_RELATIVE_THRESHOLD = 0.01


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
        kind -> activations (n_cells x n_units): SAE concept codes (sparse CSC), or the embedding for neurons;
        read one unit with :func:`corelib.tl.units.unit_activation`.
    attribution
        kind -> the :class:`~corelib.tl.attribution.Attribution` of notebook 03 (None when not computed).
    metadata
        kind -> per unit x metadata column calls (notebook 03), possibly empty.
    gsea
        kind -> per-unit top GSEA term (notebook 03), possibly empty.
    gsea_terms
        kind -> per-unit top terms (long table), possibly empty.
    deg
        kind -> DEG long table (unit, gene, ...), possibly empty.
    matched
        Matched concepts from the stability notebook (the run entry ``matched_concepts``), possibly empty.
    metadata_keys
        The metadata columns whose composition a card shows.
    info
        What the run is: ``model``, ``dataset``, ``organism`` (the gene descriptions' setting), ``embedding``
        (obsm key) and ``sae`` (selected SAE name).
    """

    run: RunDir
    obs: pd.DataFrame
    umap: np.ndarray
    activations: dict[str, np.ndarray | sp.csc_matrix]
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
    _steering: dict[str, Any] = field(default_factory=dict, repr=False)

    def scores(self, kind: str) -> pd.DataFrame:
        """Attribution scores of the attributed units of ``kind`` (genes x unit ids); empty if none."""
        _check_kind(kind)
        attr = self.attribution[kind]
        if kind not in self._scores:
            self._scores[kind] = pd.DataFrame() if attr is None else attr.frame()
        return self._scores[kind]

    def important_genes(self, kind: str, threshold: float, relative_threshold: float) -> pd.DataFrame:
        """Important-gene counts per attributed unit (``corelib.tl.attribution.important_gene_counts``), cached."""
        key = (kind, float(threshold), float(relative_threshold))
        if key not in self._important:
            from corelib.tl.attribution import important_gene_counts

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
        Matched concepts from the stability run (rows of the run entry ``matched_concepts`` for this concept).
    steering
        The concept steered on its prototypes (:func:`corelib.explorer.steering.card_steering`), or why not.
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
    steering: SteeringResult | str = "not computed"


def run_title(data: RunData) -> str:
    """One line naming the run: model, dataset, SAE."""
    info = data.info
    return f"run {data.run.root.name}: {info['model']} on {info['dataset']}, SAE {info['sae']}"


def load_run_data(run: RunDir, metadata_keys: Sequence[str] | None = None) -> RunData:
    """Read the tables of a finished run directory that the explorer and the atlas show.

    Parameters
    ----------
    run
        A run directory with notebooks 01-03 done (04 optional: matched concepts).
    metadata_keys
        Metadata columns to show; default: the columns notebook 03 characterised (its ``metadata_keys``),
        else every categorical ``obs`` column with 2-50 labels. Parameters come from the caller only.

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
        gsea_terms={kind: _optional_table(run, "gsea_terms", f"{kind}s", None) for kind in KINDS},
        deg={kind: _optional_table(run, "deg", f"{kind}s", None) for kind in KINDS},
        matched=_optional_table(run, "matched_concepts", None, None),
        metadata_keys=[],
        info={
            "model": str(embed.get("model", "")),
            "dataset": str(embed.get("dataset", "")),
            "organism": str(embed.get("organism", "human")),  # notebook 01's setting (runs before it: human)
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


def _concept_activations(run: RunDir, emb_ND: np.ndarray) -> sp.csc_matrix:
    """Concept activations (n_cells x n_concepts, sparse CSC: cards read one concept's column at a time) of
    the selected SAE on the run's embedding."""
    from corelib.tl import sae as sae_lib

    return sae_lib.encode(load_sae(run, emb_ND)[1], emb_ND).tocsc()


def _read_attribution(run: RunDir, kind: str) -> Attribution | None:
    """The attribution of notebook 03 for ``kind`` (required for concepts; None for neurons if not computed)."""
    from corelib.tl.attribution import Attribution

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
    """The columns of notebook 03's metadata table (``<column>_top``), else every categorical ``obs`` column
    with 2-50 labels (``cell_type`` first)."""
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
    steering_amount: float | None = DEFAULT_AMOUNT,
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
    steering_amount
        Amount of the card's steering, in multiples of the prototypes' activation; None leaves it out (a card
        that does not show it, such as a blinded study item, then decodes nothing).

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
    activation = unit_activation(acts_NU, unit)
    scores = data.scores(kind).get(unit)
    genes = pd.DataFrame({"gene": [], "score": [], "description": []})
    if scores is not None:
        top = scores.sort_values(ascending=False).head(n_top)
        genes = pd.DataFrame({"gene": top.index.astype(str), "score": top.to_numpy(float)})
        genes["description"] = _describe(genes["gene"], data.info["organism"])
    counts = _row(data.important_genes(kind, threshold, relative_threshold), unit)
    active = active_cells(activation, kind)
    prototypes = _cells(data.attribution[kind], unit, "prototypes")
    prototype_activation = _prototype_activation(data.attribution[kind], unit)
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
        prototype_activation=prototype_activation,
        n_active=int(active.sum()),
        activation=activation,
        umap=data.umap,
        prototypes=prototypes,
        counterfactuals=_cells(data.attribution[kind], unit, "counterfactuals"),
        composition={col: _composition(data.obs[col], active) for col in data.metadata_keys},
        metadata=_row(data.metadata[kind], unit),
        status=_status(data, kind, unit),
        gsea=_rows(data.gsea_terms[kind], unit),
        annotation=_row(data.gsea[kind], unit),
        deg=_with_overlap(_rows(data.deg[kind], unit), genes["gene"]),
        matched=_rows(data.matched, unit, "concept") if kind == "concept" else pd.DataFrame(),
        steering=(
            "not computed"
            if steering_amount is None
            else card_steering(data, kind, unit, prototypes, prototype_activation, steering_amount)
        ),
    )


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


def _describe(genes: pd.Series, organism: str) -> list[str]:
    """NCBI one-line descriptions (bundled table, alias fallback), under the run's organism setting."""
    from corelib.datasets import describe_genes

    return describe_genes(genes, organism=organism).reindex(genes).fillna("").tolist()


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


def _with_overlap(deg: pd.DataFrame, top_genes: pd.Series) -> pd.DataFrame:
    """DEG rows with ``top_attributed``: whether the gene is among the card's top attributed genes."""
    if deg.empty or "gene" not in deg:
        return deg
    return deg.assign(top_attributed=deg["gene"].isin(set(top_genes)))


def _status(data: RunData, kind: str, unit: int) -> str:
    """Attribution status of a unit: ``"attributed"`` with its split-half reliability (and a warning below
    :data:`~corelib.tl.attribution.RELIABLE_SPEARMAN`), the skip reason, or ``"not attributed"``."""
    attr = data.attribution[kind]
    if attr is None or unit not in attr.status.index:
        return "not attributed"
    row = attr.status.loc[unit]
    if str(row.get("reason", "")):
        return f"{row['status']}: {row['reason']}"
    if attr.reliability is None or unit not in attr.reliability.index:
        return str(row["status"])
    rho, signed = attr.reliability.loc[unit, ["split_half", "signed_split_half"]].astype(float)
    note = "" if rho >= RELIABLE_SPEARMAN else "; the gene list varies with the prototypes drawn"
    return f"{row['status']} (split-half reliability {rho:.2f}, expression-signed {signed:.2f}{note})"
