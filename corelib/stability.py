"""Stability of concept dictionaries across datasets, training seeds and halves of the cells (paper 4.4).

Two dictionaries (concept vectors as rows, ``c1 x d`` and ``c2 x d``) are compared by matching their rows
one-to-one with the Hungarian algorithm on cosine similarity (Fel et al. 2025, as in the paper's Fig. 4B);
the matched cosines say how well they align (1 = the same dictionary up to a permutation).

Compute (``tl``-like):

- :func:`match_dictionaries` - the Hungarian matching (the one place of the matching equation);
- :func:`summarize_matching` - mean, median and the fraction of pairs above cosine thresholds;
- :func:`baseline_dictionary` - PCA / FastICA / NMF directions of the same embeddings, for comparison;
- :func:`sae_fitter`, :func:`baseline_fitter` - "train on these cells with this seed" functions that
  :func:`dictionary_stability` calls across seeds or across split halves of the cells;
- :func:`stability_table` - mean +- std per method and mode (the table printed in notebook 04);
- :func:`chance_matching` - the matched cosines of random directions of the same shapes (the floor);
- :func:`shared_genes`, :func:`shared_scvi_encoder` - one scVI trained on two datasets over their shared
  genes (``dataset`` as batch covariate), so that SAEs trained on either live in the same space;
- :func:`cross_dataset` - one SAE per dataset, :func:`cross_dataset_r2` (R^2 of each SAE on each dataset's
  held-out cells, paper Fig. 4A) and the matching of the two dictionaries (Fig. 4B);
- :func:`attribute_matched`, :func:`matched_pair_genes` - the best-matched pairs with their top attributed
  genes side by side and the overlap (paper Fig. 4C).

Notebook 04 steps (read the run directory, write ``run.path("stability", ...)``): :func:`selected_sae`,
:func:`cross_dataset_study`, :func:`random_control_embeddings`, :func:`stability_methods`,
:func:`compare_stability`, :func:`format_stability_table`.

Plot (``pl``-like, take the tables above and return a Figure): :func:`plot_cross_dataset_r2`,
:func:`plot_matched_cosines`, :func:`plot_stability`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

#: Cosine thresholds reported by :func:`summarize_matching` (the issue's 0.7 and 0.9).
THRESHOLDS: tuple[float, ...] = (0.7, 0.9)

#: ``fit(embeddings (n_cells x d), seed, tag) -> dictionary (n_concepts x d)``; ``tag`` names the fit
#: ("seed1", "split0_a", ...) so that a fitter can cache it.
Fitter = Callable[[np.ndarray, int, str], np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------------------
class Matching(NamedTuple):
    """A one-to-one matching of the rows of two dictionaries.

    Attributes
    ----------
    rows
        Indices into the first dictionary, ascending, ``min(c1, c2)`` of them.
    cols
        The matched indices into the second dictionary.
    cosine
        Cosine similarity of each matched pair (the absolute cosine when the matching was sign-invariant).
    """

    rows: np.ndarray
    cols: np.ndarray
    cosine: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """One row per matched pair, best first (columns ``concept_1``, ``concept_2``, ``cosine``)."""
        df = pd.DataFrame({"concept_1": self.rows, "concept_2": self.cols, "cosine": self.cosine})
        return df.sort_values("cosine", ascending=False, kind="stable").reset_index(drop=True)


def _as_dictionary(D: Any, name: str) -> np.ndarray:
    """Validate a dictionary (concept vectors as rows) and return it as a float64 array."""
    if hasattr(D, "detach"):
        D = D.detach().cpu().numpy()
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] == 0 or D.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array of concept vectors (n_concepts x embedding_dim); got shape "
            f"{D.shape}. Pass e.g. sae.dictionary, not the activations."
        )
    if not np.all(np.isfinite(D)):
        raise ValueError(f"{name} holds NaN or infinite values; check the training that produced it.")
    if np.any(np.linalg.norm(D, axis=1) == 0):
        raise ValueError(f"{name} has all-zero rows, whose cosine is undefined; drop them before matching.")
    return D


def cosine_similarity(D1_AD: Any, D2_BD: Any) -> np.ndarray:
    """Cosine similarity of every row of ``D1_AD`` with every row of ``D2_BD``.

    Parameters
    ----------
    D1_AD, D2_BD
        Concept vectors as rows (``c1 x d`` and ``c2 x d``; numpy arrays or torch tensors).

    Returns
    -------
    ``c1 x c2`` array of cosines.
    """
    D1 = _as_dictionary(D1_AD, "D1")
    D2 = _as_dictionary(D2_BD, "D2")
    if D1.shape[1] != D2.shape[1]:
        raise ValueError(
            f"The dictionaries live in different spaces: D1 has dimension {D1.shape[1]}, D2 {D2.shape[1]}. "
            "Only dictionaries learnt on embeddings of the same model (same embedding size) can be matched."
        )
    D1 = D1 / np.linalg.norm(D1, axis=1, keepdims=True)
    D2 = D2 / np.linalg.norm(D2, axis=1, keepdims=True)
    return D1 @ D2.T


def match_dictionaries(D1_AD: Any, D2_BD: Any, *, sign_invariant: bool = False) -> Matching:
    """Match the concept vectors of two dictionaries one-to-one, maximising the total cosine similarity.

    This is the matching of the paper's section 4.4 (Fel et al. 2025): the permutation ``pi`` maximising
    ``sum_i cos(D1_i, D2_pi(i))``, found by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``).
    With ``c1 != c2`` the ``min(c1, c2)`` best pairs are kept and the other rows stay unmatched.

    Parameters
    ----------
    D1_AD, D2_BD
        Concept vectors as rows (``c1 x d`` and ``c2 x d``); rows need not be unit norm.
    sign_invariant
        Match on ``|cos|``: for directions whose sign is arbitrary (PCA, ICA). SAE concept vectors have a
        meaningful sign (their activations are non-negative), so the default is False.

    Returns
    -------
    :class:`Matching` with the matched index pairs and their cosines.
    """
    cos_AB = cosine_similarity(D1_AD, D2_BD)
    if sign_invariant:
        cos_AB = np.abs(cos_AB)
    rows, cols = linear_sum_assignment(cos_AB, maximize=True)
    return Matching(rows=rows, cols=cols, cosine=cos_AB[rows, cols])


def summarize_matching(cosine: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """Summary of matched cosines: number of pairs, mean, median and the fraction at or above each threshold.

    Parameters
    ----------
    cosine
        The matched cosines (:attr:`Matching.cosine`).
    thresholds
        Report the fraction of pairs with cosine ``>= t`` for each ``t`` (keys ``frac_ge_0.7``, ...).
    """
    cosine = np.asarray(cosine, dtype=float)
    out = {
        "n_pairs": int(cosine.size),
        "mean_cosine": float(cosine.mean()),
        "median_cosine": float(np.median(cosine)),
    }
    for t in thresholds:
        out[f"frac_ge_{t:g}"] = float(np.mean(cosine >= t))
    return out


def chance_matching(
    n1: int, n2: int, dim: int, *, seed: int = 0, sign_invariant: bool = False
) -> dict[str, float]:
    """Matched-cosine summary of two dictionaries of random directions with the given shapes.

    The floor against which a stability number is read: in ``d`` dimensions, matching ``c`` random directions
    to ``c`` others already gives a positive mean cosine, growing with ``c / d``.

    Parameters
    ----------
    n1, n2
        Numbers of concept vectors.
    dim
        Embedding dimension.
    seed
        Seed of the random directions (isotropic Gaussian, normalised).
    sign_invariant
        As in :func:`match_dictionaries`.
    """
    rng = np.random.default_rng(seed)
    m = match_dictionaries(
        rng.normal(size=(n1, dim)), rng.normal(size=(n2, dim)), sign_invariant=sign_invariant
    )
    return summarize_matching(m.cosine)


# ----------------------------------------------------------------------------------------------------------
# Dictionaries: baselines and SAEs
# ----------------------------------------------------------------------------------------------------------
#: Baseline decompositions, and whether their directions have an arbitrary sign.
BASELINES: dict[str, bool] = {"pca": True, "ica": True, "nmf": False}


def baseline_dictionary(emb_ND: np.ndarray, method: str, n_components: int, *, seed: int = 0) -> np.ndarray:
    """Directions found by a classical decomposition of the embeddings, as rows (``n_components x d``).

    Parameters
    ----------
    emb_ND
        Cell embeddings (``n_cells x d``).
    method
        ``"pca"`` (principal axes), ``"ica"`` (FastICA; the columns of the mixing matrix, i.e. the directions
        the sources are added along, the analogue of decoder rows) or ``"nmf"``. NMF needs non-negative data:
        it is fitted on the non-negative parts ``[max(a, 0), max(-a, 0)]`` (``n_cells x 2d``), and a component
        ``h = [h+, h-]`` is mapped back to the embedding space as ``h+ - h-``, so that its cosine with other
        directions means the same as for the SAE.
    n_components
        Number of directions, at most ``min(n_cells, d)`` (for NMF too: with ``2d`` components it could
        reproduce the ``2d`` split coordinates exactly, and every fit would find the same trivial axes).
    seed
        ``random_state`` of the decomposition (PCA uses the randomised solver when it is seeded).

    Returns
    -------
    ``n_components x d`` array.
    """
    from sklearn.decomposition import NMF, PCA, FastICA

    emb_ND = np.asarray(emb_ND, dtype=np.float64)
    n, d = emb_ND.shape
    limit = min(n, d)
    if method not in BASELINES:
        raise ValueError(f"Unknown baseline {method!r}; choose one of {', '.join(BASELINES)}.")
    if not 1 <= n_components <= limit:
        raise ValueError(
            f"{method} can fit between 1 and {limit} components on {n} cells x {d} dimensions; got "
            f"n_components={n_components}. Use min(n_concepts, {limit})."
        )
    if method == "pca":
        return (
            PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(emb_ND).components_
        )
    if method == "ica":
        ica = FastICA(n_components=n_components, random_state=seed, max_iter=1000, tol=1e-3)
        return ica.fit(emb_ND).mixing_.T
    split = np.concatenate([np.maximum(emb_ND, 0), np.maximum(-emb_ND, 0)], axis=1)
    H = NMF(n_components=n_components, init="random", random_state=seed, max_iter=500).fit(split).components_
    return H[:, :d] - H[:, d:]


def baseline_fitter(method: str, n_components: int) -> Fitter:
    """A :data:`Fitter` fitting :func:`baseline_dictionary` (``n_components`` capped at what the method allows)."""

    def fit(emb_ND: np.ndarray, seed: int, tag: str) -> np.ndarray:
        limit = min(emb_ND.shape)
        return baseline_dictionary(emb_ND, method, min(n_components, limit), seed=seed)

    return fit


def train_or_load_sae(
    emb_ND: np.ndarray,
    n_concepts: int,
    k: int,
    *,
    seed: int,
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    **train_options: Any,
) -> Any:
    """Train a Top-K SAE with ``corelib.sae.train``, or load it from ``path`` if it was made from the same inputs.

    Parameters
    ----------
    emb_ND
        Training embeddings (``n_cells x d``); ``corelib.sae.train`` holds out ``holdout_fraction`` of them.
    n_concepts, k, seed
        As in ``corelib.sae.train``.
    path
        Folder for the SAE (``TopKSAE.save``), with its provenance record beside it
        (:func:`corelib.runs.cached`): reused only when it was trained on the same embeddings with the same
        size, k, seed and training options.
    overwrite
        Retrain an SAE made from other inputs instead of raising ``StaleOutputError``.
    train_options
        Passed to ``corelib.sae.train`` (``lr``, ``epochs``, ``batch_size``, ``holdout_fraction``,
        ``device``, ``progress``, ...).

    Returns
    -------
    The ``TopKSAE``.
    """
    from corelib import sae as sae_mod
    from corelib.runs import cached

    settings = {key: v for key, v in train_options.items() if key not in ("device", "progress")}

    def train() -> Any:
        return sae_mod.train(emb_ND, n_concepts, k, seed=seed, **train_options).sae

    if path is None:
        return train()
    inputs = {
        "embeddings": emb_ND,
        "n_concepts": int(n_concepts),
        "k": int(k),
        "seed": int(seed),
        "train": settings,
    }
    return cached(
        train,
        [Path(path)],
        inputs,
        save=lambda model, where: model.save(where, extra={"train": settings, "seed": int(seed)}),
        load=sae_mod.TopKSAE.load,
        overwrite=overwrite,
    )


def sae_fitter(
    n_concepts: int,
    k: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    known: Mapping[str, str | os.PathLike] | None = None,
    drop_dead: bool = True,
    overwrite: bool = False,
    **train_options: Any,
) -> Fitter:
    """A :data:`Fitter` training a Top-K SAE (:func:`train_or_load_sae`) and returning its dictionary.

    Parameters
    ----------
    n_concepts, k
        Dictionary size and active concepts per cell (use the selected SAE's, from notebook 02).
    cache_dir
        If given, each SAE is saved as ``<cache_dir>/<tag>/`` and reused on rerun.
    known
        ``{tag: folder}`` of SAEs already trained with these settings (e.g. ``{"seed0": run.path("sae",
        selected)}``: notebook 02's selected SAE is seed 0 of the seeds comparison), loaded instead of trained.
    drop_dead
        Remove the concepts that never fire on the cells before matching: a dead concept's decoder row got no
        gradient from the reconstruction and is close to its random initialisation, so it would only add
        noise to the matching.
    overwrite
        Retrain a cached SAE made from other inputs (:func:`train_or_load_sae`).
    train_options
        Passed to ``corelib.sae.train`` (``lr``, ``epochs``, ``batch_size``, ``device``, ``progress``, ...).
    """
    from corelib import sae as sae_mod

    known = dict(known or {})

    def fit(emb_ND: np.ndarray, seed: int, tag: str) -> np.ndarray:
        if tag in known:
            model = sae_mod.TopKSAE.load(known[tag], d_in=emb_ND.shape[1])
        else:
            path = Path(cache_dir) / tag if cache_dir is not None else None
            model = train_or_load_sae(
                emb_ND, n_concepts, k, seed=seed, path=path, overwrite=overwrite, **train_options
            )
        D = model.dictionary.detach().cpu().numpy()
        return D[active_concepts(model, emb_ND)] if drop_dead else D

    return fit


def active_concepts(model: Any, emb_ND: np.ndarray) -> np.ndarray:
    """Boolean mask (``n_concepts``) of the concepts of an SAE that fire (activation > 0) on at least one cell."""
    from corelib import sae as sae_mod

    return (sae_mod.encode(model, emb_ND) > 0).any(axis=0)


# ----------------------------------------------------------------------------------------------------------
# Across seeds and split halves
# ----------------------------------------------------------------------------------------------------------
def split_halves(n_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n_cells)`` at random into two disjoint halves (sorted indices), reproducibly."""
    if n_cells < 2:
        raise ValueError(f"Cannot split {n_cells} cell(s) into two halves; at least 2 cells are needed.")
    perm = np.random.default_rng(seed).permutation(n_cells)
    return np.sort(perm[: n_cells // 2]), np.sort(perm[n_cells // 2 :])


def dictionary_stability(
    fit: Fitter,
    emb_ND: np.ndarray,
    *,
    seeds: Sequence[int],
    mode: str = "seeds",
    sign_invariant: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Fit dictionaries repeatedly and match them pairwise.

    Parameters
    ----------
    fit
        The method to test (:func:`sae_fitter`, :func:`baseline_fitter`).
    emb_ND
        Cell embeddings (``n_cells x d``).
    seeds
        ``mode="seeds"``: one fit per seed on all cells, every pair of seeds matched (``len(seeds) >= 2``).
        ``mode="halves"``: per seed ``s``, the cells are split in two halves (:func:`split_halves`), one fit
        on each (with seeds ``2s`` and ``2s + 1``: an SAE's dictionary starts from a seeded random init, and
        two fits sharing it would look stable for that reason alone), and the two matched.
    mode
        ``"seeds"`` or ``"halves"``.
    sign_invariant
        As in :func:`match_dictionaries` (True for PCA and ICA).
    progress
        Show a progress bar over the fits.

    Returns
    -------
    One row per matched pair of fits: ``fit_1``, ``fit_2``, ``n_1``, ``n_2`` (dictionary sizes) and the
    columns of :func:`summarize_matching`.
    """
    emb_ND = np.asarray(emb_ND)
    seeds = list(seeds)
    if mode == "seeds":
        if len(seeds) < 2:
            raise ValueError(
                f"Stability across seeds needs at least 2 seeds; got {', '.join(map(str, seeds)) or 'none'}."
            )
        dicts = {
            f"seed{s}": fit(emb_ND, s, f"seed{s}") for s in tqdm(seeds, desc="fits", disable=not progress)
        }
        pairs = list(combinations(dicts, 2))
    elif mode == "halves":
        if not seeds:
            raise ValueError("Stability across halves needs at least one split seed.")
        dicts, pairs = {}, []
        for s in tqdm(seeds, desc="splits", disable=not progress):
            halves = split_halves(len(emb_ND), s)
            # different seeds for the two halves (2s, 2s + 1): a shared initialisation must not pass for stability
            for j, (tag, idx) in enumerate(zip(("a", "b"), halves, strict=True)):
                dicts[f"split{s}_{tag}"] = fit(emb_ND[idx], 2 * s + j, f"split{s}_{tag}")
            pairs.append((f"split{s}_a", f"split{s}_b"))
    else:
        raise ValueError(f"mode must be 'seeds' or 'halves'; got {mode!r}.")
    rows = []
    for a, b in pairs:
        m = match_dictionaries(dicts[a], dicts[b], sign_invariant=sign_invariant)
        rows.append(
            {
                "fit_1": a,
                "fit_2": b,
                "n_1": len(dicts[a]),
                "n_2": len(dicts[b]),
                "dim": emb_ND.shape[1],
                "sign_invariant": sign_invariant,
                **summarize_matching(m.cosine),
            }
        )
    return pd.DataFrame(rows)


class Method(NamedTuple):
    """A dictionary-learning method to compare: how to fit it, on which embeddings, how to match it."""

    fit: Fitter
    embeddings: np.ndarray
    sign_invariant: bool = False


def compare_stability(
    methods: Mapping[str, Method],
    *,
    seeds: Sequence[int],
    split_seeds: Sequence[int],
    progress: bool = True,
) -> dict[tuple[str, str], pd.DataFrame]:
    """:func:`dictionary_stability` of every method across seeds and across split halves.

    Parameters
    ----------
    methods
        ``{name: Method}``, e.g. the SAE, PCA, ICA, NMF and the SAE on random-encoder embeddings.
    seeds
        Training seeds (``mode="seeds"``, at least 2; the issue asks for >= 3).
    split_seeds
        Seeds of the random halves (``mode="halves"``); empty skips the halves.
    progress
        Progress bar over methods.

    Returns
    -------
    ``{(method, mode): table}``, the input of :func:`stability_table`.

    Warns
    -----
    ConvergenceWarning
        Once per method whose fits (FastICA, NMF) stopped at their iteration limit, with the count, instead
        of scikit-learn's warning on every fit.
    """
    out = {}
    for name, m in tqdm(methods.items(), desc="methods", disable=not progress):
        with _count_unconverged(name, n_fits=len(seeds) + 2 * len(split_seeds)):
            out[(name, "seeds")] = dictionary_stability(
                m.fit, m.embeddings, seeds=seeds, sign_invariant=m.sign_invariant, progress=False
            )
            if len(split_seeds):
                out[(name, "halves")] = dictionary_stability(
                    m.fit,
                    m.embeddings,
                    seeds=split_seeds,
                    mode="halves",
                    sign_invariant=m.sign_invariant,
                    progress=False,
                )
    return out


@contextlib.contextmanager
def _count_unconverged(method: str, n_fits: int) -> Iterator[None]:
    """Turn scikit-learn's ConvergenceWarning of each fit in the block into one warning that counts them and
    says what is done; other warnings are shown as they came."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    unconverged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if w not in unconverged:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if unconverged:
        warnings.warn(
            f"{method}: {len(unconverged)} of {n_fits} fits stopped at their iteration limit before converging; "
            "the directions they reached are used as they are.",
            ConvergenceWarning,
            stacklevel=4,  # past contextlib and compare_stability: the caller's line
        )


def stability_table(results: Mapping[tuple[str, str], pd.DataFrame], *, chance_seed: int = 0) -> pd.DataFrame:
    """Mean +- std over pairs of fits, one row per (method, mode), with the chance level of the same shapes.

    Parameters
    ----------
    results
        ``{(method, mode): dictionary_stability(...)}`` (:func:`compare_stability`).
    chance_seed
        Seed of :func:`chance_matching`.

    Returns
    -------
    Columns ``method``, ``mode``, ``n_pairs_of_fits``, ``n_concepts`` (mean dictionary size, after dropping
    dead SAE concepts), ``dim``, for each summary statistic ``<stat>_mean`` and ``<stat>_std`` (std with
    ``ddof=1``; NaN for a single pair), and ``chance_mean_cosine``: the mean matched cosine of random
    directions with the same numbers and dimension (what a method that learnt nothing stable would get).
    """
    stats = ["mean_cosine", "median_cosine", *(f"frac_ge_{t:g}" for t in THRESHOLDS)]
    rows = []
    for (method, mode), df in results.items():
        n1, n2 = (max(1, round(float(df[c].mean()))) for c in ("n_1", "n_2"))
        row = {
            "method": method,
            "mode": mode,
            "n_pairs_of_fits": len(df),
            "n_concepts": float(df[["n_1", "n_2"]].to_numpy().mean()),
            "dim": int(df["dim"].iloc[0]),
        }
        for stat in stats:
            row[f"{stat}_mean"] = float(df[stat].mean())
            row[f"{stat}_std"] = float(df[stat].std(ddof=1)) if len(df) > 1 else float("nan")
        chance = chance_matching(
            n1, n2, row["dim"], seed=chance_seed, sign_invariant=bool(df["sign_invariant"].iloc[0])
        )
        row["chance_mean_cosine"] = chance["mean_cosine"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_stability_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`stability_table` as ``mean ± std`` strings, one row per (method, mode), for printing."""
    out = table[["method", "mode", "n_pairs_of_fits", "n_concepts"]].copy()
    out["n_concepts"] = out["n_concepts"].round(1)
    for stat in ["mean_cosine", *(f"frac_ge_{t:g}" for t in THRESHOLDS)]:
        out[stat] = [
            f"{m:.3f} ± {s:.3f}" for m, s in zip(table[f"{stat}_mean"], table[f"{stat}_std"], strict=True)
        ]
    out["chance_mean_cosine"] = table["chance_mean_cosine"].round(3)
    return out.set_index(["method", "mode"])


# ----------------------------------------------------------------------------------------------------------
# Across datasets
# ----------------------------------------------------------------------------------------------------------
def shared_genes(adata_a: Any, adata_b: Any, *, min_genes: int = 50) -> list[str]:
    """Genes present in both datasets, in ``adata_a``'s order.

    Raises a ``ValueError`` when fewer than ``min_genes`` are shared (a shared encoder would see too little).
    """
    b = set(map(str, adata_b.var_names))
    genes = [g for g in map(str, adata_a.var_names) if g in b]
    if len(genes) < min_genes:
        raise ValueError(
            f"The two datasets share only {len(genes)} genes (< {min_genes}); a shared encoder cannot be "
            "trained on so few. Check that both use the same gene naming (symbols vs Ensembl ids)."
        )
    return genes


def shared_scvi_encoder(
    adata_a: Any,
    adata_b: Any,
    *,
    names: tuple[str, str] = ("A", "B"),
    n_latent: int = 10,
    epochs: int = 50,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """One scVI trained on two datasets over their shared genes, ``dataset`` as batch covariate.

    The paper compares SAEs trained on two datasets embedded by the same model. Two small datasets rarely
    share a model's gene list, so this trains one ``scvi.model.SCVI`` on the concatenation of both over their
    shared genes, with the dataset as batch key and ``encode_covariates=False`` (scvi-tools' default): the
    batch enters the decoder only, so a cell's embedding depends on its expression alone and both datasets
    land in one space. The result is a ``corelib.encoders`` scVI encoder (posterior mean of z), usable by
    ``corelib.encoders.embed`` and by the attribution.

    Parameters
    ----------
    adata_a, adata_b
        Raw counts in ``.X`` and gene symbols as ``var_names``.
    names
        Batch labels of the two datasets.
    n_latent
        Embedding dimension.
    epochs
        scVI training epochs.
    seed
        ``scvi.settings.seed``.
    cache_dir
        If given, the encoder is saved there (``corelib.encoders.save``: safetensors + JSON) with its
        provenance (:func:`corelib.runs.cached`), and reused when made from the same cells and settings.
    overwrite
        Retrain a cached encoder made from other inputs instead of raising ``StaleOutputError``.
    progress
        Show scvi-tools' progress bar.

    Returns
    -------
    ``(encoder, info)`` with ``info`` = ``n_shared_genes``, ``n_genes_a``, ``n_genes_b``, ``n_latent``,
    ``epochs``, ``reused``.
    """
    from corelib import encoders
    from corelib.encoders import scvi as scvi_encoder
    from corelib.runs import Provenance, cached, reusable

    genes = shared_genes(adata_a, adata_b)
    info = {
        "n_shared_genes": len(genes),
        "n_genes_a": int(adata_a.n_vars),
        "n_genes_b": int(adata_b.n_vars),
        "n_latent": int(n_latent),
        "epochs": int(epochs),
    }

    def train() -> Any:
        import anndata as ad
        import scvi

        both = ad.concat(
            [adata_a[:, genes], adata_b[:, genes]], label="dataset", keys=list(names), index_unique="-"
        )
        both = ad.AnnData(both.X, obs=both.obs[["dataset"]].copy(), var=pd.DataFrame(index=genes))
        with scvi_encoder.quiet_lightning():
            scvi.settings.seed = seed
            scvi.model.SCVI.setup_anndata(both, batch_key="dataset")
            model = scvi.model.SCVI(both, n_latent=n_latent)
            model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=progress)
        return scvi_encoder.from_model(model)

    if cache_dir is None:
        return train(), {**info, "reused": False}
    inputs = Provenance.of(
        {
            "data_a": adata_a,
            "data_b": adata_b,
            "names": list(names),
            "n_latent": int(n_latent),
            "epochs": int(epochs),
            "seed": int(seed),
        }
    )
    reused = reusable([cache_dir], inputs, overwrite=overwrite)
    encoder = cached(
        train,
        [Path(cache_dir)],
        inputs,
        save=encoders.save,
        load=lambda path: encoders.restore(path, device="cpu"),
        overwrite=overwrite,
    )
    return encoder, {**info, "reused": reused}


def cross_dataset_r2(saes: Mapping[str, Any], test_embeddings: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """R^2 of every SAE on every dataset's held-out embeddings (paper Fig. 4A).

    R^2 is ``corelib.sae.metrics``'s: ``1 - sum((a - a')^2) / sum((a - mean(a))^2)`` with the per-dimension
    mean of the EVALUATED cells (so on another dataset, relative to that dataset's own mean embedding).

    Parameters
    ----------
    saes
        ``{training dataset: TopKSAE}``.
    test_embeddings
        ``{dataset: held-out embeddings (n_cells x d)}``; the dimension must match the SAEs'.

    Returns
    -------
    Long table: ``train_dataset``, ``test_dataset``, ``r2``, ``same_dataset``.
    """
    from corelib import sae as sae_mod

    rows = []
    for train_name, model in saes.items():
        dim = model.cfg.d_in
        for test_name, emb in test_embeddings.items():
            if np.asarray(emb).shape[1] != dim:
                raise ValueError(
                    f"The SAE trained on {train_name!r} expects {dim}-dimensional embeddings, but {test_name!r} "
                    f"has {np.asarray(emb).shape[1]}. Embed both datasets with the same encoder first."
                )
            r2 = float(sae_mod.metrics(model, emb)["r2"])
            rows.append(
                {
                    "train_dataset": train_name,
                    "test_dataset": test_name,
                    "r2": r2,
                    "same_dataset": train_name == test_name,
                }
            )
    return pd.DataFrame(rows)


def embed_datasets(
    encoder: Any, adatas: Mapping[str, Any], *, progress: bool = True
) -> dict[str, np.ndarray]:
    """Embed several datasets with one encoder (``corelib.encoders.embed`` on copies: inputs stay untouched)."""
    from corelib.encoders import embed

    return {name: embed(encoder, a.copy(), progress=progress) for name, a in adatas.items()}


class CrossDataset(NamedTuple):
    """SAEs trained on two datasets embedded by one encoder, and how they compare (paper Fig. 4A-B).

    Attributes
    ----------
    saes
        ``{dataset: TopKSAE}``.
    heldout
        ``{dataset: indices of its held-out cells}`` (``corelib.sae.split_cells``).
    r2
        :func:`cross_dataset_r2` on the held-out cells.
    matching
        :func:`match_dictionaries` of the first dataset's dictionary against the second's.
    """

    saes: dict[str, Any]
    heldout: dict[str, np.ndarray]
    r2: pd.DataFrame
    matching: Matching


def cross_dataset(
    embeddings: Mapping[str, np.ndarray],
    n_concepts: int,
    k: int,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    **train_options: Any,
) -> CrossDataset:
    """Train one SAE per dataset on the same encoder's embeddings, then R^2 across datasets and matching.

    Parameters
    ----------
    embeddings
        ``{dataset: embeddings (n_cells x d)}``, two datasets, one encoder.
    n_concepts, k, seed
        SAE size, sparsity and seed (the selected SAE's); the second dataset's SAE gets ``seed + 1``, so that
        the two do not share their random initialisation.
    cache_dir
        SAEs are saved as ``<cache_dir>/<dataset>/`` and reused (:func:`train_or_load_sae`).
    overwrite
        Retrain cached SAEs made from other inputs.
    train_options
        Passed to ``corelib.sae.train``. Its ``holdout_fraction`` / ``split_seed`` (defaults of
        ``corelib.sae.train``) also choose the held-out cells on which every SAE is evaluated.

    Returns
    -------
    :class:`CrossDataset`.
    """
    from corelib import sae as sae_mod

    if len(embeddings) != 2:
        raise ValueError(
            f"cross_dataset compares two datasets; got {len(embeddings)} ({', '.join(map(str, embeddings))})."
        )
    holdout = train_options.get("holdout_fraction", sae_mod.TrainConfig.holdout_fraction)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1) to evaluate on held-out cells; got {holdout}.")
    split_seed = train_options.get("split_seed", 0)
    saes, heldout = {}, {}
    # seed and seed + 1: two SAEs sharing their random initialisation would match partly because of it
    for j, (name, emb) in enumerate(embeddings.items()):
        path = Path(cache_dir) / name if cache_dir is not None else None
        saes[name] = train_or_load_sae(
            np.asarray(emb), n_concepts, k, seed=seed + j, path=path, overwrite=overwrite, **train_options
        )
        heldout[name] = sae_mod.split_cells(len(emb), holdout, split_seed)[1]
    r2 = cross_dataset_r2(saes, {name: np.asarray(e)[heldout[name]] for name, e in embeddings.items()})
    first, second = saes.values()
    return CrossDataset(saes, heldout, r2, match_dictionaries(first.dictionary, second.dictionary))


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
    """Counterfactual attribution (``corelib.attribution.attribute_concepts``) of the best-matched concepts.

    Only the concepts of the ``n_pairs`` best-matched pairs are attributed, each on its own dataset.

    Parameters
    ----------
    encoder
        The shared encoder both datasets were embedded with.
    cross
        From :func:`cross_dataset`.
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
    from corelib.attribution import attribute_concepts
    from corelib.encoders import align

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


def unit_top_genes(attr: Any, unit: int, n: int = 10) -> list[str]:
    """The ``n`` genes with the highest positive attribution score for one unit, highest first.

    ``attr`` is a ``corelib.attribution.Attribution``; a unit it does not cover, or skipped, gets ``[]``.
    """
    from corelib.attribution import ranked_genes

    if attr is None or unit not in set(np.asarray(attr.units).tolist()):
        return []
    j = int(np.flatnonzero(np.asarray(attr.units) == unit)[0])
    if not attr.attributed[j]:
        return []
    ranked = ranked_genes(attr, unit)
    return [str(g) for g in ranked.index[:n][ranked["score"].to_numpy()[:n] > 0]]


def matched_pair_genes(
    matching: Matching, attr_1: Any, attr_2: Any, *, n_pairs: int = 5, n_genes: int = 10
) -> pd.DataFrame:
    """The best-matched concept pairs with their top attributed genes side by side (paper Fig. 4C).

    Parameters
    ----------
    matching
        From :func:`match_dictionaries`.
    attr_1, attr_2
        ``corelib.attribution.Attribution`` of the first and the second dictionary's concepts (e.g. from
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


# ----------------------------------------------------------------------------------------------------------
# Notebook 04 steps (read the run directory, write its 04_stability entries)
# ----------------------------------------------------------------------------------------------------------
def selected_sae(run: Any, emb_ND: np.ndarray) -> dict[str, Any]:
    """The SAE selected by notebook 02: ``name``, ``path``, ``n_concepts``, ``k``, ``seed`` and ``train`` (the
    ``corelib.sae.train`` options it was trained with, from its ``cfg.json``), checked to be trained on the
    run's embeddings ``emb_ND`` (a ``StaleOutputError`` names the notebook to rerun otherwise)."""
    from corelib import sae as sae_mod

    name = run.read_json("sae_selected")["sae"]
    path = run.check_made_from("sae", name, embeddings=sae_mod.embeddings_fingerprint(emb_ND))
    cfg = json.loads((path / sae_mod.CONFIG_FILE).read_text())
    return {
        "name": name,
        "path": path,
        "n_concepts": cfg["n_concepts"],
        "k": cfg["k"],
        "seed": cfg.get("seed", 0),
        "train": dict(cfg.get("train", {})),
    }


class CrossDatasetStudy(NamedTuple):
    """Everything of the cross-dataset comparison of notebook 04 (empty tables when it was skipped).

    Attributes
    ----------
    info
        Shared-encoder facts (:func:`shared_scvi_encoder`) and the dataset names; ``skipped`` holds the reason
        when there was no second dataset.
    r2
        :func:`cross_dataset_r2` (Fig. 4A).
    matching
        :meth:`Matching.to_frame` of the two dictionaries (Fig. 4B), best first.
    summary
        :func:`summarize_matching` of it, with ``chance_mean_cosine``.
    pairs
        :func:`matched_pair_genes` (Fig. 4C).
    """

    info: dict[str, Any]
    r2: pd.DataFrame
    matching: pd.DataFrame
    summary: dict[str, float]
    pairs: pd.DataFrame


def cross_dataset_study(
    run: Any,
    adata: Any,
    other: str | os.PathLike | None,
    sae_settings: Mapping[str, Any],
    *,
    other_layer: str | None = None,
    n_latent: int = 10,
    encoder_epochs: int = 50,
    n_pairs: int = 5,
    n_genes: int = 10,
    attribution_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> CrossDatasetStudy:
    """Paper 4.4 across datasets: shared scVI, one SAE per dataset, R^2 across datasets, matching, top genes.

    Parameters
    ----------
    run
        The run directory; writes ``run.path("stability", ...)``: ``encoder/`` (the shared scVI),
        ``cross_sae/<dataset>/``, ``cross_r2.csv``, ``cross_matching.csv``, ``cross_pairs.csv``,
        ``cross_info.json``.
    adata
        Dataset A (raw counts; ``uns["dataset"]["name"]`` names it).
    other
        Dataset B: a bundled name or an ``.h5ad`` path (``corelib.data.load``, gene symbols as ``var_names``);
        None skips the comparison (printed, with empty tables).
    sae_settings
        :func:`selected_sae`: the SAE size, k, seed and training options used for both datasets.
    other_layer
        The layer of dataset B holding raw counts (None: ``.X``).
    n_latent, encoder_epochs
        The shared scVI's embedding size and training epochs.
    n_pairs, n_genes
        Best-matched pairs attributed and shown, top genes per concept.
    attribution_options
        Passed to ``corelib.attribution.attribute_concepts`` (``n_prototypes``, ``n_counterfactuals``).
    seed, device, progress
        Seed of the shared scVI; device and progress bars of the SAEs and the attribution.
    """
    from corelib import data

    if other is None:
        reason = "stability_dataset is None: no second dataset, the cross-dataset comparison is skipped."
        print(reason)
        empty = pd.DataFrame()
        return CrossDatasetStudy({"skipped": reason}, empty, empty, {}, empty)
    name_a = str(adata.uns.get("dataset", {}).get("name", "A"))
    adata_b = data.load(other, layer=other_layer)
    name_b = str(adata_b.uns.get("dataset", {}).get("name", "B"))
    if name_b == name_a:
        name_b = f"{name_b} (B)"
    encoder, info = shared_scvi_encoder(
        adata,
        adata_b,
        names=(name_a, name_b),
        n_latent=n_latent,
        epochs=encoder_epochs,
        seed=seed,
        cache_dir=run.path("stability", "encoder"),
        overwrite=run.overwrite,
        progress=progress,
    )
    adatas = {name_a: adata, name_b: adata_b}
    emb = embed_datasets(encoder, adatas, progress=progress)
    train = {**sae_settings["train"], "device": device, "progress": progress}
    cross = cross_dataset(
        emb,
        sae_settings["n_concepts"],
        sae_settings["k"],
        seed=sae_settings["seed"],
        cache_dir=run.path("stability", "cross_sae"),
        overwrite=run.overwrite,
        **train,
    )
    attr_a, attr_b = attribute_matched(
        encoder,
        cross,
        adatas,
        emb,
        n_pairs=n_pairs,
        progress=progress,
        device=device,
        **dict(attribution_options or {}),
    )
    pairs = matched_pair_genes(cross.matching, attr_a, attr_b, n_pairs=n_pairs, n_genes=n_genes)
    pairs = pairs.rename(
        columns={
            "concept_1": f"concept ({name_a})",
            "concept_2": f"concept ({name_b})",
            "top_genes_1": f"top genes ({name_a})",
            "top_genes_2": f"top genes ({name_b})",
        }
    )
    d = cross.saes[name_a].cfg
    summary = {
        **summarize_matching(cross.matching.cosine),
        "chance_mean_cosine": chance_matching(d.n_concepts, d.n_concepts, d.d_in, seed=seed)["mean_cosine"],
    }
    info = {
        **info,
        "dataset_a": name_a,
        "dataset_b": name_b,
        "n_cells_a": adata.n_obs,
        "n_cells_b": adata_b.n_obs,
    }
    matching = cross.matching.to_frame()
    run.write_json("stability", {**info, "matching": summary}, "cross_info.json")
    run.write_table("stability", cross.r2, "cross_r2.csv", index=False)
    run.write_table("stability", matching, "cross_matching.csv", index=False)
    run.write_table("stability", pairs, "cross_pairs.csv", index=False)
    return CrossDatasetStudy(info, cross.r2, matching, summary, pairs)


def random_control_embeddings(
    adata: Any,
    model: str,
    *,
    model_path: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    model_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of the same cells by the same architecture with random weights (the "dead salmon" control).

    ``corelib.encoders.load(model, random_init=True)`` then ``corelib.encoders.embed`` on a copy of ``adata``.
    """
    from corelib import encoders

    options = dict(model_options or {})
    encoder = encoders.load(
        model,
        adata=adata,
        path=model_path,
        trust_pickle=trust_pickle,
        random_init=True,
        seed=seed,
        device=device,
        progress=progress,
        **options,
    )
    return encoders.embed(encoder, adata.copy(), progress=progress)


def stability_methods(
    emb_ND: np.ndarray,
    sae_settings: Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike,
    baselines: Sequence[str] = tuple(BASELINES),
    random_emb_ND: np.ndarray | None = None,
    epochs: int | None = None,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Method]:
    """The methods compared in notebook 04: the selected SAE's settings, the baselines with as many components
    as fit (``min(n_concepts, limit)``), and the SAE on the random-encoder embeddings.

    Parameters
    ----------
    emb_ND
        The run's embeddings (``n_cells x d``).
    sae_settings
        :func:`selected_sae`; the selected SAE itself is reused as seed ``sae_settings["seed"]``.
    cache_dir
        SAEs are cached as ``<cache_dir>/<method>/<tag>/``.
    baselines
        Among ``"pca"``, ``"ica"``, ``"nmf"``.
    random_emb_ND
        Embeddings of the random-weight encoder (:func:`random_control_embeddings`); None leaves the control out.
    epochs
        Train every SAE of the comparison with this many epochs instead of the selected SAE's (then the
        selected SAE is retrained too, so that all seeds share the settings); None keeps the selected SAE's.
    overwrite
        Retrain cached SAEs made from other inputs (:func:`train_or_load_sae`).
    device, progress
        For the SAE training.
    """
    c, k = sae_settings["n_concepts"], sae_settings["k"]
    train = {**sae_settings["train"], "device": device, "progress": progress, "overwrite": overwrite}
    known = {f"seed{sae_settings['seed']}": sae_settings["path"]}
    if epochs is not None and epochs != train.get("epochs"):
        train["epochs"], known = int(epochs), {}
    methods = {
        "SAE": Method(sae_fitter(c, k, cache_dir=Path(cache_dir) / "sae", known=known, **train), emb_ND)
    }
    for b in baselines:
        methods[b.upper()] = Method(baseline_fitter(b, c), emb_ND, BASELINES[b])
    if random_emb_ND is not None:
        fit = sae_fitter(c, k, cache_dir=Path(cache_dir) / "sae_random_encoder", **train)
        methods["SAE (random encoder)"] = Method(fit, random_emb_ND)
    return methods


def selected_concept_matches(
    emb_ND: np.ndarray, sae_settings: Mapping[str, Any], cache_dir: str | os.PathLike, seeds: Sequence[int]
) -> pd.DataFrame:
    """Each concept of the run's selected SAE matched to the SAEs of the other seeds (for the concept cards).

    Parameters
    ----------
    emb_ND
        The run's embeddings (``n_cells x d``): the other SAEs' dead concepts are left out of the matching.
    sae_settings
        :func:`selected_sae`.
    cache_dir
        The ``cache_dir`` given to :func:`stability_methods`; the seed SAEs are read from ``<cache_dir>/sae/``.
    seeds
        The seeds of the comparison; the selected SAE's own seed is skipped.

    Returns
    -------
    One row per matched concept and seed: ``concept`` (of the selected SAE), ``matched_concept``,
    ``cosine``, ``comparison`` ("seed 1", ...). Seeds whose SAE was not trained are left out.
    """
    from corelib import sae as sae_mod

    D_CD = sae_mod.TopKSAE.load(sae_settings["path"], d_in=emb_ND.shape[1]).dictionary.detach().cpu().numpy()
    frames = []
    for seed in seeds:
        path = Path(cache_dir) / "sae" / f"seed{seed}"
        if seed == sae_settings["seed"] or not path.exists():
            continue
        other = sae_mod.TopKSAE.load(path, d_in=emb_ND.shape[1])
        alive = np.flatnonzero(active_concepts(other, emb_ND))
        m = match_dictionaries(D_CD, other.dictionary.detach().cpu().numpy()[alive])
        frames.append(
            pd.DataFrame(
                {
                    "concept": m.rows,
                    "matched_concept": alive[m.cols],
                    "cosine": m.cosine,
                    "comparison": f"seed {seed}",
                }
            )
        )
    columns = ["concept", "matched_concept", "cosine", "comparison"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# ----------------------------------------------------------------------------------------------------------
# Plots (take precomputed tables, never compute)
# ----------------------------------------------------------------------------------------------------------
def plot_cross_dataset_r2(r2_table: pd.DataFrame, ax: Any = None) -> Any:
    """Bar chart of :func:`cross_dataset_r2`: per training dataset, R^2 on its own and on the other held-out
    cells (paper Fig. 4A). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = _fig_ax(ax, (4.5, 3.2))
    if r2_table.empty:
        return _nothing(fig, ax, "no cross-dataset comparison (stability_dataset is None)")
    wide = r2_table.pivot(index="train_dataset", columns="test_dataset", values="r2")
    width = 0.8 / wide.shape[1]
    x = np.arange(len(wide))
    for j, test in enumerate(wide.columns):
        ax.bar(x + j * width, wide[test], width, label=f"test: {test}")
    ax.set_xticks(x + width * (wide.shape[1] - 1) / 2, [f"trained on\n{t}" for t in wide.index])
    ax.set_ylabel("$R^2$ (held-out cells)")
    ax.set_ylim(min(0.0, float(np.nanmin(wide.to_numpy())) - 0.05), 1.0)
    ax.legend(frameon=False, fontsize=8)
    plt.close(fig)
    return fig


def plot_matched_cosines(
    cosines: Mapping[str, np.ndarray], *, chance: float | None = None, ax: Any = None, bins: int = 30
) -> Any:
    """Histograms of matched cosines, one per labelled matching (paper Fig. 4B). Returns the Figure.

    ``chance`` (e.g. :func:`chance_matching`'s mean) is drawn as a dashed line.
    """
    import matplotlib.pyplot as plt

    fig, ax = _fig_ax(ax, (4.5, 3.2))
    cosines = {label: np.asarray(c) for label, c in cosines.items() if len(c)}
    if not cosines:
        return _nothing(fig, ax, "no matched cosines to show")
    if chance is not None:
        ax.axvline(chance, color="black", ls="--", lw=1, label=f"chance mean ({chance:.2f})")
    edges = np.linspace(-1 if any(np.min(c) < 0 for c in cosines.values()) else 0, 1, bins + 1)
    for label, c in cosines.items():
        ax.hist(np.asarray(c), bins=edges, histtype="step", lw=1.5, label=f"{label} (mean {np.mean(c):.2f})")
    for t in THRESHOLDS:
        ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set_xlabel("cosine similarity of matched concepts")
    ax.set_ylabel("number of pairs")
    ax.legend(frameon=False, fontsize=8)
    plt.close(fig)
    return fig


def plot_stability(table: pd.DataFrame, stat: str = "mean_cosine", ax: Any = None) -> Any:
    """Grouped bars with std error bars of one statistic of :func:`stability_table`, per method and mode.
    Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = _fig_ax(ax, (6, 3.2))
    means = table.pivot(index="method", columns="mode", values=f"{stat}_mean").loc[table["method"].unique()]
    stds = table.pivot(index="method", columns="mode", values=f"{stat}_std").loc[means.index]
    width = 0.8 / means.shape[1]
    x = np.arange(len(means))
    for j, mode in enumerate(means.columns):
        ax.bar(x + j * width, means[mode], width, yerr=stds[mode].fillna(0), capsize=3, label=mode)
    ax.set_xticks(x + width * (means.shape[1] - 1) / 2, means.index, rotation=20, ha="right")
    ax.set_ylabel(stat.replace("_", " "))
    ax.legend(frameon=False, fontsize=8, title="across")
    plt.close(fig)
    return fig


def _fig_ax(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """The Figure of ``ax``, or a new Figure and Axes of the given size."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        return fig, ax
    return ax.figure, ax


def _nothing(fig: Any, ax: Any, message: str) -> Any:
    """An empty panel saying why there is nothing to plot."""
    import matplotlib.pyplot as plt

    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()
    plt.close(fig)
    return fig
