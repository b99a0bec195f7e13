"""Benchmark: attribution GSEA against the fastest libraries a user could call instead, on the same inputs.

Every method gets the same rankings (:func:`corelib.tl.enrichment.rank_genes`: same tie order and weights),
the same GO Biological Process 2023 sets (pyenrichr, restricted to the genes, 15..500 genes) and the same
labelling rule (most significant positively enriched set, ties by larger NES, then name):

* ``cl.tl.enrichment.gsea`` with 1 and 2 threads (gseapy's fgsea multilevel);
* a plain loop of ``pyfgsea.run_gsea`` (Rust, fgsea-aligned multilevel: same sample size, simple
  permutations, eps and seed): one process on one core, one process on every core (pyfgsea's Rust thread
  pool uses all cores by default), and 2 forked processes with one core each (started untimed);
* ``blitzgsea.gsea`` (gamma-approximated null; ``center=False`` keeps the weights), once, 2 processes;
* the reference: fgsea's simple permutation p-value, ``(1 + #null ES >= ES) / (1 + #null ES >= 0)``, with
  20,000 random sets per set size (brute force in numpy, computed once and cached in the temp folder).

Times are medians over ``--repeats`` interleaved runs (blitzgsea: one run); the speed-ups compare equal
cores (1, then 2: pyfgsea's faster layout). Agreement with the reference: same label, and over all (unit,
positively enriched set) pairs the Spearman correlation of -log10 p and the median |log10(p / p_ref)|. Both
fgsea implementations are Monte-Carlo estimates, so the share of labels they get right depends on the seed:
it is also reported over ``--label-seeds`` seeds (mean, spread and each seed).

Rankings: the concepts of a demo run (``runs/demo/03_interpret/attribution_concepts.npz``) when it exists,
otherwise attribution-like rankings over the 2,000 pbmc3k genes (cell types, planted GO sets, noise).

Run: ``python benchmarks/gsea.py --run-dir runs/demo [--units 48] [--repeats 3] [--label-seeds 5]`` from the
repository root.
Needs the benchmark peers ``pyfgsea`` and ``blitzgsea``.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import multiprocessing.pool
import os
import pickle
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import blitzgsea
import numpy as np
import pandas as pd
import pyfgsea
from scipy.stats import spearmanr

import corelib as cl
from corelib.tl.attribution import Attribution

PERMUTATIONS = 1000
REFERENCE_PERMUTATIONS = 20_000
#: fgsea's multilevel sample size (``sampleSize``), as in corelib.
SAMPLE_SIZE = 101
en = cl.tl.enrichment

#: One method's result: per unit, a table indexed by term with columns ``es, nes, pval``.
Tables = dict[str, pd.DataFrame]


def demo_rankings(run_dir: Path, n_units: int) -> pd.DataFrame | None:
    """Attributed concepts of a demo run (genes x units), or None when the run has none."""
    path = run_dir / "03_interpret" / "attribution_concepts.npz"
    if not path.exists():
        return None
    scores = Attribution.load(path).frame()
    usable = scores.columns[(scores.max() > 0).to_numpy()]
    return scores[usable[:n_units]] if len(usable) >= 20 else None


def synthetic_rankings(n_units: int, seed: int = 0) -> pd.DataFrame:
    """Attribution-like rankings over the pbmc3k genes: cell types, planted GO sets, noise (genes x units)."""
    rng = np.random.default_rng(seed)
    adata = cl.datasets.load_dataset("pbmc3k")
    genes = adata.var_names.astype(str).tolist()
    x = np.asarray(adata.X.todense(), dtype=np.float64)
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    cols: dict[str, np.ndarray] = {}
    for cell_type in sorted(adata.obs["cell_type"].astype(str).unique()):
        inside = (adata.obs["cell_type"].astype(str) == cell_type).to_numpy()
        diff = x[inside].mean(axis=0) - x[~inside].mean(axis=0)
        keep = np.argsort(-diff)[:100]
        s = np.zeros(len(genes))
        s[keep] = diff[keep]
        cols[f"type:{cell_type}"] = s
    sets = en.load_gene_sets(genes=genes)
    for term in rng.choice(sorted(sets), size=max(0, n_units - len(cols) - 3), replace=False):
        s = _sparse_noise(len(genes), rng)
        members = [genes.index(g) for g in sets[term]]
        top = rng.choice(members, size=max(4, int(0.6 * len(members))), replace=False)
        s[top] = rng.uniform(0.3, 1.0, len(top))
        cols[f"planted:{term}"] = s
    for k in range(3):
        cols[f"noise:{k}"] = _sparse_noise(len(genes), rng)
    return pd.DataFrame(cols, index=genes).iloc[:, :n_units]


def _sparse_noise(n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """60 nonzero scores (50 positive, 10 negative, exponential), the rest exactly 0."""
    s = np.zeros(n_genes)
    idx = rng.choice(n_genes, 60, replace=False)
    s[idx] = rng.exponential(0.1, 60) * np.where(np.arange(60) < 50, 1, -1)
    return s


# --- the methods ------------------------------------------------------------------------------------------
def run_ours(scores_GU: pd.DataFrame, sets: Mapping[str, list[str]], n_jobs: int, seed: int = 0) -> Tables:
    """``cl.tl.enrichment.gsea`` with ``n_jobs`` threads; every positively enriched term per unit."""
    res = en.gsea(
        scores_GU, sets, permutations=PERMUTATIONS, seed=seed, n_jobs=n_jobs, top_n=10**6, progress=False
    )
    terms = res.terms.set_index("term")
    return {u: terms.loc[terms["unit"] == u, ["es", "nes", "pval"]] for u in scores_GU.columns}


def _pyfgsea_unit(ranking: pd.Series, sets: Mapping[str, list[str]], seed: int = 0) -> pd.DataFrame:
    """``pyfgsea.run_gsea`` of one ranking with fgsea's settings as corelib uses them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pyfgsea.run_gsea(
            ranking, dict(sets), min_size=en.MIN_SIZE, max_size=en.MAX_SIZE, sample_size=SAMPLE_SIZE, seed=seed,
            nperm_nes=PERMUTATIONS, nperm_simple=PERMUTATIONS, eps=en.MIN_PVALUE,
        )  # fmt: skip
    return res.set_index("Pathway")[["ES", "NES", "P-value"]].set_axis(["es", "nes", "pval"], axis=1)


