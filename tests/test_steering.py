"""Concept steering: scVI's decoder against scvi-tools' own ``module.generative``, a planted concept whose decoded
effect is known, the steering ranking against a brute-force loop, and the steering panel of cards, atlas and widget.

The scVI models are tiny (1 epoch): what is tested is the path, not the biology. The planted concept sets the
decoder by hand: latent axis ``AXIS`` writes +1 into the softmax logits of ``UP`` and -1 into those of ``DOWN``, so
moving cells along that axis must raise exactly ``UP`` and lower exactly ``DOWN``, most of all genes.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DIM, FLOAT32_ATOL, FLOAT32_RTOL, GENES, make_run

import corelib as cl
from corelib.encoders import scvi as scvi_enc
from corelib.tl.steering import DEFAULT_PSEUDOCOUNT, PER_COUNTS, SteeringResult, encoder_decoder, steer

AXIS, UP, DOWN = 2, [1, 4, 7], [0, 9]


def _counts(n_batch: int = 1, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(rng.poisson(2.0, size=(120, len(GENES))).astype(np.float32))
    adata.var_names = GENES
    adata.obs["batch"] = pd.Categorical(rng.choice([f"b{i}" for i in range(n_batch)], adata.n_obs))
    return adata


def _train(adata: ad.AnnData, batch_key: str | None = None):
    return scvi_enc.train(
        adata, batch_key=batch_key, epochs=1, progress=False, n_latent=DIM, n_hidden=16, n_layers=1
    )


def _plant(model) -> None:
    """Hand-set decoder: hidden = ReLU(z + 10) (BatchNorm ~ identity), logits = +-z[AXIS] on UP / DOWN, else 0."""
    layer = model.module.decoder.px_decoder.fc_layers[0]
    linear, norm = layer[0], layer[1]
    scale = model.module.decoder.px_scale_decoder[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:DIM, :DIM] = torch.eye(DIM)
        linear.bias.fill_(10.0)
        norm.running_mean.zero_(), norm.running_var.fill_(1.0), norm.weight.fill_(1.0), norm.bias.zero_()
        scale.weight.zero_(), scale.bias.zero_()
        scale.weight[UP, AXIS], scale.weight[DOWN, AXIS] = 1.0, -1.0
        scale.bias[UP], scale.bias[DOWN] = -10.0, 10.0  # logits +-z[AXIS]: every gene starts comparable


@pytest.fixture(scope="module")
def model():
    return _train(_counts())


@pytest.fixture(scope="module")
def planted():
    trained = _train(_counts(seed=1))
    _plant(trained)
    return trained


def _generative_scale(model, z_BD: torch.Tensor, batch: int = 0) -> np.ndarray:
    """The reference: scvi-tools' own module.generative on latent z (log library 0), normalised expression."""
    n = z_BD.shape[0]
    with torch.no_grad():
        out = model.module.generative(z_BD, torch.zeros(n, 1), torch.full((n, 1), batch, dtype=torch.long))
    return out["px"].scale.numpy()


