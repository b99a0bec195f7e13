"""Benchmark: ``corelib.tl.sae.train`` against saprmarks/dictionary_learning's ``TopKTrainer``, side by side.

Prints, in one run, medians of ``--repeats`` interleaved runs at each ``--threads`` setting
(``torch.set_num_threads`` before every run):

1. the demo embedding (``--h5ad``, default the demo run's scVI embedding): training samples/s, held-out R^2 and
   the share of dead latents (never firing on the training cells) of both, and the samples/s ratio;
2. the 200k-cell simulated atlas of ``benchmarks/scale.py`` at d = 50 (its PCA embedding, ``--atlas-emb``)
   and d = 512 (a seeded Gaussian random projection of its log-normalised counts, ``--atlas-h5ad``), c = 5,000,
   k = 80: samples/s of both over one epoch of ``--atlas-steps`` batches (a seeded random subset of the atlas).

Both train on the same cells, split (``cl.tl.sae.split_cells``, 10% held out), batch order (the permutation
``train`` draws in memory), number of steps, batch size and constant learning rate. The peer is driven the way
its ``trainSAE`` loop drives it, ``trainer.update(step, batch)`` once per batch, with three settings aligned to
ours: ``warmup_steps=0`` (ours has no warm-up; its default of 1,000 steps is as long as the whole demo run),
``dead_feature_threshold`` = one epoch of cells (its default, 10M tokens, never triggers AuxK on 2,374 cells)
and ``top_k_aux`` = our ``aux_k`` (512; both take ``min(aux_k, n_dead)``). Differences left in place: both
clip the gradient norm at 1, but the peer's main loss is the summed squared error per cell (ours: the fraction
of variance unexplained), so its clipping acts at nearly every step and ours only while the fit is poor; it
initialises ``b_dec`` at the geometric median of the first batch (ours: of the
training cells) and counts a latent as firing when it is selected even at 0 (ours: when > 0).

Seconds are training only: for ours ``metrics["seconds"]`` of :func:`corelib.tl.sae.train` (split, init,
steps, the per-epoch held-out R^2; not the final metrics), for the peer its construction and its loop. Both
models are then measured by the same :func:`corelib.tl.sae.split_metrics` (the peer's weights copied into a
``TopKSAE``: the same architecture, ``ReLU`` before or after the Top-K gives the same codes). Ours keeps its
shipped thread rule (one thread for small SAEs on small batches, ``corelib.tl.sae.training._cpu_threads``),
so at 2 threads on the demo it runs on one.

The peer is a benchmark-only dependency: ``pip install --no-deps dictionary-learning==0.1.0 einops``
(``--no-deps``: its declared dependencies pull nnsight, torchvision and a CUDA torch; ``TopKTrainer`` needs
only torch and einops).

Usage::

    python benchmarks/sae_peers.py                       # demo + atlas, 1 and 2 threads, 3 repeats
    python benchmarks/sae_peers.py --skip-atlas --epochs 30
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from sae_train import with_threads  # benchmarks/ is on sys.path when a script there runs
from torch import Tensor

import corelib as cl

#: Our AuxK bound (``TrainConfig.aux_k``), given to the peer as ``top_k_aux``.
AUX_K = cl.tl.sae.TrainConfig.aux_k


def import_topk_trainer() -> type:
    """``dictionary_learning.trainers.top_k.TopKTrainer`` without nnsight.

    The package's ``__init__`` imports ``nnsight.LanguageModel`` for its ``ActivationBuffer`` (activations of
    language models, unused here) and nnsight pulls torchvision and a CUDA torch. An empty stand-in module
    named ``nnsight`` lets the import run; the trainer itself uses only torch and einops.
    """
    if importlib.util.find_spec("dictionary_learning") is None:
        raise SystemExit(
            "The peer is missing: pip install --no-deps dictionary-learning==0.1.0 einops "
            "(--no-deps: its declared dependencies pull a CUDA torch)."
        )
    if importlib.util.find_spec("nnsight") is None:
        sys.modules.setdefault("nnsight", types.ModuleType("nnsight")).LanguageModel = None
    from dictionary_learning.trainers.top_k import TopKTrainer

    return TopKTrainer


def demo_embedding(h5ad: str) -> np.ndarray:
    """The embedding of a run's AnnData (``uns["embed"]["key"]``)."""
    adata = ad.read_h5ad(h5ad)
    return np.asarray(adata.obsm[adata.uns["embed"]["key"]], dtype=np.float32)


