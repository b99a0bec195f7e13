"""Benchmark: time and peak memory of every stage of an atlas analysis at 10k, 100k and 1M cells.

The atlas is SIMULATED (the bundled pbmc3k has 2,638 cells): :func:`simulate_atlas` resamples pbmc3k cells with
replacement, stratified by cell type so that the composition is kept, and replaces every non-zero count by a
Poisson draw with that mean (zeros stay zeros, so there are no new genes per cell). Seeded; written once as a
sparse CSR ``.h5ad`` under ``--cache-dir`` and reused.

Each stage runs in a fresh subprocess (its peak RSS is its own: the child's ``ru_maxrss``, including its own
children) and calls ``corelib`` directly, one small function per stage (:data:`STAGES`), reading what earlier
stages left in ``<cache-dir>/work_<N>_<shape>/``: PCA encoder + embedding, a Top-K SAE (a few epochs, trained
from the on-disk embedding), codes, concept characterisation, prototypes + counterfactuals + DEG and attribution
of a few concepts, probes, the NMF baseline, UMAP. ``--shape`` (:data:`SHAPES`) sets d, c, k and the concepts:
``default`` d=50, c=500, k=8, 20 concepts; ``wide`` d=512, c=5,000, k=80, 50 concepts. Printed per stage: seconds, peak memory (GiB) and
the growth exponent ``log(t2/t1) / log(N2/N1)`` of time (and memory) between consecutive sizes (1: linear).
The machine may be shared: timings are noisy, read the exponents.

Usage::

    python benchmarks/scale.py --sizes 10000 100000            # all stages
    python benchmarks/scale.py --sizes 10000 --stages embed sae codes
    python benchmarks/scale.py --sizes 10000 --pipeline        # also `python -m corelib run` on the atlas
    python benchmarks/scale.py --sizes 10000 --stages --pipeline   # the pipeline only
    python benchmarks/scale.py --sizes 1000000 --shape wide --stages embed sae codes characterize attribution
    python benchmarks/scale.py --sizes 200000 --stages counterfactuals deg_dask   # DEG in one process, then on Dask
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

SOURCE = "pbmc3k"
LABEL_KEY = "cell_type"
METADATA_KEYS = ["cell_type", "seurat_clusters"]
#: Epochs of notebook 04's shared scVI (50 by default): the pipeline sets epochs only, and keeps other defaults.
SHARED_SCVI_EPOCHS = 10
SEED = 0


class Shape(NamedTuple):
    """Embedding size d, concepts c, k, concepts attributed, whether the encoder is a random projection, and the
    SAE's epochs (a few: the stages after it need a trained SAE, not a converged one)."""

    d: int
    c: int
    k: int
    n_units: int
    random_projection: bool
    epochs: int


#: ``default``: the issue's 1M-cell target (d=50, c=500, k=8, 20 concepts; fitted PCA). ``wide``: the paper's scGPT
#: scale (d=512, c=5,000, k=80, 50 concepts), the embedding a random projection of the log counts (fast at 512).
SHAPES = {"default": Shape(50, 500, 8, 20, False, 3), "wide": Shape(512, 5000, 80, 50, True, 1)}
#: notebook 04's and notebook 01's defaults: baselines and the UMAP are fitted on a sample of this many cells.
BASELINE_MAX_CELLS = UMAP_MAX_CELLS = 50_000


# ----------------------------------------------------------------------------------------------------------
# The simulated atlas
# ----------------------------------------------------------------------------------------------------------
def simulate_atlas(
    source: ad.AnnData, n_cells: int, *, seed: int = SEED, label_key: str = LABEL_KEY
) -> ad.AnnData:
    """``n_cells`` cells resampled from ``source`` (raw counts, CSR): per cell type, a share of ``n_cells``
    equal to its share in ``source`` (largest remainders), cells drawn with replacement, every non-zero count
    replaced by a Poisson draw with that mean. ``obs`` keeps the source's columns plus ``source_cell``;
    ``uns["simulated"]`` says how the atlas was made."""
    rng = np.random.default_rng(seed)
    labels = source.obs[label_key].astype(str).to_numpy()
    types, counts = np.unique(labels, return_counts=True)
    quota = counts / counts.sum() * n_cells
    n_per_type = np.floor(quota).astype(int)
    n_per_type[np.argsort(n_per_type - quota)[: n_cells - n_per_type.sum()]] += 1
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(labels == t), n) for t, n in zip(types, n_per_type, strict=True)]
    )
    idx = rng.permutation(idx)
    X = sp.csr_matrix(source.X)[idx]
    X.data = rng.poisson(X.data).astype(np.float32)
    X.eliminate_zeros()
    obs = source.obs.iloc[idx].copy()
    obs["source_cell"] = obs.index.astype(str)
    obs.index = pd.Index([f"sim{i}" for i in range(n_cells)])
    note = (
        f"Simulated atlas: {n_cells} cells resampled with replacement from {source.n_obs} cells of "
        f"{source.uns.get('dataset', {}).get('name', 'the source')}, stratified by {label_key}, non-zero counts "
        f"Poisson-resampled (seed {seed})."
    )
    return ad.AnnData(X, obs=obs, var=source.var.copy(), uns={"simulated": {"seed": seed, "note": note}})


