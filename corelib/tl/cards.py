"""Concept cards as data: what a card shows of one concept or neuron, computed from an AnnData-like source.

:class:`ConceptData` (from an AnnData of ``cl.tl.train_sae``, ``attribute`` and ``annotate``, or from a run
directory through ``corelib.explorer.load_run_data``) -> :func:`card_data` -> :class:`CardData`, which the plots
(``corelib.pl.card``), the explorer's widgets and its atlas all draw. A piece the source lacks (no UMAP, no DEG
table, no decoder to steer with...) is absent, with a one-line reason (``absent``), never an error.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.datasets import describe_genes
from corelib.tl.attribution import (
    ATTRIBUTED,
    RELIABLE_SPEARMAN,
    Attribution,
    important_gene_counts,
    prototypes,
)
from corelib.tl.steering import SteeringResult, encoder_decoder
from corelib.tl.units import KINDS, active_cells, unit_activation, unit_name

#: Default importance thresholds on attribution scores: the paper's absolute 0.05 (Sec. 3.2), and relative to
#: the prototypes' activation (notebook 03's ``relative_threshold``).
DEFAULT_THRESHOLD = 0.05
DEFAULT_RELATIVE_THRESHOLD = 0.01

#: Prototypes per concept that :func:`corelib.tl.attribute` draws by default (its ``n_prototypes``): an AnnData
#: does not store them, so a card from one marks this many most activating cells instead.
N_PROTOTYPES = 10

#: A steering decoder: ``(decode, genes, dictionary_CD)`` (``emb -> expression``, its genes, the SAE's
#: dictionary), or the sentence saying why there is none.
Decoder = tuple[Callable[[np.ndarray], np.ndarray], list[str], np.ndarray] | str


def check_kind(kind: str) -> None:
    """Raise a ValueError naming the valid kinds unless ``kind`` is ``"concept"`` or ``"neuron"``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not valid; use one of {', '.join(KINDS)}.")


