"""Linear probes on concepts vs neurons (cell type, cell-cycle phase; Sec. 4.5, App. G).

The labels and markers they predict and are read against come from :mod:`corelib.tl.probe_labels`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from corelib.tl.attribution import Attribution, unit_top_genes

#: Default cap on the training cells of one probe fit (:func:`probe`'s ``max_cells``).
MAX_TRAIN_CELLS = 50_000


# ----------------------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """Logistic-regression probes over several seeded balanced splits.

    Attributes
    ----------
    classes
        Class labels kept (order of the confusion matrices and coefficient rows).
    dropped
        ``{class: n_cells}`` of the classes with fewer than ``min_cells_per_class`` cells.
    feature_names
        One name per feature (``C12`` for concept 12, ``N3`` for neuron 3, ...).
    seeds
        The split seeds.
    n_train_per_class, n_test_per_class
        Cells per class in each split (balanced).
    accuracy, macro_f1
        One value per seed.
    confusion
        ``n_seeds x n_classes x n_classes`` counts (rows true, columns predicted).
    coef
        ``n_seeds x n_classes x n_features`` logistic-regression coefficients (for two classes the single
        coefficient row is expanded to ``[-w, w]`` so that each class has its row).
    converged
        Per seed, whether lbfgs converged within the ``max_iter`` used.
    max_iter
        Per seed, the ``max_iter`` used (scikit-learn's default 100, raised 10x at a time when needed).
    max_cells
        The cap on training cells per fit (None: no cap).
    subsampled
        Whether the training cells of a split exceeded ``max_cells`` and were subsampled
        (:func:`stratified_subsample`).
    """

    classes: list[str]
    dropped: dict[str, int]
    feature_names: list[str]
    seeds: list[int]
    n_train_per_class: int
    n_test_per_class: int
    accuracy: np.ndarray
    macro_f1: np.ndarray
    confusion: np.ndarray
    coef: np.ndarray
    converged: np.ndarray
    max_iter: np.ndarray
    max_cells: int | None = None
    subsampled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Accuracy and macro-F1 as mean and std (``ddof=1``) over seeds, with the split sizes."""
        return {
            "accuracy_mean": float(self.accuracy.mean()),
            "accuracy_std": float(self.accuracy.std(ddof=1)) if len(self.seeds) > 1 else float("nan"),
            "macro_f1_mean": float(self.macro_f1.mean()),
            "macro_f1_std": float(self.macro_f1.std(ddof=1)) if len(self.seeds) > 1 else float("nan"),
            "n_classes": len(self.classes),
            "n_features": len(self.feature_names),
            "n_train_per_class": self.n_train_per_class,
            "n_test_per_class": self.n_test_per_class,
            "n_seeds": len(self.seeds),
            "all_converged": bool(self.converged.all()),
            "max_iter_used": int(self.max_iter.max()),
        }


class TooFewClasses(ValueError):
    """Fewer than two classes have ``min_cells_per_class`` cells: there is nothing to probe."""


def select_classes(labels_N: Any, min_cells_per_class: int) -> tuple[list[str], dict[str, int]]:
    """The classes a probe keeps: those with at least ``min_cells_per_class`` labelled cells.

    Parameters
    ----------
    labels_N
        One label per cell; NaN / None cells are ignored.
    min_cells_per_class
        Smallest class kept.

    Returns
    -------
    ``(classes, dropped)``: the kept class labels, sorted, and ``{class: n_cells}`` of the others.

    Raises
    ------
    TooFewClasses
        When fewer than two classes are kept; the message gives the class sizes.
    """
    labels = pd.Series(np.asarray(labels_N, dtype=object)).dropna().astype(str)
    sizes = labels.value_counts().sort_index().sort_values(ascending=False, kind="stable")  # largest first
    classes = sorted(str(c) for c in sizes.index[sizes >= min_cells_per_class])
    if sizes.empty:
        raise TooFewClasses("No cell has a label: there is nothing to probe.")
    if len(classes) < 2:
        shown = ", ".join(f"{c}: {n}" for c, n in sizes.items())
        raise TooFewClasses(
            f"Only {len(classes)} class(es) have at least min_cells_per_class={min_cells_per_class} cells "
            f"(class sizes: {shown}). Lower min_cells_per_class or use a label with larger classes."
        )
    return classes, {str(c): int(n) for c, n in sizes.items() if n < min_cells_per_class}


def balanced_split(
    labels_N: np.ndarray, classes: Sequence[str], *, n_per_class: int, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded balanced split: ``n_per_class`` random cells per class, ``test_size`` of them held out.

    Returns
    -------
    ``(train_idx, test_idx)`` into ``labels_N``.
    """
    rng = np.random.default_rng(seed)
    n_test = max(1, round(test_size * n_per_class))
    if n_test >= n_per_class:
        raise ValueError(f"test_size={test_size} leaves no training cell out of {n_per_class} per class.")
    train, test = [], []
    for c in classes:
        idx = rng.choice(np.flatnonzero(labels_N == c), size=n_per_class, replace=False)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.concatenate(train), np.concatenate(test)


def stratified_subsample(idx: np.ndarray, labels_N: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Seeded stratified subsample of the cells ``idx``: ``max_cells`` of them, each class keeping its share
    (rounded down, at least one cell so no class is lost, the rest to the largest remainders).

    Parameters
    ----------
    idx
        Cell indices into ``labels_N``.
    labels_N
        One label per cell.
    max_cells
        Cells kept (exactly, unless more classes than ``max_cells``: then one per class).
    seed
        Seed of the draw: the same seed gives the same cells.

    Returns
    -------
    The kept indices, sorted; ``idx`` itself when it has at most ``max_cells`` cells.
    """
    if len(idx) <= max_cells:
        return idx
    classes, inverse, sizes = np.unique(labels_N[idx], return_inverse=True, return_counts=True)
    quota = sizes * max_cells / len(idx)
    n_keep = np.maximum(np.floor(quota).astype(int), 1)
    n_keep[np.argsort(n_keep - quota, kind="stable")[: max(0, max_cells - n_keep.sum())]] += 1
    rng = np.random.default_rng(seed)
    kept = [rng.choice(idx[inverse == i], size=n, replace=False) for i, n in enumerate(n_keep)]
    return np.sort(np.concatenate(kept))


def _as_features(features_NF: Any) -> np.ndarray | sp.csr_matrix:
    """Features as a 2-D numpy array, or CSR when sparse (SAE codes stay sparse), with finite values."""
    if sp.issparse(features_NF):
        X = sp.csr_matrix(features_NF)
    else:
        X = np.asarray(features_NF.detach().cpu().numpy() if hasattr(features_NF, "detach") else features_NF)
    if X.ndim != 2:
        raise ValueError(f"features_NF must be 2-D (n_cells x n_features); got shape {X.shape}.")
    if not np.all(np.isfinite(X.data if sp.issparse(X) else X)):
        raise ValueError("features_NF holds NaN or infinite values; check the embeddings / SAE activations.")
    return X


def probe(
    features_NF: Any,
    labels_N: Any,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    test_size: float = 0.25,
    min_cells_per_class: int = 150,
    n_per_class: int | None = None,
    balanced: bool = True,
    max_iter: int = 100,
    max_iter_limit: int = 10_000,
    max_cells: int | None = MAX_TRAIN_CELLS,
    feature_names: Sequence[str] | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Linear probes: scikit-learn ``LogisticRegression`` (default parameters) on seeded balanced splits.

    Paper appendix G: balanced classes, logistic regression with sklearn's defaults, accuracy and confusion
    matrices, compared between concept and neuron activations.

    Parameters
    ----------
    features_NF
        Features per cell (``n_cells x n_features``): concept activations (sparse codes are fitted sparse) or
        embeddings (neurons).
    labels_N
        One label per cell; NaN / None cells are ignored.
    seeds
        One split (and one fit) per seed.
    test_size
        Fraction of each class's sampled cells held out for testing.
    min_cells_per_class
        Classes with fewer cells are dropped (listed in :attr:`ProbeResult.dropped`).
    n_per_class
        Cells sampled per class; default: the smallest kept class's size (all of it).
    balanced
        Sample the same number of cells per class (the paper's setting). If False, every cell of the kept
        classes is used and the split is stratified.
    max_iter
        lbfgs iterations of the first fit (sklearn's default, 100).
    max_iter_limit
        A fit that does not converge is redone with 10x ``max_iter``, up to this limit: ``max_iter`` is raised
        only as needed, and :attr:`ProbeResult.max_iter` / :attr:`ProbeResult.converged` say so per seed.
    max_cells
        When a split has more training cells, the fit uses a stratified subsample of ``max_cells`` of them
        drawn with the split's seed (:func:`stratified_subsample`; test cells are all kept);
        :attr:`ProbeResult.subsampled` says so. None: no cap.
    feature_names
        Names of the features, for the coefficient tables.
    progress
        Progress bar over seeds.

    Returns
    -------
    :class:`ProbeResult`.

    Raises
    ------
    TooFewClasses
        Fewer than two classes have ``min_cells_per_class`` cells (:func:`select_classes`).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import train_test_split

    X = _as_features(features_NF)
    y = pd.Series(np.asarray(labels_N, dtype=object))
    if len(y) != X.shape[0]:
        raise ValueError(
            f"features_NF has {X.shape[0]} cells but labels_N has {len(y)}; pass one label per row of the features."
        )
    seeds = list(seeds)
    if not seeds:
        raise ValueError("Give at least one split seed.")
    classes, dropped = select_classes(y, min_cells_per_class)
    known = y.notna().to_numpy()
    y = y.astype(str).to_numpy()
    sizes = pd.Series(y[known]).value_counts()
    smallest = int(sizes[classes].min())
    n_per_class = smallest if n_per_class is None else int(n_per_class)
    if n_per_class > smallest:
        raise ValueError(
            f"n_per_class={n_per_class} but the smallest kept class has {smallest} cells; lower n_per_class "
            "or raise min_cells_per_class."
        )
    names = list(feature_names) if feature_names is not None else [f"F{i}" for i in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} feature_names for {X.shape[1]} features.")
    in_classes = np.flatnonzero(known & np.isin(y, classes))

    acc, f1, conf, coef, conv, used = [], [], [], [], [], []
    n_train = n_test = 0
    subsampled = False
    for seed in tqdm(seeds, desc="probe splits", disable=not progress):
        if balanced:
            tr, te = balanced_split(y, classes, n_per_class=n_per_class, test_size=test_size, seed=seed)
        else:
            tr, te = train_test_split(
                in_classes, test_size=test_size, stratify=y[in_classes], random_state=seed
            )
        if max_cells is not None and len(tr) > max_cells:
            tr, subsampled = stratified_subsample(tr, y, max_cells, seed), True
        n_train, n_test = len(tr) // len(classes), len(te) // len(classes)
        clf, iters, converged = _fit_logistic(X[tr], y[tr], max_iter, max_iter_limit)
        conv.append(converged)
        used.append(iters)
        pred = clf.predict(X[te])
        acc.append(accuracy_score(y[te], pred))
        f1.append(f1_score(y[te], pred, average="macro", labels=classes))
        conf.append(confusion_matrix(y[te], pred, labels=classes))
        order = [list(clf.classes_).index(c) for c in classes]
        w = clf.coef_ if len(classes) > 2 else np.vstack([-clf.coef_[0], clf.coef_[0]])
        coef.append(w[order])
    return ProbeResult(
        classes=classes,
        dropped=dropped,
        feature_names=names,
        seeds=seeds,
        n_train_per_class=n_train,
        n_test_per_class=n_test,
        accuracy=np.array(acc),
        macro_f1=np.array(f1),
        confusion=np.stack(conf),
        coef=np.stack(coef),
        converged=np.array(conv),
        max_iter=np.array(used),
        max_cells=max_cells,
        subsampled=subsampled,
    )


def _fit_logistic(X: np.ndarray, y: np.ndarray, max_iter: int, limit: int) -> tuple[Any, int, bool]:
    """``LogisticRegression(max_iter=max_iter)`` (defaults otherwise), refitted with 10x ``max_iter`` while
    it does not converge, up to ``limit``. Returns ``(fitted model, max_iter used, converged)``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    while True:
        clf = LogisticRegression(max_iter=max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category=ConvergenceWarning)
            clf.fit(X, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if converged or max_iter >= limit:
            return clf, max_iter, converged
        max_iter = min(10 * max_iter, limit)


def probe_features(features: Mapping[str, Any], labels_N: Any, **options: Any) -> dict[str, ProbeResult]:
    """:func:`probe` on each feature set (``{"concepts": codes, "neurons": emb}``) with the same splits.

    When a fit is subsampled (more training cells than ``max_cells``), a line says so. When fewer than two
    classes have enough cells, nothing can be probed: the reason is printed and ``{}``
    returned. Every function of this module taking results accepts ``{}`` (the plots say "skipped", the tables
    are empty, :func:`task_classes` gives no classes), so that a notebook runs through.

    Parameters
    ----------
    features
        ``{name: features_NF}``.
    labels_N
        One label per cell.
    options
        Passed to :func:`probe` (``seeds``, ``test_size``, ``min_cells_per_class``, ``max_iter``, ...);
        ``feature_names`` defaults to ``C<i>`` for "concepts" and ``N<i>`` for any other set.
    """
    out = {}
    for name, X in features.items():
        names = options.get("feature_names") or [
            f"{'C' if name == 'concepts' else 'N'}{i}" for i in range(np.shape(X)[1])
        ]
        try:
            out[name] = probe(X, labels_N, **{**options, "feature_names": names})
        except TooFewClasses as err:
            print(f"Skipped the probes: {err}")
            return {}
        if out[name].subsampled:
            result = out[name]
            print(
                f"{name}: each fit used a seeded stratified subsample of max_cells={result.max_cells} training "
                f"cells ({result.n_train_per_class} per class), not all of them."
            )
    return out


def task_classes(results: Mapping[str, ProbeResult]) -> tuple[list[str], dict[str, int]]:
    """``(classes, dropped)`` of a probe task (:func:`probe_features`): the classes kept and ``{class: n_cells}``
    of those dropped for too few cells; ``([], {})`` when the task was skipped."""
    first = next(iter(results.values()), None)
    return ([], {}) if first is None else (first.classes, first.dropped)


def probe_summary(results: Mapping[str, ProbeResult]) -> pd.DataFrame:
    """One row per feature set (``{"concepts": ..., "neurons": ...}``) with :meth:`ProbeResult.summary`."""
    return pd.DataFrame({name: r.summary() for name, r in results.items()}).T.rename_axis("features")


def probe_tables(results: Mapping[str, ProbeResult]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A task's probe results as tables: ``(summary, per_seed, confusion)``.

    ``summary`` is :func:`probe_summary`; ``per_seed`` has one row per feature set and split seed
    (``features, seed, accuracy, macro_f1, converged``); ``confusion`` one row per feature set, seed, true and
    predicted class (``features, seed, true, predicted, count``).
    """
    per_seed = pd.DataFrame(
        [
            {"features": name, "seed": s, "accuracy": a, "macro_f1": f, "converged": c}
            for name, r in results.items()
            for s, a, f, c in zip(r.seeds, r.accuracy, r.macro_f1, r.converged, strict=True)
        ]
    )
    confusion = pd.DataFrame(
        [
            {"features": name, "seed": s, "true": t, "predicted": p, "count": int(r.confusion[i, a, b])}
            for name, r in results.items()
            for i, s in enumerate(r.seeds)
            for a, t in enumerate(r.classes)
            for b, p in enumerate(r.classes)
        ]
    )
    return probe_summary(results), per_seed, confusion


def _ranked_units(result: ProbeResult, n_units: int) -> np.ndarray:
    """(n_classes x n_units) the features with the largest mean coefficient per class, largest first."""
    return np.argsort(-result.coef.mean(axis=0), axis=1, kind="stable")[:, :n_units]


def shown_units(results: Sequence[ProbeResult], n_units: int = 3) -> np.ndarray:
    """The units :func:`top_units` shows for these probe results (``n_units`` per class of each), sorted, once
    each: the units whose genes a Fig. 5 table needs."""
    ranked = [_ranked_units(r, n_units).ravel() for r in results]
    return np.unique(np.concatenate(ranked)) if ranked else np.array([], dtype=np.int64)


def not_attributed(units: Sequence[int], attribution: Attribution | None) -> np.ndarray:
    """The ``units`` that ``attribution`` did not try (attributed or skipped), sorted: what is left to attribute
    for a Fig. 5 table (all of them when ``attribution`` is None)."""
    tried = [] if attribution is None else attribution.units
    return np.setdiff1d(np.asarray(units, dtype=np.int64), tried)


def _unit_genes(attributions: Sequence[Attribution], unit: int, n_genes: int) -> list[str]:
    """The unit's top genes from the first attribution that attributed it (``[]`` when none did)."""
    return next((g for a in attributions if (g := unit_top_genes(a, unit, n_genes))), [])


def top_units(
    result: ProbeResult,
    *,
    n_units: int = 3,
    attribution: Attribution | Sequence[Attribution | None] | None = None,
    markers: Mapping[str, Sequence[str]] | None = None,
    n_genes: int = 10,
) -> pd.DataFrame:
    """The units with the largest mean coefficient per class, with their top genes and marker overlap (Fig. 5).

    Parameters
    ----------
    result
        From :func:`probe`; feature ``j`` is unit ``j`` (concept or neuron index).
    n_units
        Units per class (largest positive mean coefficient over seeds).
    attribution
        ``corelib.tl.attribution.Attribution`` of the same units (notebook 03's ``attribution_concepts.npz`` /
        ``attribution_neurons.npz``), or a sequence of them covering different units (notebook 03's and the
        units it did not attribute, :func:`shown_units`; None entries are left out); a unit takes its genes from
        the first that attributed it. It may cover only some units. None skips the gene columns.
    markers
        ``{class: marker genes}`` (phase: the S / G2M lists; cell type: :func:`corelib.tl.probe_labels.class_markers`). A class
        without markers (G1) gets NaN overlap.
    n_genes
        Top attributed genes per unit.

    Returns
    -------
    One row per (class, rank): ``class``, ``rank``, ``unit``, ``feature``, ``coef_mean``, ``coef_std`` and,
    with an attribution, ``top_genes``, ``attributed``; with markers as well, ``marker_genes`` (the markers
    among the top genes) and ``n_markers`` (NaN when the class has no marker list or the unit has no genes).
    """
    mean, std = result.coef.mean(axis=0), result.coef.std(axis=0)
    given = [attribution] if isinstance(attribution, Attribution) else list(attribution or [])
    attributions = [a for a in given if a is not None]
    rows = []
    for ci, cls in enumerate(result.classes):
        for rank, u in enumerate(_ranked_units(result, n_units)[ci], start=1):
            row = {
                "class": cls,
                "rank": rank,
                "unit": int(u),
                "feature": result.feature_names[u],
                "coef_mean": float(mean[ci, u]),
                "coef_std": float(std[ci, u]),
            }
            if attribution is not None:
                genes = _unit_genes(attributions, int(u), n_genes)
                row.update(top_genes=", ".join(genes), attributed=bool(genes))
                if markers is not None:
                    cls_markers = set(markers.get(cls, ()))
                    hits = [g for g in genes if g in cls_markers]
                    row.update(
                        marker_genes=", ".join(hits),
                        n_markers=len(hits) if cls_markers and genes else float("nan"),
                    )
            rows.append(row)
    return pd.DataFrame(rows)
