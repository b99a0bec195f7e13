"""The explorer's data: a :class:`~corelib.tl.cards.ConceptData`, from a run directory or from an AnnData.

:func:`load_run_data` reads a finished run directory (notebooks 01-03, 04 optional); an AnnData made by
``cl.tl.train_sae``, ``attribute`` and ``annotate`` goes through :meth:`ConceptData.from_anndata`. Either way
the cards, the atlas and the widgets read the same object; :func:`as_data` takes any of the three. Batch concepts
(notebook 03's ``batch_marks`` with a ``batch_key``, or ``cl.tl.batch.remove_batch_concepts`` on an AnnData) join the
concepts' metadata calls (:func:`corelib.tl.evidence.join_batch_marks`): each card of one carries its mark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.encoders.precomputed import NO_MODEL, is_precomputed
from corelib.runs import RunDir, attribution_path, load_sae, restore_encoder
from corelib.runs.registry import step
from corelib.tl import sae as sae_lib
from corelib.tl.attribution import Attribution
from corelib.tl.cards import (
    ConceptData,
    Decoder,
    anndata_umap,
    check_metadata_keys,
    default_metadata_keys,
    steering_decoder,
)
from corelib.tl.evidence import join_batch_marks, with_batch_rule
from corelib.tl.units import KINDS

#: The pieces a run on a precomputed embedding lacks (``model: precomputed``): all come from running cells through
#: the model (attribution, the GSEA of its scores, steering).
NEEDS_MODEL = ("attribution", "gsea", "gsea_terms", "steering")

#: The explorer's data (the name the explorer has always used): one class, from a run or an AnnData.
RunData = ConceptData

#: What the explorer opens: a run directory, its loaded data, or an AnnData of ``cl.tl``.
Source = RunDir | ConceptData | ad.AnnData


def load_run_data(run: RunDir, metadata_keys: Sequence[str] | None = None) -> ConceptData:
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
    The loaded :class:`~corelib.tl.cards.ConceptData` (``source`` is the run; steering decodes with the run's
    encoder checkpoint, loaded when a card first asks).
    """
    if not isinstance(run, RunDir):
        raise TypeError(f"run must be a corelib.runs.RunDir (from runs.open_run), not {type(run).__name__}.")
    adata = ad.read_h5ad(run.require("embedded"), backed="r")  # the counts stay on disk
    try:
        embed_key = adata.uns.get("embed", {}).get("key")
        if embed_key not in adata.obsm:
            raise ValueError(
                f"{run.path('embedded')} has no embedding obsm[{embed_key!r}] (uns['embed']['key']); "
                f"rerun {step('embed')}."
            )
        emb = np.asarray(adata.obsm[embed_key], dtype=np.float32)
        obs, umap = adata.obs.copy(), anndata_umap(adata, embed_key)
        embed = dict(adata.uns["embed"])
    finally:
        adata.file.close()
    if umap is None:
        model_key = "X_umap_" + embed_key.removeprefix("X_")
        raise ValueError(
            f"The embedded cells have no UMAP (obsm['X_umap'] or obsm[{model_key!r}]); rerun {step('embed')}."
        )
    metadata = {kind: _optional_table(run, f"metadata_{kind}s") for kind in KINDS}
    metadata["concept"] = join_batch_marks(metadata["concept"], _optional_table(run, "batch_marks"))
    no_model = is_precomputed(run.path("encoder"))
    data = ConceptData(
        obs=obs,
        umap=umap,
        activations={"neuron": emb, "concept": _concept_activations(run, emb)},
        attribution={kind: _read_attribution(run, kind, required=not no_model) for kind in KINDS},
        metadata=metadata,
        gsea={kind: _optional_table(run, f"gsea_{kind}s") for kind in KINDS},
        gsea_terms={kind: _optional_table(run, "gsea_terms", f"{kind}s", None) for kind in KINDS},
        deg={kind: _optional_table(run, "deg", f"{kind}s", None) for kind in KINDS},
        matched=_optional_table(run, "matched_concepts", None, None),
        metadata_keys=check_metadata_keys(obs, metadata_keys, "run")
        or default_metadata_keys(obs, metadata["concept"]),
        info={
            "model": str(embed.get("model", "")),
            "dataset": str(embed.get("dataset", "")),
            "organism": str(embed.get("organism", "human")),  # notebook 01's setting (runs before it: human)
            "embedding": str(embed_key),
            "sae": str(run.read_json("sae_selected")["sae"]),
        },
        origin="run",
        source=run,
        absent=dict.fromkeys(NEEDS_MODEL, NO_MODEL) if no_model else {},
    )
    data.decoder = None if no_model else lambda: _run_decoder(run, emb)
    return data


