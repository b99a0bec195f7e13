"""Cell encoders of foundation models behind one protocol (paper section 4.1).

Every model is an :class:`Encoder`: a ``torch.nn.Module`` mapping expression for the model's own genes (raw
counts, before the model's preprocessing) to cell embeddings, with ``genes``, ``dim`` and ``name``.

- :func:`load` builds one ("scvi", "scgpt", "pca"; ``random_init=True`` for the random-weight control), or
  records a precomputed ``obsm`` embedding in place of a model ("precomputed": a
  :class:`~corelib.encoders.precomputed.Precomputed`, no ``torch.nn.Module``; ``has_model`` is False),
- :func:`align` puts a dataset's genes in the model's order (missing genes are zeros, and counted),
- :func:`embed` embeds an AnnData into ``obsm["X_<name>"]`` (:func:`embed_datasets`: several datasets;
  :func:`embed_random_control`: with the encoder's random-weight control),
- :func:`save` / :func:`restore` write and read our checkpoint format (safetensors + JSON, no pickle;
  :func:`checkpoint_genes` reads a saved encoder's genes),
- :func:`train_shared_scvi` trains one scVI on the shared genes of several datasets,
- :func:`pretrained.train_demo` trains the demo's bundled scVI (``corelib.datasets.pretrained("pbmc3k_scvi")``).

Example
-------
>>> enc = load("scvi", adata=adata)  # trains a small SCVI (corelib.runs.encoder caches it in a run directory)
>>> emb = embed(enc, adata)  # (n_cells x 50), also in adata.obsm["X_scvi"]
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from corelib.device import resolve_device
from corelib.encoders import pca as _pca
from corelib.encoders import precomputed, pretrained
from corelib.encoders import scgpt as _scgpt
from corelib.encoders import scvi as _scvi
from corelib.encoders.base import (
    CONFIG_FILE,
    Encoder,
    LinearHead,
    align,
    checkpoint_genes,
    gene_map,
    iter_blocks,
    read_checkpoint,
)
from corelib.encoders.base import save as save_weights
from corelib.encoders.pca import PcaEncoder
from corelib.encoders.precomputed import Precomputed
from corelib.encoders.scgpt import ScGPTEncoder
from corelib.encoders.scvi import ScviEncoder
from corelib.encoders.shared import train_shared_scvi

__all__ = [
    "MODELS",
    "Encoder",
    "LinearHead",
    "Precomputed",
    "align",
    "checkpoint_genes",
    "embed",
    "embed_datasets",
    "embed_random_control",
    "describe",
    "load",
    "precomputed",
    "pretrained",
    "restore",
    "save",
    "train_shared_scvi",
]

#: Model name -> the options ``load`` accepts for it (``model_options`` in the params file).
MODELS: dict[str, tuple[str, ...]] = {
    "scvi": (
        "epochs",
        "early_stopping",
        "n_latent",
        "n_layers",
        "n_hidden",
        "batch_size",
        "threads",
        "gene_id_column",
    ),  # fmt: skip
    "scgpt": ("gene_id_column", "max_seq_len", "embsize", "nheads", "d_hid", "nlayers"),
    "pca": ("n_comps", "max_cells"),
    precomputed.NAME: (),
}
_CLASSES: dict[str, type[Encoder]] = {cls.__name__: cls for cls in (ScviEncoder, ScGPTEncoder, PcaEncoder)}


def restore(
    directory: str | os.PathLike, *, device: str | torch.device | None = "auto"
) -> Encoder | Precomputed:
    """Read an encoder written by :func:`save` (``encoder.safetensors`` + ``encoder.json``; a
    :class:`Precomputed` record has only the JSON).

    Parameters
    ----------
    directory
        The checkpoint directory.
    device
        "auto" (CUDA when available), "cpu", "cuda", ...

    Returns
    -------
    The encoder, in eval mode, on ``device``.
    """
    config_path = Path(directory) / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if config.get("class") == "Precomputed":
        return precomputed.restore(config["config"])
    found = read_checkpoint(directory)
    if found is None:
        raise ValueError(f"{str(directory)!r} holds no encoder checkpoint ({CONFIG_FILE} + safetensors).")
    config, tensors = found
    return _CLASSES[config["class"]].from_config(config["config"], tensors).to(resolve_device(device)).eval()


def _require_adata(model: str, adata: ad.AnnData | None, what: str) -> ad.AnnData:
    if adata is None:
        raise ValueError(
            f"model {model!r} without a model path {what}: pass adata= (cells x genes, raw counts)."
        )
    return adata


def _build(
    model: str,
    *,
    adata: ad.AnnData | None,
    path: str | os.PathLike | None,
    layer: str | None,
    trust_pickle: bool,
    random_init: bool,
    seed: int,
    device: torch.device,
    progress: bool,
    options: dict[str, Any],
) -> Encoder:
    """Create the encoder a :func:`load` request describes (no caching here)."""
    if model == "scvi":
        if path is not None:
            encoder = _scvi.load_saved(
                path, trust_pickle=trust_pickle, gene_id_column=options.get("gene_id_column", "auto")
            )
            if not random_init:
                return encoder
            return _scvi.random_weights_like(
                encoder.vae_kwargs, encoder.genes, seed=seed, var_key=encoder.var_key
            )
        adata = _require_adata(model, adata, "trains an SCVI on the dataset")
        genes = list(adata.var_names.astype(str))
        if random_init:
            vae_kwargs = _scvi.default_vae_kwargs(len(genes), **options)
            return _scvi.random_weights_like(vae_kwargs, genes, seed=seed, var_key=None)
        train_options = {k: v for k, v in options.items() if k != "gene_id_column"}
        return _scvi.train_encoder(
            adata, layer=layer, seed=seed, device=device, progress=progress, **train_options
        )
    if model == "scgpt":
        column = options.get("gene_id_column")
        if path is not None:
            return _scgpt.load_checkpoint(
                path,
                adata=adata,
                trust_pickle=trust_pickle,
                random_init=random_init,
                seed=seed,
                gene_id_column=column,
                max_seq_len=options.get("max_seq_len"),
            )
        if not random_init:
            raise ValueError(
                "scGPT needs a model directory: set model_path to a folder with vocab.json, args.json and "
                "best_model.pt (e.g. the whole-human checkpoint linked from the scGPT README; nothing is "
                "downloaded here). For the random-weight control without a checkpoint set random_init: true."
            )
        adata = _require_adata(model, adata, "with random_init takes its genes from the dataset")
        args = {k: v for k, v in options.items() if k != "gene_id_column"}
        return _scgpt.random_model(adata, seed=seed, gene_id_column=column, **args)
    adata = _require_adata(model, adata, "fits PCA on the dataset")
    return _pca.fit(
        adata,
        layer=layer,
        n_comps=int(options.get("n_comps", 50)),
        seed=seed,
        random_init=random_init,
        max_cells=options.get("max_cells"),
    )


def load(
    model: str,
    *,
    adata: ad.AnnData | None = None,
    path: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    random_init: bool = False,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    progress: bool = True,
    layer: str | None = None,
    embedding_key: str | None = None,
    **options: Any,
) -> Encoder | Precomputed:
    """Build, load or train a model's cell encoder.

    Parameters
    ----------
    model
        "scvi", "scgpt" or "pca"; or "precomputed": the embedding ``adata.obsm[embedding_key]`` in place of
        a model (checked by :func:`corelib.datasets.check_embedding`; a :class:`Precomputed` record).
    adata
        The dataset (raw counts): needed to train scVI or fit PCA when ``path`` is None; for scGPT it restricts
        the encoder's genes to the vocabulary genes it contains (same embeddings, smaller inputs).
    path
        A pretrained model: an scvi-tools model directory (``model.pt``; CELLxGENE Census layout included), an
        official scGPT directory (``vocab.json``, ``args.json``, ``best_model.pt``), or a directory written by
        :func:`save`. None: scVI is trained on ``adata`` (``options["epochs"]``, default 100), PCA is fitted.
    trust_pickle
        Allow reading pickle files (scvi-tools' ``model.pt``), which can execute code: only for trusted files.
    random_init
        The random-weight ("dead salmon") control: same architecture, weights drawn under ``seed``; the
        encoder's name gets a "_random" suffix.
    seed
        Seed of training, of random weights, and of scGPT's tie-breaks and gene subsampling.
    device
        "auto" (CUDA when available, else CPU), "cpu", "cuda", ...
    progress
        Show training progress bars.
    layer
        Layer of ``adata`` holding raw counts (None: ``X``).
    embedding_key
        The ``obsm`` key of a precomputed embedding: with model "precomputed" only.
    **options
        Model options (``model_options`` in params): scvi: epochs (None: scvi-tools' default), early_stopping
        (on the validation ELBO, ``epochs`` the cap), n_latent, n_layers, n_hidden, batch_size, threads (CPU
        threads of the training), gene_id_column; scgpt: gene_id_column, max_seq_len (and embsize, nheads,
        d_hid, nlayers for a random model without checkpoint); pca: n_comps, max_cells (fit on a seeded sample
        of that many cells, see ``corelib.encoders.pca.fit``).

    Returns
    -------
    The encoder, in eval mode, on ``device``.

    Raises
    ------
    ValueError
        Unknown model or option, missing inputs, untrusted pickle, or a checkpoint that does not match its
        architecture.
    """
    name = str(model).lower()
    if name not in MODELS:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}.")
    unknown = sorted(set(options) - set(MODELS[name]))
    if unknown:
        raise ValueError(
            f"unknown model_options {', '.join(unknown)} for model {name!r}; accepted: {', '.join(MODELS[name])}."
        )
    if (name == precomputed.NAME) != (embedding_key is not None):
        raise ValueError(
            "embedding_key (an obsm key) goes with model 'precomputed', and model 'precomputed' needs one: set "
            f"both, or neither (model {model!r}, embedding_key {embedding_key!r})."
        )
    if name == precomputed.NAME:
        return precomputed.from_adata(_require_adata(name, adata, "reads its obsm"), str(embedding_key))
    dev = resolve_device(device)
    if path is not None and (Path(path) / CONFIG_FILE).exists():
        restored = restore(path, device=dev)
        if restored.name.removesuffix("_random") != name:
            raise ValueError(
                f"{str(path)!r} holds a {restored.name!r} encoder, not {name!r}; pass model={restored.name!r}."
            )
        return restored.random_control(seed).to(dev).eval() if random_init else restored
    encoder = _build(
        name,
        adata=adata,
        path=path,
        layer=layer,
        trust_pickle=trust_pickle,
        random_init=random_init,
        seed=seed,
        device=dev,
        progress=progress,
        options=options,
    )
    return encoder.to(dev).eval()


def embed(
    encoder: Encoder | Precomputed,
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    batch_size: int = 256,
    key_added: str | None = None,
    min_overlap: float | int | None = None,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    block_size: int = 8192,
) -> np.ndarray:
    """Embed every cell of ``adata`` with ``encoder``, in batches, without gradients.

    Cells are read ``block_size`` at a time (from disk for a backed AnnData, see
    ``corelib.datasets.read(..., backed=True)``), so memory does not grow with the number of cells beyond the
    embedding itself, and that too stays on disk when ``out`` is given.

    Parameters
    ----------
    encoder
        From :func:`load`.
    adata
        Cells x genes with raw counts in ``X`` or ``layers[layer]``, in memory or backed; genes are matched to
        ``encoder.genes`` (by ``adata.var[encoder.var_key]`` when the encoder has one) with :func:`align`.
    layer
        Layer holding raw counts (None: ``X``).
    batch_size
        Cells per forward pass.
    key_added
        ``obsm`` key to write (default ``f"X_{encoder.name}"``).
    min_overlap
        Minimum gene overlap (see :func:`align`); None: the encoder's default.
    progress
        Show a progress bar (cells done, rate and ETA).
    out
        A ``.npy`` file to write the embedding into (created or replaced; opened as a memory map, so the
        embedding is never held in memory); None keeps it in memory.
    block_size
        Cells read (and aligned) at a time.

    Returns
    -------
    emb
        ``(n_cells x encoder.dim)`` float32 embedding (when ``out`` is given, a read-only ndarray over its memory map: pages are read on use), also
        written to ``adata.obsm[key_added]``; a record of the run goes to ``adata.uns["embed"]`` (``key``,
        ``model``, ``dim``, ``n_genes_model``, ``n_genes_missing``, ``layer``, ``device``, ``seconds``, and
        ``dataset`` and ``organism`` when ``adata.uns["dataset"]`` has ``name`` and ``organism``). ``layer`` says where the counts came from:
        ``layer``, else the layer of the file that ``corelib.datasets.load`` moved into ``X``
        (``uns["dataset"]["layer"]``), else ``"X"``.
    """
    if isinstance(encoder, Precomputed):
        return _copy_precomputed(encoder, adata, key_added=key_added, out=out)
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"encoder must be a corelib.encoders.Encoder (from load()), not {type(encoder).__name__}."
        )
    if adata.n_obs == 0:
        raise ValueError("adata has no cells to embed.")
    if batch_size < 1 or block_size < 1:
        raise ValueError(
            f"batch_size and block_size must be positive integers, got {batch_size}, {block_size}."
        )
    start_time = time.perf_counter()
    overlap = encoder.min_overlap if min_overlap is None else min_overlap
    genes_map = gene_map(adata, encoder.genes, var_key=encoder.var_key, min_overlap=overlap)
    if genes_map.n_missing:
        warnings.warn(
            f"{genes_map.n_missing} of the model's {len(encoder.genes)} genes are not in adata; they are set to 0.",
            stacklevel=2,
        )
    encoder.eval()
    device = encoder.device
    shape = (adata.n_obs, encoder.dim)
    emb = np.empty(shape, np.float32) if out is None else open_memmap(out, "w+", np.float32, shape)
    warned = False
    bar = tqdm(total=adata.n_obs, desc=f"embedding ({encoder.name})", unit="cell", disable=not progress)
    with torch.no_grad(), bar:
        for start, block in iter_blocks(adata, genes_map, layer=layer, block_size=block_size):
            if not warned and not _is_integer(block):
                warned = True
                warnings.warn(
                    "the expression is not integer: encoders expect raw counts (their preprocessing is part of "
                    "the model). If this is log-normalised data, pass the counts layer (layer='counts').",
                    stacklevel=2,
                )
            for offset in range(0, block.shape[0], batch_size):
                chunk = block[offset : offset + batch_size]
                dense = chunk.toarray() if sp.issparse(chunk) else chunk
                x_BG = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).to(device)
                rows = slice(start + offset, start + offset + chunk.shape[0])
                emb[rows] = encoder(x_BG).float().cpu().numpy()
            bar.update(block.shape[0])
    if out is not None:
        emb.flush()
        del emb
        emb = np.asarray(np.load(out, mmap_mode="r"))  # a plain ndarray view of the map: anndata writes it
    key = key_added or f"X_{encoder.name}"
    adata.obsm[key] = emb
    dataset = adata.uns.get("dataset", {})
    dataset = dataset if isinstance(dataset, dict) else {}
    record = {
        "key": key,
        "model": encoder.name,
        "dim": encoder.dim,
        "n_genes_model": len(encoder.genes),
        "n_genes_missing": int(genes_map.n_missing),
        "layer": layer or dataset.get("layer", "X"),
        "device": str(device),
        "seconds": round(time.perf_counter() - start_time, 3),
    }
    if "name" in dataset:
        record["dataset"] = str(dataset["name"])
    if "organism" in dataset:
        record["organism"] = str(dataset["organism"])
    adata.uns["embed"] = record
    return emb


def _copy_precomputed(
    record: Precomputed, adata: ad.AnnData, *, key_added: str | None, out: str | os.PathLike | None
) -> np.ndarray:
    """:func:`embed` for a precomputed embedding: its float32 copy (into ``out`` when given), checked to be the
    one ``record`` was made from, in ``obsm[key_added or record.key]``, and its record in ``uns["embed"]``."""
    start_time = time.perf_counter()
    emb_ND, sha256 = precomputed.embed(record, adata, out=out)
    if sha256 != record.sha256:
        raise ValueError(
            f"obsm[{record.key!r}] is not the embedding the run's record was made from (SHA-256 {sha256[:12]}, "
            f"recorded {record.sha256[:12]}): rerun notebook 01 on these cells."
        )
    key = key_added or record.key
    adata.obsm[key] = emb_ND
    dataset = adata.uns.get("dataset", {})
    dataset = dataset if isinstance(dataset, dict) else {}
    adata.uns["embed"] = {
        "key": key,
        "model": record.name,
        "embedding_key": record.key,
        "dim": record.dim,
        "sha256": record.sha256,
        "seconds": round(time.perf_counter() - start_time, 3),
        **{
            key: str(dataset[field])
            for key, field in (("dataset", "name"), ("organism", "organism"))
            if field in dataset
        },
    }
    return emb_ND


def save(encoder: Encoder | Precomputed, directory: str | os.PathLike) -> Path:
    """Write ``encoder`` as ``encoder.safetensors`` (state dict) + ``encoder.json`` (config), atomically; a
    :class:`Precomputed` record as ``encoder.json`` alone. Returns the directory."""
    if isinstance(encoder, Precomputed):
        return precomputed.save(encoder, directory)
    return save_weights(encoder, directory)


def describe(encoder: Encoder | Precomputed, model_path: str | os.PathLike | None) -> str:
    """What the run's encoder is, in lines: its source (:func:`pretrained.describe_source`), how an scVI was
    trained, its genes and dimensions; for a precomputed embedding, the record and why no model steps run."""
    if isinstance(encoder, Precomputed):
        return encoder.describe()
    lines = [f"{encoder.name}: {pretrained.describe_source(model_path)}"]
    if isinstance(encoder, ScviEncoder):
        lines.append(f"Training: {_scvi.describe_training(encoder.training_record)}")
    lines.append(f"{encoder.name}: {len(encoder.genes)} genes -> {encoder.dim} dimensions")
    return "\n".join(lines)


def embed_datasets(
    encoder: Encoder, adatas: Mapping[str, ad.AnnData], *, progress: bool = True
) -> dict[str, np.ndarray]:
    """Embed several datasets with one encoder: ``{name: embedding}`` (:func:`embed` on copies, so the inputs
    stay untouched)."""
    return {name: embed(encoder, a.copy(), progress=progress) for name, a in adatas.items()}


#: Cells the random projection of a precomputed embedding takes its mean expression from (a seeded sample above).
RANDOM_PROJECTION_MAX_CELLS = 50_000


def embed_random_control(
    encoder: Encoder | Precomputed, adata: ad.AnnData, *, seed: int = 0, progress: bool = True
) -> tuple[Encoder, np.ndarray]:
    """The random-weight ("dead salmon") control of ``encoder`` (:meth:`Encoder.random_control`: same class,
    architecture and genes, weights drawn under ``seed``) and its embedding of the cells (:func:`embed` on a
    copy of ``adata``, which stays untouched).

    A precomputed embedding has no weights to redraw: its control is a random linear encoder of the same cells'
    expression instead, as many random orthonormal axes of the log-normalised counts (``adata.X``) as the
    embedding has dimensions (:func:`corelib.encoders.pca.fit` with ``random_init``; the mean from at most
    :data:`RANDOM_PROJECTION_MAX_CELLS` cells).
    """
    if encoder.has_model:
        control = encoder.random_control(seed)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PCA fitted on a seeded sample")  # the mean only
            control = _pca.fit(
                adata, n_comps=encoder.dim, seed=seed, random_init=True, max_cells=RANDOM_PROJECTION_MAX_CELLS
            )
    return control, embed(control, adata.copy(), progress=progress)


def _is_integer(block: np.ndarray | sp.csr_matrix) -> bool:
    """Whether every value of a block of expression is an integer."""
    values = block.data if sp.issparse(block) else block
    return not values.size or bool(np.array_equal(values, np.round(values)))