def atlas_subset(n_atlas: int, n_cells: int, seed: int = 0) -> np.ndarray:
    """A seeded random subset of ``n_cells`` atlas rows, sorted."""
    return np.sort(np.random.default_rng(seed).choice(n_atlas, size=min(n_cells, n_atlas), replace=False))


def projected_counts(h5ad: str, rows: np.ndarray, d: int = 512, seed: int = 0) -> np.ndarray:
    """``log1p(normalize_total(counts, 1e4)) @ R`` of the atlas rows ``rows``, R a seeded Gaussian
    (genes x d, variance 1/d): a d-dimensional embedding of the atlas."""
    adata = ad.read_h5ad(h5ad, backed="r")[rows].to_memory()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    proj_GD = np.random.default_rng(seed).normal(scale=1 / math.sqrt(d), size=(adata.n_vars, d))
    return np.asarray(adata.X @ proj_GD, dtype=np.float32)


def epoch_batches(x_train: Tensor, batch_size: int, epochs: int, seed: int) -> Iterator[Tensor]:
    """The batches ``cl.tl.sae.train`` draws in memory: each epoch a ``torch.randperm`` of a generator seeded
    with ``seed``, cut into consecutive batches (the last one shorter)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x_train.shape[0], generator=gen)
        for start in range(0, x_train.shape[0], batch_size):
            yield x_train.index_select(0, perm[start : start + batch_size])


def peer_as_topk_sae(ae: torch.nn.Module) -> cl.tl.sae.TopKSAE:
    """The peer's ``AutoEncoderTopK`` weights in a :class:`TopKSAE` (its ``nn.Linear`` layers hold them
    transposed)."""
    sae = cl.tl.sae.TopKSAE(ae.activation_dim, ae.dict_size, int(ae.k))
    sae.load_state_dict(
        {
            "W_enc_DC": ae.encoder.weight.detach().T,
            "b_enc_C": ae.encoder.bias.detach(),
            "W_dec_CD": ae.decoder.weight.detach().T,
            "b_dec_D": ae.b_dec.detach(),
        }
    )
    return sae


class Run:
    """One training run: seconds of training, samples seen and the final model's split metrics."""

    def __init__(self, seconds: float, samples: int, metrics: dict) -> None:
        self.seconds, self.samples, self.metrics = seconds, samples, metrics


def train_ours(x_ND: np.ndarray, c: int, k: int, lr: float, batch_size: int, epochs: int) -> Run:
    """``cl.tl.sae.train`` as shipped (CPU, seed 0)."""
    res = cl.tl.sae.train(
        x_ND, c, k, lr=lr, batch_size=batch_size, epochs=epochs, seed=0, device="cpu", progress=False
    )
    n_train = len(cl.tl.sae.split_cells(len(x_ND), 0.1, 0)[0])
    return Run(res.metrics["seconds"], n_train * epochs, res.metrics)


