"""Semi-synthetic ground truth: gene programs planted in real cells at a known strength (issue 22).

A program is a gene set (e.g. a GO BP term) whose genes get extra counts in chosen cells. For cell c with library
size ``L_c`` and gene g with share ``s_g`` of all counts, the extra count is Poisson with mean
``(fold_change - 1) * s_g * L_c``: on average the gene's expected count at that library size is multiplied by
``fold_change``, with count noise. Every other count is the real cell's. The truth stays with the data:
``obs[f"planted_{name}"]`` (boolean membership) and ``uns["planted"][name]`` (term, genes, fold change, share,
cell type, seed).

:func:`plant_batch` plants a technical batch instead (issue 26): a seeded share of the cells becomes batch ``"B"``,
whose counts of a seeded set of genes are scaled by gene-wise fold changes; the truth is in
``uns["planted_batch"]``. ``cl.tl.batch.batch_concepts`` should find the concepts that mark it, and a run with
``batch_key`` marks them in the explorer and the atlas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from corelib.datasets._bundled import load_pbmc3k
from corelib.datasets._checks import LABEL_KEY, validate
from corelib.datasets._gene_sets import GO_BP, load_gene_sets


@dataclass(frozen=True)
class Program:
    """One program to plant.

    Attributes
    ----------
    name
        Short name: ``obs[f"planted_{name}"]`` holds the membership.
    term
        The gene set it comes from (its genes are ``genes``); the label a recovered concept should get.
    genes
        The planted genes (symbols, all in the data).
    fold_change
        Mean fold change of the planted genes' counts in member cells (> 1).
    share
        Share of cells (of ``cell_type`` if given) that carry the program.
    cell_type
        Plant within this ``obs[label_key]`` value only; ``None`` across all cells.
    """

    name: str
    term: str
    genes: tuple[str, ...]
    fold_change: float = 3.0
    share: float = 0.1
    cell_type: str | None = None


def gene_set_program(
    term: str,
    var_names: Sequence[str],
    *,
    library: str = GO_BP,
    name: str | None = None,
    max_genes: int | None = None,
    seed: int = 0,
    **options: float | str | None,
) -> Program:
    """A :class:`Program` from a gene set library term, restricted to the data's genes.

    Parameters
    ----------
    term
        The exact term name (e.g. ``"Response To Type II Interferon (GO:0034341)"``).
    var_names
        The data's genes (the universe).
    library
        A library of :func:`load_gene_sets` (name, ``.gmt`` path).
    name
        Short name (default: the term up to its first parenthesis, in snake case).
    max_genes
        Keep a seeded random subset of this many genes (a smaller program); ``None`` keeps all.
    seed
        Seed of that subset.
    options
        ``fold_change``, ``share``, ``cell_type`` of the :class:`Program`.
    """
    sets = load_gene_sets(library, genes=list(map(str, var_names)), min_size=1, max_size=len(var_names))
    if term not in sets:
        close = [t for t in sets if term.lower().split(" (")[0] in t.lower()][:3]
        raise KeyError(
            f"Gene set {term!r} is not in {library} or has no gene in the data"
            + (f"; similar terms: {'; '.join(close)}" if close else "")
            + "."
        )
    genes = np.asarray(sets[term])
    if max_genes is not None and max_genes < len(genes):
        genes = np.sort(np.random.default_rng(seed).choice(genes, max_genes, replace=False))
    short = name or "_".join(term.split(" (")[0].lower().replace("-", " ").split())
    return Program(short, term, tuple(map(str, genes)), **options)  # type: ignore[arg-type]


def plant_programs(
    adata: ad.AnnData,
    programs: Iterable[Program],
    *,
    label_key: str = LABEL_KEY,
    seed: int = 0,
) -> ad.AnnData:
    """Plant gene programs in a copy of ``adata`` (raw counts in ``.X``); the truth goes to ``obs`` and ``uns``.

    Parameters
    ----------
    adata
        Real cells with raw integer counts in ``.X``.
    programs
        What to plant (:class:`Program`, e.g. from :func:`gene_set_program`); names must be distinct.
    label_key
        The ``obs`` column of cell types, for a program planted within one type.
    seed
        Seed of the member cells and of the Poisson counts (each program draws from its own stream).

    Returns
    -------
    A new AnnData (float32 CSR counts) with ``obs[f"planted_{name}"]`` (bool) per program and
    ``uns["planted"][name]``: ``term``, ``genes``, ``fold_change``, ``share``, ``cell_type``, ``n_cells``,
    ``seed``.
    """
    programs = list(programs)
    names = [p.name for p in programs]
    if len(set(names)) != len(names):
        raise ValueError(f"Program names must be distinct, got {names}.")
    validate(adata, counts=True)
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    lib_N = np.asarray(X.sum(1)).ravel()
    share_G = np.asarray(X.sum(0)).ravel() / lib_N.sum()
    gene_index = {g: i for i, g in enumerate(map(str, adata.var_names))}
    out = adata.copy()
    extra = sp.csr_matrix(X.shape)
    truth: dict[str, dict] = {}
    for j, program in enumerate(programs):
        members_N = _members(adata, program, label_key, np.random.default_rng([seed, j, 0]))
        genes = _check_program(program, gene_index)
        rng = np.random.default_rng([seed, j, 1])
        rows_C = np.flatnonzero(members_N)
        mean_CG = (program.fold_change - 1.0) * lib_N[rows_C, None] * share_G[genes][None, :]
        added = rng.poisson(mean_CG).astype(np.float64)
        extra = extra + sp.csr_matrix(
            (added.ravel(), (np.repeat(rows_C, len(genes)), np.tile(genes, len(rows_C)))), shape=X.shape
        )
        out.obs[f"planted_{program.name}"] = members_N
        truth[program.name] = asdict(program) | {
            "genes": list(program.genes),
            "cell_type": program.cell_type or "",
            "n_cells": int(members_N.sum()),
            "seed": int(seed),
        }
    out.X = sp.csr_matrix(X + extra, dtype=np.float32)
    out.X.eliminate_zeros()
    out.uns["planted"] = truth
    return out


def _members(adata: ad.AnnData, program: Program, label_key: str, rng: np.random.Generator) -> np.ndarray:
    """Boolean (n_cells,): a seeded ``share`` of the eligible cells (all, or one cell type)."""
    if not 0 < program.share <= 1:
        raise ValueError(f"Program {program.name!r}: share must be in (0, 1], got {program.share}.")
    if program.fold_change <= 1:
        raise ValueError(f"Program {program.name!r}: fold_change must be > 1, got {program.fold_change}.")
    eligible = np.ones(adata.n_obs, bool)
    if program.cell_type is not None:
        if label_key not in adata.obs:
            raise KeyError(
                f"Program {program.name!r} is planted within a cell type but obs has no {label_key!r}."
            )
        eligible = (adata.obs[label_key].astype(str) == program.cell_type).to_numpy()
        if not eligible.any():
            types = ", ".join(sorted(adata.obs[label_key].astype(str).unique()))
            raise ValueError(
                f"Program {program.name!r}: no cell of type {program.cell_type!r} (types: {types})."
            )
    pool = np.flatnonzero(eligible)
    n = max(1, int(round(program.share * len(pool))))
    members = np.zeros(adata.n_obs, bool)
    members[rng.choice(pool, n, replace=False)] = True
    return members


def _check_program(program: Program, gene_index: Mapping[str, int]) -> np.ndarray:
    """Column indices of the program's genes; a clear error for genes the data lacks."""
    missing = [g for g in program.genes if g not in gene_index]
    if missing or not program.genes:
        raise ValueError(
            f"Program {program.name!r}: genes {missing[:5]} are not in the data's var_names"
            if missing
            else f"Program {program.name!r} has no genes"
        )
    return np.asarray([gene_index[g] for g in program.genes])


