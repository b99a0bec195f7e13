"""The AnnData entry points: train an SAE on an embedding, attribute its concepts, annotate them (scanpy style).

Each reads its input from and writes its result to documented slots of the AnnData, so a user's own notebook
needs no run directory::

    cl.tl.train_sae(adata, use_rep="X_pca", n_concepts=64, k=4)   # obsm["X_concepts"], uns["concepts"]
    cl.tl.attribute(adata, encoder, sae)                           # varm["concepts_attribution"]
    cl.tl.annotate(adata)                                          # uns["concepts"]["annotation"]
    cl.tl.characterize(adata, ["cell_type"])                       # uns["concepts"]["metadata"]
    cl.tl.rank_genes(adata)                                        # uns["concepts"]["deg"]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from corelib.encoders import Encoder, align
from corelib.tl import concepts as _concepts
from corelib.tl.attribution import Attribution, attribute_concepts, check_direction
from corelib.tl.deg import deg_units
from corelib.tl.enrichment import GO_BP, GseaResult, gsea, mean_log_expression, ora
from corelib.tl.sae import TopKSAE, encode, train


def train_sae(
    adata: ad.AnnData,
    *,
    use_rep: str,
    n_concepts: int,
    k: int,
    key_added: str = "concepts",
    seed: int = 0,
    **train_options: Any,
) -> TopKSAE:
    """Train a Top-K SAE on the embedding ``adata.obsm[use_rep]`` and store every cell's concept codes.

    ``u = ReLU(TopK_k(W_enc (a - b_dec) + b_enc))``: each cell gets at most ``k`` non-zero concepts
    (:func:`corelib.tl.sae.train`, which holds out ``holdout_fraction`` of the cells for its metrics).

    Parameters
    ----------
    adata
        Cells with an embedding in ``obsm[use_rep]`` (n_cells x d).
    use_rep
        The ``obsm`` key of the embedding, e.g. ``"X_scvi"``.
    n_concepts, k, seed
        Dictionary size, concepts active per cell, and the seed of the initialisation and batches.
    key_added
        Codes go to ``obsm[f"X_{key_added}"]``, settings and metrics to ``uns[key_added]``.
    train_options
        Passed to :func:`corelib.tl.sae.train` (``lr``, ``epochs``, ``batch_size``, ``device``, ...).

    Returns
    -------
    The trained SAE. Writes ``obsm[f"X_{key_added}"]`` (CSR, n_cells x n_concepts) and ``uns[key_added]``
    with ``params`` (``use_rep``, ``n_concepts``, ``k``, ``seed`` and the training options) and ``metrics``.
    """
    if use_rep not in adata.obsm:
        raise KeyError(f"adata.obsm has no {use_rep!r}; it has {', '.join(adata.obsm) or 'nothing'}.")
    emb_ND = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    result = train(emb_ND, n_concepts, k, seed=seed, **train_options)
    adata.obsm[f"X_{key_added}"] = encode(result.sae, emb_ND)
    params = {"use_rep": use_rep, "n_concepts": int(n_concepts), "k": int(k), "seed": int(seed)}
    adata.uns[key_added] = {
        "params": params | {key: v for key, v in train_options.items() if isinstance(v, int | float | str)},
        "metrics": {key: v for key, v in result.metrics.items() if isinstance(v, int | float)},
    }
    return result.sae


def attribute(
    adata: ad.AnnData,
    encoder: Encoder,
    sae: TopKSAE,
    *,
    key_added: str = "concepts",
    concepts: Sequence[int] | None = None,
    layer: str | None = None,
    **options: Any,
) -> Attribution:
    """Counterfactual occlusion attribution of the concepts of :func:`train_sae` (Sec. 3.2, Eq. 2-3).

    The score of gene g for concept c is the mean over prototype/counterfactual pairs of the drop of the
    concept's activation when g's expression in the prototype is set to its value in the counterfactual
    (:func:`corelib.tl.attribution.attribute_concepts`).

    Parameters
    ----------
    adata
        The cells of :func:`train_sae` (its ``uns[key_added]["params"]["use_rep"]`` embedding), with raw counts
        in ``X`` or ``layers[layer]``.
    encoder
        The model that made the embedding (``corelib.encoders.load``).
    sae
        From :func:`train_sae`.
    key_added
        As in :func:`train_sae`.
    concepts
        Concepts to attribute (default: all).
    layer
        Layer of raw counts (None: ``X``).
    options
        Passed to :func:`corelib.tl.attribution.attribute_concepts` (``n_prototypes``, ``n_counterfactuals``,
        ``device``, ``progress``, ...).

    Returns
    -------
    The :class:`~corelib.tl.attribution.Attribution`. Writes ``varm[f"{key_added}_attribution"]`` (n_genes x
    n_concepts; NaN for a gene the model lacks or a concept not attributed), the expression-signed scores in
    ``varm[f"{key_added}_attribution_signed"]`` (:attr:`~corelib.tl.attribution.Attribution.signed`) and
    ``uns[key_added]["attribution_reliability"]`` (per attributed concept: the split-half Spearman and top-20
    overlap of the scores and of the expression-signed scores, :attr:`~corelib.tl.attribution.Attribution.reliability`).
    """
    _require_concepts(adata, key_added)
    emb_ND = np.asarray(adata.obsm[adata.uns[key_added]["params"]["use_rep"]], dtype=np.float32)
    X_NM, _ = align(adata, encoder.genes, layer=layer, var_key=encoder.var_key)
    codes_NC = adata.obsm[f"X_{key_added}"]
    attr = attribute_concepts(encoder, sae, X_NM, emb_ND, codes_NC=codes_NC, concepts=concepts, **options)
    for suffix, direction in (("", "paper"), ("_signed", "expression")):
        scores_GU = attr.frame(direction).reindex(index=adata.var_names, columns=range(codes_NC.shape[1]))
        adata.varm[f"{key_added}_attribution{suffix}"] = scores_GU.to_numpy(dtype=np.float64)
    reliability = attr.reliability.loc[attr.units[attr.attributed]]
    adata.uns[key_added]["attribution_reliability"] = reliability.set_axis(reliability.index.astype(str))
    return attr


def annotate(
    adata: ad.AnnData,
    *,
    key_added: str = "concepts",
    gene_sets: str | os.PathLike | Mapping[str, Iterable[str]] = GO_BP,
    method: str = "gsea",
    direction: str = "paper",
    layer: str | None = None,
    **options: Any,
) -> GseaResult:
    """Label every attributed concept with a gene set: attribution-ranked GSEA (the paper's) or ORA.

    ``method="gsea"``: :func:`corelib.tl.enrichment.gsea` (paper 3.4). ``method="ora"``: the expression-matched
    over-representation test of each concept's top attributed genes (:func:`corelib.tl.enrichment.ora`), whose
    null matches the genes' mean expression (from the counts in ``X`` or ``layers[layer]``); it finds planted
    programs that weighted GSEA misses (``docs/decisions.md``, issue 22).

    Parameters
    ----------
    adata
        With ``varm[f"{key_added}_attribution"]`` from :func:`attribute`.
    key_added
        As in :func:`train_sae`.
    gene_sets
        Library name, ``.gmt`` path or ``{term: genes}``.
    method
        ``"gsea"`` or ``"ora"``.
    direction
        Scores to rank: ``"paper"`` (Eq. 3, ``varm[f"{key_added}_attribution"]``) or ``"expression"`` (signed by
        the expression change, ``varm[f"{key_added}_attribution_signed"]``: positive = more of the gene, more of
        the concept).
    layer
        Layer of raw counts for ``"ora"``'s expression matching (None: ``X``).
    options
        Passed to :func:`corelib.tl.enrichment.gsea` (``permutations``, ``seed``, ``n_jobs``, ...) or
        :func:`corelib.tl.enrichment.ora` (``n_top``, ``n_bins``, ...).

    Returns
    -------
    The :class:`~corelib.tl.enrichment.GseaResult` (for ORA: its per-unit and per-term tables). Writes
    ``uns[key_added]["annotation"]``: one row per
    concept with its best ``term``, its ``pval``, the ``qval`` the calibrated annotation reads (adjusted for the
    sets tested and across concepts, :mod:`corelib.tl.annotation`) and ``annotation`` ("strong", "weak" or
    "none", in the mode of ``options["annotation"]``, calibrated by default).
    """
    check_direction(direction)
    key = f"{key_added}_attribution" + ("_signed" if direction == "expression" else "")
    if key not in adata.varm:
        raise KeyError(f"adata.varm has no {key!r}: run cl.tl.attribute(adata, encoder, sae) first.")
    scores = adata.varm[key]
    attributed_U = ~np.isnan(scores).all(axis=0)
    genes_G = ~np.isnan(scores).all(axis=1)

    scores_GU = pd.DataFrame(
        scores[np.ix_(genes_G, attributed_U)],
        index=pd.Index(adata.var_names[genes_G], name="gene"),
        columns=np.flatnonzero(attributed_U),
    )
    if method == "gsea":
        result = gsea(scores_GU, gene_sets, **options)
    elif method == "ora":
        counts = adata.X if layer is None else adata.layers[layer]
        mean_G = mean_log_expression(counts, adata.var_names)
        result = GseaResult(*ora(scores_GU, gene_sets, mean_expression=mean_G, **options))
    else:
        raise ValueError(f"method must be 'gsea' or 'ora', got {method!r}.")
    table = result.units[["term", "pval", "qval", "annotation"]].copy()
    table.index = table.index.astype(str)
    adata.uns[key_added]["annotation"] = table
    return result


def _require_concepts(adata: ad.AnnData, key_added: str) -> None:
    if key_added not in adata.uns or f"X_{key_added}" not in adata.obsm:
        raise KeyError(
            f"No concepts under {key_added!r}: run cl.tl.train_sae(adata, ..., key_added={key_added!r})."
        )


def characterize(
    adata: ad.AnnData, keys: Sequence[str], *, key_added: str = "concepts", **options: Any
) -> pd.DataFrame:
    """Call every concept "<column>-specific", "mixed" or "not enough data" from its active cells' ``obs`` labels.

    Parameters
    ----------
    adata
        With the codes of :func:`train_sae` and the ``obs`` columns ``keys``.
    keys
        ``obs`` columns to characterise the concepts with, e.g. ``["cell_type"]``.
    key_added
        As in :func:`train_sae`.
    options
        Passed to :func:`corelib.tl.concepts.characterize` (``min_active_cells``, ``specific_threshold``, ...).

    Returns
    -------
    The table of :func:`corelib.tl.concepts.characterize` (one row per concept), also written to
    ``uns[key_added]["metadata"]`` (index: the concept number as a string).
    """
    _require_concepts(adata, key_added)
    missing = [k for k in keys if k not in adata.obs]
    if missing:
        raise KeyError(f"adata.obs has no {', '.join(map(repr, missing))}; it has {', '.join(adata.obs)}.")
    table = _concepts.characterize(adata.obsm[f"X_{key_added}"], adata.obs[list(keys)], list(keys), **options)
    adata.uns[key_added]["metadata"] = table.set_axis(table.index.astype(str))
    return table


def rank_genes(
    adata: ad.AnnData,
    *,
    key_added: str = "concepts",
    concepts: Sequence[int] | None = None,
    layer: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """The DEG baseline of every concept: genes that differ between its top cells and their counterfactuals.

    For each concept, its most activating cells against the nearest cells (in the embedding) that do not activate
    it, with ``scanpy.tl.rank_genes_groups`` on log-normalised counts (paper App. C;
    :func:`corelib.tl.deg.deg_units`). The baseline the attribution is compared with: it says which genes
    *differ*, not which genes *drive* the concept.

    Parameters
    ----------
    adata
        With the codes and the embedding of :func:`train_sae`, and raw counts in ``X`` or ``layers[layer]``.
    key_added
        As in :func:`train_sae`.
    concepts
        Concepts to test (default: the attributed ones when :func:`attribute` has run, else every concept).
    layer
        Layer of raw counts (None: ``X``).
    options
        Passed to :func:`corelib.tl.deg.deg_units` (``max_cells``, ``method``, ``order``, ``pval_cutoff``,
        ``progress``, ``client``).

    Returns
    -------
    The long table of :func:`corelib.tl.deg.deg_units` (``unit``, ``rank``, ``gene``, ``logfoldchange``,
    ``pval_adj``...), also written to ``uns[key_added]["deg"]``.
    """
    _require_concepts(adata, key_added)
    emb_ND = np.asarray(adata.obsm[adata.uns[key_added]["params"]["use_rep"]], dtype=np.float32)
    codes_NC = adata.obsm[f"X_{key_added}"]
    if concepts is None and f"{key_added}_attribution" in adata.varm:
        concepts = np.flatnonzero(~np.isnan(adata.varm[f"{key_added}_attribution"]).all(axis=0))
    counts = adata.X if layer is None else adata.layers[layer]
    table = deg_units(counts, codes_NC, emb_ND, units=concepts, genes=list(adata.var_names), **options)
    adata.uns[key_added]["deg"] = table
    return table