_FORKED: dict[str, Mapping[str, list[str]]] = {}


def fork_pool(sets: Mapping[str, list[str]], n_jobs: int) -> multiprocessing.pool.Pool:
    """Worker processes for the pyfgsea loop, one core each, forked before this process starts any thread (a
    fork after pyfgsea's Rust thread pool exists hangs) and sharing ``sets`` without a copy per task. Their
    start-up is not timed: the peer's most favourable set-up."""
    _FORKED["sets"] = sets
    return multiprocessing.get_context("fork").Pool(n_jobs, initializer=_one_core)


def _one_core() -> None:
    """Size pyfgsea's Rust (rayon) thread pool, built at its first call, to one thread."""
    os.environ["RAYON_NUM_THREADS"] = "1"


def _pyfgsea_forked(ranking: pd.Series, seed: int) -> pd.DataFrame:
    return _pyfgsea_unit(ranking, _FORKED["sets"], seed)


def run_pyfgsea(
    scores_GU: pd.DataFrame,
    sets: Mapping[str, list[str]],
    pool: multiprocessing.pool.Pool | None,
    seed: int = 0,
) -> Tables:
    """A plain loop of ``pyfgsea.run_gsea`` over the units: in this process (pyfgsea's threads on every
    core), or on the forked ``pool`` (one core per process)."""
    rankings = [en.rank_genes(scores_GU[u], seed=0) for u in scores_GU.columns]
    if pool is None:
        tables = [_pyfgsea_unit(r, sets, seed) for r in rankings]
    else:
        tables = pool.starmap(_pyfgsea_forked, [(r, seed) for r in rankings])
    return dict(zip(scores_GU.columns, tables, strict=True))