#: The default planted program of :func:`planted_pbmc3k`: a GO BP term with 16 genes among pbmc3k's 2,000 (the
#: program of issue 22's measurements).
DEFAULT_TERMS = ("Response To Type II Interferon (GO:0034341)",)


def planted_pbmc3k(
    fold_change: float = 3.0,
    share: float = 0.1,
    *,
    terms: Sequence[str] = DEFAULT_TERMS,
    cell_type: str | None = None,
    max_genes: int | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """The bundled pbmc3k with GO BP programs planted (:func:`plant_programs`), every program at one strength.

    Parameters
    ----------
    fold_change, share, cell_type
        Strength of every program (see :class:`Program`).
    terms
        GO BP 2023 terms to plant, one program each.
    max_genes
        Program size: a seeded subset of each term's genes in the data (``None``: all of them).
    seed
        Seed of the members, the gene subsets and the counts.
    """
    adata = load_pbmc3k()
    programs = [
        gene_set_program(
            t,
            adata.var_names,
            max_genes=max_genes,
            seed=seed,
            fold_change=fold_change,
            share=share,
            cell_type=cell_type,
        )  # fmt: skip
        for t in terms
    ]
    planted = plant_programs(adata, programs, seed=seed)
    planted.uns["dataset"] = dict(adata.uns["dataset"]) | {
        "name": "pbmc3k_planted",
        "planted": f"{len(programs)} GO BP program(s), fold change {fold_change}, share {share}",
    }
    return planted


def plant_batch(
    adata: ad.AnnData,
    *,
    share: float = 0.5,
    n_genes: int = 500,
    log2_fold_sd: float = 1.0,
    batch_key: str = "batch",
    seed: int = 0,
) -> ad.AnnData:
    """A known technical batch effect in a copy of ``adata``: gene-wise fold changes in a share of the cells.

    A seeded ``share`` of the cells (chosen regardless of cell type) forms batch ``"B"``, the rest batch
    ``"A"``. A seeded subset of ``n_genes`` genes gets log2 fold changes drawn from ``N(0, log2_fold_sd^2)``;
    in batch B every count of such a gene is multiplied by ``f = 2^lfc`` on average: thinned (binomial, ``f <
    1``) or topped up by Poisson(``(f - 1) x``) (``f > 1``), so the cell's own expression is scaled and a gene
    it does not express stays at 0. Batch A is the real data.

    Parameters
    ----------
    adata
        Real cells with raw integer counts in ``.X``.
    share
        Share of the cells in batch B, in (0, 1).
    n_genes
        Genes shifted (at most the number of genes).
    log2_fold_sd
        Spread of the gene-wise log2 fold changes.
    batch_key
        The ``obs`` column that receives the batch (categorical "A"/"B").
    seed
        Seed of the cells, the genes, the fold changes and the counts.

    Returns
    -------
    A new AnnData (float32 CSR counts) with ``obs[batch_key]`` and ``uns["planted_batch"]``: ``genes``,
    ``log2_fold_change`` (per gene), ``share``, ``n_cells``, ``batch_key``, ``seed``.
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1): two batches need cells in each, got {share}.")
    if not 0 < n_genes <= adata.n_vars:
        raise ValueError(f"n_genes must be in 1..{adata.n_vars} (the data's genes), got {n_genes}.")
    validate(adata, counts=True)
    rng = np.random.default_rng([seed, 2])
    in_b_N = np.zeros(adata.n_obs, bool)
    in_b_N[rng.choice(adata.n_obs, max(1, int(round(share * adata.n_obs))), replace=False)] = True
    genes_G = np.sort(rng.choice(adata.n_vars, n_genes, replace=False))
    fold_G = np.ones(adata.n_vars)
    lfc_G = rng.normal(0.0, log2_fold_sd, n_genes)
    fold_G[genes_G] = 2.0**lfc_G
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    coo = X.tocoo()
    shifted = in_b_N[coo.row] & (fold_G[coo.col] != 1.0)
    f = fold_G[coo.col[shifted]]
    x = coo.data[shifted]
    up = f > 1
    new = np.where(up, x, 0.0)
    new[up] += rng.poisson((f[up] - 1.0) * x[up])
    new[~up] = rng.binomial(x[~up].astype(np.int64), f[~up])
    data = coo.data.copy()
    data[shifted] = new
    out = adata.copy()
    out.X = sp.csr_matrix((data, (coo.row, coo.col)), shape=X.shape, dtype=np.float32)
    out.X.eliminate_zeros()
    out.obs[batch_key] = pd.Categorical(np.where(in_b_N, "B", "A"), categories=["A", "B"])
    out.uns["planted_batch"] = {
        "genes": [str(g) for g in adata.var_names[genes_G]],
        "log2_fold_change": lfc_G.tolist(),
        "share": float(share),
        "n_cells": int(in_b_N.sum()),
        "batch_key": batch_key,
        "seed": int(seed),
    }
    return out
