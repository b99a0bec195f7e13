"""scGPT (bowang-lab/scGPT) cell encoder in plain torch, loading official checkpoints without the scgpt package.

A model directory holds ``vocab.json`` (token -> id), ``args.json`` (hyper-parameters) and ``best_model.pt``
(a state dict). The module below has exactly the upstream ``TransformerModel`` key names for the part that
makes the cell embedding (``encoder.*``, ``value_encoder.*``, ``transformer_encoder.layers.*``); decoder heads
are not needed and are ignored (and listed). Upstream loads with ``strict=False`` and silently keeps random
weights for unmatched keys; here any missing, unexpected or mis-shaped encoder key is an error.

Preprocessing, as in upstream ``scgpt.tasks.embed_data`` (raw ``adata.X``, no normalisation: per-cell quantile
binning is unchanged by per-cell scaling or any increasing transform such as log1p):

1. keep the cell's nonzero genes, bin their values per cell into 1..n_bins-1 by quantiles (:func:`bin_values`);
2. if more than ``max_seq_len - 1`` genes are nonzero, keep a random subset (:meth:`ScGPTEncoder.tokenize`);
3. prepend ``<cls>`` with value ``pad_value``, pad the batch with ``<pad>``/``pad_value`` (masked).

Upstream draws the bin tie-breaks and the gene subset with unseeded generators; here both come from uniforms
fixed per vocabulary token under ``seed``, so a cell's embedding is a deterministic function of its expression
(a perturbed cell keeps the same tie-breaks: attribution differences are the perturbation's, not noise).

Embedding: ``LayerNorm(Embedding(gene)) + LayerNorm(MLP(value))`` -> post-norm transformer layers -> the
``<cls>`` output, L2-normalised. Computed in float32 (upstream's ``embed_data`` runs under fp16 autocast on
GPU, so its embeddings differ from these at fp16 precision).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corelib.encoders.base import Encoder, _var_ids, reinitialise

SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")

#: Whole-human checkpoint hyper-parameters; used for ``random_init`` without a checkpoint and as defaults.
WHOLE_HUMAN_ARGS: dict[str, Any] = {
    "embsize": 512,
    "nheads": 8,
    "d_hid": 512,
    "nlayers": 12,
    "n_bins": 51,
    "max_seq_len": 1200,
    "pad_token": "<pad>",
    "pad_value": -2,
    "input_emb_style": "continuous",
}

#: Encoder-path prefixes of the upstream state dict (loaded strictly).
ENCODER_PREFIXES = ("encoder.", "value_encoder.", "transformer_encoder.")
#: Upstream modules that change the embedding but are not implemented: a checkpoint using them is refused.
UNSUPPORTED_PREFIXES = ("dsbn.", "bn.", "batch_encoder.")


class GeneEncoder(nn.Module):
    """Gene token -> ``LayerNorm(Embedding(token))`` (upstream ``GeneEncoder``)."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """``tokens_BL`` (int) -> ``emb_BLD``."""
        return self.enc_norm(self.embedding(tokens_BL))


class ContinuousValueEncoder(nn.Module):
    """Binned value -> ``LayerNorm(Linear(ReLU(Linear(min(v, max_value)))))`` (upstream name and layout)."""

    def __init__(self, d_model: int, max_value: int = 512) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, values_BL: torch.Tensor) -> torch.Tensor:
        """``values_BL`` (float) -> ``emb_BLD``."""
        x_BL1 = values_BL.clamp(max=self.max_value).unsqueeze(-1)
        return self.norm(self.linear2(F.relu(self.linear1(x_BL1))))


def bin_values(x_BG: torch.Tensor, n_bins: int, tie_u_G: torch.Tensor) -> torch.Tensor:
    """Per-cell quantile binning of the nonzero values into ``1 .. n_bins - 1``; zeros stay 0.

    Upstream ``scgpt.preprocess.binning``: edges = ``np.quantile(nonzero, linspace(0, 1, n_bins - 1))``; a value
    equal to several edges gets a bin drawn uniformly among them (``_digitize``:
    ``ceil(u * (right - left) + left)`` with ``left``/``right`` = ``np.digitize`` without/with ``right=True``).
    Here ``u`` is the fixed per-gene uniform ``tie_u_G`` instead of a fresh random draw.

    Parameters
    ----------
    x_BG
        Expression (cells x genes), non-negative.
    n_bins
        Number of bins including the zero bin (51 for the whole-human model).
    tie_u_G
        Tie-break uniforms in [0, 1), one per gene.

    Returns
    -------
    bins_BG
        Bin of every entry as float32, 0 where ``x_BG`` is 0.
    """
    x_BG = x_BG.double()
    nonzero_BG = x_BG > 0
    n_B1 = nonzero_BG.sum(dim=1, keepdim=True).double()
    sorted_BG = torch.where(nonzero_BG, x_BG, torch.inf).sort(dim=1).values
    q_K = torch.from_numpy(np.linspace(0, 1, n_bins - 1)).to(x_BG.device)
    # numpy's "linear" quantile, written as numpy computes it (virtual index, then its two-sided lerp), so
    # that values equal to an edge compare exactly as upstream's np.quantile/np.digitize
    index_BK = (n_B1 - 1) * q_K
    lo_BK = index_BK.floor().clamp(min=0)
    gamma_BK = index_BK - lo_BK
    hi_BK = torch.minimum(lo_BK + 1, (n_B1 - 1).clamp(min=0))
    a_BK = sorted_BG.gather(1, lo_BK.long().clamp(max=x_BG.shape[1] - 1))
    b_BK = sorted_BG.gather(1, hi_BK.long().clamp(max=x_BG.shape[1] - 1))
    diff_BK = b_BK - a_BK
    edges_BK = torch.where(gamma_BK >= 0.5, b_BK - diff_BK * (1 - gamma_BK), a_BK + diff_BK * gamma_BK)
    edges_BK = torch.where(n_B1 > 0, edges_BK, torch.zeros_like(edges_BK)).contiguous()
    left_BG = torch.searchsorted(edges_BK, x_BG.contiguous(), right=True).double()
    right_BG = torch.searchsorted(edges_BK, x_BG.contiguous(), right=False).double()
    digits_BG = torch.ceil(tie_u_G.double() * (right_BG - left_BG) + left_BG)
    return torch.where(nonzero_BG, digits_BG, torch.zeros_like(digits_BG)).float()


class ScGPTEncoder(Encoder):
    """scGPT's cell encoder: counts ``x_BG`` -> bins/tokens -> transformer -> L2-normalised ``<cls>`` output.

    ``forward`` is differentiable in the weights, not in ``x_BG``: binning is a step function of expression.

    Parameters
    ----------
    args
        Hyper-parameters (``args.json``): embsize, nheads, d_hid, nlayers, n_bins, pad_token, pad_value, ...
    vocab
        Token -> id, special tokens included.
    genes
        The genes this encoder takes as input (a subset of the vocabulary), in input order.
    seed
        Seed of the per-token tie-break and subsampling uniforms.
    max_seq_len
        Tokens per cell including ``<cls>``; cells with more nonzero genes are subsampled.
    name
        "scgpt", or "scgpt_random" for the random-weight control.
    var_key
        Column of ``adata.var`` with identifiers matching ``genes`` (None: ``var_names``).
    """

    def __init__(
        self,
        args: dict[str, Any],
        vocab: dict[str, int],
        genes: list[str],
        *,
        seed: int = 0,
        max_seq_len: int | None = None,
        name: str = "scgpt",
        var_key: str | None = None,
    ) -> None:
        args = {**WHOLE_HUMAN_ARGS, **args}
        if args["input_emb_style"] != "continuous" or args.get("input_style", "binned") != "binned":
            raise ValueError(
                f"this scGPT uses input_emb_style={args['input_emb_style']!r}, input_style="
                f"{args.get('input_style')!r}; only the continuous embedding of binned values (the whole-human "
                "checkpoint's) is implemented."
            )
        d_model = int(args["embsize"])
        super().__init__(
            name=name, genes=genes, dim=d_model, var_key=var_key, min_overlap=min(1000, (len(genes) + 1) // 2)
        )
        self.args = args
        self.vocab = dict(vocab)
        self.seed = int(seed)
        self.max_seq_len = int(max_seq_len or args["max_seq_len"])
        self.n_bins = int(args["n_bins"])
        self.pad_value = float(args["pad_value"])
        self.pad_id = self.vocab[args["pad_token"]]
        self.cls_id = self.vocab["<cls>"]
        n_tokens = max(self.vocab.values()) + 1
        self.encoder = GeneEncoder(n_tokens, d_model, padding_idx=self.pad_id)
        self.value_encoder = ContinuousValueEncoder(d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            int(args["nheads"]),
            int(args["d_hid"]),
            dropout=0.0,
            batch_first=True,
            norm_first=bool(args.get("pre_norm", False)),
        )
        self.transformer_encoder = nn.TransformerEncoder(
            layer, int(args["nlayers"]), enable_nested_tensor=False
        )
        token_ids_G = torch.tensor([self.vocab[g] for g in self.genes], dtype=torch.long)
        uniforms_2T = torch.rand(
            2, n_tokens, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64
        )
        self.register_buffer("token_ids_G", token_ids_G, persistent=False)
        self.register_buffer("tie_u_G", uniforms_2T[0, token_ids_G], persistent=False)
        self.register_buffer("priority_G", uniforms_2T[1, token_ids_G], persistent=False)
        self.ignored_keys: list[str] = []
        self.eval()

    def tokenize(self, x_BG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cells -> padded token sequences, as upstream's ``DataCollator`` (binning before subsampling).

        Returns
        -------
        tokens_BL
            Token ids, ``<cls>`` first, then the kept nonzero genes, then ``<pad>``.
        values_BL
            ``pad_value`` for ``<cls>`` and padding, the gene's bin otherwise.
        padding_BL
            True at padding positions (the transformer's ``src_key_padding_mask``).
        """
        nonzero_BG = x_BG > 0
        bins_BG = bin_values(x_BG, self.n_bins, self.tie_u_G)
        n_keep = min(self.max_seq_len - 1, int(nonzero_BG.sum(dim=1).max().item()) if x_BG.shape[0] else 0)
        # the n_keep nonzero genes of highest (seeded, per-gene) priority: all of them when they fit
        score_BG = torch.where(nonzero_BG, self.priority_G.to(x_BG.device), -1.0)
        top_BL, idx_BL = score_BG.topk(n_keep, dim=1)
        kept_BL = top_BL >= 0
        tokens_BL = torch.where(kept_BL, self.token_ids_G[idx_BL], self.pad_id)
        values_BL = torch.where(kept_BL, bins_BG.gather(1, idx_BL), self.pad_value)
        first_B1 = torch.ones(x_BG.shape[0], 1, dtype=torch.bool, device=x_BG.device)
        tokens_BL = torch.cat([torch.full_like(first_B1, self.cls_id, dtype=torch.long), tokens_BL], dim=1)
        values_BL = torch.cat(
            [torch.full_like(first_B1, self.pad_value, dtype=torch.float32), values_BL], dim=1
        )
        return tokens_BL, values_BL, ~torch.cat([first_B1, kept_BL], dim=1)

    def forward(self, x_BG: torch.Tensor) -> torch.Tensor:
        """Counts ``x_BG`` (cells x genes) -> L2-normalised ``<cls>`` embedding ``emb_BD``."""
        tokens_BL, values_BL, padding_BL = self.tokenize(x_BG)
        emb_BLD = self.encoder(tokens_BL) + self.value_encoder(values_BL)
        out_BLD = self.transformer_encoder(emb_BLD, src_key_padding_mask=padding_BL)
        return F.normalize(out_BLD[:, 0], dim=1)

    def decoder_absent(self) -> str:
        """scGPT has no decoder from the cell embedding (see :meth:`corelib.encoders.Encoder.decoder_absent`)."""
        return (
            "scGPT has no generative decoder from its cell embedding: its pretraining predicts masked genes' binned "
            "values from gene tokens, and its optional cell-embedding head (MVC) is not kept here and predicts "
            "bins, not expected expression, so concept steering is shown for scVI only."
        )

    def random_control(self, seed: int) -> ScGPTEncoder:
        """Same hyper-parameters, vocabulary, genes and tokenisation seed; weights drawn under ``seed``."""
        control = ScGPTEncoder(
            self.args,
            self.vocab,
            self.genes,
            seed=self.seed,
            max_seq_len=self.max_seq_len,
            name="scgpt_random",
            var_key=self.var_key,
        )
        reinitialise(control, seed)
        return control.eval()

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, vocabulary, genes, seed and name (see :func:`corelib.encoders.base.save`)."""
        return {
            "args": self.args,
            "vocab": self.vocab,
            "genes": self.genes,
            "seed": self.seed,
            "max_seq_len": self.max_seq_len,
            "name": self.name,
            "var_key": self.var_key,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ScGPTEncoder:
        """Rebuild from :meth:`config` and the state dict (strict)."""
        encoder = cls(
            config["args"],
            config["vocab"],
            config["genes"],
            seed=config["seed"],
            max_seq_len=config["max_seq_len"],
            name=config["name"],
            var_key=config.get("var_key"),
        )
        encoder.load_state_dict(tensors, strict=True)
        return encoder.eval()


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """``vocab.json`` (token -> id) with the special tokens appended when missing, as upstream does."""
    vocab = {str(k): int(v) for k, v in json.loads(Path(path).read_text()).items()}
    if len(set(vocab.values())) != len(vocab):
        raise ValueError(f"{str(path)!r}: several tokens share an id; the vocabulary file is corrupt.")
    for token in SPECIAL_TOKENS:
        if token not in vocab:
            vocab[token] = max(vocab.values(), default=-1) + 1
    return vocab


def canonical_key(key: str) -> str:
    """Upstream key -> PyTorch spelling: flash-attn's packed ``Wqkv`` is ``MultiheadAttention``'s ``in_proj_``."""
    key = key.replace("self_attn._impl.", "self_attn.")
    return key.replace("self_attn.Wqkv.", "self_attn.in_proj_")


def read_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read ``best_model.pt`` with ``torch.load(weights_only=True)``; a full pickle only with ``trust_pickle``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(
                f"{str(path)!r} is not a plain state dict: loading it needs full unpickling, which can execute "
                "arbitrary code. If you trust its source, pass trust_pickle=True (params: trust_pickle: true)."
            ) from err
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (name -> tensor).")
    return {canonical_key(k): v for k, v in state.items()}


def load_state_strict(encoder: ScGPTEncoder, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the encoder-path weights, failing on any missing, unexpected or mis-shaped key.

    Returns
    -------
    The checkpoint keys that were ignored (decoder heads, not part of the cell embedding).
    """
    expected = encoder.state_dict()
    unsupported = sorted(k for k in state if k.startswith(UNSUPPORTED_PREFIXES))
    if unsupported:
        raise ValueError(
            f"this checkpoint has batch-specific layers that change the embedding ({', '.join(unsupported[:5])}); they are "
            "not implemented: use a checkpoint without batch labels / domain-specific batch norm."
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in state if k.startswith(ENCODER_PREFIXES) and k not in expected)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            "the scGPT checkpoint does not match the architecture in args.json/vocab.json: "
            f"missing keys: {', '.join(missing) or 'none'}; unexpected encoder keys: {', '.join(unexpected) or 'none'}; "
            f"shape mismatches: {', '.join(mismatched) or 'none'}. "
            "Check that vocab.json and args.json come from the same model directory as best_model.pt."
        )
    encoder.load_state_dict({k: state[k] for k in expected}, strict=True)
    return sorted(set(state) - set(expected))