def run_blitzgsea(scores_GU: pd.DataFrame, sets: Mapping[str, list[str]], n_jobs: int) -> Tables:
    """``blitzgsea.gsea`` per unit on the same weights (not centred), ``n_jobs`` processes."""
    out = {}
    for u in scores_GU.columns:
        ranking = en.rank_genes(scores_GU[u], seed=0)
        signature = pd.DataFrame({"i": ranking.index.astype(str), "v": ranking.to_numpy()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = blitzgsea.gsea(
                signature, dict(sets), permutations=PERMUTATIONS, min_size=en.MIN_SIZE, max_size=en.MAX_SIZE,
                processes=n_jobs, center=False, seed=0,
            )  # fmt: skip
        out[u] = res[["es", "nes", "pval"]]
    return out


# --- the reference ----------------------------------------------------------------------------------------
def null_es(abs_w: np.ndarray, size: int, positions: np.ndarray) -> np.ndarray:
    """Signed GSEA ES (p = 1) of random sets: the first ``size`` columns of ``positions`` (random, distinct).

    The running sum only moves up at a hit: its maximum is right after one, its minimum right before one.
    """
    n = len(abs_w)
    hits = np.sort(positions[:, :size], axis=1)
    cum = np.cumsum(abs_w[hits], axis=1)
    cum /= cum[:, -1:]
    misses_before = (hits - np.arange(size)) / (n - size)
    top = (cum - misses_before).max(axis=1)
    bottom = (misses_before - np.hstack([np.zeros((len(hits), 1)), cum[:, :-1]])).max(axis=1)
    return np.where(top > bottom, top, np.where(bottom > top, -bottom, 0.0))


def reference_unit(ranking: pd.Series, sets: Mapping[str, list[str]], n_perm: int, seed: int) -> pd.DataFrame:
    """fgsea's simple permutation method on one ranking: ES, NES and p of every set (``n_perm`` per size)."""
    rng = np.random.default_rng(seed)
    abs_w = np.abs(ranking.to_numpy())
    where = pd.Series(np.arange(len(ranking)), index=ranking.index.astype(str))
    members = {t: where[list(g)].to_numpy()[None, :] for t, g in sets.items()}
    sizes = sorted({m.shape[1] for m in members.values()})
    null = {s: [] for s in sizes}
    for start in range(0, n_perm, 2000):  # random permutations of the genes, in blocks (memory)
        block = np.tile(np.arange(len(abs_w), dtype=np.int32), (min(2000, n_perm - start), 1))
        positions = rng.permuted(block, axis=1)[:, : sizes[-1]]
        for s in sizes:
            null[s].append(null_es(abs_w, s, positions))
    null = {s: np.concatenate(v) for s, v in null.items()}
    rows = {}
    for term, m in members.items():
        es, z = float(null_es(abs_w, m.shape[1], m)[0]), null[m.shape[1]]
        same = z[z >= 0] if es > 0 else z[z <= 0]
        p = (1 + np.sum(np.abs(same) >= abs(es))) / (1 + len(same))
        rows[term] = (es, es / abs(same.mean()), p)
    return pd.DataFrame.from_dict(rows, orient="index", columns=["es", "nes", "pval"])


def reference(scores_GU: pd.DataFrame, sets: Mapping[str, list[str]], n_perm: int) -> Tables:
    """:func:`reference_unit` of every unit, cached in the temp folder under a hash of the inputs."""
    key = hashlib.sha256(
        pickle.dumps(
            (scores_GU.to_numpy().tobytes(), list(map(str, scores_GU.index)), sorted(sets.items()), n_perm)
        )
    ).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "corelib-gsea-reference" / f"{key}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    out = {
        u: reference_unit(en.rank_genes(scores_GU[u], seed=0), sets, n_perm, seed=j)
        for j, u in enumerate(scores_GU.columns)
    }
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(out))
    return out


# --- comparison -------------------------------------------------------------------------------------------
def label(table: pd.DataFrame) -> str:
    """The labelling rule: ES > 0 with a p-value, smallest p, then largest NES, then name."""
    pos = table[(table["es"] > 0) & table["pval"].notna()]
    if pos.empty:
        return ""
    key = pd.DataFrame({"p": pos["pval"], "n": -pos["nes"], "t": pos.index}, index=pos.index)
    return str(key.sort_values(["p", "n", "t"]).index[0])


def agreement(tables: Tables, ref: Tables) -> dict[str, float]:
    """Share of units with the reference's label; Spearman and median |log10 ratio| of p over positive sets."""
    same = [label(tables[u]) == label(ref[u]) for u in ref]
    pairs = pd.concat(
        [
            tables[u][["pval"]].join(ref[u].loc[ref[u]["es"] > 0, ["pval"]], rsuffix="_ref", how="inner")
            for u in ref
        ]
    ).dropna()
    lp, lr = np.log10(pairs["pval"]), np.log10(pairs["pval_ref"])
    return {
        "labels": float(np.mean(same)),
        "spearman": float(spearmanr(lp, lr).statistic),
        "log10_ratio": float(np.median(np.abs(lp - lr))),
    }


