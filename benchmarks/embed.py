"""Benchmark: ``corelib.encoders.embed`` vs scvi-tools' own ``get_latent_representation()`` on pbmc3k.

Trains a small SCVI on the bundled pbmc3k counts (a few epochs: the weights do not matter for timing), then
times both ways of embedding the same cells with the same weights, side by side in one process, and prints
the median of ``--repeats`` runs, their ratio and the largest absolute difference between the embeddings.

Usage::

    .venv/bin/python benchmarks/embed.py [--epochs 5] [--repeats 5] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import corelib.encoders as enc
from corelib.datasets import load_dataset
from corelib.encoders import scvi as enc_scvi


def median_seconds(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Median wall time of ``fn()`` over ``repeats`` calls, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    adata = load_dataset("pbmc3k")
    model = enc_scvi.train(adata, epochs=args.epochs, progress=False)
    encoder = enc_scvi.from_model(model).to(model.device)
    ours_s, ours = median_seconds(
        lambda: enc.embed(encoder, adata, batch_size=args.batch_size, progress=False), args.repeats
    )
    theirs_s, theirs = median_seconds(
        lambda: model.get_latent_representation(batch_size=args.batch_size), args.repeats
    )
    print(f"cells x genes: {adata.n_obs} x {adata.n_vars}, latent dim {encoder.dim}, device {encoder.device}")
    print(f"corelib.encoders.embed            median {ours_s * 1e3:8.1f} ms over {args.repeats} runs")
    print(f"scvi get_latent_representation    median {theirs_s * 1e3:8.1f} ms over {args.repeats} runs")
    print(f"ratio (ours / scvi-tools): {ours_s / theirs_s:.2f}")
    print(f"max |difference| of the embeddings: {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
