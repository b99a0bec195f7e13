"""Dictionaries across datasets (paper 4.4, Fig. 4): SAEs trained on two datasets embedded by one encoder.

:func:`compare_datasets` gives each SAE's R^2 on every dataset's held-out cells and the matching of the two
dictionaries; :func:`attribute_matched` and :func:`matched_pair_genes` put the top genes of the best-matched
concept pairs side by side. Training the shared encoder is :func:`corelib.encoders.train_shared_scvi`; the
SAEs are :func:`corelib.tl.sae.train`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from corelib.encoders import align
from corelib.tl.attribution import attribute_concepts, unit_top_genes
from corelib.tl.sae.training import split_cells
from corelib.tl.stability import (
    Matching,
    chance_matching,
    cross_dataset_r2,
    match_dictionaries,
    summarize_matching,
)


class CrossDataset(NamedTuple):
    """SAEs trained on two datasets embedded by one encoder, and how they compare (paper Fig. 4A-B).

    Attributes
    ----------
    saes
        ``{dataset: TopKSAE}``.
    heldout
        ``{dataset: indices of its held-out cells}`` (:func:`heldout_cells`).
    r2
        :func:`corelib.tl.stability.cross_dataset_r2` on the held-out cells.
    matching
        :func:`corelib.tl.stability.match_dictionaries` of the first dataset's dictionary against the second's.
    """

    saes: dict[str, Any]
    heldout: dict[str, np.ndarray]
    r2: pd.DataFrame
    matching: Matching


def heldout_cells(
    embeddings: Mapping[str, Any], holdout_fraction: float, split_seed: int = 0
) -> dict[str, np.ndarray]:
    """The cells of each dataset that :func:`corelib.tl.sae.train` holds out with these settings.

    Parameters
    ----------
    embeddings
        ``{dataset: embeddings (n_cells x d)}``.
    holdout_fraction, split_seed
        As given to :func:`corelib.tl.sae.train` (:func:`corelib.tl.sae.split_cells`).

    Raises
    ------
    ValueError
        ``holdout_fraction`` is not in (0, 1): there would be no held-out cells to evaluate on.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(
            f"holdout_fraction must be in (0, 1) to evaluate on held-out cells; got {holdout_fraction}."
        )
    return {name: split_cells(len(e), holdout_fraction, split_seed)[1] for name, e in embeddings.items()}


def compare_datasets(
    saes: Mapping[str, Any], embeddings: Mapping[str, Any], heldout: Mapping[str, np.ndarray]
) -> CrossDataset:
    """R^2 of each dataset's SAE on both datasets' held-out cells, and the matching of the two dictionaries.

    Parameters
    ----------
    saes
        ``{dataset: TopKSAE}`` trained on that dataset's embeddings, two datasets.
    embeddings
        ``{dataset: embeddings (n_cells x d)}``, keyed like ``saes``, one encoder.
    heldout
        ``{dataset: held-out cell indices}`` (:func:`heldout_cells` with the SAEs' training settings).

    Returns
    -------
    :class:`CrossDataset`.
    """
    if len(saes) != 2:
        raise ValueError(
            f"compare_datasets compares two datasets; got {len(saes)} ({', '.join(map(str, saes))})."
        )
    r2 = cross_dataset_r2(saes, {name: np.asarray(e)[heldout[name]] for name, e in embeddings.items()})
    first, second = saes.values()
    return CrossDataset(
        dict(saes), dict(heldout), r2, match_dictionaries(first.dictionary, second.dictionary)
    )


def matching_summary(cross: CrossDataset, *, seed: int = 0) -> dict[str, float]:
    """:func:`corelib.tl.stability.summarize_matching` of ``cross.matching``, with ``chance_mean_cosine``: the
    mean matched cosine of two random dictionaries of the same shape (:func:`corelib.tl.stability.chance_matching`,
    seeded)."""
    d = next(iter(cross.saes.values())).cfg
    return {
        **summarize_matching(cross.matching.cosine),
        "chance_mean_cosine": chance_matching(d.n_concepts, d.n_concepts, d.d_in, seed=seed)["mean_cosine"],
    }


def attribute_matched(
    encoder: Any,
    cross: CrossDataset,
    adatas: Mapping[str, Any],
    embeddings: Mapping[str, np.ndarray],
    *,
    n_pairs: int = 5,
    progress: bool = True,
    **options: Any,
) -> tuple[Any, Any]:
    """Counterfactual attribution (:func:`corelib.tl.attribution.attribute_concepts`) of the best-matched concepts.

    Only the concepts of the ``n_pairs`` best-matched pairs are attributed, each on its own dataset.

    Parameters
    ----------
    encoder
        The shared encoder both datasets were embedded with.
    cross
        From :func:`compare_datasets`.
    adatas, embeddings
        The two datasets (raw counts) and their embeddings, keyed like ``cross.saes``.
    n_pairs
        Pairs to attribute, highest cosine first.
    progress
        Progress bars.
    options
        Passed to ``attribute_concepts`` (``n_prototypes``, ``n_counterfactuals``, ``device``, ...).

    Returns
    -------
    ``(attribution of the first dataset's concepts, attribution of the second's)``.
    """
    pairs = cross.matching.to_frame().head(n_pairs)
    out = []
    for (name, model), column in zip(cross.saes.items(), ("concept_1", "concept_2"), strict=True):
        X, _ = align(adatas[name], encoder.genes, var_key=encoder.var_key, min_overlap=1)
        out.append(
            attribute_concepts(
                encoder,
                model,
                X,
                np.asarray(embeddings[name]),
                concepts=pairs[column].to_numpy(),
                progress=progress,
                **options,
            )
        )
    return out[0], out[1]


def matched_pair_genes(
    matching: Matching, attr_1: Any, attr_2: Any, *, n_pairs: int = 5, n_genes: int = 10
) -> pd.DataFrame:
    """The best-matched concept pairs with their top attributed genes side by side (paper Fig. 4C).

    Parameters
    ----------
    matching
        From :func:`corelib.tl.stability.match_dictionaries`.
    attr_1, attr_2
        ``corelib.tl.attribution.Attribution`` of the first and the second dictionary's concepts (e.g. from
        :func:`attribute_matched`); a concept they do not cover gets an empty gene list.
    n_pairs
        Number of pairs (highest cosine first).
    n_genes
        Top genes per concept.

    Returns
    -------
    Columns ``concept_1``, ``concept_2``, ``cosine``, ``top_genes_1``, ``top_genes_2``, ``shared_genes``,
    ``n_shared``.
    """
    out = []
    for r in matching.to_frame().head(n_pairs).itertuples(index=False):
        g1 = unit_top_genes(attr_1, int(r.concept_1), n_genes)
        g2 = unit_top_genes(attr_2, int(r.concept_2), n_genes)
        shared = [g for g in g1 if g in set(g2)]
        out.append(
            {
                "concept_1": int(r.concept_1),
                "concept_2": int(r.concept_2),
                "cosine": float(r.cosine),
                "top_genes_1": ", ".join(g1),
                "top_genes_2": ", ".join(g2),
                "shared_genes": ", ".join(shared),
                "n_shared": len(shared),
            }
        )
    return pd.DataFrame(out)


__all__ = [
    "CrossDataset",
    "attribute_matched",
    "compare_datasets",
    "heldout_cells",
    "matched_pair_genes",
    "matching_summary",
]
