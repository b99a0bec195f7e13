"""Shared test settings and fixtures: the float32 determinism promise (README, "Determinism"), and a
synthetic run directory (:func:`make_run`) for the explorer and atlas tests.

Same inputs, seed, batch size, thread count and device give the same bits, and tests assert bit equality
only there (or where a result is integer / exact by construction). Another batch size, thread count or
device lets BLAS and oneDNN pick other kernels, which add the same terms in another order: results then
agree within :data:`FLOAT32_RTOL` / :data:`FLOAT32_ATOL`, never bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import corelib as cl  # noqa: E402
from corelib.encoders.base import reinitialise  # noqa: E402
from corelib.encoders.scvi import ScviEncoder, default_vae_kwargs  # noqa: E402
from corelib.tl.attribution import ATTRIBUTED, Attribution  # noqa: E402
from corelib.tl.enrichment import TERM_COLUMNS, UNIT_COLUMNS  # noqa: E402
from corelib.tl.sae import TopKSAE  # noqa: E402

#: Relative tolerance between float32 results computed with other batch sizes or thread counts. float32
#: keeps 24 bits (eps 1.2e-7); a reordered sum of n terms moves by about eps * sqrt(n) of their magnitude.
#: Measured across batch sizes 1-256 and 1-2 threads (scVI, scGPT and PCA encoders): at most 4e-7 of the
#: embedding's largest value, so 1e-5 leaves a margin of 25x and still fails on any real change.
FLOAT32_RTOL = 1e-5

#: Absolute tolerance for the same comparisons: entries near 0 come from cancelling terms of magnitude ~1,
#: whose rounding no relative tolerance covers (measured: at most 1.9e-6, on a PCA embedding up to 13).
FLOAT32_ATOL = 1e-5


@pytest.fixture(autouse=True)
def _close_figures():
    """Plots leave their figure open (Jupyter shows it); a test closes what it drew."""
    yield
    plt.close("all")


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """The real pipeline on params/ci.yaml, run once per session (the notebook and browser tests read it)."""
    params = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text())
    params["run_dir"] = str(tmp_path_factory.mktemp("ci_run"))
    path = tmp_path_factory.mktemp("params") / "ci.yaml"
    path.write_text(yaml.safe_dump(params))
    return cl.runs.pipeline.run(path, progress=False)


def chromium() -> str:
    """Path of Debian's Chromium, or skip the test saying how to install it."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip(
            "Chromium is not installed: install it with `apt-get install -y chromium` (Debian) to run the "
            "headless browser tests; .ci/run installs it."
        )
    return exe


# ------------------------------------------------------------------ a synthetic run directory (explorer, atlas)
GENES = [
    "CD3E",
    "MS4A1",
    "NKG7",
    "LYZ",
    "GNLY",
    "CD79A",
    "IL7R",
    "CCR7",
    "S100A8",
    "FCGR3A",
    "PPBP",
    "CST3",
    "HLA-DRA",
    "CD8A",
    "GZMB",
    "CD14",
    "NOT_A_GENE",
    "MLF1IP",
    "IL32",
    "LTB",
]
N_CELLS, DIM, N_CONCEPTS, K = 160, 6, 12, 3
SKIPPED_CONCEPT = 5
UNLABELLED = 2  # a unit without a GSEA label (term NaN, with a reason)


