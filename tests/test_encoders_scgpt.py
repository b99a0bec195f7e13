"""scGPT loader and encoder on tiny checkpoints written in the official format (vocab/args/best_model.pt).

The reference is a per-cell numpy re-implementation of upstream's pipeline (np.quantile/np.digitize binning,
hand-written multi-head attention) that reads the checkpoint with the upstream key names.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import FLOAT32_ATOL, FLOAT32_RTOL

import corelib.encoders as enc
from corelib.encoders.scgpt import bin_values

D, HEADS, D_HID, LAYERS, N_GENES = 16, 2, 32, 2, 30
ARGS = {
    "embsize": D,
    "nheads": HEADS,
    "d_hid": D_HID,
    "nlayers": LAYERS,
    "n_bins": 51,
    "max_seq_len": 1200,
    "pad_token": "<pad>",
    "pad_value": -2,
    "input_emb_style": "continuous",
    "input_style": "binned",
    "dropout": 0.2,
}
GENES = [f"G{i}" for i in range(N_GENES)]
VOCAB = {**{g: i for i, g in enumerate(GENES)}, "<pad>": N_GENES, "<cls>": N_GENES + 1, "<eoc>": N_GENES + 2}


class _Opaque:
    """An arbitrary Python object: only full unpickling can read a file holding it."""


def _upstream_state(seed: int = 0, packed: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict with upstream TransformerModel key names (flash-attn ``Wqkv`` or PyTorch spelling)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + offset

    state = {
        "encoder.embedding.weight": rand(len(VOCAB), D),
        "encoder.enc_norm.weight": rand(D, offset=1.0),
        "encoder.enc_norm.bias": rand(D),
        "value_encoder.linear1.weight": rand(D, 1),
        "value_encoder.linear1.bias": rand(D),
        "value_encoder.linear2.weight": rand(D, D),
        "value_encoder.linear2.bias": rand(D),
        "value_encoder.norm.weight": rand(D, offset=1.0),
        "value_encoder.norm.bias": rand(D),
        "decoder.fc.0.weight": rand(D, D),  # expression decoder: not part of the embedding
        "mvc_decoder.gene2query.weight": rand(D, D),
    }
    qkv = "self_attn.Wqkv." if packed else "self_attn.in_proj_"
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        state |= {
            f"{p}{qkv}weight": rand(3 * D, D),
            f"{p}{qkv}bias": rand(3 * D),
            f"{p}self_attn.out_proj.weight": rand(D, D),
            f"{p}self_attn.out_proj.bias": rand(D),
            f"{p}linear1.weight": rand(D_HID, D),
            f"{p}linear1.bias": rand(D_HID),
            f"{p}linear2.weight": rand(D, D_HID),
            f"{p}linear2.bias": rand(D),
            f"{p}norm1.weight": rand(D, offset=1.0),
            f"{p}norm1.bias": rand(D),
            f"{p}norm2.weight": rand(D, offset=1.0),
            f"{p}norm2.bias": rand(D),
        }
    return state


def _write_checkpoint(directory: Path, state: dict[str, torch.Tensor], args: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(VOCAB))
    (directory / "args.json").write_text(json.dumps(args or ARGS))
    torch.save(state, directory / "best_model.pt")
    return directory


def _cells(n_cells: int = 24, seed: int = 0) -> ad.AnnData:
    """Counts for the vocabulary genes (one absent) plus two genes scGPT does not know; many ties."""
    rng = np.random.default_rng(seed)
    genes = [*GENES[:-1], "NOT_IN_VOCAB1", "NOT_IN_VOCAB2"]
    X = rng.poisson(rng.gamma(0.7, 2.0, (1, len(genes))), (n_cells, len(genes))).astype(np.float32)
    X[0] = 0  # a cell without counts: its embedding is the <cls> token's alone
    return ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=genes))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b


def _reference_embedding(state, x_G, genes, tie_u_G, priority_G, max_seq_len: int = 1200) -> np.ndarray:
    """Upstream's pipeline for one cell, in numpy float64, reading upstream key names."""
    s = {k: v.double().numpy() for k, v in state.items()}
    nonzero = np.nonzero(x_G)[0]
    bins = np.zeros(0)
    if len(nonzero):
        values = x_G[nonzero].astype(np.float64)
        edges = np.quantile(values, np.linspace(0, 1, ARGS["n_bins"] - 1))
        left, right = np.digitize(values, edges), np.digitize(values, edges, right=True)
        bins = np.ceil(tie_u_G[nonzero] * (right - left) + left)
        if len(nonzero) > max_seq_len - 1:
            keep = np.argsort(-priority_G[nonzero], kind="stable")[: max_seq_len - 1]
            nonzero, bins = nonzero[keep], bins[keep]
    tokens = [VOCAB["<cls>"], *[VOCAB[genes[i]] for i in nonzero]]
    vals = np.array([ARGS["pad_value"], *bins], dtype=np.float64)[:, None]
    gene_emb = _layer_norm(
        s["encoder.embedding.weight"][tokens], s["encoder.enc_norm.weight"], s["encoder.enc_norm.bias"]
    )
    hidden = np.maximum(vals @ s["value_encoder.linear1.weight"].T + s["value_encoder.linear1.bias"], 0)
    value_emb = hidden @ s["value_encoder.linear2.weight"].T + s["value_encoder.linear2.bias"]
    h = gene_emb + _layer_norm(value_emb, s["value_encoder.norm.weight"], s["value_encoder.norm.bias"])
    dh = D // HEADS
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        q, k, v = np.split(h @ s[p + "self_attn.Wqkv.weight"].T + s[p + "self_attn.Wqkv.bias"], 3, axis=1)
        heads = []
        for j in range(HEADS):
            sl = slice(j * dh, (j + 1) * dh)
            scores = q[:, sl] @ k[:, sl].T / np.sqrt(dh)
            att = np.exp(scores - scores.max(1, keepdims=True))
            heads.append((att / att.sum(1, keepdims=True)) @ v[:, sl])
        attn = (
            np.concatenate(heads, 1) @ s[p + "self_attn.out_proj.weight"].T + s[p + "self_attn.out_proj.bias"]
        )
        h = _layer_norm(h + attn, s[p + "norm1.weight"], s[p + "norm1.bias"])
        ff = np.maximum(h @ s[p + "linear1.weight"].T + s[p + "linear1.bias"], 0)
        ff = ff @ s[p + "linear2.weight"].T + s[p + "linear2.bias"]
        h = _layer_norm(h + ff, s[p + "norm2.weight"], s[p + "norm2.bias"])
    return h[0] / np.linalg.norm(h[0])


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return _write_checkpoint(tmp_path / "scgpt", _upstream_state())


