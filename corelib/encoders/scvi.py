"""scVI (scvi-tools) as an :class:`~corelib.encoders.base.Encoder`: raw counts -> posterior mean of z.

The embedding is the z-encoder's posterior mean ``qz.loc``, exactly what scvi-tools'
``SCVI.get_latent_representation()`` returns. The network is scvi-tools' own
``module.z_encoder``, rebuilt from the saved hyper-parameters (``attr_dict["init_params_"]`` of ``model.pt``)
and loaded strictly; nothing is re-implemented. The decoder and dispersion are kept too, so that
:meth:`ScviEncoder.decode` runs scvi-tools' own ``module.generative`` on an embedding (concept steering).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch import nn

from corelib._optional import require
from corelib.datasets import looks_like_ensembl
from corelib.device import small_model_threads
from corelib.encoders.base import Encoder, LinearHead, align, reinitialise

#: Architecture of the SCVI we train when no model is given (the CELLxGENE Census model's n_latent/n_layers).
DEFAULT_ARCH = {"n_latent": 50, "n_layers": 2, "n_hidden": 128}

#: Warnings Lightning gives in every scvi-tools training that never concern the model: the logging interval
#: on small datasets (scvi-tools keeps a per-epoch history) and a deprecation inside Lightning itself.
LIGHTNING_NOISE = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Train without Lightning's chatter, keeping its real warnings.

    Lightning logs at INFO level "Seed set to 0", the hardware it found, a tip to install its cloud logger
    and why ``Trainer.fit`` stopped; inside the block its loggers show warnings only, and the
    :data:`LIGHTNING_NOISE` warnings are ignored.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _vae_kwargs_from_attrs(
    init_params: dict[str, Any], registry: dict[str, Any], n_input: int
) -> dict[str, Any]:
    """Keyword arguments of ``scvi.module.VAE`` for a saved SCVI (its init params + data registry)."""
    if registry.get("model_name", "SCVI") != "SCVI":
        raise ValueError(
            f"this scvi-tools model is a {registry.get('model_name')!r}, not an SCVI; only SCVI models are supported."
        )
    if "non_kwargs" in init_params:  # scvi-tools >= 0.15 nests the explicit and the ** keyword arguments
        params = {**init_params["non_kwargs"], **init_params.get("kwargs", {}).get("kwargs", {})}
    else:
        params = dict(init_params)
    fields = registry.get("field_registries", {})
    stats = {k: v for field in fields.values() for k, v in field.get("summary_stats", {}).items()}
    cat_state = fields.get("extra_categorical_covs", {}).get("state_registry", {})
    n_cats = cat_state.get("n_cats_per_key")
    return {
        **params,
        "n_input": int(n_input),
        "n_batch": int(stats.get("n_batch", 1)),
        "n_labels": int(stats.get("n_labels", 1)),
        "n_continuous_cov": int(stats.get("n_extra_continuous_covs", 0)),
        "n_cats_per_cov": [int(n) for n in n_cats] if n_cats else None,
        "use_size_factor_key": registry.get("setup_args", {}).get("size_factor_key") is not None,
    }


def _build_vae(vae_kwargs: dict[str, Any]) -> nn.Module:
    """An untrained ``scvi.module.VAE`` with the given architecture (library-size priors are placeholders)."""
    VAE = require("scvi.module", "The scVI encoder").VAE

    # init params of other scvi-tools versions may name model-level arguments (adata, registry, ...) that the
    # module does not take; the strict state-dict load afterwards still checks the architecture
    accepted = inspect.signature(VAE).parameters
    kwargs = {k: v for k, v in vae_kwargs.items() if k in accepted}
    if not kwargs.get("use_observed_lib_size", True):
        placeholder = np.zeros((1, kwargs["n_batch"]), dtype=np.float32)
        kwargs.update(library_log_means=placeholder, library_log_vars=placeholder + 1)
    try:
        return VAE(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild this SCVI with the installed scvi-tools ({err}); the model was saved by a different "
            "scvi-tools version: load and re-save it with the installed version."
        ) from err


class ScviEncoder(Encoder):
    """scVI's z-encoder: counts ``x_BG`` -> ``log1p`` -> FCLayers -> ``qz.loc`` (``emb_BD``).

    Parameters
    ----------
    vae_kwargs
        Keyword arguments of ``scvi.module.VAE`` describing the architecture.
    genes
        The model's genes (its ``var_names``), in input order.
    name
        "scvi", or "scvi_random" for the random-weight control.
    var_key
        Column of ``adata.var`` with identifiers matching ``genes`` (None: ``var_names``).
    training_record
        How the model was trained, when it was trained here (:func:`record_training`); None for a loaded model.
    """

    def __init__(
        self,
        vae_kwargs: dict[str, Any],
        genes: list[str],
        *,
        name: str = "scvi",
        var_key: str | None = None,
        training_record: dict[str, Any] | None = None,
    ) -> None:
        if vae_kwargs.get("latent_distribution", "normal") != "normal":
            raise ValueError(
                "this SCVI uses latent_distribution='ln', whose embedding is a Monte-Carlo average; only 'normal' "
                "is supported."
            )
        super().__init__(name=name, genes=genes, dim=vae_kwargs.get("n_latent", 10), var_key=var_key)
        vae = _build_vae(vae_kwargs)
        if vae.encode_covariates and (
            vae_kwargs["n_batch"] > 1 or vae_kwargs["n_continuous_cov"] > 0 or vae_kwargs["n_cats_per_cov"]
        ):
            raise ValueError(
                "this SCVI encodes covariates (encode_covariates=True with batches or extra covariates), so its "
                "embedding depends on a batch label that new cells do not have; use a model trained with "
                "encode_covariates=False (as the CELLxGENE Census model is)."
            )
        self.vae_kwargs = dict(vae_kwargs)
        self.training_record = dict(training_record) if training_record is not None else None
        self.log_variational = bool(vae.log_variational)
        self.z_encoder = vae.z_encoder
        # the generative path's weights (registered after the z-encoder, so random_control draws the same
        # z-encoder); None in checkpoints saved before they were kept (see from_config)
        self.decoder: nn.Module | None = vae.decoder
        self.px_r: nn.Parameter | None = vae.px_r
        # encode_covariates with one batch: FCLayers still expects one (ignored) category index per covariate
        self.n_cat_inputs = len(self.z_encoder.encoder.n_cat_list)
        self.eval()

    def preprocess(self, x_BG: torch.Tensor) -> torch.Tensor:
        """scVI's elementwise input transform: ``log1p`` when the model has ``log_variational``."""
        return torch.log1p(x_BG) if self.log_variational else x_BG

    def forward(self, x_BG: torch.Tensor) -> torch.Tensor:
        """Posterior mean of z for raw counts ``x_BG`` (cells x genes) -> ``emb_BD`` (cells x n_latent)."""
        cats = [torch.zeros(x_BG.shape[0], 1, dtype=torch.long, device=x_BG.device)] * self.n_cat_inputs
        hidden_BH = self.z_encoder.encoder(self.preprocess(x_BG), *cats)
        return self.z_encoder.mean_encoder(hidden_BH)

    def decoder_absent(self) -> str | None:
        """Why this scVI cannot decode embeddings (None: :meth:`decode` works)."""
        kwargs = self.vae_kwargs
        if self.decoder is None:
            return (
                "this scVI checkpoint was saved without its decoder (by an older corelib): delete the run's "
                "encoder checkpoint (01_embed/encoder) and rerun the embed step (01_embed), which retrains the seeded scVI and "
                "keeps it (overwrite alone reuses the checkpoint, its inputs being unchanged)."
            )
        if kwargs["n_continuous_cov"] > 0 or kwargs["n_cats_per_cov"]:
            return "this scVI's decoder needs per-cell covariates (extra continuous or categorical) that an embedding lacks."
        if (
            kwargs.get("dispersion") == "gene-label"
            or kwargs.get("batch_representation", "one-hot") != "one-hot"
        ):
            return "this scVI's decoder depends on cell labels or a batch embedding, which are not supported here."
        return None

    def decode(self, emb_BD: torch.Tensor) -> torch.Tensor:
        """Expected normalised expression ``px.scale`` of scvi-tools' own ``module.generative`` (batch x genes).

        This is what ``SCVI.get_normalized_expression`` returns for a latent ``z``: library-size free, rows sum
        to 1. With several batches it is averaged over them (``transform_batch`` = every batch), as the cells'
        batches are not part of the embedding.
        """
        reason = self.decoder_absent()
        if reason is not None:
            raise ValueError(reason)
        vae = self._generative_module().to(emb_BD.device)
        library_B1 = emb_BD.new_zeros(emb_BD.shape[0], 1)  # log library 0: px.rate = px.scale
        n_batch = int(self.vae_kwargs["n_batch"])
        total_BG = 0
        for batch in range(n_batch):
            batch_B1 = torch.full_like(library_B1, batch, dtype=torch.long)
            total_BG = total_BG + vae.generative(emb_BD, library_B1, batch_B1)["px"].scale
        return total_BG / n_batch

    def _generative_module(self) -> nn.Module:
        """scvi-tools' ``VAE`` sharing this encoder's decoder and dispersion (built once, not a submodule)."""
        vae = self.__dict__.get("_vae")
        if vae is None:
            vae = _build_vae(self.vae_kwargs)
            vae.decoder, vae.px_r = self.decoder, self.px_r
            self.__dict__["_vae"] = vae.eval()
        return vae

    def random_control(self, seed: int) -> ScviEncoder:
        """Same architecture and genes, weights drawn under ``seed`` (:func:`random_weights_like`)."""
        return random_weights_like(self.vae_kwargs, self.genes, seed=seed, var_key=self.var_key)

    def _layers(self) -> list[nn.Module]:
        """The z-encoder's modules in order (first Linear first), without the empty slots."""
        layers = [m for block in self.z_encoder.encoder.fc_layers for m in block if m is not None]
        return [*layers, self.z_encoder.mean_encoder]

    def linear_head(self) -> LinearHead:
        """First Linear of the z-encoder after elementwise ``log1p``; ``rest`` runs the remaining layers."""
        first, *others = self._layers()

        def rest(h_BH: torch.Tensor) -> torch.Tensor:
            for layer in others:
                h_BH = layer(h_BH)
            return h_BH

        return LinearHead(preprocess=self.preprocess, weight=first.weight, bias=first.bias, rest=rest)

    def config(self) -> dict[str, Any]:
        """Architecture, genes, name and training record (see :func:`corelib.encoders.base.save`)."""
        return {
            "vae_kwargs": self.vae_kwargs,
            "genes": self.genes,
            "name": self.name,
            "var_key": self.var_key,
            "training_record": self.training_record,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ScviEncoder:
        """Rebuild from :meth:`config` and the encoder's own state dict (strict)."""
        encoder = cls(
            config["vae_kwargs"],
            config["genes"],
            name=config["name"],
            var_key=config.get("var_key"),
            training_record=config.get("training_record"),
        )
        if not any(k.startswith("decoder.") for k in tensors):  # saved before the decoder was kept
            encoder.decoder, encoder.px_r = None, None
        encoder.load_state_dict(tensors, strict=True)
        return encoder.eval()


def _load_module_state(encoder: ScviEncoder, module_state: dict[str, torch.Tensor]) -> ScviEncoder:
    """Load the full ``VAE`` state dict strictly (validates the whole architecture), keep the z-encoder."""
    vae = _build_vae(encoder.vae_kwargs)
    # scvi-tools also stores a (non-tensor) "pyro_param_store" entry in model_state_dict
    module_state = {k: v for k, v in module_state.items() if isinstance(v, torch.Tensor)}
    result = vae.load_state_dict(module_state, strict=False)
    mismatched = [
        k for k, v in vae.state_dict().items() if k in module_state and module_state[k].shape != v.shape
    ]
    if result.missing_keys or result.unexpected_keys or mismatched:
        raise ValueError(
            "the saved SCVI weights do not match the architecture read from its init_params_: "
            f"missing: {', '.join(result.missing_keys[:10]) or 'none'}; unexpected: "
            f"{', '.join(result.unexpected_keys[:10]) or 'none'}; shape-mismatched: {', '.join(mismatched[:10]) or 'none'}."
        )
    encoder.z_encoder.load_state_dict(vae.z_encoder.state_dict(), strict=True)
    encoder.decoder.load_state_dict(vae.decoder.state_dict(), strict=True)
    with torch.no_grad():
        encoder.px_r.copy_(vae.px_r)
    return encoder.eval()


def from_model(
    model: Any, *, var_key: str | None = None, training_record: dict[str, Any] | None = None
) -> ScviEncoder:
    """Encoder of an in-memory ``scvi.model.SCVI`` (same weights); ``training_record``: :func:`record_training`."""
    genes = list(model.adata.var_names)
    vae_kwargs = _vae_kwargs_from_attrs(model.init_params_, model.registry_, len(genes))
    encoder = ScviEncoder(vae_kwargs, genes, var_key=var_key, training_record=training_record)
    return _load_module_state(encoder, {k: v.detach().cpu() for k, v in model.module.state_dict().items()})


def load_saved(
    path: str | os.PathLike, *, trust_pickle: bool = False, gene_id_column: str | None = "auto"
) -> ScviEncoder:
    """Load a directory saved by scvi-tools' ``model.save()`` (the CELLxGENE Census layout included).

    Parameters
    ----------
    path
        The model directory (holding ``model.pt``) or the ``model.pt`` file.
    trust_pickle
        ``model.pt`` is a Python pickle, and unpickling a file can run arbitrary code: it is read only when
        this is True.
    gene_id_column
        Column of ``adata.var`` holding ids that match the model's genes; "auto": "feature_id" (the CELLxGENE
        convention, where ``corelib.datasets.load`` keeps the Ensembl ids when ``gene_symbols_key`` makes the
        symbols the ``var_names``) when the model's genes are Ensembl ids, else ``var_names``.

    Returns
    -------
    The encoder, on the CPU, in eval mode.
    """
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.exists():
        legacy = path / "model_params.pt"
        hint = (
            " It looks like a legacy scvi-tools save: convert it with scvi.model.SCVI.convert_legacy_save()."
            if legacy.exists()
            else ""
        )
        raise ValueError(f"no scvi-tools model at {str(file)!r} (expected a directory with model.pt).{hint}")
    if not trust_pickle:
        raise ValueError(
            f"{str(file)!r} is a Python pickle (scvi-tools' save format): loading it can execute arbitrary code. "
            "If you trust its source, pass trust_pickle=True (params: trust_pickle: true)."
        )
    saved = torch.load(file, map_location="cpu", weights_only=False)
    genes = [str(g) for g in saved["var_names"]]
    attrs = saved["attr_dict"]
    vae_kwargs = _vae_kwargs_from_attrs(attrs["init_params_"], attrs["registry_"], len(genes))
    if gene_id_column == "auto":
        gene_id_column = "feature_id" if looks_like_ensembl(genes) else None
    encoder = ScviEncoder(vae_kwargs, genes, var_key=gene_id_column)
    return _load_module_state(encoder, saved["model_state_dict"])


def default_vae_kwargs(n_input: int, **options: Any) -> dict[str, Any]:
    """Architecture of the SCVI trained here: scvi-tools' SCVI defaults with :data:`DEFAULT_ARCH` overridden."""
    arch = {k: int(options.get(k, v)) for k, v in DEFAULT_ARCH.items()}
    return {
        **arch,
        "n_input": int(n_input),
        "n_batch": 1,
        "n_labels": 1,
        "n_continuous_cov": 0,
        "n_cats_per_cov": None,
        "use_size_factor_key": False,
        "dropout_rate": 0.1,
        "dispersion": "gene",
        "gene_likelihood": "zinb",
        "latent_distribution": "normal",
        "use_observed_lib_size": True,
    }


def train(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    seed: int = 0,
    epochs: int | None = 100,
    early_stopping: bool = False,
    device: torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Train a small ``scvi.model.SCVI`` on a dataset's counts, seeded.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` or ``layers[layer]``; not modified.
    layer
        Layer with the counts (None: ``X``).
    batch_key
        ``obs`` column used as scVI's batch covariate (None: one batch). With scvi-tools' default
        ``encode_covariates=False`` it enters the decoder only, so the embedding of a cell depends on its
        expression alone.
    seed
        Sets ``scvi.settings.seed`` (Python, numpy and torch generators).
    epochs
        ``max_epochs`` of training: the number of epochs, or their cap under ``early_stopping``; None:
        scvi-tools' default, ``min(400, round(400 * 20000 / n_cells))``.
    early_stopping
        Stop when the validation ELBO has not improved for scvi-tools' default patience (45 epochs), on the
        10% of cells scvi-tools holds out (its defaults: ``early_stopping_monitor="elbo_validation"``,
        ``min_delta=0``). The weights are those of the last epoch, as in scvi-tools.
    device
        Training device (CUDA -> "gpu" accelerator, else CPU).
    progress
        Show scvi-tools' training progress bar.
    **options
        ``n_latent``, ``n_layers``, ``n_hidden`` (default :data:`DEFAULT_ARCH`), ``batch_size`` (default 128),
        ``threads`` (CPU threads of the training; default one, :func:`corelib.device.small_model_threads`).

    Returns
    -------
    The trained ``scvi.model.SCVI``.
    """
    scvi = require("scvi", "Training an scVI encoder")

    counts, _ = align(adata, list(adata.var_names), layer=layer)
    obs = adata.obs[[batch_key]].copy() if batch_key is not None else None
    local = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
    device = device if device is not None else torch.device("cpu")
    with quiet_lightning():
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(local, batch_key=batch_key)
        arch = {k: int(options.get(k, v)) for k, v in DEFAULT_ARCH.items()}
        model = scvi.model.SCVI(local, **arch)
        n_weights = sum(p.numel() for p in model.module.parameters())
        with small_model_threads(device, n_weights, threads=options.get("threads")):
            model.train(
                max_epochs=int(epochs) if epochs is not None else None,
                early_stopping=bool(early_stopping),
                batch_size=int(options.get("batch_size", 128)),
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=1,
                enable_progress_bar=progress,
            )
    model.module.eval()
    return model


def train_encoder(adata: ad.AnnData, **train_options: Any) -> ScviEncoder:
    """:func:`train` an SCVI and keep its encoder with its :func:`record_training` (how training went).

    Parameters
    ----------
    adata
        Cells x genes, raw counts (see :func:`train`).
    **train_options
        Keyword arguments of :func:`train` (``layer``, ``seed``, ``epochs``, ``early_stopping``, ``device``,
        ``progress``, ``n_latent``, ``threads``, ...).
    """
    trained = train(adata, **train_options)
    record = record_training(trained, early_stopping=bool(train_options.get("early_stopping", False)))
    return from_model(trained, training_record=record)


def record_training(model: Any, *, early_stopping: bool) -> dict[str, Any]:
    """How a model from :func:`train` was trained: criterion, epochs run, their cap, final validation ELBO.

    Returns
    -------
    ``{"criterion", "early_stopping", "max_epochs", "epochs", "stopped_early", "elbo_validation",
    "best_elbo_validation"}``; the ELBOs (per cell, on scvi-tools' held-out cells) are None when no
    validation ran (fixed-epoch training).
    """
    epochs = len(model.history["elbo_train"])
    max_epochs = int(model.trainer.max_epochs)
    elbo = model.history.get("elbo_validation")
    criterion = "validation ELBO early stopping (scvi-tools defaults: patience 45, min_delta 0)"
    return {
        "criterion": criterion if early_stopping else "fixed number of epochs",
        "early_stopping": bool(early_stopping),
        "max_epochs": max_epochs,
        "epochs": epochs,
        "stopped_early": bool(early_stopping) and epochs < max_epochs,
        "elbo_validation": float(elbo.iloc[-1, 0]) if elbo is not None else None,
        "best_elbo_validation": float(elbo.iloc[:, 0].min()) if elbo is not None else None,
    }


def describe_training(record: dict[str, Any] | None) -> str:
    """One sentence on how an encoder was trained, from its :func:`record_training` (None: loaded)."""
    if record is None:
        return "not trained here (a pretrained model loaded from its file, or random weights)"
    if not record["early_stopping"]:
        return f"trained for a fixed {record['epochs']} epochs (not checked for convergence)"
    if not record["stopped_early"]:
        return (
            f"NOT converged: {record['criterion']} did not stop it before the cap of "
            f"{record['max_epochs']} epochs (final validation ELBO {record['elbo_validation']:.1f})"
        )
    return (
        f"converged by {record['criterion']} after {record['epochs']} epochs (cap {record['max_epochs']}); "
        f"validation ELBO {record['elbo_validation']:.1f}, best {record['best_elbo_validation']:.1f}"
    )


def random_weights_like(
    vae_kwargs: dict[str, Any], genes: list[str], *, seed: int, var_key: str | None
) -> ScviEncoder:
    """The random-weight ("dead salmon") control: scVI's architecture, weights drawn under ``seed``."""
    encoder = ScviEncoder(vae_kwargs, genes, name="scvi_random", var_key=var_key)
    reinitialise(encoder, seed)
    with torch.no_grad():  # the dispersion is a bare parameter (scvi-tools draws it with randn): seed it too
        generator = torch.Generator().manual_seed(seed)
        encoder.px_r.copy_(torch.randn(encoder.px_r.shape, generator=generator))
    return encoder.eval()