def _attribution(acts_NU: np.ndarray, kind: str, rng: np.random.Generator, skipped: set[int]) -> Attribution:
    """Scores with a known order: unit u's top gene is GENES[u % len(GENES)]; units in ``skipped`` are NaN."""
    n_units = acts_NU.shape[1]
    scores = rng.uniform(-0.02, 0.2, size=(len(GENES), n_units))
    for u in range(n_units):
        scores[u % len(GENES), u] = 1.0 + u
    status_rows, protos, cfs = [], np.full((n_units, 4), -1), np.full((n_units, 4, 2), -1)
    for u in range(n_units):
        if u in skipped:
            scores[:, u] = np.nan
            status_rows.append((u, "skipped", "3 active cells, fewer than n_prototypes=4", 3, N_CELLS - 3))
            continue
        order = np.argsort(-acts_NU[:, u], kind="stable")
        protos[u] = order[:4]
        cfs[u] = order[-8:].reshape(4, 2)
        status_rows.append(
            (u, "attributed", "", int((acts_NU[:, u] > 0).sum()), int((acts_NU[:, u] <= 0).sum()))
        )
    status = pd.DataFrame(
        status_rows, columns=["unit", "status", "reason", "n_active", "n_inactive"]
    ).set_index("unit")
    return Attribution(
        scores=scores,
        genes=np.array(GENES),
        units=np.arange(n_units),
        activation=np.nanmax(acts_NU, axis=0),
        prototypes=protos,
        counterfactuals=cfs,
        status=status,
        kind=kind,
    )


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    """A notebook for the pipeline tests: a ``parameters`` cell, then code cells (markdown for a source
    starting with ``"# "``), with the python3 kernel."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *(
            nbformat.v4.new_markdown_cell(x) if x.startswith("# ") else nbformat.v4.new_code_cell(x)
            for x in cells
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def make_run(root) -> cl.runs.RunDir:
    """A finished synthetic run directory in ``root`` (notebooks 01-04 outputs, small)."""
    rng = np.random.default_rng(0)
    run = cl.runs.open_run(root)
    cell_type = rng.choice(["B", "T", "NK", "Mono"], size=N_CELLS)
    centers = {t: rng.normal(0, 3, DIM) for t in ("B", "T", "NK", "Mono")}
    emb = np.stack([centers[t] for t in cell_type]) + rng.normal(0, 0.5, (N_CELLS, DIM))
    adata = ad.AnnData(
        X=np.zeros((N_CELLS, len(GENES)), np.float32),
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical(cell_type),
                "donor": pd.Categorical(rng.choice(["d1", "d2"], N_CELLS)),
            },
            index=[f"cell{i}" for i in range(N_CELLS)],
        ),
        var=pd.DataFrame(index=GENES),
    )
    adata.obsm["X_pca"] = emb.astype(np.float32)
    adata.obsm["X_umap"] = emb[:, :2].astype(np.float32)
    adata.uns["embed"] = {"key": "X_pca", "model": "pca", "dim": DIM, "dataset": "synthetic"}
    run.write_h5ad("embedded", adata, inputs={"data": adata})  # with provenance, as notebook 01

    name = "c12_k3_s0"
    sae = cl.tl.sae.init_sae(
        cl.tl.sae.SAEConfig(DIM, N_CONCEPTS, K), torch.as_tensor(emb, dtype=torch.float32), seed=0
    )
    sae.save(run.path("sae", name))
    cl.runs.record_provenance(
        run.path("sae", name), {"embeddings": cl.runs.steps.embeddings_fingerprint(emb)}
    )
    run.write_json("sae_selected", {"sae": name})
    codes = cl.tl.sae.encode(sae, emb.astype(np.float32))

    obs = adata.obs
    run.write_table("metadata_concepts", cl.tl.concepts.characterize(codes, obs, ["cell_type", "donor"]))
    run.write_table(
        "metadata_neurons",
        cl.tl.concepts.characterize(cl.tl.units.neuron_activity(emb), obs, ["cell_type"]),
    )
    upstream = {"embedded": run.fingerprint("embedded"), "sae": run.fingerprint("sae", name)}
    _attribution(codes.toarray(), "concept", rng, {SKIPPED_CONCEPT}).save(run.path("attribution_concepts"))
    cl.runs.record_provenance(run.path("attribution_concepts"), upstream)
    _attribution(emb, "neuron", rng, set()).save(run.path("attribution_neurons"))
    cl.runs.record_provenance(run.path("attribution_neurons"), {"embedded": upstream["embedded"]})
    for kind, n_units in (("concept", N_CONCEPTS), ("neuron", DIM)):
        units = [u for u in range(n_units) if not (kind == "concept" and u == SKIPPED_CONCEPT)]
        # the tables of corelib.tl.enrichment.gsea (GseaResult.units / .terms) and corelib.tl.deg.deg_concepts
        gsea_units = pd.DataFrame(
            [
                (f"term {u} of {kind}", 2.0, 1e-4, "weak", "")
                if u != UNLABELLED
                else (np.nan, np.nan, np.nan, "none", "no gene set passed the size filter")
                for u in units
            ],
            columns=["term", "nes", "pval", "annotation", "reason"],
            index=pd.Index(units, name="unit"),
        ).reindex(columns=UNIT_COLUMNS)
        run.write_table(f"gsea_{kind}s", gsea_units)
        terms = pd.DataFrame(
            [(u, j + 1, f"term {u}.{j}", 2.0 - j / 10, 10.0 ** -(5 - j)) for u in units for j in range(3)],
            columns=["unit", "rank", "term", "nes", "pval"],
        ).reindex(columns=TERM_COLUMNS)
        run.write_table("gsea_terms", terms, name=f"{kind}s", index=False)
        deg = pd.DataFrame(
            [(u, r + 1, g, 1.5, 1e-6) for u in units for r, g in enumerate(GENES[:3])],
            columns=["unit", "rank", "gene", "logfoldchange", "pval_adj"],
        )
        run.write_table("deg", deg, name=f"{kind}s", index=False)
    matched = pd.DataFrame(
        {
            "concept": np.arange(N_CONCEPTS),
            "matched_concept": np.arange(N_CONCEPTS)[::-1],
            "cosine": np.linspace(0.99, 0.4, N_CONCEPTS),
            "comparison": "seed 1",
        }
    )
    run.write_table("matched_concepts", matched, index=False)
    # a matching of other SAEs (cross-dataset) must not show on this run's cards
    run.write_table("cross_matching", matched.rename(columns={"concept": "concept_1"}), index=False)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def fresh_run(tmp_path):
    return make_run(tmp_path / "run")


def hand_attribution(scores_GU: np.ndarray, genes: list[str], units: list[int]) -> Attribution:
    """A hand-made Attribution (gene x unit scores) for the given unit ids."""
    n = len(units)
    return Attribution(
        scores=np.asarray(scores_GU, float),
        genes=np.array(genes),
        units=np.array(units),
        activation=np.ones(n),
        prototypes=np.zeros((n, 1), int),
        counterfactuals=np.zeros((n, 1, 1), int),
        status=pd.DataFrame(
            {"status": [ATTRIBUTED] * n, "reason": [""] * n}, index=pd.Index(units, name="unit")
        ),
    )


# ------------------------------------------------------------------ toy models (attribution, DEG)
N_GENES = 40


def toy_counts(n_cells: int, n_genes: int = N_GENES, seed: int = 0) -> np.ndarray:
    """Sparse-ish integer counts: many genes are equal (zero) in two cells, as in scRNA-seq."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.6, 2.0, size=(n_cells, n_genes))
    return rng.poisson(lam).astype(np.float32)