# --------------------------------------------------------------------------------------------- the source
@dataclass
class ConceptData:
    """Everything the cards read, loaded once: from an AnnData (:meth:`from_anndata`) or a run directory.

    Attributes
    ----------
    obs
        Cell metadata (n_cells rows).
    umap
        UMAP of the embedding (n_cells x 2), None when the source has none (``absent["umap"]`` says why).
    activations
        kind -> activations (n_cells x n_units): SAE concept codes (sparse CSC), or the embedding for neurons;
        read one unit with :func:`corelib.tl.units.unit_activation`.
    attribution
        kind -> the :class:`~corelib.tl.attribution.Attribution` (None when not computed).
    metadata
        kind -> per unit x metadata column calls (notebook 03), possibly empty.
    gsea, gsea_terms, deg
        kind -> per-unit top GSEA term; per-unit top terms (long table); DEG long table (unit, gene, ...).
        Each possibly empty.
    matched
        Matched concepts of a stability comparison, possibly empty.
    metadata_keys
        The metadata columns whose composition a card shows.
    info
        What the data is: ``model``, ``dataset``, ``organism`` (the gene descriptions' setting), ``embedding``
        (obsm key) and ``sae`` (SAE name, when known).
    origin
        ``"run"`` (a run directory) or ``"AnnData"``: how error messages name the source.
    source
        Where the data came from: the run directory (``corelib.runs.RunDir``), or None for an AnnData.
    absent
        Piece -> why the source lacks it (``"umap"``, ``"gsea"``, ``"gsea_terms"``, ``"deg"``, ``"matched"``,
        ``"metadata"``), one line each; pieces present are not listed.
    decoder
        Loads the steering decoder (:data:`Decoder`) when first asked (:meth:`steering_decoder`); None: no
        steering, ``absent["steering"]`` says why.
    """

    obs: pd.DataFrame
    umap: np.ndarray | None
    activations: dict[str, np.ndarray | sp.csc_matrix]
    attribution: dict[str, Attribution | None]
    metadata: dict[str, pd.DataFrame]
    gsea: dict[str, pd.DataFrame]
    gsea_terms: dict[str, pd.DataFrame]
    deg: dict[str, pd.DataFrame]
    matched: pd.DataFrame
    metadata_keys: list[str]
    info: dict[str, str] = field(default_factory=dict)
    origin: str = "AnnData"
    source: Any = None
    absent: dict[str, str] = field(default_factory=dict)
    decoder: Callable[[], Decoder] | None = field(default=None, repr=False)
    _cache: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, computed once per key for this data (tables derived from it, e.g. a unit summary)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def scores(self, kind: str) -> pd.DataFrame:
        """Attribution scores of the attributed units of ``kind`` (genes x unit ids); empty if none."""
        check_kind(kind)
        attr = self.attribution.get(kind)
        return self.cached(("scores", kind), lambda: pd.DataFrame() if attr is None else attr.frame())

    def important_genes(self, kind: str, threshold: float, relative_threshold: float) -> pd.DataFrame:
        """Important-gene counts per attributed unit (``corelib.tl.attribution.important_gene_counts``), cached."""
        attr = self.attribution.get(kind)

        def count() -> pd.DataFrame:
            if attr is None:
                return pd.DataFrame(columns=["n_important", "n_important_relative"])
            return important_gene_counts(attr, threshold=threshold, relative_threshold=relative_threshold)

        return self.cached(("important", kind, float(threshold), float(relative_threshold)), count)

    def units(self, kind: str) -> list[int]:
        """Unit ids of ``kind`` with attribution scores (``absent["attribution"]``: those characterised), sorted."""
        absent = "attribution" in self.absent and self.attribution.get(kind) is None
        units = self.metadata.get(kind, pd.DataFrame()).index if absent else self.scores(kind).columns
        return sorted(int(u) for u in units)

    def steering_decoder(self) -> Decoder:
        """The steering decoder (loaded once), or why there is none."""
        if self.decoder is None:
            return self.absent.get("steering", "no encoder was given to decode with.")
        return self.cached("decoder", self.decoder)

    @classmethod
    def from_anndata(
        cls,
        adata: Any,
        *,
        key: str = "concepts",
        metadata_keys: Sequence[str] | None = None,
        encoder: Any = None,
        sae: Any = None,
        umap_key: str | None = None,
    ) -> ConceptData:
        """The cards' data from the slots of :func:`corelib.tl.train_sae`, ``attribute`` and ``annotate``.

        Parameters
        ----------
        adata
            With ``obsm[f"X_{key}"]`` and ``uns[key]`` (train_sae), ``varm[f"{key}_attribution"]`` (attribute;
            without it no concept has scores), optionally ``uns[key]["annotation"]`` (annotate) and
            ``obsm["X_umap"]``.
        key
            The ``key_added`` of those functions.
        metadata_keys
            ``obs`` columns whose composition the cards show; default every categorical column with 2-50
            labels (``cell_type`` first).
        encoder, sae
            The encoder that made the embedding and the SAE of ``train_sae``: with both, concept cards steer
            (when the encoder has a generative decoder); without, steering is absent and says why.
        umap_key
            The ``obsm`` key of the 2-D layout the cards colour; default ``X_umap``, else
            ``X_umap_<embedding>``, else another ``X_umap*`` key (e.g. a Seurat UMAP of the same cells).

        Returns
        -------
        The :class:`ConceptData`. The AnnData does not store the attribution's prototype cells: a card marks
        the concept's :data:`N_PROTOTYPES` most activating cells instead (the default selection of
        ``attribute``), and has no counterfactuals.
        """
        if f"X_{key}" not in adata.obsm or key not in adata.uns:
            raise KeyError(f"No concepts under {key!r}: run cl.tl.train_sae(adata, ..., key_added={key!r}).")
        settings, absent = adata.uns[key], {}
        codes = sp.csc_matrix(adata.obsm[f"X_{key}"])  # cards read one concept's column at a time
        use_rep = str(settings.get("params", {}).get("use_rep", ""))
        activations: dict[str, Any] = {"concept": codes}
        if use_rep in adata.obsm:
            activations["neuron"] = np.asarray(adata.obsm[use_rep], dtype=np.float32)
        else:
            absent["neuron"] = f"the AnnData has no embedding obsm[{use_rep!r}] (uns[{key!r}]['params'])."
        umap_keys = sorted(k for k in adata.obsm if str(k).startswith("X_umap"))
        if umap_key is not None:
            umap = np.asarray(adata.obsm[umap_key], dtype=np.float32)[:, :2]
        else:
            umap = anndata_umap(adata, use_rep)
            if umap is None and umap_keys:
                umap_key = umap_keys[0]
                umap = np.asarray(adata.obsm[umap_key], dtype=np.float32)[:, :2]
        if umap is None:
            absent["umap"] = "the AnnData has no obsm['X_umap'] (scanpy.tl.umap on the embedding makes one)."
        attribution = _anndata_attribution(adata, key, codes)
        if attribution is None:
            absent["attribution"] = (
                f"no varm[{key + '_attribution'!r}]: run cl.tl.attribute(adata, encoder, sae)."
            )
        annotation, gsea = settings.get("annotation"), pd.DataFrame()
        if isinstance(annotation, pd.DataFrame) and not annotation.empty:
            gsea = annotation.set_axis(annotation.index.astype(int)).rename_axis("unit")
        else:
            absent["gsea"] = (
                f"no uns[{key!r}]['annotation']: run cl.tl.annotate(adata) to label the concepts."
            )
        absent["gsea_terms"] = (
            "the AnnData keeps each concept's best term only (cl.tl.annotate), not its top terms."
        )
        tables = {name: settings.get(name) for name in ("metadata", "deg")}
        for name, verb in (("metadata", "characterize(adata, keys)"), ("deg", "rank_genes(adata)")):
            if not isinstance(tables[name], pd.DataFrame):
                tables[name] = pd.DataFrame()
                absent[name] = f"no uns[{key!r}][{name!r}]: run cl.tl.{verb}."
        absent["matched"] = "the AnnData holds no stability matching (corelib.tl.stability computes one)."
        embed = dict(adata.uns.get("embed", {}))
        decoder = None
        if encoder is None or sae is None:
            missing = "an encoder" if encoder is None else "the SAE"
            absent["steering"] = f"no decoder: pass {missing} (encoder=..., sae=...) to steer concepts."
        else:
            decoder = lambda: steering_decoder(encoder, sae)  # noqa: E731 (loaded when a card first asks)
        obs, empty = adata.obs.copy(), {kind: pd.DataFrame() for kind in KINDS}
        data = cls(
            obs=obs,
            umap=umap,
            activations=activations,
            attribution={"concept": attribution, "neuron": None},
            metadata=empty | {"concept": tables["metadata"].set_axis(tables["metadata"].index.astype(int))},
            gsea={"concept": gsea, "neuron": pd.DataFrame()},
            gsea_terms=dict(empty),
            deg=empty | {"concept": tables["deg"]},
            matched=pd.DataFrame(),
            metadata_keys=[],
            info={
                "model": str(embed.get("model", "")),
                "dataset": str(embed.get("dataset", "")),
                "organism": str(embed.get("organism", "human")),
                "embedding": use_rep,
                "sae": key,
            },
            origin="AnnData",
            absent=absent,
            decoder=decoder,
        )
        data.metadata_keys = check_metadata_keys(obs, metadata_keys, data.origin) or default_metadata_keys(
            obs, tables["metadata"]
        )
        return data