@pytest.mark.parametrize("max_seq_len", [1200, 6])
def test_embedding_matches_reference_pipeline(checkpoint, max_seq_len):
    adata = _cells()
    encoder = enc.load("scgpt", path=checkpoint, adata=adata, device="cpu", max_seq_len=max_seq_len, seed=1)
    assert encoder.genes == GENES[:-1] and encoder.dim == D  # vocabulary genes present in adata
    emb = enc.embed(encoder, adata, batch_size=5, progress=False)
    state = torch.load(checkpoint / "best_model.pt", weights_only=True)
    X, _ = enc.align(adata, encoder.genes)
    tie_u, priority = encoder.tie_u_G.numpy(), encoder.priority_G.numpy()
    reference = np.stack(
        [
            _reference_embedding(state, X[i].toarray()[0], encoder.genes, tie_u, priority, max_seq_len)
            for i in range(adata.n_obs)
        ]
    )
    np.testing.assert_allclose(emb, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert adata.obsm["X_scgpt"].shape == (adata.n_obs, D)


def test_both_key_spellings_load_identically(tmp_path):
    packed = _write_checkpoint(tmp_path / "flash", _upstream_state(packed=True))
    torch_style = _write_checkpoint(tmp_path / "torch", _upstream_state(packed=False))
    adata = _cells()
    a = enc.embed(enc.load("scgpt", path=packed, adata=adata), adata, progress=False)
    b = enc.embed(enc.load("scgpt", path=torch_style, adata=adata), adata, progress=False)
    np.testing.assert_array_equal(a, b)


def test_ignored_decoder_keys_are_listed(checkpoint):
    encoder = enc.load("scgpt", path=checkpoint)
    assert encoder.ignored_keys == ["decoder.fc.0.weight", "mvc_decoder.gene2query.weight"]
    assert encoder.genes == GENES  # without adata: the whole vocabulary


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("transformer_encoder.layers.1.norm2.bias"),
            r"missing keys: transformer_encoder.layers.1.norm2.bias; unexpected encoder keys: none",
        ),
        (lambda s: s.update({"value_encoder.extra.weight": torch.zeros(2)}), "unexpected encoder keys"),
        (lambda s: s.update({"encoder.enc_norm.weight": torch.ones(D + 1)}), "shape mismatches"),
        (lambda s: s.update({"dsbn.bns.0.weight": torch.ones(D)}), "batch-specific"),
    ],
)
def test_bad_checkpoints_fail_loudly(tmp_path, edit, message):
    state = _upstream_state()
    edit(state)
    with pytest.raises(ValueError, match=message):
        enc.load("scgpt", path=_write_checkpoint(tmp_path / "bad", state))


def test_vocab_size_mismatch_fails(tmp_path):
    state = _upstream_state()
    state["encoder.embedding.weight"] = state["encoder.embedding.weight"][:-1]
    with pytest.raises(ValueError, match="encoder.embedding.weight"):
        enc.load("scgpt", path=_write_checkpoint(tmp_path / "bad", state))


