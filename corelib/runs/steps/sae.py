"""SAE sweeps cached in the run directory (notebook 02) and the selected SAE read back by later notebooks.

Every trained SAE is a folder ``run.path("sae", name)`` (``sae.safetensors``, ``cfg.json``, ``history.csv``,
``metrics.json``) with its provenance record beside it: a finished configuration is never retrained on rerun.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from corelib._io import atomic_write
from corelib.runs.cache import Known, provenance_path, record_provenance
from corelib.runs.layout import RunDir
from corelib.tl.sae.evaluate import encode, sae_name
from corelib.tl.sae.model import CONFIG_FILE, SAEConfig, TopKSAE, as_embeddings
from corelib.tl.sae.sweep import sweep_points, train_many
from corelib.tl.sae.training import TrainConfig, TrainResult

if TYPE_CHECKING:
    import scipy.sparse as sp
    import torch


def load_sae(run: RunDir, emb_ND: Any, name: str | None = None) -> tuple[str, Any]:
    """The run's SAE (default: the one notebook 02 selected), checked to be trained on these embeddings.

    Returns
    -------
    ``(name, sae)``, the :class:`corelib.tl.sae.TopKSAE` in eval mode.
    """
    name = name or run.read_json("sae_selected")["sae"]
    path = run.check_made_from("sae", name, embeddings=embeddings_fingerprint(emb_ND))
    return name, TopKSAE.load(path, d_in=emb_ND.shape[1])


def attribution_path(run: RunDir, kind: str) -> Path | None:
    """Notebook 03's attribution file of ``kind`` ("concepts" or "neurons"), or None when it was not written.

    Raises
    ------
    StaleOutputError
        It was computed from another embedding (or, for concepts, another selected SAE) than the run holds now.
    """
    key = f"attribution_{kind}"
    if not run.path(key).exists():
        return None
    upstream = {"embedded": run.fingerprint("embedded")}
    if kind == "concepts":
        upstream["sae"] = run.fingerprint("sae", run.read_json("sae_selected")["sae"])
    return run.check_made_from(key, **upstream)


HISTORY_FILE = "history.csv"


METRICS_FILE = "metrics.json"


def embeddings_fingerprint(embeddings: object) -> Known:
    """The provenance of embeddings as an SAE sees them (float32, whatever the input's dtype or type)."""
    return Known.of(as_embeddings(embeddings))


def sweep(
    embeddings: object,
    configs: Sequence[tuple[int, int] | tuple[int, int, int]],
    *,
    run: RunDir,
    lr: float = TrainConfig.lr,
    epochs: int = TrainConfig.epochs,
    batch_size: int = TrainConfig.batch_size,
    aux_k: int = TrainConfig.aux_k,
    holdout_fraction: float = TrainConfig.holdout_fraction,
    split_seed: int = 0,
    device: str | torch.device = "auto",
    fused: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train a grid of SAEs in one call (:func:`corelib.tl.sae.train_many`), skipping those already finished in
    the run directory.

    Parameters
    ----------
    embeddings
        Cells x d.
    configs
        Sweep points ``(n_concepts, k, seed)`` (or ``(n_concepts, k)`` for seed 0), e.g. from :func:`grid`.
    run
        Run directory: each SAE goes to ``run.path("sae", sae_name(c, k, seed))`` and the table to
        ``run.path("sae_sweep")``. An SAE trained from the same embeddings with the same settings is reused;
        one trained from other ones raises :class:`corelib.runs.StaleOutputError` naming what changed
        (retrained when ``run.overwrite``).
    lr, epochs, batch_size, aux_k, holdout_fraction, split_seed
        See :class:`corelib.tl.sae.TrainConfig`; shared by the grid.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    fused
        Train the points sharing a seed together (:func:`corelib.tl.sae.train_many`); the default trains
        them one by one. Both give the same models.
    progress
        Progress bars.

    Returns
    -------
    The sweep table (also written to ``run.path("sae_sweep")``), indexed by SAE name: ``d_in, n_concepts,
    k, seed, expansion, lr, epochs, batch_size`` and the metrics (``r2_train``, ``r2_heldout``,
    ``l0_train``, ``n_active_train``, ``dead_fraction_train``, ..., ``seconds``).
    """
    x_ND = as_embeddings(embeddings)
    tcfg = TrainConfig(
        lr, epochs, batch_size, aux_k, holdout_fraction=holdout_fraction, split_seed=split_seed
    )
    cfgs = {sae_name(c, k, s): (SAEConfig(x_ND.shape[1], c, k), s) for c, k, s in sweep_points(configs)}
    embedding = embeddings_fingerprint(x_ND)
    inputs = {
        name: {"embeddings": embedding, "sae": asdict(cfg), "train": asdict(tcfg), "seed": seed}
        for name, (cfg, seed) in cfgs.items()
    }
    todo = [name for name in cfgs if not run.reusable("sae", name, inputs[name])]

    def save(i: int, res: TrainResult) -> None:
        name = todo[i]
        _write_result(run, name, res, tcfg, cfgs[name][1])
        record_provenance(run.path("sae", name), inputs[name])

    points = [(cfgs[n][0].n_concepts, cfgs[n][0].k, cfgs[n][1]) for n in todo]
    train_many(
        x_ND,
        points,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        aux_k=aux_k,
        holdout_fraction=holdout_fraction,
        split_seed=split_seed,
        device=device,
        fused=fused,
        progress=progress,
        on_trained=save,
        keep=False,  # each SAE is saved as soon as it is trained; the grid is never held in memory at once
    )
    table = pd.DataFrame([_row(run, name) for name in cfgs]).set_index("name")
    run.write_table("sae_sweep", table)
    return table


def _write_result(run: RunDir, name: str, res: TrainResult, tcfg: TrainConfig, seed: int) -> None:
    """Write one trained SAE's folder (its provenance record is written after it, by the caller)."""
    path = run.path("sae", name)
    provenance_path(path).unlink(missing_ok=True)
    res.sae.save(path, extra={"train": asdict(tcfg), "seed": seed})
    with atomic_write(path / HISTORY_FILE) as fh:
        res.history.to_csv(fh, index=False)
    with atomic_write(path / METRICS_FILE) as fh:
        json.dump(res.metrics, fh, indent=2)


def _row(run: RunDir, name: str) -> dict:
    """One sweep-table row from a finished SAE folder."""
    path = run.path("sae", name)
    cfg = json.loads((path / CONFIG_FILE).read_text())
    train_cfg = cfg["train"]
    return {
        "name": name,
        "d_in": cfg["d_in"],
        "n_concepts": cfg["n_concepts"],
        "k": cfg["k"],
        "seed": cfg["seed"],
        "expansion": cfg["n_concepts"] / cfg["d_in"],
        "lr": train_cfg["lr"],
        "epochs": train_cfg["epochs"],
        "batch_size": train_cfg["batch_size"],
        **json.loads((path / METRICS_FILE).read_text()),
    }


def load_histories(run: RunDir, names: Iterable[str]) -> dict[str, pd.DataFrame]:
    """Training histories of finished SAEs, by name."""
    return {name: pd.read_csv(run.require("sae", name) / HISTORY_FILE) for name in names}


def encode_sweep(run: RunDir, names: Iterable[str], embeddings: object) -> dict[str, sp.csr_matrix]:
    """Sparse codes (n_cells x n_concepts, :func:`corelib.tl.sae.encode`) of each finished SAE in ``names``."""
    x_ND = as_embeddings(embeddings)
    return {name: encode(TopKSAE.load(run.require("sae", name), d_in=x_ND.shape[1]), x_ND) for name in names}
