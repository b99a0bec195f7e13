"""Benchmark: suppressing batch concepts of an SAE, scored with scib-metrics (issue 26).

Two datasets, one table each (embeddings x scib metrics, then scib's batch, bio and total scores):

(a) ``planted``: pbmc3k with a known technical batch (``plant_batch``: half the cells, 500 genes shifted by
    log2 fold changes drawn from N(0, 1)), embedded by an scVI trained without the batch. An SAE (``--concepts``,
    ``--k``, the demo's training settings) is trained on it; its batch concepts (:func:`corelib.tl.batch.
    batch_concepts`, ``--statistic``: best within-cell-type AUROC by default, permutation null) are suppressed.
(b) ``pbmc3k+68k``: pbmc3k and pbmc68k_reduced embedded by one shared scVI over their shared genes (the demo's
    notebook 04 encoder, ``runs/demo/04_stability/encoder``, when it exists; trained here with its settings
    otherwise), the dataset as batch. Cell types mapped to a shared coarse vocabulary
    (:data:`corelib.datasets.COARSE`).

Rows (:func:`corelib.runs.steps.batch.suppression_embeddings`, as notebook 04's batch study): the uncorrected
embedding; batch concepts suppressed; the same number of random concepts suppressed
(``--null-seeds`` seeds, mean and sd); the concepts most associated with cell type suppressed (the same number:
biology must drop); scVI trained with ``batch_key`` (a); Harmony on the uncorrected embedding. scVI
embeddings and SAEs are cached in ``--cache`` (``runs/batch_suppression``).

Usage::

    python benchmarks/batch_suppression.py                 # both tables (CPU, 2 shared cores: ~5 min each, +4 min per scVI not cached)
    python benchmarks/batch_suppression.py --only planted --concepts 128 --k 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import corelib as cl
from corelib.datasets import coarse_cell_types
from corelib.datasets._planted import plant_batch
from corelib.runs.steps.batch import suppression_embeddings
from corelib.tl import batch as tb
from corelib.tl import integration as ti

ROOT = Path(__file__).resolve().parent.parent


def cached_array(path: Path, make) -> np.ndarray:
    """``np.load(path)``, or ``make()`` saved there first."""
    if path.is_file():
        return np.load(path)
    array = np.asarray(make(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return array


def scvi_latent(adata: ad.AnnData, batch_key: str | None, epochs: int) -> np.ndarray:
    """Posterior mean of an scVI (corelib's defaults, 50 latent dimensions) trained with or without the batch."""
    model = cl.encoders.scvi.train(adata, batch_key=batch_key, epochs=epochs, progress=False)
    return model.get_latent_representation()


def trained_sae(emb_ND: np.ndarray, args: argparse.Namespace, path: Path) -> cl.tl.sae.TopKSAE:
    """An SAE with the demo's training settings (lr 0.003, batch 256), cached in ``path``."""
    if (path / cl.tl.sae.CHECKPOINT_FILE).is_file():
        return cl.tl.sae.TopKSAE.load(path)
    result = cl.tl.sae.train(
        emb_ND, args.concepts, args.k, lr=3e-3, batch_size=256, epochs=args.sae_epochs, progress=False
    )
    print(f"  SAE c={args.concepts} k={args.k}: held-out R^2 {result.metrics['r2_heldout']:.3f}")
    result.sae.save(path)
    return result.sae


def suppression_rows(
    sae: cl.tl.sae.TopKSAE,
    emb_ND: np.ndarray,
    batch_N: np.ndarray,
    labels_N: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, np.ndarray]:
    """The embeddings to score (:func:`corelib.runs.steps.batch.suppression_embeddings`, as notebook 04), and
    what the concept test found, printed."""
    rows, table = suppression_embeddings(
        sae,
        emb_ND,
        batch_N,
        labels_N,
        null_seeds=args.null_seeds,
        statistic=args.statistic,
        min_auroc=args.min_auroc,
        seed=0,
    )
    pooled = tb.concept_auroc(cl.tl.sae.encode(sae, emb_ND), batch_N, strata_N=labels_N).max(axis=1)
    print(
        f"  batch concepts: {int(table['associated'].sum())} of {sae.cfg.n_concepts} ({args.statistic} AUROC >= "
        f"{table.attrs['min_auroc']}, null {table.attrs['null_auroc']:.3f}); best {table['auroc'].iloc[0]:.3f} "
        f"(concept {table.index[0]}, {table['n_active'].iloc[0]} cells active), best pooled within-type AUROC "
        f"{pooled.max():.3f}"
    )
    print(table.head(8).round(3).to_string())
    return rows


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """The random-null rows as one row ``mean`` and one ``sd``."""
    random = scores.index.str.startswith("random concepts")
    if not random.any():
        return scores
    null = scores[random]
    return pd.concat(
        [
            scores[~random],
            null.mean().to_frame(f"random concepts, mean of {random.sum()}").T,
            null.std().to_frame(f"random concepts, sd of {random.sum()}").T,
        ]
    )


def planted(args: argparse.Namespace, cache: Path) -> pd.DataFrame:
    """Table (a): the planted batch on pbmc3k."""
    adata = plant_batch(cl.datasets.load_dataset("pbmc3k"), seed=0)
    batch_N, labels_N = adata.obs["batch"].to_numpy(), adata.obs["cell_type"].to_numpy()
    emb = cached_array(
        cache / f"planted_scvi_e{args.scvi_epochs}.npy", lambda: scvi_latent(adata, None, args.scvi_epochs)
    )
    sae = trained_sae(emb, args, cache / f"planted_sae_c{args.concepts}_k{args.k}_e{args.sae_epochs}")
    rows = suppression_rows(sae, emb, batch_N, labels_N, args)
    rows["scVI with batch_key"] = cached_array(
        cache / f"planted_scvi_batch_e{args.scvi_epochs}.npy",
        lambda: scvi_latent(adata, "batch", args.scvi_epochs),
    )
    rows["Harmony"] = ti.harmony(emb, batch_N)
    return ti.scib_table(rows, batch_N, labels_N)


def shared(args: argparse.Namespace, cache: Path) -> pd.DataFrame:
    """Table (b): pbmc3k + pbmc68k_reduced through one shared scVI."""
    a, b = cl.datasets.load_dataset("pbmc3k"), cl.datasets.load_dataset("pbmc68k_reduced")
    demo = ROOT / "runs" / "demo" / "04_stability" / "encoder"
    if demo.is_dir():
        encoder = cl.encoders.restore(demo, device="cpu")
        print(f"  shared scVI: the demo's ({demo})")
    else:
        genes = cl.tl.stability.shared_genes(a, b)
        encoder = cl.encoders.train_shared_scvi(
            {"pbmc3k": a, "pbmc68k_reduced": b}, genes, n_latent=50, progress=False
        )
        print(f"  shared scVI: trained here on {len(genes)} shared genes")
    emb = np.concatenate([cl.encoders.embed(encoder, x, progress=False) for x in (a, b)]).astype(np.float32)
    batch_N = np.repeat(["pbmc3k", "pbmc68k_reduced"], [a.n_obs, b.n_obs])
    labels_N = np.concatenate([coarse_cell_types(x.obs["cell_type"]) for x in (a, b)])
    print(pd.crosstab(labels_N, batch_N).to_string())
    sae = trained_sae(emb, args, cache / f"shared_sae_c{args.concepts}_k{args.k}_e{args.sae_epochs}")
    rows = suppression_rows(sae, emb, batch_N, labels_N, args)
    rows["Harmony"] = ti.harmony(emb, batch_N)
    return ti.scib_table(rows, batch_N, labels_N)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["planted", "shared"], default=None)
    parser.add_argument("--concepts", type=int, default=500)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-epochs", type=int, default=150)
    parser.add_argument("--scvi-epochs", type=int, default=100)
    parser.add_argument("--statistic", choices=list(tb.MIN_AUROC), default="per_stratum")
    parser.add_argument("--min-auroc", type=float, default=None, help="default: tb.MIN_AUROC[statistic]")
    parser.add_argument("--null-seeds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "batch_suppression")
    args = parser.parse_args()
    for name, fn in (("planted", planted), ("shared", shared)):
        if args.only in (None, name):
            start = time.perf_counter()
            print(f"\n== {name} ==")
            scores = summarize(fn(args, args.cache))
            with pd.option_context("display.width", 250, "display.max_columns", 20):
                print(scores.round(3).to_string())
            print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