def timed(method: Callable[..., Tables], *args: object) -> tuple[float, Tables]:
    t0 = time.perf_counter()
    out = method(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    """Time every method on the same rankings and print times, ratios and agreement with the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=48, help="number of rankings (at least 20)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="demo run with attributions")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median reported)")
    parser.add_argument(
        "--label-seeds", type=int, default=5, help="seeds of the label agreement (0 skips it)"
    )
    args = parser.parse_args()

    scores = demo_rankings(args.run_dir, args.units)
    source = f"demo run {args.run_dir}" if scores is not None else "synthetic pbmc3k rankings"
    if scores is None:
        scores = synthetic_rankings(args.units)
    sets = en.load_gene_sets(genes=scores.index.astype(str).tolist())
    one, two = fork_pool(sets, 1), fork_pool(sets, 2)
    load = os.getloadavg()[0]
    print(f"{scores.shape[1]} rankings ({source}), {scores.shape[0]} genes, {len(sets)} GO BP sets; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at start")  # fmt: skip

    t0 = time.perf_counter()
    ref = reference(scores, sets, REFERENCE_PERMUTATIONS)
    print(f"reference ({REFERENCE_PERMUTATIONS:,} permutations per size): {time.perf_counter() - t0:.1f} s "
          "(0 when cached)")  # fmt: skip

    methods = {
        "corelib gsea, 1 thread": (run_ours, 1),
        "pyfgsea loop, 1 process x 1 thread": (run_pyfgsea, one),
        "corelib gsea, 2 threads": (run_ours, 2),
        "pyfgsea loop, 1 process x 2 threads": (run_pyfgsea, None),
        "pyfgsea loop, 2 processes x 1 thread": (run_pyfgsea, two),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, Tables] = {}
    for _ in range(args.repeats):
        for name, (method, workers) in methods.items():
            seconds, results[name] = timed(method, scores, sets, workers)
            times[name].append(seconds)
            print(f"  {name}: {seconds:.1f} s", flush=True)
    one.close()
    two.close()
    median = {name: statistics.median(t) for name, t in times.items()}
    print_table(median, times, results, ref)
    peer_2 = min(
        median["pyfgsea loop, 1 process x 2 threads"], median["pyfgsea loop, 2 processes x 1 thread"]
    )
    print(f"speed-up over the pyfgsea loop, 1 core: "
          f"{median['pyfgsea loop, 1 process x 1 thread'] / median['corelib gsea, 1 thread']:.2f}x")  # fmt: skip
    print(f"speed-up over the pyfgsea loop, 2 cores (its faster layout): "
          f"{peer_2 / median['corelib gsea, 2 threads']:.2f}x")  # fmt: skip
    if args.label_seeds:
        print_label_seeds(scores, sets, ref, args.label_seeds)
    print(f"load average {os.getloadavg()[0]:.1f}; blitzgsea (one run) follows", flush=True)

    seconds, results["blitzgsea, 2 processes"] = timed(run_blitzgsea, scores, sets, 2)
    times["blitzgsea, 2 processes"], median["blitzgsea, 2 processes"] = [seconds], seconds
    print_table(median, times, results, ref)
    print(f"speed-up over blitzgsea: {seconds / median['corelib gsea, 2 threads']:.1f}x (2 threads vs 2 processes); "
          f"load average at end {os.getloadavg()[0]:.1f}")  # fmt: skip


def print_label_seeds(
    scores_GU: pd.DataFrame, sets: Mapping[str, list[str]], ref: Tables, n_seeds: int
) -> None:
    """Labels agreeing with the reference, ours and pyfgsea's, for seeds ``0 .. n_seeds - 1``."""
    same = {"corelib gsea": [], "pyfgsea loop": []}
    for seed in range(n_seeds):
        same["corelib gsea"].append(agreement(run_ours(scores_GU, sets, 2, seed), ref)["labels"])
        same["pyfgsea loop"].append(agreement(run_pyfgsea(scores_GU, sets, None, seed), ref)["labels"])
    n = len(ref)
    print(f"labels as the reference, {n} units, seeds 0..{n_seeds - 1}:")
    for name, shares in same.items():
        counts = [round(x * n) for x in shares]
        print(f"  {name:<13} mean {np.mean(counts):.1f} (sd {np.std(counts, ddof=1) if n_seeds > 1 else 0:.1f}), "
              f"per seed {counts}")  # fmt: skip


def print_table(
    median: Mapping[str, float], times: Mapping[str, list[float]], results: Mapping[str, Tables], ref: Tables
) -> None:
    """Median time, the single runs, and agreement with the reference, one row per method."""
    rows = []
    for name, t in median.items():
        a = agreement(results[name], ref)
        rows.append({"method": name, "median s": t, "runs": ", ".join(f"{x:.1f}" for x in times[name]),
                     "same label as ref": a["labels"], "spearman -log10 p": a["spearman"],
                     "median |log10 p/p_ref|": a["log10_ratio"]})  # fmt: skip
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(rows).set_index("method").to_string(), flush=True)


if __name__ == "__main__":
    main()
