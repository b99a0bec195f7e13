"""Classical decompositions of the embeddings (PCA, ICA, NMF): the baselines of the stability comparison (Sec. 4.4)."""

from __future__ import annotations

import warnings

import numpy as np

from corelib.tl.sampling import describe_sample, subsample_cells
from corelib.tl.stability import Fitter

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


def baseline_fitter(method: str, n_components: int, *, max_cells: int | None = None) -> Fitter:
    """A :data:`Fitter` fitting :func:`baseline_dictionary` (``n_components`` capped at what the method allows).

    Only directions are compared, no cell is transformed: with ``max_cells`` each fit sees a seeded uniform
    sample (seed 0: all seeds of a comparison see the same cells; uniform, to estimate the same directions as on
    all cells) of that many of its cells, and a warning says so."""

    def fit(emb_ND: np.ndarray, seed: int, tag: str) -> np.ndarray:
        cells = subsample_cells(len(emb_ND), max_cells)
        if len(cells) < len(emb_ND):
            warnings.warn(
                f"{method} baseline ({tag}) fitted on {describe_sample(len(cells), len(emb_ND), max_cells, 0, None)}.",
                stacklevel=2,
            )
            emb_ND = emb_ND[cells]
        limit = min(emb_ND.shape)
        return baseline_dictionary(emb_ND, method, min(n_components, limit), seed=seed)

    return fit