def toy_scvi_encoder(n_genes: int = N_GENES, seed: int = 0) -> ScviEncoder:
    """A random-weight scVI z-encoder with non-trivial BatchNorm statistics."""
    kwargs = default_vae_kwargs(n_genes, n_latent=6, n_hidden=16)
    enc = ScviEncoder(kwargs, [f"G{i}" for i in range(n_genes)])
    reinitialise(enc, seed)
    gen = torch.Generator().manual_seed(seed)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return enc.eval()


def toy_sae(d_in: int, n_concepts: int = 10, k: int = 3, seed: int = 0) -> TopKSAE:
    gen = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, n_concepts, k)
    with torch.no_grad():
        sae.W_enc_DC.copy_(torch.randn(d_in, n_concepts, generator=gen))
        sae.b_enc_C.copy_(torch.randn(n_concepts, generator=gen) * 0.1)
        sae.W_dec_CD.copy_(torch.nn.functional.normalize(sae.W_enc_DC.T.clone(), dim=1))
    return sae.eval()


# ------------------------------------------------------------- the README snippet's AnnData (explorer on an AnnData)
@pytest.fixture(scope="session")
def readme_adata():
    """``(adata, encoder, sae)`` of the README's "Use it from your own notebook" snippet, made small: pbmc3k,
    the PCA encoder, 16 concepts (k=4, 5 epochs), 4 attributed, GSEA-annotated. Tests copy it before changing it."""
    adata = cl.datasets.load_dataset("pbmc3k")
    encoder = cl.encoders.load("pca", adata=adata, n_comps=20, progress=False)
    cl.encoders.embed(encoder, adata, key_added="X_pca", progress=False)
    sae = cl.tl.train_sae(adata, use_rep="X_pca", n_concepts=16, k=4, epochs=5, progress=False)
    cl.tl.attribute(adata, encoder, sae, concepts=range(4), progress=False)
    cl.tl.annotate(adata, progress=False)
    return adata, encoder, sae