def atlas_path(cache_dir: Path, n_cells: int) -> Path:
    """The cached simulated atlas of ``n_cells`` cells; built (and its build time recorded) when missing."""
    path = cache_dir / f"atlas_{SOURCE}_{n_cells}_s{SEED}.h5ad"
    if not path.exists():
        from corelib.datasets import load_dataset

        start = time.perf_counter()
        atlas = simulate_atlas(load_dataset(SOURCE), n_cells)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.h5ad")  # written whole, then renamed: never a half atlas
        atlas.write_h5ad(tmp)
        tmp.rename(path)
        info = {
            "n_cells": n_cells,
            "seconds": time.perf_counter() - start,
            "note": atlas.uns["simulated"]["note"],
        }
        path.with_suffix(".json").write_text(json.dumps(info, indent=1))
        print(f"built {path} in {info['seconds']:.0f} s")
    return path


# ----------------------------------------------------------------------------------------------------------
# Stages: one small function each (the corelib APIs change: update them here)
# ----------------------------------------------------------------------------------------------------------
class Work:
    """The atlas and the folder where stages leave their outputs for later stages."""

    def __init__(self, atlas: Path, folder: Path) -> None:
        self.atlas, self.folder = atlas, folder
        self.shape = Shape(**json.loads(self._need("shape.json").read_text()))

    def adata(self) -> ad.AnnData:
        return ad.read_h5ad(self.atlas)

    def obs(self) -> pd.DataFrame:
        return ad.read_h5ad(self.atlas, backed="r").obs

    def emb(self) -> np.ndarray:
        return np.load(self._need("emb.npy"), mmap_mode="r")

    def encoder(self):
        from corelib import encoders

        return encoders.restore(self._need("encoder"), device="cpu")

    def sae(self):
        from corelib.tl.sae import TopKSAE

        return TopKSAE.load(self._need("sae"))

    @functools.cached_property
    def codes(self):
        """Codes as written by :func:`stage_codes` (scipy CSR or dense), read once per process."""
        if (self.folder / "codes.npz").exists():
            return sp.load_npz(self.folder / "codes.npz")
        return np.load(self._need("codes.npy"))

    def units(self) -> np.ndarray:
        """``shape.n_units`` concepts drawn (seeded) among those active in at least 50 cells."""
        n_active = np.asarray((self.codes > 0).sum(axis=0)).ravel()
        return np.sort(
            np.random.default_rng(SEED).choice(
                np.flatnonzero(n_active >= 50), self.shape.n_units, replace=False
            )
        )

    def counts(self, genes: list[str]) -> sp.csr_matrix:
        """The atlas's counts aligned to ``genes``; the AnnData itself is not kept (only the aligned copy)."""
        from corelib import encoders

        return encoders.align(self.adata(), genes)[0]

    def _need(self, name: str) -> Path:
        path = self.folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the stage that writes it first (see --stages).")
        return path


def stage_embed(w: Work) -> dict:
    from corelib import encoders

    adata = w.adata()
    enc = encoders.load(
        "pca", adata=adata, n_comps=w.shape.d, random_init=w.shape.random_projection, progress=False
    )
    emb = encoders.embed(enc, adata, progress=False)
    np.save(w.folder / "emb.npy", emb.astype(np.float32))
    encoders.save(enc, w.folder / "encoder")
    return {}


def stage_sae(w: Work) -> dict:
    from corelib.tl.sae import train

    res = train(
        w.emb(),
        w.shape.c,
        w.shape.k,
        epochs=w.shape.epochs,
        batch_size=1024,
        lr=1e-3,
        device="cpu",
        progress=False,
    )
    res.sae.save(w.folder / "sae")
    return {"s_per_epoch": res.metrics["seconds"] / w.shape.epochs, "r2_heldout": res.metrics["r2_heldout"]}


def stage_codes(w: Work) -> dict:
    from corelib.tl.sae import encode

    codes = encode(w.sae(), w.emb())
    if sp.issparse(codes):
        sp.save_npz(w.folder / "codes.npz", sp.csr_matrix(codes))
    else:
        np.save(w.folder / "codes.npy", codes)
    return {"sparse": sp.issparse(codes)}


