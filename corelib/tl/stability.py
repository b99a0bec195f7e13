"""Dictionary stability (Sec. 4.4): matching dictionaries, baselines, stability across seeds and halves."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from corelib.tl.sae.evaluate import encode, metrics

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
# Dictionaries of SAEs (the baselines: corelib.tl.baselines)
# ----------------------------------------------------------------------------------------------------------
def active_concepts(model: Any, emb_ND: np.ndarray) -> np.ndarray:
    """Boolean mask (``n_concepts``) of the concepts of an SAE that fire (activation > 0) on at least one cell."""
    fired_C = np.zeros(model.cfg.n_concepts, dtype=bool)
    fired_C[encode(model, emb_ND).indices] = True  # sparse codes store only values > 0
    return fired_C


def alive_dictionary(model: Any, emb_ND: np.ndarray) -> np.ndarray:
    """The dictionary rows (``n_alive x d``, numpy) of an SAE's concepts that fire on ``emb_ND``
    (:func:`active_concepts`): what is matched, dead concepts being near their random initialisation."""
    return model.dictionary.detach().cpu().numpy()[active_concepts(model, emb_ND)]


def concept_matches(model: Any, others: Mapping[str, Any], emb_ND: np.ndarray) -> pd.DataFrame:
    """Each concept of an SAE matched (:func:`match_dictionaries`) to the concepts of other SAEs.

    Parameters
    ----------
    model
        The SAE whose concepts are matched (e.g. a run's selected SAE); all of its concepts.
    others
        ``{comparison: SAE}`` (e.g. ``{"seed 1": ...}``): only their concepts that fire on ``emb_ND``
        (:func:`active_concepts`) are matched.
    emb_ND
        Embeddings (``n_cells x d``) the SAEs were trained on.

    Returns
    -------
    One row per matched concept and comparison: ``concept`` (of ``model``), ``matched_concept`` (its index in
    the other SAE), ``cosine``, ``comparison``.
    """
    D_CD = model.dictionary.detach().cpu().numpy()
    frames = []
    for comparison, other in others.items():
        alive = np.flatnonzero(active_concepts(other, emb_ND))
        m = match_dictionaries(D_CD, other.dictionary.detach().cpu().numpy()[alive])
        frames.append(
            pd.DataFrame(
                {
                    "concept": m.rows,
                    "matched_concept": alive[m.cols],
                    "cosine": m.cosine,
                    "comparison": comparison,
                }
            )
        )
    columns = ["concept", "matched_concept", "cosine", "comparison"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


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


def cross_dataset_r2(saes: Mapping[str, Any], test_embeddings: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """R^2 of every SAE on every dataset's held-out embeddings (paper Fig. 4A).

    R^2 is ``corelib.tl.sae.metrics``'s: ``1 - sum((a - a')^2) / sum((a - mean(a))^2)`` with the per-dimension
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
    rows = []
    for train_name, model in saes.items():
        dim = model.cfg.d_in
        for test_name, emb in test_embeddings.items():
            if np.asarray(emb).shape[1] != dim:
                raise ValueError(
                    f"The SAE trained on {train_name!r} expects {dim}-dimensional embeddings, but {test_name!r} "
                    f"has {np.asarray(emb).shape[1]}. Embed both datasets with the same encoder first."
                )
            r2 = float(metrics(model, emb)["r2"])
            rows.append(
                {
                    "train_dataset": train_name,
                    "test_dataset": test_name,
                    "r2": r2,
                    "same_dataset": train_name == test_name,
                }
            )
    return pd.DataFrame(rows)