# --------------------------------------------------------------------------------------------- the decoder
def test_scvi_decode_is_scvi_tools_generative(model, tmp_path):
    encoder = scvi_enc.from_model(model)
    z = torch.as_tensor(model.get_latent_representation(_counts()), dtype=torch.float32)
    with torch.no_grad():
        ours = encoder.decode(z).numpy()
    np.testing.assert_allclose(ours, _generative_scale(model, z), rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    np.testing.assert_allclose(ours.sum(1), 1.0, rtol=FLOAT32_RTOL)
    restored = cl.encoders.restore(cl.encoders.save(encoder, tmp_path / "enc"), device="cpu")
    assert restored.decoder_absent() is None
    with torch.no_grad():
        np.testing.assert_allclose(restored.decode(z).numpy(), ours, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_scvi_decode_averages_over_batches():
    adata = _counts(n_batch=3)
    model = _train(adata, batch_key="batch")
    z = torch.as_tensor(model.get_latent_representation(adata), dtype=torch.float32)
    reference = np.mean([_generative_scale(model, z, b) for b in range(3)], axis=0)
    with torch.no_grad():
        ours = scvi_enc.from_model(model).decode(z).numpy()
    np.testing.assert_allclose(ours, reference, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_encoders_without_a_decoder_say_why(model, tmp_path):
    adata = _counts()
    pca = cl.encoders.load("pca", adata=adata, n_comps=3, device="cpu")
    scgpt = cl.encoders.load(
        "scgpt", adata=adata, random_init=True, embsize=8, nheads=2, d_hid=8, nlayers=1, device="cpu"
    )
    for encoder, name in ((pca, "PCA"), (scgpt, "scGPT")):
        assert name in encoder.decoder_absent()
        with pytest.raises(ValueError, match="no generative decoder"):
            encoder.decode(torch.zeros(1, encoder.dim))
        with pytest.raises(ValueError, match="no generative decoder"):
            encoder_decoder(encoder)
    # a checkpoint saved before the decoder was kept loads, and says how to get one
    directory = cl.encoders.save(scvi_enc.from_model(model), tmp_path / "old")
    config, tensors = cl.encoders.base.read_checkpoint(directory)
    old = {k: v for k, v in tensors.items() if k.startswith("z_encoder.")}
    encoder = scvi_enc.ScviEncoder.from_config(config["config"], old)
    assert "rerun the embed step (01_embed)" in encoder.decoder_absent()


# ------------------------------------------------------------------------------------ the planted concept
def test_planted_concept_moves_exactly_its_genes(planted):
    z_PD = planted.get_latent_representation(_counts(seed=1))[:8]
    direction = np.eye(DIM, dtype=np.float32)[AXIS]
    result = steer(encoder_decoder(scvi_enc.from_model(planted)), z_PD, direction, GENES, amount=2.0)
    top = result.top(len(UP) + len(DOWN)).set_index("gene")["log2fc"]
    assert set(top.index) == {GENES[g] for g in UP + DOWN}
    assert (top[[GENES[g] for g in UP]] > 0).all() and (top[[GENES[g] for g in DOWN]] < 0).all()
    # on one cell the softmax normaliser cancels: an UP gene gains exactly e^(2 * 2) against a DOWN gene
    one = steer(encoder_decoder(scvi_enc.from_model(planted)), z_PD[:1], direction, GENES, amount=2.0)
    ratio = (one.table["after"] / one.table["before"]).set_axis(one.table["gene"])
    bn = np.sqrt(1 + 1e-3)  # BatchNorm's eps in scvi-tools' decoder
    np.testing.assert_allclose(ratio[GENES[UP[0]]] / ratio[GENES[DOWN[0]]], np.exp(2 * 2.0 / bn), rtol=1e-4)


def test_ranking_equals_a_brute_force_loop_over_scvi_tools(model):
    """A trained decoder (no ties): each cell decoded alone by scvi-tools' module.generative, the means and fold
    changes in plain Python."""
    z_PD = model.get_latent_representation(_counts())[:5]
    direction = np.random.default_rng(3).normal(size=DIM).astype(np.float32)
    result = steer(
        encoder_decoder(scvi_enc.from_model(model)), z_PD, direction, GENES, amount=-1.5, activation=0.7
    )
    before, after = np.zeros(len(GENES)), np.zeros(len(GENES))
    for z in z_PD:
        z0 = torch.as_tensor(z[None], dtype=torch.float32)
        before += _generative_scale(model, z0)[0] / len(z_PD)
        after += _generative_scale(model, z0 + torch.as_tensor(-1.5 * 0.7 * direction))[0] / len(z_PD)
    p = DEFAULT_PSEUDOCOUNT
    lfc = np.log2((after * PER_COUNTS + p) / (before * PER_COUNTS + p))
    table = result.table.set_index("gene")
    np.testing.assert_allclose(table.loc[GENES, "log2fc"], lfc, rtol=1e-4, atol=1e-5)
    assert list(result.table["gene"][:5]) == [GENES[g] for g in np.argsort(-np.abs(lfc))[:5]]
    assert list(result.table["rank"]) == list(range(1, len(GENES) + 1))
    np.testing.assert_allclose(result.step, 1.05 * np.linalg.norm(direction), rtol=1e-6)


def test_steer_units_overlap_and_errors():
    def decode(emb_BD):  # softmax of a fixed linear map: a decoder with a known answer
        logits = emb_BD @ np.arange(3 * 2, dtype=float).reshape(2, 3)
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    emb = np.zeros((2, 2), np.float32)
    assert np.allclose(steer(decode, emb, [1, 0], ["a", "b", "c"], amount=0).table["log2fc"], 0)
    result = steer(decode, emb, [0, 1], ["a", "b", "c"], amount=1, activation=2)
    # logits 0 -> (6, 8, 10): log2 fold changes -4.4, -1.5, +1.4 (|.| ranks a, b, c)
    assert result.table["gene"].tolist() == ["a", "b", "c"] and result.step == 2.0
    assert result.overlap(["b", "c"], n=2) == ["b"]
    with pytest.raises(ValueError, match="3 dimensions but the embeddings 2"):
        steer(decode, emb, [1, 0, 0], ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least one row"):
        steer(decode, emb[:0], [1, 0], ["a", "b", "c"])


def test_steering_plot(planted):
    z_PD = planted.get_latent_representation(_counts(seed=1))[:4]
    result = steer(encoder_decoder(scvi_enc.from_model(planted)), z_PD, np.eye(DIM)[AXIS], GENES)
    ax = cl.pl.steering(result, attributed=[GENES[UP[0]]], n_genes=5)
    assert len(ax.patches) == 5 and "1/5" in ax.get_title()
    assert "no steering" in cl.pl.steering("PCA has none").texts[0].get_text()


# ----------------------------------------------------------------------------- cards, atlas and widget
@pytest.fixture(scope="module")
def scvi_run(tmp_path_factory, planted):
    """The explorer's synthetic run, embedded "by" the planted scVI: its checkpoint is the run's encoder."""
    run = make_run(tmp_path_factory.mktemp("scvi_run"))
    cl.encoders.save(scvi_enc.from_model(planted), run.path("encoder"))
    cl.runs.record_provenance(run.path("encoder"), {"model": "scvi"})
    adata = run.read_h5ad("embedded")
    adata.uns["embed"]["model"] = "scvi"
    run.write_h5ad("embedded", adata, inputs={"data": adata, "encoder": run.fingerprint("encoder")})
    sae = run.fingerprint("sae", run.read_json("sae_selected")["sae"])
    for kind, upstream in (("concepts", {"sae": sae}), ("neurons", {})):
        cl.runs.record_provenance(
            run.path(f"attribution_{kind}"), {"embedded": run.fingerprint("embedded"), **upstream}
        )
    return run


def _attributed_concept(data) -> int:
    return data.units("concept")[0]


def test_scvi_card_carries_its_steering(scvi_run):
    data = cl.explorer.load_run_data(scvi_run)
    unit = _attributed_concept(data)
    card = cl.explorer.concept_card(data, unit, steering_amount=0.5)
    assert isinstance(card.steering, SteeringResult)
    assert card.steering.amount == 0.5 and card.steering.n_cells == len(card.prototypes)
    # the card steers the prototypes along the selected SAE's dictionary row, in prototype-activation units
    sae = cl.runs.load_sae(scvi_run, data.activations["neuron"])[1]
    decode = encoder_decoder(cl.runs.restore_encoder(scvi_run, device="cpu"))
    reference = steer(
        decode,
        data.activations["neuron"][card.prototypes],
        sae.W_dec_CD[unit].detach().numpy(),
        GENES,
        amount=0.5,
        activation=card.prototype_activation,
    )
    pd.testing.assert_frame_equal(card.steering.table, reference.table)
    html = cl.explorer.html.card_html(card)
    assert "Steering (decoder side" in html and card.steering.table["gene"].iloc[0] in html
    neuron = cl.explorer.concept_card(data, 0, "neuron")
    assert "neurons have none" in neuron.steering and "Steering" not in cl.explorer.html.card_html(neuron)


def test_cards_without_a_decoder_say_why(run):
    data = cl.explorer.load_run_data(run)  # conftest's run: an embedding without an encoder checkpoint
    card = cl.explorer.concept_card(data, _attributed_concept(data))
    assert isinstance(card.steering, str) and "no encoder checkpoint" in card.steering
    assert "No steering: the run directory holds no encoder" in cl.explorer.html.card_html(card)


def test_atlas_has_steering_on_every_attributed_scvi_card(scvi_run):
    page = cl.explorer.atlas.write_atlas(scvi_run).read_text()
    units = cl.explorer.load_run_data(scvi_run).units("concept")
    assert page.count("<section") == page.count("Steering (decoder side") == len(units)
    assert page.count("moved genes are among the top 10 attributed") == len(units)


def test_widget_slider_re_steers_the_card(scvi_run, monkeypatch):
    explorer = cl.explorer.Explorer(scvi_run)
    data = explorer.data
    calls = []
    steer = cl.explorer.steering.steer
    monkeypatch.setattr(cl.explorer.steering, "steer", lambda *a, **kw: calls.append(kw) or steer(*a, **kw))
    explorer.show(_attributed_concept(data), "concept")
    assert len(calls) == 1, "showing a card steers its concept once (the card and the panel share it)"
    panel = explorer.steering
    assert isinstance(panel.result, SteeringResult) and panel.result.amount == 1.0
    first = panel.result.table.copy()
    panel.slider.value = -1.0
    assert panel.result.amount == -1.0 and not panel.result.table.equals(first)
    assert "-1 x their activation" in panel.html.value
    assert "Steering (decoder side" not in explorer.card.value  # the widget's card leaves it to the panel
    explorer.show(0, "neuron")
    assert isinstance(panel.result, str) and panel.slider.layout.display == "none"