def stage_characterize(w: Work) -> dict:
    from corelib.tl.concepts import characterize

    table = characterize(w.codes, w.obs(), METADATA_KEYS)
    return {"n_specific": int(table["call"].str.endswith("-specific").sum())}


def stage_counterfactuals(w: Work) -> dict:
    from corelib.tl.attribution.select import select_cells
    from corelib.tl.deg import deg_units

    codes, units, emb, enc = w.codes, w.units(), np.asarray(w.emb()), w.encoder()
    select_cells(codes[:, units], emb, units=units, progress=False)
    X = w.counts(enc.genes)
    start = time.perf_counter()
    deg = deg_units(X, codes, emb, units=units, genes=enc.genes, progress=False)
    deg.to_csv(w.folder / "deg.csv", index=False)
    return {"deg_rows": len(deg), "deg_seconds": round(time.perf_counter() - start, 1)}


def stage_deg_dask(w: Work) -> dict:
    """The DEG of :func:`stage_counterfactuals` again on a local Dask cluster of ``DASK_WORKERS`` one-thread
    workers; the table must equal the one-process one (``deg.csv``)."""
    from corelib.cluster import dask_client
    from corelib.tl.deg import deg_units

    codes, units, emb, enc = w.codes, w.units(), np.asarray(w.emb()), w.encoder()
    X = w.counts(enc.genes)
    start = time.perf_counter()
    with dask_client({"n_workers": DASK_WORKERS, "threads_per_worker": 1}) as client:
        started = time.perf_counter()
        deg = deg_units(X, codes, emb, units=units, genes=enc.genes, progress=False, client=client)
        seconds = time.perf_counter() - started
    local = pd.read_csv(w._need("deg.csv"))
    pd.testing.assert_frame_equal(deg, local, check_dtype=False)
    return {"deg_seconds": round(seconds, 1), "cluster_start_seconds": round(started - start, 1)}


def stage_attribution(w: Work) -> dict:
    from corelib.tl.attribution import attribute_concepts

    enc = w.encoder()
    X = w.counts(enc.genes)
    attr = attribute_concepts(
        enc,
        w.sae(),
        X,
        np.asarray(w.emb()),
        codes_NC=w.codes,
        concepts=w.units(),
        device="cpu",
        progress=False,
    )
    return {"units": len(attr.units)}


def stage_probes(w: Work) -> dict:
    from corelib.tl import probe_labels
    from corelib.tl.probes import probe

    labels = w.obs()[LABEL_KEY].to_numpy()
    for features in (w.codes, np.asarray(w.emb())):
        probe(features, labels, seeds=(0,), progress=False)
    # pbmc3k's 6 S genes are below the minimum, which would skip the scoring: it is timed all the same.
    probe_labels.MIN_CELL_CYCLE_GENES = 0
    probe_labels.cell_cycle_phase(w.adata())
    return {}


def stage_nmf(w: Work) -> dict:
    from corelib.tl.baselines import baseline_fitter

    baseline_fitter("nmf", w.shape.d, max_cells=BASELINE_MAX_CELLS)(np.asarray(w.emb()), SEED, "atlas")
    return {"max_cells": BASELINE_MAX_CELLS}


def stage_umap(w: Work) -> dict:
    from corelib.runs.steps import umap_cells

    adata = ad.AnnData(obs=w.obs(), obsm={"X_emb": np.array(w.emb())})  # writable: pynndescent needs it
    umap_cells(adata, use_rep="X_emb", max_cells=UMAP_MAX_CELLS, stratify_key=LABEL_KEY, seed=SEED)
    return {"umap_cells": int(adata.uns.get("umap_sample", {}).get("n_cells", adata.n_obs))}