def _genes_for(vocab: dict[str, int], adata: ad.AnnData | None, var_key: str | None) -> list[str]:
    """The vocabulary's genes, restricted to those in ``adata`` when given (upstream drops the others)."""
    genes = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in SPECIAL_TOKENS]
    if adata is None:
        return genes
    present = set(_var_ids(adata, var_key))
    found = [g for g in genes if g in present]
    if not found:
        raise ValueError(
            f"none of adata's genes (e.g. {', '.join(_var_ids(adata, var_key)[:3])}) is in the scGPT vocabulary "
            f"(e.g. {', '.join(genes[:3])}); scGPT uses gene symbols: set gene_symbols_key to the adata.var column "
            "holding them."
        )
    return found


def load_checkpoint(
    path: str | os.PathLike,
    *,
    adata: ad.AnnData | None = None,
    trust_pickle: bool = False,
    random_init: bool = False,
    seed: int = 0,
    gene_id_column: str | None = None,
    max_seq_len: int | None = None,
) -> ScGPTEncoder:
    """Load an official scGPT model directory (``vocab.json``, ``args.json``, ``best_model.pt``).

    Parameters
    ----------
    path
        The model directory.
    adata
        When given, the encoder's genes are the vocabulary genes present in it (as upstream ``embed_data``);
        genes a dataset lacks are always zero, i.e. absent from the cell's tokens, so the embedding is the same.
    trust_pickle
        Allow full unpickling of ``best_model.pt`` if it is not a plain state dict.
    random_init
        Random-weight control: the checkpoint's architecture with weights re-drawn under ``seed``.
    seed
        Seed of the tie-break/subsampling uniforms (and of the random weights).
    gene_id_column
        Column of ``adata.var`` holding gene symbols (None: ``var_names``).
    max_seq_len
        Tokens per cell (None: ``args.json``'s ``max_seq_len``, else 1200).

    Returns
    -------
    The encoder (CPU, eval mode); ``ignored_keys`` lists the checkpoint keys not used for embeddings.
    """
    path = Path(path)
    files = {name: path / name for name in ("vocab.json", "args.json", "best_model.pt")}
    absent = [name for name, file in files.items() if not file.exists()]
    if absent:
        raise ValueError(
            f"model_path {str(path)!r} is not an scGPT model directory: {', '.join(absent)} missing. Set model_path to "
            "a folder with vocab.json, args.json and best_model.pt."
        )
    vocab = read_vocab(files["vocab.json"])
    args = json.loads(files["args.json"].read_text())
    genes = _genes_for(vocab, adata, gene_id_column)
    name = "scgpt_random" if random_init else "scgpt"
    encoder = ScGPTEncoder(
        args, vocab, genes, seed=seed, max_seq_len=max_seq_len, name=name, var_key=gene_id_column
    )
    encoder.ignored_keys = load_state_strict(
        encoder, read_state_dict(files["best_model.pt"], trust_pickle=trust_pickle)
    )
    if random_init:
        reinitialise(encoder, seed)
    return encoder.eval()


def random_model(
    adata: ad.AnnData, *, seed: int = 0, gene_id_column: str | None = None, **args: Any
) -> ScGPTEncoder:
    """Random-weight scGPT without a checkpoint: whole-human architecture (``args`` override), ``adata``'s genes."""
    genes = [str(g) for g in _var_ids(adata, gene_id_column)]
    if len(set(genes)) != len(genes) or set(genes) & set(SPECIAL_TOKENS):
        raise ValueError(
            "adata's gene names must be unique and differ from scGPT's special tokens "
            f"{', '.join(SPECIAL_TOKENS)}: call adata.var_names_make_unique() first."
        )
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *genes])}
    encoder = ScGPTEncoder(args, vocab, genes, seed=seed, name="scgpt_random", var_key=gene_id_column)
    reinitialise(encoder, seed)
    return encoder.eval()