def as_data(
    source: Source,
    *,
    metadata_keys: Sequence[str] | None = None,
    encoder: Any = None,
    sae: Any = None,
) -> ConceptData:
    """The explorer's data from a run directory (:func:`load_run_data`), an AnnData
    (:meth:`~corelib.tl.cards.ConceptData.from_anndata`, with ``encoder`` and ``sae`` to steer) or the data
    itself (returned as it is; then the options must be left out)."""
    if isinstance(source, ConceptData):
        if metadata_keys is not None or encoder is not None or sae is not None:
            raise ValueError(
                "metadata_keys, encoder and sae are settings of loading: pass them with the run directory or "
                "the AnnData, not with data already loaded."
            )
        return source
    if isinstance(source, ad.AnnData):
        data = ConceptData.from_anndata(source, metadata_keys=metadata_keys, encoder=encoder, sae=sae)
        data.metadata["concept"] = join_batch_marks(data.metadata["concept"], anndata_batch_marks(source))
        return data
    if encoder is not None or sae is not None:
        raise ValueError("A run directory steers with its own encoder and SAE; leave encoder and sae out.")
    return load_run_data(source, metadata_keys)


def anndata_batch_marks(adata: ad.AnnData, key: str = "concepts") -> pd.DataFrame:
    """The batch concepts :func:`corelib.tl.batch.remove_batch_concepts` stored (``uns[key]["batch"]``), with
    their rule (:func:`~corelib.tl.evidence.with_batch_rule`); empty when it did not run."""
    found = adata.uns.get(key, {}).get("batch", {})
    if not isinstance(found.get("table"), pd.DataFrame):
        return pd.DataFrame()
    return with_batch_rule(found["table"], found)


def run_title(data: ConceptData) -> str:
    """One line naming the data: the run, model, dataset and SAE (or what an AnnData records of them)."""
    info = data.info
    if isinstance(data.source, RunDir):
        return f"run {data.source.root.name}: {info['model']} on {info['dataset']}, SAE {info['sae']}"
    what = " on ".join(x for x in (info.get("model", ""), info.get("dataset", "")) if x) or "cells"
    return f"AnnData: {what}, concepts {info.get('sae', '')} of {info.get('embedding', '')}"


def _run_decoder(run: RunDir, emb_ND: np.ndarray) -> Decoder:
    """The run's decoder: notebook 01's encoder checkpoint (checked against the embedding) and the selected
    SAE's dictionary, or why there is none."""
    if not run.path("encoder").exists():
        return f"the run directory holds no encoder checkpoint ({run.path('encoder')}) to decode with."
    return steering_decoder(restore_encoder(run, device="cpu"), load_sae(run, emb_ND)[1])


def _concept_activations(run: RunDir, emb_ND: np.ndarray) -> sp.csc_matrix:
    """Concept activations (n_cells x n_concepts, sparse CSC: cards read one concept's column at a time) of
    the selected SAE on the run's embedding."""
    return sae_lib.encode(load_sae(run, emb_ND)[1], emb_ND).tocsc()


def _read_attribution(run: RunDir, kind: str, *, required: bool = True) -> Attribution | None:
    """The attribution of notebook 03 for ``kind`` (required for concepts of a run with a model; None for neurons
    if not computed)."""
    path = attribution_path(run, f"{kind}s")
    if path is None and kind == "concept" and required:
        run.require(f"attribution_{kind}s")
    return Attribution.load(path) if path is not None else None


def _optional_table(
    run: RunDir, key: str, name: str | None = None, index_col: int | None = 0
) -> pd.DataFrame:
    """A CSV table of the run directory, or an empty DataFrame when the step did not write it."""
    path = run.path(key, name)
    return pd.read_csv(path, index_col=index_col) if path.exists() else pd.DataFrame()