def stage_pipeline(w: Work) -> dict:
    """Write a params file for the atlas (PCA, one SAE of the shape, fewer epochs) and run
    ``python -m corelib run`` on it end to end (log: ``pipeline_run.log``, run directory: ``run/``)."""
    import yaml

    d, c, k = w.shape.d, w.shape.c, w.shape.k
    sweep = {"n_concepts": [c], "k": [k], "seeds": [SEED], "epochs": w.shape.epochs, "batch_size": 1024}
    params = {
        "run_name": f"scale_{w.atlas.stem}",
        "run_dir": str(w.folder / "run"),
        "seed": SEED,
        "device": "cpu",
        "overwrite": True,
        "dataset": str(w.atlas),
        "label_key": LABEL_KEY,
        "metadata_keys": METADATA_KEYS,
        "model": "pca",
        "model_options": {"n_comps": d},
        "notebooks": {
            "02_sae_scale_sweep": {**sweep, "selected_expansion": c / d, "k_sweep": [k]},
            "03_interpret_concepts": {"max_concepts": w.shape.n_units},
            "04_stability": {"shared_encoder_epochs": SHARED_SCVI_EPOCHS},
        },
    }
    path = w.folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", "corelib", "run", str(path), "--no-progress"]
    with open(w.folder / "pipeline_run.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"params": str(path)}


STAGES: dict[str, Callable[[Work], dict]] = {
    "embed": stage_embed,
    "sae": stage_sae,
    "codes": stage_codes,
    "characterize": stage_characterize,
    "counterfactuals": stage_counterfactuals,
    "attribution": stage_attribution,
    "probes": stage_probes,
    "nmf": stage_nmf,
    "umap": stage_umap,
}
#: Run only when asked for (--stages deg_dask, --pipeline): DEG on Dask, the whole notebook pipeline.
OPTIONAL = {"deg_dask": stage_deg_dask, "pipeline": stage_pipeline}

#: Workers of the local cluster of ``deg_dask``.
DASK_WORKERS = 2


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------
def peak_rss_gib() -> float:
    """Peak resident memory of this process or any of its waited-for children, GiB (Linux: ru_maxrss in KiB)."""
    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return kib / 2**20


def _child(stage: str, atlas: Path, folder: Path, out: Path) -> None:
    """Run one stage in this (fresh) process and write its seconds, peak memory and extras to ``out``."""
    import torch

    torch.manual_seed(SEED)
    start = time.perf_counter()
    extra = {**STAGES, **OPTIONAL}[stage](Work(atlas, folder))
    out.write_text(json.dumps({"seconds": time.perf_counter() - start, "peak_gib": peak_rss_gib(), **extra}))


def run_stage(stage: str, atlas: Path, folder: Path) -> dict:
    """One stage in a fresh subprocess; its log goes to ``<folder>/<stage>.log``."""
    out = folder / f"{stage}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", stage, str(atlas), str(folder), str(out)]
    with open(folder / f"{stage}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = (folder / f"{stage}.log").read_text().strip().splitlines()[-3:]
        return {"seconds": math.nan, "peak_gib": math.nan, "error": f"exit {rc}: {' | '.join(tail)}"}
    return json.loads(out.read_text())


def growth_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per stage and size: seconds, peak GiB, and the growth exponents of both from the previous size."""
    rows = []
    for stage, group in results.groupby("stage", sort=False):
        group = group.sort_values("n_cells")
        prev = None
        for row in group.itertuples():
            exp_t = exp_m = math.nan
            if prev is not None:
                ratio = math.log(row.n_cells / prev.n_cells)
                exp_t = math.log(row.seconds / prev.seconds) / ratio
                exp_m = math.log(row.peak_gib / prev.peak_gib) / ratio
            rows.append(
                {
                    "stage": stage,
                    "n_cells": row.n_cells,
                    "seconds": row.seconds,
                    "peak_GiB": row.peak_gib,
                    "time_exponent": exp_t,
                    "memory_exponent": exp_m,
                }
            )
            prev = row
    return pd.DataFrame(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--stages",
        nargs="*",
        choices=[*STAGES, "deg_dask"],
        default=list(STAGES),
        help="deg_dask (not run by default): the counterfactuals stage's DEG on a 2-worker Dask cluster",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/corelib-scale"))
    parser.add_argument(
        "--shape", choices=list(SHAPES), default="default", help="d, c, k and concepts (SHAPES)"
    )
    parser.add_argument(
        "--pipeline", action="store_true", help="also run `python -m corelib run` on each atlas"
    )
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    rows, extras = [], {}
    for n in args.sizes:
        atlas = atlas_path(args.cache_dir, n)
        folder = args.cache_dir / f"work_{n}_{args.shape}"
        folder.mkdir(exist_ok=True)
        (folder / "shape.json").write_text(json.dumps(SHAPES[args.shape]._asdict()))
        for stage in [*args.stages, *(["pipeline"] if args.pipeline else [])]:
            res = run_stage(stage, atlas, folder)
            rows.append(
                {"stage": stage, "n_cells": n, "seconds": res.pop("seconds"), "peak_gib": res.pop("peak_gib")}
            )
            extras[(stage, n)] = res
            print(
                f"{n:>9} {stage:<16} {rows[-1]['seconds']:8.1f} s {rows[-1]['peak_gib']:6.2f} GiB {res}",
                flush=True,
            )
    shape = SHAPES[args.shape]
    print(
        f"\nSimulated atlases ({SOURCE} resampled, seed {SEED}); d={shape.d}, c={shape.c}, k={shape.k}, "
        f"{shape.n_units} concepts, {'random projection' if shape.random_projection else 'PCA'}."
    )
    with pd.option_context("display.width", 120, "display.float_format", "{:.2f}".format):
        print(growth_table(pd.DataFrame(rows)).to_string(index=False))


if __name__ == "__main__":
    main()
