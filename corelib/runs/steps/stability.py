"""Notebook 04's SAE fits: train-or-load caches and the selected SAE's settings."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corelib import encoders
from corelib.runs import prose
from corelib.runs.cache import cached
from corelib.runs.layout import RunDir
from corelib.runs.steps.embed import restore_encoder
from corelib.runs.steps.sae import embeddings_fingerprint
from corelib.tl import sae as sae_mod
from corelib.tl.baselines import BASELINES, baseline_fitter
from corelib.tl.stability import Fitter, Method, alive_dictionary, concept_matches

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def train_or_load_sae(
    emb_ND: np.ndarray,
    n_concepts: int,
    k: int,
    *,
    seed: int,
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    **train_options: Any,
) -> Any:
    """Train a Top-K SAE with ``corelib.tl.sae.train``, or load it from ``path`` if it was made from the same inputs.

    Parameters
    ----------
    emb_ND
        Training embeddings (``n_cells x d``); ``corelib.tl.sae.train`` holds out ``holdout_fraction`` of them.
    n_concepts, k, seed
        As in ``corelib.tl.sae.train``.
    path
        Folder for the SAE (``TopKSAE.save``), with its provenance record beside it
        (:func:`corelib.runs.cached`): reused only when it was trained on the same embeddings with the same
        size, k, seed and training options.
    overwrite
        Retrain an SAE made from other inputs instead of raising ``StaleOutputError``.
    train_options
        Passed to ``corelib.tl.sae.train`` (``lr``, ``epochs``, ``batch_size``, ``holdout_fraction``,
        ``device``, ``progress``, ...).

    Returns
    -------
    The ``TopKSAE``.
    """
    settings = {key: v for key, v in train_options.items() if key not in ("device", "progress")}

    def train() -> Any:
        return sae_mod.train(emb_ND, n_concepts, k, seed=seed, **train_options).sae

    if path is None:
        return train()
    inputs = {
        "embeddings": emb_ND,
        "n_concepts": int(n_concepts),
        "k": int(k),
        "seed": int(seed),
        "train": settings,
    }
    return cached(
        train,
        [Path(path)],
        inputs,
        save=lambda model, where: model.save(where, extra={"train": settings, "seed": int(seed)}),
        load=sae_mod.TopKSAE.load,
        overwrite=overwrite,
    )


def sae_fitter(
    n_concepts: int,
    k: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    known: Mapping[str, str | os.PathLike] | None = None,
    drop_dead: bool = True,
    overwrite: bool = False,
    **train_options: Any,
) -> Fitter:
    """A :data:`Fitter` training a Top-K SAE (:func:`train_or_load_sae`) and returning its dictionary.

    Parameters
    ----------
    n_concepts, k
        Dictionary size and active concepts per cell (use the selected SAE's, from notebook 02).
    cache_dir
        If given, each SAE is saved as ``<cache_dir>/<tag>/`` and reused on rerun.
    known
        ``{tag: folder}`` of SAEs already trained with these settings (e.g. ``{"seed0": run.path("sae",
        selected)}``: notebook 02's selected SAE is seed 0 of the seeds comparison), loaded instead of trained.
    drop_dead
        Remove the concepts that never fire on the cells before matching: a dead concept's decoder row got no
        gradient from the reconstruction and is close to its random initialisation, so it would only add
        noise to the matching.
    overwrite
        Retrain a cached SAE made from other inputs (:func:`train_or_load_sae`).
    train_options
        Passed to ``corelib.tl.sae.train`` (``lr``, ``epochs``, ``batch_size``, ``device``, ``progress``, ...).
    """
    known = dict(known or {})

    def fit(emb_ND: np.ndarray, seed: int, tag: str) -> np.ndarray:
        if tag in known:
            model = sae_mod.TopKSAE.load(known[tag], d_in=emb_ND.shape[1])
        else:
            path = Path(cache_dir) / tag if cache_dir is not None else None
            model = train_or_load_sae(
                emb_ND, n_concepts, k, seed=seed, path=path, overwrite=overwrite, **train_options
            )
        return alive_dictionary(model, emb_ND) if drop_dead else model.dictionary.detach().cpu().numpy()

    return fit


# ----------------------------------------------------------------------------------------------------------
# Notebook 04 steps (read the run directory, write its 04_stability entries)
# ----------------------------------------------------------------------------------------------------------
def selected_sae(run: Any, emb_ND: np.ndarray) -> dict[str, Any]:
    """The SAE selected by notebook 02: ``name``, ``path``, ``n_concepts``, ``k``, ``seed`` and ``train`` (the
    ``corelib.tl.sae.train`` options it was trained with, from its ``cfg.json``), checked to be trained on the
    run's embeddings ``emb_ND`` (a ``StaleOutputError`` names the notebook to rerun otherwise)."""
    name = run.read_json("sae_selected")["sae"]
    path = run.check_made_from("sae", name, embeddings=embeddings_fingerprint(emb_ND))
    cfg = json.loads((path / sae_mod.CONFIG_FILE).read_text())
    return {
        "name": name,
        "path": path,
        "n_concepts": cfg["n_concepts"],
        "k": cfg["k"],
        "seed": cfg.get("seed", 0),
        "train": dict(cfg.get("train", {})),
    }


def random_control(
    run: RunDir, adata: Any, *, seed: int = 0, device: str = "auto", progress: bool = True
) -> tuple[Any, np.ndarray]:
    """The run's encoder with its weights redrawn (the "dead salmon" control) and its embeddings of the cells.

    The control is ``restore_encoder(run).random_control(seed)`` (:func:`corelib.encoders.embed_random_control`):
    the class, architecture and genes of the encoder that embedded the cells (notebook 01), whatever it was
    built from, with random weights. For a precomputed embedding (no weights), a random linear encoder of the
    cells' expression with as many dimensions, said once (:data:`corelib.runs.prose.RANDOM_PROJECTION`).
    """
    encoder = restore_encoder(run, device=device)
    if not encoder.has_model:
        print(prose.RANDOM_PROJECTION)
    return encoders.embed_random_control(encoder, adata, seed=seed, progress=progress)


def random_control_embeddings(
    run: RunDir, adata: Any, *, seed: int = 0, device: str = "auto", progress: bool = True
) -> np.ndarray:
    """The embeddings of :func:`random_control`."""
    return random_control(run, adata, seed=seed, device=device, progress=progress)[1]


def stability_methods(
    emb_ND: np.ndarray,
    sae_settings: Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike,
    baselines: Sequence[str] = tuple(BASELINES),
    random_emb_ND: np.ndarray | None = None,
    epochs: int | None = None,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = False,
    baseline_max_cells: int | None = None,
) -> dict[str, Method]:
    """The methods compared in notebook 04: the selected SAE's settings, the baselines with as many components
    as fit (``min(n_concepts, limit)``), and the SAE on the random-encoder embeddings.

    Parameters
    ----------
    emb_ND
        The run's embeddings (``n_cells x d``).
    sae_settings
        :func:`selected_sae`; the selected SAE itself is reused as seed ``sae_settings["seed"]``.
    cache_dir
        SAEs are cached as ``<cache_dir>/<method>/<tag>/``.
    baselines
        Among ``"pca"``, ``"ica"``, ``"nmf"``.
    random_emb_ND
        Embeddings of the random-weight encoder (:func:`random_control_embeddings`); None leaves the control out.
    epochs
        Train every SAE of the comparison with this many epochs instead of the selected SAE's (then the
        selected SAE is retrained too, so that all seeds share the settings); None keeps the selected SAE's.
    overwrite
        Retrain cached SAEs made from other inputs (:func:`train_or_load_sae`).
    device, progress
        For the SAE training.
    baseline_max_cells
        Fit each baseline on a seeded sample of at most this many cells (:func:`baseline_fitter`); None: all.
    """
    c, k = sae_settings["n_concepts"], sae_settings["k"]
    train = {**sae_settings["train"], "device": device, "progress": progress, "overwrite": overwrite}
    known = {f"seed{sae_settings['seed']}": sae_settings["path"]}
    if epochs is not None and epochs != train.get("epochs"):
        train["epochs"], known = int(epochs), {}
    methods = {
        "SAE": Method(sae_fitter(c, k, cache_dir=Path(cache_dir) / "sae", known=known, **train), emb_ND)
    }
    for b in baselines:
        methods[b.upper()] = Method(baseline_fitter(b, c, max_cells=baseline_max_cells), emb_ND, BASELINES[b])
    if random_emb_ND is not None:
        fit = sae_fitter(c, k, cache_dir=Path(cache_dir) / "sae_random_encoder", **train)
        methods["SAE (random encoder)"] = Method(fit, random_emb_ND)
    return methods


def selected_concept_matches(
    emb_ND: np.ndarray, sae_settings: Mapping[str, Any], cache_dir: str | os.PathLike, seeds: Sequence[int]
) -> pd.DataFrame:
    """Each concept of the run's selected SAE matched to the SAEs of the other seeds (for the concept cards):
    :func:`corelib.tl.stability.concept_matches` of the SAEs cached by :func:`stability_methods`.

    Parameters
    ----------
    emb_ND
        The run's embeddings (``n_cells x d``): the other SAEs' dead concepts are left out of the matching.
    sae_settings
        :func:`selected_sae`.
    cache_dir
        The ``cache_dir`` given to :func:`stability_methods`; the seed SAEs are read from ``<cache_dir>/sae/``.
    seeds
        The seeds of the comparison; the selected SAE's own seed is skipped.

    Returns
    -------
    One row per matched concept and seed: ``concept`` (of the selected SAE), ``matched_concept``,
    ``cosine``, ``comparison`` ("seed 1", ...). Seeds whose SAE was not trained are left out.
    """
    model = sae_mod.TopKSAE.load(sae_settings["path"], d_in=emb_ND.shape[1])
    others = {
        f"seed {seed}": sae_mod.TopKSAE.load(path, d_in=emb_ND.shape[1])
        for seed in seeds
        if seed != sae_settings["seed"] and (path := Path(cache_dir) / "sae" / f"seed{seed}").exists()
    }
    return concept_matches(model, others, emb_ND)
