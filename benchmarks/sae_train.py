"""Benchmark: ``corelib.sae.train`` against a straightforward Top-K SAE training loop, and fused sweeps.

Prints, side by side in one run on the same cells, epochs, batch size and learning rate:

1. samples/s and final held-out R^2 of ``corelib.sae.train`` and of a reference loop written the way most SAE
   libraries write it (a plain PyTorch Top-K SAE, MSE loss, ``DataLoader`` over a ``TensorDataset`` with
   shuffling, decoder renormalised after each step, no AuxK);
2. the time of a 4-configuration sweep in one call (fused: one pass over each batch for the whole grid),
   the same sweep one configuration at a time, and 4 separate ``train`` calls.

Timings are medians of ``--repeats`` runs; the machine may be shared, so read the ratios.

Usage::

    python benchmarks/sae_train.py                 # pbmc3k, PCA (50 dims) of log-normalised counts
    python benchmarks/sae_train.py --h5ad runs/demo/01_embed/adata.h5ad   # the embedding of a run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import anndata as ad
import numpy as np
import scanpy as sc
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from corelib import runs
from corelib import sae as S
from corelib.data import load_dataset


def embeddings(h5ad: str | None) -> np.ndarray:
    """The embedding of a run's AnnData, or PCA (50) of log-normalised pbmc3k."""
    if h5ad:
        adata = ad.read_h5ad(h5ad)
        return np.asarray(adata.obsm[adata.uns["embed"]["key"]], dtype=np.float32)
    adata = load_dataset("pbmc3k")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50)
    return adata.obsm["X_pca"].astype(np.float32)


class ReferenceTopKSAE(nn.Module):
    """A plain Top-K SAE as commonly written: ``nn.Linear`` layers, dense codes, ``scatter`` for Top-K."""

    def __init__(self, d: int, c: int, k: int, b_dec: torch.Tensor, seed: int) -> None:
        super().__init__()
        self.k = k
        self.enc = nn.Linear(d, c)
        self.dec = nn.Linear(c, d, bias=False)
        self.b_dec = nn.Parameter(b_dec.clone())
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(c, d, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        with torch.no_grad():
            self.dec.weight.copy_(w.T)
            self.enc.weight.copy_(w)
            self.enc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.enc(x - self.b_dec)
        vals, idx = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
        return self.dec(z) + self.b_dec


def train_reference(
    x_train: np.ndarray, c: int, k: int, *, lr: float, epochs: int, batch_size: int
) -> nn.Module:
    """The straightforward loop: DataLoader, MSE, Adam, renormalise the decoder after each step."""
    x = torch.as_tensor(x_train)
    model = ReferenceTopKSAE(x.shape[1], c, k, x.mean(0), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True)
    for _ in range(epochs):
        for (batch,) in loader:
            loss = F.mse_loss(model(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.dec.weight /= model.dec.weight.norm(dim=0, keepdim=True)
    return model


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--h5ad", help="AnnData with uns['embed']['key'] (default: PCA of pbmc3k)")
    parser.add_argument("--n-concepts", type=int, default=500)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_ND = embeddings(args.h5ad)
    train_idx, held_idx = S.split_cells(len(x_ND), 0.1, 0)
    x_train, x_held = x_ND[train_idx], torch.as_tensor(x_ND[held_idx])
    n_samples = len(train_idx) * args.epochs
    common = dict(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size)
    print(f"cells {x_ND.shape[0]} x {x_ND.shape[1]} dims; c={args.n_concepts}, k={args.k}, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr}, torch threads {torch.get_num_threads()}")  # fmt: skip

    t_ref, ref = timed(lambda: train_reference(x_train, args.n_concepts, args.k, **common), args.repeats)
    with torch.no_grad():
        r2_ref = S.r2_score(x_held, ref(x_held))
    t_ours, ours = timed(
        lambda: S.train(x_ND, args.n_concepts, args.k, device="cpu", progress=False, **common), args.repeats
    )
    r2_ours = ours.metrics["r2_heldout"]
    print(f"\n{'training loop':<40}{'samples/s':>12}{'held-out R2':>14}")
    print(f"{'reference (DataLoader, dense codes)':<40}{n_samples / t_ref:>12.0f}{r2_ref:>14.4f}")
    print(f"{'corelib.sae.train':<40}{n_samples / t_ours:>12.0f}{r2_ours:>14.4f}")
    print(f"speed-up {t_ref / t_ours:.2f}x, R2 difference {r2_ours - r2_ref:+.4f}")

    points = S.grid([100, 250, 500, 1000], [2, 4, 8, 16])

    def run_sweep(fused: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            S.sweep(x_ND, points, run=runs.open_run(tmp), device="cpu", fused=fused, progress=False, **common)

    def separate() -> None:
        for c, k, seed in points:
            S.train(x_ND, c, k, seed=seed, device="cpu", progress=False, **common)

    t_fused, _ = timed(lambda: run_sweep(True), args.repeats)
    t_unfused, _ = timed(lambda: run_sweep(False), args.repeats)
    t_sep, _ = timed(separate, args.repeats)
    print(f"\n{'4-configuration sweep (c=100..1000)':<40}{'seconds':>12}{'vs separate':>14}")
    for label, t in (
        ("4 separate train calls", t_sep),
        ("sweep, one by one", t_unfused),
        ("sweep, fused", t_fused),
    ):
        print(f"{label:<40}{t:>12.2f}{t_sep / t:>13.2f}x")


if __name__ == "__main__":
    main()
