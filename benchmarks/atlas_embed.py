"""Benchmark: PCA encoder fit and out-of-core embedding on a simulated atlas (issue 13).

``simulate`` writes a sparse CSR ``.h5ad`` of ``--cells`` cells, block by block (memory stays bounded): pbmc3k
cells drawn with replacement and their counts Poisson-resampled, seeded. ``fit`` and ``embed`` run in this
process and print wall time and peak RSS (``ru_maxrss``: run one stage per process to measure it alone).
``compare`` fits the PCA on all cells and on a seeded sample and prints their largest principal angle and
the explained variance of each subspace on all cells.

Usage::

    .venv/bin/python benchmarks/atlas_embed.py simulate --cells 200000 --path /tmp/atlas_200k.h5ad
    .venv/bin/python benchmarks/atlas_embed.py fit --path /tmp/atlas_200k.h5ad [--max-cells 100000]
    .venv/bin/python benchmarks/atlas_embed.py embed --path /tmp/atlas_200k.h5ad --out /tmp/emb.npy
    .venv/bin/python benchmarks/atlas_embed.py compare --path /tmp/atlas_200k.h5ad --max-cells 100000
"""

from __future__ import annotations

import argparse
import resource
import time

import anndata as ad
import h5py
import numpy as np
import scipy.linalg
from anndata.io import sparse_dataset, write_elem

import corelib as cl
from corelib.encoders import pca as enc_pca


def simulate(n_cells: int, path: str, seed: int = 0, block: int = 50_000) -> None:
    """Write ``n_cells`` resampled pbmc3k cells to ``path`` (CSR ``X``, ``obs["cell_type"]``)."""
    source = cl.datasets.load_dataset("pbmc3k")
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, source.n_obs, n_cells)
    obs = source.obs[["cell_type"]].iloc[cells].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    ad.AnnData(obs=obs, var=source.var).write_h5ad(path)
    with h5py.File(path, "a") as f:
        for start in range(0, n_cells, block):
            X = source.X[cells[start : start + block]].tocsr()
            X.data = rng.poisson(X.data).astype(np.float32)
            X.eliminate_zeros()
            if start == 0:
                if "X" in f:
                    del f["X"]
                write_elem(f, "X", X)
            else:
                sparse_dataset(f["X"]).append(X)


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def explained(adata: ad.AnnData, components_DG: np.ndarray, mean_G: np.ndarray) -> float:
    """Variance of the log-normalised cells along the (orthonormal) axes, as a fraction of the total."""
    logn = enc_pca._log_normalised_rows(adata, np.arange(adata.n_obs), None)
    proj = logn @ components_DG.T - mean_G @ components_DG.T
    total = (logn.multiply(logn)).sum() / adata.n_obs - float(mean_G @ mean_G)
    return float((proj**2).sum() / adata.n_obs / total)


def main() -> None:
    """Run one stage and print its measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("simulate", "fit", "embed", "compare"))
    parser.add_argument("--path", required=True)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.stage == "simulate":
        simulate(args.cells, args.path)
        print(f"simulated {args.cells:,} cells -> {args.path}")
    else:
        adata = cl.datasets.read(args.path, backed=True)
        if args.stage == "fit":
            enc_pca.fit(adata, max_cells=args.max_cells)
        elif args.stage == "embed":
            encoder = enc_pca.fit(adata, max_cells=20_000)
            start = time.perf_counter()
            cl.encoders.embed(encoder, adata, out=args.out, progress=False)
        else:
            full = enc_pca.fit(adata)
            sub = enc_pca.fit(adata, max_cells=args.max_cells)
            a, b = (e.components_DG.numpy().astype(np.float64) for e in (full, sub))
            angle = np.degrees(scipy.linalg.subspace_angles(a.T, b.T)).max()
            mean = full.mean_G.numpy().astype(np.float64)
            print(f"largest principal angle full vs sample: {angle:.3f} deg")
            print(
                f"explained variance: full {explained(adata, a, mean):.5f}, sample {explained(adata, b, mean):.5f}"
            )
        print(f"n_cells {adata.n_obs:,}")
    print(f"{args.stage}: {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