def anndata_umap(adata: Any, embed_key: str) -> np.ndarray | None:
    """The UMAP of the embedding: ``obsm["X_umap"]`` or ``obsm["X_umap_<model>"]`` (first 2 columns), or None."""
    model_key = "X_umap_" + embed_key.removeprefix("X_")
    for key in ("X_umap", model_key):
        if key in adata.obsm:
            return np.asarray(adata.obsm[key], dtype=np.float32)[:, :2]
    return None


def _anndata_attribution(adata: Any, key: str, codes_NC: sp.csc_matrix) -> Attribution | None:
    """An :class:`Attribution` of the attributed concepts from ``varm`` (prototypes: the top activating cells)."""
    if f"{key}_attribution" not in adata.varm:
        return None
    scores_GU = np.asarray(adata.varm[f"{key}_attribution"], dtype=float)
    units = np.flatnonzero(~np.isnan(scores_GU).all(axis=0))
    genes = ~np.isnan(scores_GU[:, units]).all(axis=1)
    protos = np.full((len(units), N_PROTOTYPES), -1)
    activation = np.full(len(units), np.nan)
    for i, unit in enumerate(units):
        acts_N = unit_activation(codes_NC, int(unit))
        top = prototypes(np.where(acts_N > 0, acts_N, -np.inf), N_PROTOTYPES)
        top = top[acts_N[top] > 0]
        protos[i, : len(top)] = top
        activation[i] = acts_N[top].mean() if len(top) else np.nan
    signed = adata.varm.get(f"{key}_attribution_signed")
    reliability = adata.uns[key].get("attribution_reliability")
    if isinstance(reliability, pd.DataFrame):  # stored with string unit ids (h5ad keys)
        reliability = reliability.set_axis(reliability.index.astype(int)).reindex(units)
    status = pd.DataFrame({"status": ATTRIBUTED, "reason": ""}, index=pd.Index(units, name="unit"))
    return Attribution(
        scores=scores_GU[np.ix_(genes, units)],
        genes=np.asarray(adata.var_names[genes]).astype(str),
        units=units,
        activation=activation,
        prototypes=protos,
        counterfactuals=np.zeros((len(units), 0, 0), dtype=int),
        status=status,
        kind="concept",
        signed=None if signed is None else np.asarray(signed, dtype=float)[np.ix_(genes, units)],
        reliability=reliability if isinstance(reliability, pd.DataFrame) else None,
    )


