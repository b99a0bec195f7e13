"""Top-K sparse autoencoders: the model, its training and its metrics."""

from __future__ import annotations

from corelib.tl.sae.evaluate import (
    encode,
    grid,
    metrics,
    paper_table,
    r2_score,
    sae_name,
    select,
    split_metrics,
)
from corelib.tl.sae.model import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    WEIGHT_NAMES,
    ForwardOutput,
    SAEConfig,
    TopKSAE,
    as_embeddings,
    geometric_median,
    init_sae,
    sparse_decode,
    topk,
)
from corelib.tl.sae.sweep import sweep_points, train_many
from corelib.tl.sae.training import (
    THREADED_STEP,
    StepLosses,
    TrainConfig,
    TrainResult,
    loss_and_grads,
    split_cells,
    train,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "ForwardOutput",
    "SAEConfig",
    "StepLosses",
    "THREADED_STEP",
    "TopKSAE",
    "TrainConfig",
    "TrainResult",
    "WEIGHT_NAMES",
    "as_embeddings",
    "encode",
    "geometric_median",
    "grid",
    "init_sae",
    "loss_and_grads",
    "metrics",
    "paper_table",
    "r2_score",
    "sae_name",
    "select",
    "sparse_decode",
    "split_cells",
    "split_metrics",
    "sweep_points",
    "topk",
    "train",
    "train_many",
]