def train_peer(
    trainer_cls: type, x_ND: np.ndarray, c: int, k: int, lr: float, batch_size: int, epochs: int
) -> Run:
    """The peer's ``TopKTrainer`` on the same split and batches, one ``update`` per batch."""
    train_idx, held_idx = cl.tl.sae.split_cells(len(x_ND), 0.1, 0)
    x_train, x_held = torch.as_tensor(x_ND[train_idx]), torch.as_tensor(x_ND[held_idx])
    n_train = x_train.shape[0]
    start = time.perf_counter()
    trainer = trainer_cls(
        steps=epochs * -(-n_train // batch_size),
        activation_dim=x_ND.shape[1],
        dict_size=c,
        k=k,
        layer=0,  # required by its signature, only recorded (language-model layer)
        lm_name="none",
        lr=lr,
        warmup_steps=0,
        seed=0,
        device="cpu",
    )
    trainer.dead_feature_threshold = n_train  # dead = not fired for one epoch of cells, as ours
    trainer.top_k_aux = AUX_K
    for step, a_BD in enumerate(epoch_batches(x_train, batch_size, epochs, seed=0)):
        trainer.update(step, a_BD)
    seconds = time.perf_counter() - start
    sae = peer_as_topk_sae(trainer.ae).eval()
    return Run(seconds, n_train * epochs, cl.tl.sae.split_metrics(sae, x_train, x_held))


def interleaved(fns: dict[str, Callable[[], Run]], repeats: int) -> dict[str, list[Run]]:
    """Every function ``repeats`` times, in turns (so that drifts of a shared machine hit all alike)."""
    runs: dict[str, list[Run]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(fn())
    return runs


def median(runs: list[Run], value: Callable[[Run], float]) -> float:
    return statistics.median(value(r) for r in runs)


def compare(
    label: str,
    x_ND: np.ndarray,
    args: argparse.Namespace,
    trainer_cls: type,
    *,
    c: int,
    k: int,
    epochs: int,
    repeats: int,
) -> None:
    """Print samples/s, held-out R^2 and dead share of ours and the peer at each thread setting."""
    settings = dict(c=c, k=k, lr=args.lr, batch_size=args.batch_size, epochs=epochs)
    fns = {}
    for n in args.threads:
        fns[f"ours, {n} thr"] = with_threads(n, lambda: train_ours(x_ND, **settings))
        fns[f"peer, {n} thr"] = with_threads(n, lambda: train_peer(trainer_cls, x_ND, **settings))
    runs = interleaved(fns, repeats)
    print(
        f"\n{label}: {x_ND.shape[0]} cells x {x_ND.shape[1]} dims, c={c}, k={k}, batch {args.batch_size}, "
        f"{epochs} epochs, lr {args.lr}, median of {repeats}"
    )
    print(f"{'':<16}{'samples/s':>11}{'held-out R2':>13}{'dead share':>12}{'ours / peer':>13}")
    for n in args.threads:
        speed = {
            who: median(runs[f"{who}, {n} thr"], lambda r: r.samples / r.seconds) for who in ("ours", "peer")
        }
        for who in ("ours", "peer"):
            rs = runs[f"{who}, {n} thr"]
            ratio = f"{speed['ours'] / speed['peer']:>12.2f}x" if who == "ours" else ""
            print(
                f"{who + f', {n} thread' + 's' * (n > 1):<16}{speed[who]:>11.0f}"
                f"{median(rs, lambda r: r.metrics['r2_heldout']):>13.4f}"
                f"{median(rs, lambda r: r.metrics['dead_fraction_train']):>12.3f}{ratio}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--h5ad", default="runs/demo/01_embed/adata.h5ad", help="run AnnData (demo embedding)"
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--atlas-emb", default="/work/scale-cache/work_200000_default/emb.npy")
    parser.add_argument("--atlas-h5ad", default="/work/scale-cache/atlas_pbmc3k_200000_s0.h5ad")
    parser.add_argument(
        "--atlas-steps", type=int, default=200, help="training steps on the atlas (one epoch)"
    )
    parser.add_argument("--atlas-repeats", type=int, default=3)
    parser.add_argument("--skip-atlas", action="store_true")
    args = parser.parse_args()
    trainer_cls = import_topk_trainer()
    demo_ND = demo_embedding(args.h5ad)
    compare("demo", demo_ND, args, trainer_cls, c=500, k=8, epochs=args.epochs, repeats=args.repeats)
    if args.skip_atlas:
        return
    emb_ND = np.load(args.atlas_emb, mmap_mode="r")
    rows = atlas_subset(len(emb_ND), math.ceil(args.atlas_steps * args.batch_size / 0.9))
    for label, x_ND in (
        (f"atlas PCA (rows of {len(emb_ND)})", np.asarray(emb_ND[rows], dtype=np.float32)),
        (f"atlas counts projected (rows of {len(emb_ND)})", projected_counts(args.atlas_h5ad, rows)),
    ):
        compare(label, x_ND, args, trainer_cls, c=5000, k=80, epochs=1, repeats=args.atlas_repeats)


if __name__ == "__main__":
    main()