def steering_decoder(encoder: Any, sae: Any) -> Decoder:
    """The decoder a card steers with: ``(decode, genes, dictionary_CD)`` of ``encoder`` and ``sae``, or why
    the encoder has none (``encoder.decoder_absent()``)."""
    reason = encoder.decoder_absent()
    if reason is not None:
        return reason
    return encoder_decoder(encoder), list(encoder.genes), sae.W_dec_CD.detach().cpu().numpy()


def check_metadata_keys(obs: pd.DataFrame, keys: Sequence[str] | None, origin: str = "run") -> list[str]:
    """``keys`` as a list (empty when None), or a ValueError naming those not in ``obs``."""
    keys = list(keys) if keys else []
    missing = [k for k in keys if k not in obs]
    if missing:
        raise ValueError(
            f"Metadata column(s) {', '.join(missing)} not in the {origin}'s cells; available: "
            f"{', '.join(map(str, obs.columns))}."
        )
    return keys


def default_metadata_keys(obs: pd.DataFrame, characterised: pd.DataFrame | None = None) -> list[str]:
    """The columns of a metadata-calls table (``<column>_top``, notebook 03's), else every categorical ``obs``
    column with 2-50 labels (``cell_type`` first)."""
    table = pd.DataFrame() if characterised is None else characterised
    from_table = [c.removesuffix("_top") for c in table.columns if c.endswith("_top")]
    if from_table:
        return [c for c in from_table if c in obs]
    categorical = [
        c
        for c in obs.columns
        if (isinstance(obs[c].dtype, pd.CategoricalDtype) or obs[c].dtype == object)
        and 1 < obs[c].nunique() <= 50
    ]
    return sorted(categorical, key=lambda c: c != "cell_type")


