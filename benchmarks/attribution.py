"""Benchmark: the project's counterfactual occlusion attribution vs Captum's FeatureAblation.

Both sides attribute the same concepts of the demo's scVI encoder + selected SAE, with the same
(prototype, counterfactual) pairs (N_p = 10, N_c = 3 by default). Captum runs one ``attribute`` call per concept
with the counterfactuals as baselines (``perturbations_per_eval=256``), our side runs once for all concepts.
Prints wall times (median over repeats for ours; Captum once, it is the slow side), the speed ratio and the
maximum absolute difference of the Eq. 3 scores.

Usage (after notebooks 01-02 of the demo, i.e. ``python -m corelib run params/demo.yaml``)::

    python benchmarks/attribution.py --run-dir runs/demo --n-concepts 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import anndata as ad
import numpy as np
import torch
from captum.attr import FeatureAblation

import corelib as cl
from corelib import encoders
from corelib.tl.sae import TopKSAE, encode


def _timed(fn, repeats: int) -> tuple[object, float]:
    """Result of ``fn()`` and the median wall time over ``repeats`` calls."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def _captum(enc, sae, X, attr: cl.tl.attribution.Attribution, per_eval: int) -> np.ndarray:
    """Eq. 3 scores (genes x units) with Captum FeatureAblation, one concept at a time, float32."""
    out = np.full_like(attr.scores, np.nan)
    _, n_p, n_c = attr.counterfactuals.shape
    for u in np.flatnonzero(attr.attributed):
        concept = int(attr.units[u])
        inputs = torch.as_tensor(cl.tl.attribution.dense_rows(X, attr.prototypes[u])).repeat_interleave(
            n_c, 0
        )
        baselines = torch.as_tensor(cl.tl.attribution.dense_rows(X, attr.counterfactuals[u].ravel()))
        with torch.no_grad():
            s = FeatureAblation(lambda x, c=concept: sae.encode(enc(x))[:, c]).attribute(
                inputs, baselines=baselines, perturbations_per_eval=per_eval
            )
        out[:, u] = cl.tl.attribution.aggregate_attributions(s.reshape(n_p, n_c, -1)).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/demo", help="run directory with notebooks 01-02 outputs")
    parser.add_argument("--n-concepts", type=int, default=50)
    parser.add_argument("--n-prototypes", type=int, default=10)
    parser.add_argument("--n-counterfactuals", type=int, default=3)
    parser.add_argument("--per-eval", type=int, default=256, help="Captum perturbations_per_eval")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the project's side (median)")
    args = parser.parse_args()

    run = cl.runs.open_run(args.run_dir)
    adata = ad.read_h5ad(run.require("embedded"))
    enc = encoders.restore(run.require("encoder"), device="cpu")
    sae = TopKSAE.load(run.require("sae", run.read_json("sae_selected")["sae"]), device="cpu").eval()
    X, _ = encoders.align(adata, enc.genes)
    emb = np.asarray(adata.obsm[adata.uns["embed"]["key"]])
    codes = encode(sae, emb)
    sel = cl.tl.attribution.select_cells(
        codes,
        emb,
        n_prototypes=args.n_prototypes,
        n_counterfactuals=args.n_counterfactuals,
        progress=False,
    )
    concepts = np.flatnonzero(sel.status["status"] == cl.tl.attribution.ATTRIBUTED)[: args.n_concepts]
    if len(concepts) < args.n_concepts:
        print(f"note: only {len(concepts)} concepts can be attributed (others are dead, rare or everywhere)")
    common = dict(
        codes_NC=codes,
        concepts=concepts,
        n_prototypes=args.n_prototypes,
        n_counterfactuals=args.n_counterfactuals,
        device="cpu",
        progress=False,
    )
    n_pairs = len(concepts) * args.n_prototypes * args.n_counterfactuals
    print(
        f"encoder {enc.name} ({len(enc.genes)} genes, dim {enc.dim}), SAE c={sae.cfg.n_concepts} k={sae.cfg.k}, "
        f"{len(concepts)} concepts, {n_pairs} (prototype, counterfactual) pairs, torch threads "
        f"{torch.get_num_threads()}"
    )

    results = {}
    for label, kwargs in {
        "project, linear head, float32 (default)": {},
        "project, linear head, float64": {"dtype": torch.float64},
        "project, full forward, float32": {"use_linear_head": False},
    }.items():
        results[label] = _timed(
            lambda kw=kwargs: cl.tl.attribution.attribute_concepts(enc, sae, X, emb, **common, **kw),
            args.repeats,
        )
    ours = results["project, linear head, float32 (default)"][0]
    ref, t_captum = _timed(lambda: _captum(enc, sae, X, ours, args.per_eval), 1)

    keep = ours.attributed
    print(
        f"{'method':45s} {'wall s':>9s} {'x faster than Captum':>21s} {'max |diff| vs Captum':>21s} "
        f"{'scores off by > 1e-5':>21s}"
    )
    print(
        f"{'Captum FeatureAblation (per_eval=' + str(args.per_eval) + ')':45s} {t_captum:9.2f} {1.0:21.1f} "
        f"{0.0:21.2e}"
    )
    for label, (attr, t) in results.items():
        # A Top-K near-tie can flip under a different rounding order: count how many scores that moves.
        diff_GU = np.abs(attr.scores[:, keep] - ref[:, keep])
        off = f"{int((diff_GU > 1e-5).sum())} of {diff_GU.size}"
        print(f"{label:45s} {t:9.2f} {t_captum / t:21.1f} {diff_GU.max():21.2e} {off:>21s}")
    print(
        f"Captum: {t_captum / n_pairs * 1e3:.1f} ms per pair; project default: "
        f"{results['project, linear head, float32 (default)'][1] / n_pairs * 1e3:.2f} ms per pair"
    )


if __name__ == "__main__":
    main()
