"""Benchmark: peak memory and time of ``encode`` + ``characterize`` (and optionally a probe) at atlas scale.

Random N(0, 1) embeddings, a TopKSAE with N(0, 1) weights and unit dictionary rows, 20 cell types and 3 donors
drawn at random; one torch thread. Prints the codes' type, the seconds of each stage and the peak RSS
(``resource.getrusage``) after each. Run it once per N in a fresh process (peak RSS only grows); run it with
another checkout on ``PYTHONPATH`` to measure that version.

Usage::

    .venv/bin/python benchmarks/sparse_codes.py 1000000 500 8 50 [--probe]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
import torch

import corelib as cl


def peak_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def random_sae(d: int, c: int, k: int) -> cl.tl.sae.TopKSAE:
    """A TopKSAE with N(0, 1) weights and unit dictionary rows (seed 0)."""
    torch.manual_seed(0)
    sae = cl.tl.sae.TopKSAE(d, c, k)
    with torch.no_grad():
        for p in sae.parameters():
            torch.nn.init.normal_(p)
        sae.W_dec_CD /= sae.W_dec_CD.norm(dim=1, keepdim=True)
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("n_cells", "n_concepts", "k", "d"):
        parser.add_argument(name, type=int)
    parser.add_argument("--probe", action="store_true", help="also a cell-type probe on the codes, one seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.n_cells, args.d), dtype=np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": rng.choice([f"t{i}" for i in range(20)], args.n_cells),
            "donor": rng.choice(["a", "b", "c"], args.n_cells),
        }
    )
    sae = random_sae(args.d, args.n_concepts, args.k)
    print(f"baseline: {peak_gb():.2f} GB")
    start = time.perf_counter()
    codes = cl.tl.sae.encode(sae, emb)
    print(f"encode ({type(codes).__name__}): {time.perf_counter() - start:.1f} s, peak {peak_gb():.2f} GB")
    start = time.perf_counter()
    table = cl.tl.concepts.characterize(codes, obs, ["cell_type", "donor"])
    print(f"characterize: {time.perf_counter() - start:.1f} s, peak {peak_gb():.2f} GB")
    print(f"active cells summed over concepts: {int(table['n_active'].sum())}")
    if args.probe:
        labels = (np.asarray(codes.argmax(axis=1)).ravel() % 10).astype(str)  # learnable from the codes
        start = time.perf_counter()
        result = cl.tl.probes.probe(codes, labels, seeds=[0], progress=False)
        print(
            f"probe: {time.perf_counter() - start:.1f} s, peak {peak_gb():.2f} GB, subsampled={result.subsampled} "
            f"({result.n_train_per_class} training cells per class), max_iter {int(result.max_iter[0])}"
        )


if __name__ == "__main__":
    main()