# ------------------------------------------------------------------------------------------------ the card
@dataclass(frozen=True)
class CardData:
    """One concept's (or neuron's) card: what the plots, the explorer widget and the atlas show.

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
        Active cells (:func:`~corelib.tl.units.active_cells`).
    activation
        Activation per cell (n_cells,), for the UMAP and the histogram.
    umap
        UMAP coordinates (n_cells x 2), None when the data has none (``absent["umap"]``).
    prototypes, counterfactuals
        Cell indices of the attribution's prototypes (N_p,) and counterfactuals (N_p * N_c,), empty if none.
    composition
        Metadata column -> fraction of the active cells carrying each label (sorted, sums to 1).
    metadata
        The unit's row of the metadata-calls table (calls per column), possibly empty.
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
        Matched concepts from the stability run (rows of ``matched_concepts`` for this concept).
    steering
        The concept steered on its prototypes (``corelib.explorer.steering.card_steering``), or why not.
    absent
        Piece -> why the data lacks it (:attr:`ConceptData.absent`), for the card to say so.
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
    umap: np.ndarray | None
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
    absent: dict[str, str] = field(default_factory=dict)


def card_data(
    data: ConceptData,
    unit: int,
    kind: str = "concept",
    *,
    n_top: int = 20,
    threshold: float = DEFAULT_THRESHOLD,
    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
) -> CardData:
    """The card of one concept or neuron (its steering left ``"not computed"``: the explorer adds it).

    Parameters
    ----------
    data
        The :class:`ConceptData`.
    unit
        Concept index (SAE latent) or neuron index (embedding dimension).
    kind
        ``"concept"`` or ``"neuron"``.
    n_top
        Number of top genes on the bar chart.
    threshold, relative_threshold
        Importance thresholds on attribution scores: absolute (paper: 0.05) and relative to the prototypes'
        activation (as notebook 03's ``important_genes.csv``).
    """
    check_kind(kind)
    if kind not in data.activations:
        raise ValueError(
            f"No {kind}s here: {data.absent.get(kind, 'the data holds no ' + kind + ' activations.')}"
        )
    acts_NU = data.activations[kind]
    unit = int(unit)
    if not 0 <= unit < acts_NU.shape[1]:
        raise ValueError(
            f"{kind} {unit} does not exist: this {data.origin} has {acts_NU.shape[1]} {kind}s "
            f"(0..{acts_NU.shape[1] - 1})."
        )
    activation = unit_activation(acts_NU, unit)
    attr = data.attribution.get(kind)
    scores = data.scores(kind).get(unit)
    genes = pd.DataFrame({"gene": [], "score": [], "description": []})
    if scores is not None:
        top = scores.sort_values(ascending=False).head(n_top)
        genes = pd.DataFrame({"gene": top.index.astype(str), "score": top.to_numpy(float)})
        organism = data.info.get("organism", "human")  # NCBI descriptions, bundled table, alias fallback
        descriptions = describe_genes(genes["gene"], organism=organism).reindex(genes["gene"])
        genes["description"] = descriptions.fillna("").tolist()
    counts = table_row(data.important_genes(kind, threshold, relative_threshold), unit)
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
        prototype_activation=_prototype_activation(attr, unit),
        n_active=int(active.sum()),
        activation=activation,
        umap=data.umap,
        prototypes=_cells(attr, unit, "prototypes"),
        counterfactuals=_cells(attr, unit, "counterfactuals"),
        composition={col: composition(data.obs[col], active) for col in data.metadata_keys},
        metadata=table_row(data.metadata.get(kind, pd.DataFrame()), unit),
        status=attribution_status(attr, unit),
        gsea=table_rows(data.gsea_terms.get(kind, pd.DataFrame()), unit),
        annotation=table_row(data.gsea.get(kind, pd.DataFrame()), unit),
        deg=_with_overlap(table_rows(data.deg.get(kind, pd.DataFrame()), unit), genes["gene"]),
        matched=table_rows(data.matched, unit, "concept") if kind == "concept" else pd.DataFrame(),
        absent=dict(data.absent),
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


def composition(labels: pd.Series, active: np.ndarray) -> pd.Series:
    """Fraction of the active cells carrying each label, largest first."""
    counts = labels[active].astype(str).value_counts()
    return counts / counts.sum() if counts.sum() else counts.astype(float)


def table_row(table: pd.DataFrame, unit: int) -> pd.Series:
    """The row of a per-unit table (unit ids as index), or an empty Series."""
    if table.empty or unit not in table.index:
        return pd.Series(dtype=object)
    row = table.loc[unit]
    return row.iloc[0] if isinstance(row, pd.DataFrame) else row


def table_rows(table: pd.DataFrame, unit: int, column: str = "unit") -> pd.DataFrame:
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


def attribution_status(attr: Attribution | None, unit: int) -> str:
    """Attribution status of a unit: ``"attributed"`` with its split-half reliability (and a warning below
    :data:`~corelib.tl.attribution.RELIABLE_SPEARMAN`), the skip reason, or ``"not attributed"``."""
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
