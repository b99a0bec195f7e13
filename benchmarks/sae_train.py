"""Benchmark: ``corelib.tl.sae.train`` against a straightforward Top-K SAE training loop, and fused sweeps.

Prints, side by side in one run on the same cells, epochs, batch size and learning rate:

1. samples/s and final held-out R^2 of ``corelib.tl.sae.train`` (as shipped: one CPU thread for small SAEs on
   small batches, torch's threads from batch x c >= 2**18, see ``corelib.tl.sae.training._cpu_threads``) and of a reference loop written the way most SAE libraries write
   it (a plain PyTorch Top-K SAE, MSE loss, ``DataLoader`` over a ``TensorDataset`` with shuffling, autograd,
   decoder renormalised after each step, no AuxK), the reference both with torch's default threads and with
   one thread; for the demo's batch size (256) and the library's default (1024);
2. the time of a 4-configuration sweep in one call (fused: one pass over each batch for the whole grid),
   the same sweep one configuration at a time, and 4 separate ``train`` calls.

Timings are medians of ``--repeats`` runs taken in turns; the machine may be shared, so read the ratios.

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

import corelib as cl
from corelib.datasets import load_dataset


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


def interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Median wall time and last result of each function, run in turns (so drifts of a shared machine hit
    every contender alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), last[name]) for name in fns}


def with_threads(n: int, fn):
    """``fn`` run with ``n`` torch intra-op threads."""

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def compare_loops(x_ND: np.ndarray, args: argparse.Namespace, batch_size: int) -> None:
    """Samples/s and held-out R^2 of the reference loop (torch's threads and 1 thread) and of ours."""
    train_idx, held_idx = cl.tl.sae.split_cells(len(x_ND), 0.1, 0)
    x_train, x_held = x_ND[train_idx], torch.as_tensor(x_ND[held_idx])
    common = dict(lr=args.lr, epochs=args.epochs, batch_size=batch_size)
    n_threads = torch.get_num_threads()

    def reference():
        return train_reference(x_train, args.n_concepts, args.k, **common)

    res = interleaved(
        {
            f"reference loop, {n_threads} threads (torch default)": reference,
            "reference loop, 1 thread": with_threads(1, reference),
            "corelib.tl.sae.train (as shipped)": lambda: cl.tl.sae.train(
                x_ND, args.n_concepts, args.k, device="cpu", progress=False, **common
            ),
        },
        args.repeats,
    )
    n_samples = len(train_idx) * args.epochs
    print(
        f"\nbatch {batch_size}: {'training loop':<48}{'samples/s':>10}{'held-out R2':>13}{'ours faster':>12}"
    )
    t_ours = res["corelib.tl.sae.train (as shipped)"][0]
    for name, (t, model) in res.items():
        if isinstance(model, nn.Module):
            with torch.no_grad():
                r2 = cl.tl.sae.r2_score(x_held, model(x_held))
        else:
            r2 = model.metrics["r2_heldout"]
        print(f"{'':<7}{name:<48}{n_samples / t:>10.0f}{r2:>13.4f}{t / t_ours:>11.2f}x")


def compare_sweeps(x_ND: np.ndarray, args: argparse.Namespace) -> None:
    """A 4-configuration sweep in one call (fused and one by one) against 4 separate ``train`` calls."""
    common = dict(lr=args.lr, epochs=args.epochs, batch_size=args.sweep_batch_size)
    points = cl.tl.sae.grid([100, 250, 500, 1000], [2, 4, 8, 16])

    def run_sweep(fused: bool):
        def run():
            with tempfile.TemporaryDirectory() as tmp:
                cl.runs.steps.sweep(
                    x_ND,
                    points,
                    run=cl.runs.open_run(tmp),
                    device="cpu",
                    fused=fused,
                    progress=False,
                    **common,
                )

        return run

    def separate() -> None:
        for c, k, seed in points:
            cl.tl.sae.train(x_ND, c, k, seed=seed, device="cpu", progress=False, **common)

    res = interleaved(
        {
            "4 separate train calls": separate,
            "sweep, one by one": run_sweep(False),
            "sweep, fused": run_sweep(True),
        },
        args.repeats,
    )
    t_sep = res["4 separate train calls"][0]
    print(
        f"\n{'4-configuration sweep (c=100..1000), batch ' + str(args.sweep_batch_size):<48}{'seconds':>10}{'vs separate':>13}"
    )
    for name, (t, _) in res.items():
        print(f"{name:<48}{t:>10.2f}{t_sep / t:>12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--h5ad", help="AnnData with uns['embed']['key'] (default: PCA of pbmc3k)")
    parser.add_argument("--n-concepts", type=int, default=500)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--sweep-batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x_ND = embeddings(args.h5ad)
    print(f"cells {x_ND.shape[0]} x {x_ND.shape[1]} dims; c={args.n_concepts}, k={args.k}, {args.epochs} epochs, "
          f"lr {args.lr}, median of {args.repeats} interleaved runs")  # fmt: skip
    for batch_size in args.batch_sizes:
        compare_loops(x_ND, args, batch_size)
    compare_sweeps(x_ND, args)


if __name__ == "__main__":
    main()
