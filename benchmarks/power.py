"""Detection limit of the method on planted programs (issue 22): fold change x share of cells x program size.

For each setting a GO BP program is planted in the bundled pbmc3k counts (``cl.datasets.planted_pbmc3k``), then
the README's calls run: a PCA encoder, a Top-K SAE, attribution of every attributable concept and of every
neuron, and both annotations (the paper's weighted GSEA, the expression-matched ORA). Printed per setting: the
best concept's and the best neuron's AUROC for the planted cells, whether each is named by each annotation
(calibrated q < 0.05), and the nulls: the share of concepts annotated after permuting gene labels (plain and
within expression bins) and whether the random-weights encoder's SAE recovers the program.

    .venv/bin/python benchmarks/power.py                       # the default grid, ~8 min on 2 cores
    .venv/bin/python benchmarks/power.py --fold-changes 3 --shares 0.1 --sizes 16 --gsea   # one setting
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import corelib as cl

#: Annotations compared: method and the attribution scores it ranks (``Attribution.frame(direction)``).
METHODS = {"ora": "paper", "ora-signed": "expression", "gsea": "paper", "gsea-signed": "expression"}


def annotate(
    scores: pd.DataFrame, mean: pd.Series, method: str, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-unit and long term tables of one annotation method (``"ora..."`` or ``"gsea..."``)."""
    if method.startswith("ora"):
        return cl.tl.enrichment.ora(scores, mean_expression=mean)
    result = cl.tl.enrichment.gsea(scores, permutations=100, seed=seed, progress=False)
    return result.units, result.terms


def null_rates(scores: pd.DataFrame, mean: pd.Series, method: str, seed: int) -> dict[str, float]:
    """Share of units annotated (q < 0.05) with gene labels permuted: plainly and within expression bins."""
    if method.startswith("ora"):
        shares = cl.tl.enrichment.ora_shares({"concepts": scores}, mean, seed=seed).loc["concepts"]
        return {"null_plain": shares["permuted genes"], "null_matched": shares["expression-matched"]}
    bins = cl.tl.enrichment.expression_bins(mean.reindex(scores.index).to_numpy())
    nulls = {
        name: cl.tl.enrichment.gsea_null(scores, seed=seed, bins_G=b, permutations=100, progress=False)
        for name, b in (("plain", None), ("matched", bins))
    }
    return {f"null_{name}": float(cl.tl.annotation.annotation_rates(t)["any"]) for name, t in nulls.items()}


def one_setting(fc: float, share: float, size: int | None, args: argparse.Namespace) -> list[dict]:
    """Recovery of one planted setting, for each method, by concepts and by neurons."""
    adata = cl.datasets.planted_pbmc3k(fc, share, max_genes=size, cell_type=args.cell_type, seed=args.seed)
    name = next(iter(adata.uns["planted"]))
    info = adata.uns["planted"][name]
    mean = cl.tl.enrichment.mean_log_expression(adata.X, adata.var_names)
    sets = cl.datasets.load_gene_sets(genes=list(adata.var_names))
    rows = []
    for control in (False, True):
        enc = cl.encoders.load(
            "pca", adata=adata, n_comps=args.n_comps, random_init=control, seed=args.seed, progress=False
        )
        cl.encoders.embed(enc, adata, key_added="X_pca", progress=False)
        sae = cl.tl.train_sae(
            adata,
            use_rep="X_pca",
            n_concepts=args.c,
            k=args.k,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=False,
        )
        codes = adata.obsm["X_concepts"]
        X, _ = cl.encoders.align(adata, enc.genes)
        emb = adata.obsm["X_pca"]
        concepts = cl.tl.attribution.sample_concepts(codes, None)
        kinds = {
            "concept": (
                cl.tl.attribution.attribute_concepts(
                    enc, sae, X, emb, codes_NC=codes, concepts=concepts, progress=False
                ),
                codes,
            )
        }
        if not control:
            kinds["neuron"] = (cl.tl.attribution.attribute_neurons(enc, X, emb, progress=False), emb)
        for kind, (attr, acts) in kinds.items():
            for method in args.methods:
                scores = attr.frame(METHODS[method])
                units, terms = annotate(scores, mean, method, args.seed)
                rec = cl.tl.recovery.recovery(
                    acts, np.arange(acts.shape[1]), adata.obs, adata.uns["planted"], units, terms, sets
                ).iloc[0]
                row = {
                    "fold_change": fc, "share": share, "size": len(info["genes"]), "encoder": "random" if control else "pca",
                    "kind": kind, "method": method, "auroc": rec["auroc"], "named": rec["named"], "recovered": rec["recovered"],
                    "label": rec["label"][:40], "split_half": float(attr.reliability["split_half"].median()),
                    "signed_split_half": float(attr.reliability["signed_split_half"].median()),
                }  # fmt: skip
                if not control and kind == "concept":
                    row |= null_rates(scores, mean, method, args.seed)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fold-changes", type=float, nargs="+", default=[1.5, 2, 3, 6])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[8, 16], help="genes per program (16: the whole term)"
    )
    parser.add_argument("--cell-type", default=None, help="plant within this cell type (default: across all)")
    parser.add_argument("--c", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3, help="as params/planted.yaml")
    parser.add_argument("--batch-size", type=int, default=256, help="as params/planted.yaml")
    parser.add_argument("--n-comps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gsea", action="store_true", help="also run weighted GSEA, the paper's (slower)")
    parser.add_argument("--out", default=None, help="write the table to this CSV")
    args = parser.parse_args()
    args.methods = [m for m in METHODS if args.gsea or m.startswith("ora")]
    rows, start = [], time.perf_counter()
    for size in args.sizes:
        for fc in args.fold_changes:
            for share in args.shares:
                rows += one_setting(fc, share, size if size < 16 else None, args)
                print(
                    f"[{time.perf_counter() - start:6.0f} s] size {size}, fold change {fc}, share {share}",
                    flush=True,
                )
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    real = table[(table["encoder"] == "pca") & (table["kind"] == "concept")]
    limit = real[real["recovered"]].groupby("method")[["fold_change", "share"]].min()
    print("\nWeakest setting recovered by a concept (isolated and named), per method:\n", limit.to_string())


if __name__ == "__main__":
    main()