def test_pickled_model_needs_trust(tmp_path):
    directory = _write_checkpoint(tmp_path / "pickled", _upstream_state())
    torch.save({"state": _upstream_state(), "note": _Opaque()}, directory / "best_model.pt")
    with pytest.raises(ValueError, match=r"trust_pickle=True \(params: trust_pickle: true\)"):
        enc.load("scgpt", path=directory)


def test_missing_files_and_no_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(
        ValueError, match="not an scGPT model directory: vocab.json, args.json, best_model.pt missing"
    ):
        enc.load("scgpt", path=tmp_path)
    with pytest.raises(ValueError, match="needs a model directory: set model_path to a folder"):
        enc.load("scgpt", adata=_cells())


def test_deterministic_under_seed(checkpoint):
    adata = _cells()
    first = enc.embed(
        enc.load("scgpt", path=checkpoint, adata=adata, max_seq_len=6, seed=7), adata, progress=False
    )
    again = enc.embed(
        enc.load("scgpt", path=checkpoint, adata=adata, max_seq_len=6, seed=7), adata, progress=False
    )
    other = enc.embed(
        enc.load("scgpt", path=checkpoint, adata=adata, max_seq_len=6, seed=8), adata, progress=False
    )
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other, atol=1e-4)  # other tie-breaks and other gene subsets


def test_batch_composition_does_not_change_a_cell(checkpoint):
    adata = _cells()
    encoder = enc.load("scgpt", path=checkpoint, adata=adata)
    np.testing.assert_allclose(
        enc.embed(encoder, adata, batch_size=1, progress=False),
        enc.embed(encoder, adata, batch_size=24, progress=False),
        rtol=FLOAT32_RTOL,
        atol=FLOAT32_ATOL,
    )


def test_tokenize_keeps_cls_and_subsamples_nonzero_genes(checkpoint):
    adata = _cells()
    encoder = enc.load("scgpt", path=checkpoint, adata=adata, max_seq_len=6)
    X, _ = enc.align(adata, encoder.genes)
    x_BG = torch.from_numpy(X.toarray())
    tokens, values, padding = encoder.tokenize(x_BG)
    assert tokens.shape[1] == 6 and (tokens[:, 0] == VOCAB["<cls>"]).all() and (values[:, 0] == -2).all()
    n_nonzero = (x_BG > 0).sum(1)
    torch.testing.assert_close((~padding).sum(1), torch.clamp(n_nonzero, max=5) + 1)
    for i in range(x_BG.shape[0]):
        kept = tokens[i, 1:][~padding[i, 1:]].tolist()
        assert all(x_BG[i, encoder.genes.index(GENES[t])] > 0 for t in kept)


def test_binning_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x_BG = np.where(
        rng.random((50, 200)) < 0.4,
        rng.poisson(3.0, (50, 200)) + rng.random((50, 200)) * (rng.random() > 0.5),
        0,
    )
    x_BG[1] = 0
    x_BG[2, :3] = [1, 1, 1]
    x_BG = x_BG.astype(np.float32)
    tie_u_G = rng.random(200)
    bins = bin_values(torch.from_numpy(x_BG), 51, torch.from_numpy(tie_u_G)).numpy()
    for row, got in zip(x_BG, bins, strict=True):
        expected = np.zeros_like(row)
        nz = np.nonzero(row)[0]
        if len(nz):
            edges = np.quantile(row[nz], np.linspace(0, 1, 50))
            left, right = np.digitize(row[nz], edges), np.digitize(row[nz], edges, right=True)
            expected[nz] = np.ceil(tie_u_G[nz] * (right - left) + left)
        np.testing.assert_array_equal(got, expected)
    assert bins.max() <= 50 and (bins[x_BG > 0] >= 1).all()


def test_random_control_without_checkpoint():
    adata = _cells()
    control = enc.load(
        "scgpt", adata=adata, random_init=True, seed=2, embsize=8, nheads=2, d_hid=8, nlayers=1
    )
    assert control.name == "scgpt_random" and control.dim == 8 and control.genes == list(adata.var_names)
    emb = enc.embed(control, adata, progress=False)
    twin = enc.load("scgpt", adata=adata, random_init=True, seed=2, embsize=8, nheads=2, d_hid=8, nlayers=1)
    np.testing.assert_array_equal(emb, enc.embed(twin, adata, progress=False))


def test_random_control_from_checkpoint_differs(checkpoint):
    adata = _cells()
    trained = enc.embed(enc.load("scgpt", path=checkpoint, adata=adata), adata, progress=False)
    control = enc.load("scgpt", path=checkpoint, adata=adata, random_init=True)
    assert control.name == "scgpt_random"
    assert not np.allclose(enc.embed(control, adata, progress=False), trained, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA parity needs a GPU; none on this machine")
def test_cuda_matches_cpu(checkpoint):
    adata = _cells()
    cpu = enc.embed(enc.load("scgpt", path=checkpoint, adata=adata, device="cpu"), adata, progress=False)
    gpu = enc.embed(enc.load("scgpt", path=checkpoint, adata=adata, device="cuda"), adata, progress=False)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)
