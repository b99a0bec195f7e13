"""scVI encoder: equals scvi-tools' own get_latent_representation(); loading, caching, controls."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import FLOAT32_ATOL, FLOAT32_RTOL

import corelib as cl
import corelib.encoders as enc
from corelib.encoders import scvi as enc_scvi

scvi = pytest.importorskip("scvi")

N_GENES = 40


def _counts(n_cells: int = 200, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 1.0, (1, N_GENES)) * rng.choice([0.5, 2.0], (n_cells, 1))
    X = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
    return ad.AnnData(X, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny SCVI trained and saved by scvi-tools itself (the official directory format)."""
    adata = _counts()
    scvi.model.SCVI.setup_anndata(adata)
    scvi.settings.seed = 0
    model = scvi.model.SCVI(adata, n_latent=4, n_layers=2, n_hidden=16)
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    directory = tmp_path_factory.mktemp("scvi") / "model"
    model.save(str(directory))
    return model, adata, directory


def test_embedding_equals_scvi_tools(saved_model):
    model, adata, directory = saved_model
    reference = model.get_latent_representation(adata)
    encoder = enc.load("scvi", path=directory, trust_pickle=True, device="cpu")
    assert (encoder.name, encoder.dim, encoder.genes) == ("scvi", 4, list(adata.var_names))
    fresh = _counts()  # the same cells, never registered with scvi-tools
    emb = enc.embed(encoder, fresh, batch_size=64, progress=False)
    np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fresh.obsm["X_scvi"], emb)


def test_hyper_parameters_come_from_the_file(saved_model):
    _, _, directory = saved_model
    encoder = enc.load("scvi", path=directory, trust_pickle=True)
    assert encoder.vae_kwargs["n_layers"] == 2 and encoder.vae_kwargs["n_hidden"] == 16
    assert len(encoder.z_encoder.encoder.fc_layers) == 2


def test_pickle_needs_explicit_trust(saved_model):
    _, _, directory = saved_model
    with pytest.raises(ValueError, match="trust_pickle=True"):
        enc.load("scvi", path=directory)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no scvi-tools model"):
        enc.load("scvi", path=tmp_path, trust_pickle=True)


def test_linear_head_reproduces_forward(saved_model):
    _, adata, directory = saved_model
    encoder = enc.load("scvi", path=directory, trust_pickle=True, device="cpu")
    head = encoder.linear_head()
    x_BG = torch.from_numpy(adata.X[:32].toarray())
    assert head.weight.shape == (16, N_GENES) and head.bias.shape == (16,)
    with torch.no_grad():
        out = encoder(x_BG)
        exact = head.rest(torch.nn.functional.linear(head.preprocess(x_BG), head.weight, head.bias))
        by_hand = head.rest(head.preprocess(x_BG) @ head.weight.T + head.bias)
    assert torch.equal(exact, out)
    torch.testing.assert_close(by_hand, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.preprocess(x_BG), torch.log1p(x_BG))


def test_census_layout_aligns_by_feature_id(saved_model, tmp_path):
    """Ensembl ids as the model's var_names: cells are matched through adata.var['feature_id']."""
    model, adata, _ = saved_model
    census = adata.copy()
    census.var_names = [f"ENSG{i:011d}" for i in range(N_GENES)]
    scvi.model.SCVI.setup_anndata(census)
    twin = scvi.model.SCVI(census, n_latent=4, n_layers=2, n_hidden=16)
    twin.module.load_state_dict(model.module.state_dict())
    twin.is_trained_ = True
    twin.save(str(tmp_path / "census"))
    encoder = enc.load("scvi", path=tmp_path / "census", trust_pickle=True)
    assert encoder.var_key == "feature_id"
    query = _counts()
    query.var["feature_id"] = list(census.var_names)
    np.testing.assert_allclose(
        enc.embed(encoder, query, progress=False),
        model.get_latent_representation(adata),
        rtol=1e-5,
        atol=1e-5,
    )


def test_trained_encoder_equals_its_scvi_model():
    adata = _counts()
    model = enc_scvi.train(adata, epochs=1, n_latent=3, n_hidden=16, progress=False)
    encoder = enc_scvi.from_model(model)
    np.testing.assert_allclose(
        enc.embed(encoder, adata, progress=False), model.get_latent_representation(), rtol=1e-5, atol=1e-5
    )
    assert "_scvi_batch" not in adata.obs  # the user's AnnData is left untouched


def test_run_encoder_is_reused_only_for_the_same_cells_and_settings(tmp_path, monkeypatch):
    adata = _counts()
    options = {"epochs": 1, "n_latent": 3, "n_hidden": 16}
    run = cl.runs.open_run(tmp_path / "run")
    first = cl.runs.steps.load_encoder(run, adata, model="scvi", options=options, device="cpu")
    assert (run.path("encoder") / "encoder.safetensors").exists()
    assert cl.runs.provenance_path(run.path("encoder")).exists()

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a matching cache exists")

    monkeypatch.setattr(enc_scvi, "train", no_training)
    again = cl.runs.steps.load_encoder(run, adata, model="scvi", options=options, device="cpu")
    np.testing.assert_array_equal(
        enc.embed(again, adata, progress=False), enc.embed(first, adata, progress=False)
    )
    with pytest.raises(cl.runs.StaleOutputError, match=r"model_options: \{epochs: 1"):
        cl.runs.steps.load_encoder(run, adata, model="scvi", options={**options, "epochs": 2}, device="cpu")
    with pytest.raises(
        cl.runs.StaleOutputError, match="data: AnnData 200 cells x 40 genes -> AnnData 100 cells"
    ):  # another dataset
        cl.runs.steps.load_encoder(run, adata[: adata.n_obs // 2].copy(), model="scvi", options=options)
    with pytest.raises(AssertionError, match="retrained"):  # overwrite retrains
        cl.runs.steps.load_encoder(
            cl.runs.open_run(tmp_path / "run", overwrite=True),
            adata,
            model="scvi",
            options={**options, "epochs": 2},
        )


def test_random_weight_control(saved_model):
    _, adata, directory = saved_model
    trained = enc.load("scvi", path=directory, trust_pickle=True)
    control = enc.load("scvi", path=directory, trust_pickle=True, random_init=True, seed=3)
    same = enc.load("scvi", path=directory, trust_pickle=True, random_init=True, seed=3)
    assert control.name == "scvi_random" and control.dim == trained.dim
    emb = enc.embed(control, adata, progress=False)
    np.testing.assert_array_equal(emb, enc.embed(same, adata, progress=False))
    assert not np.allclose(emb, enc.embed(trained, adata, progress=False), atol=1e-3)
    untrained = enc.load("scvi", adata=adata, random_init=True, seed=3, n_latent=5)
    assert untrained.name == "scvi_random" and untrained.dim == 5


def test_cpu_same_batch_size_and_threads_give_the_same_bits(saved_model):
    """The promise: same inputs, weights, batch size, thread count and device -> bit-identical embedding."""
    _, adata, directory = saved_model
    first = enc.embed(
        enc.load("scvi", path=directory, trust_pickle=True, device="cpu"),
        adata,
        batch_size=13,
        progress=False,
    )
    again = enc.embed(
        enc.load("scvi", path=directory, trust_pickle=True, device="cpu"),
        adata,
        batch_size=13,
        progress=False,
    )
    np.testing.assert_array_equal(first, again)


def test_cpu_other_batch_sizes_and_threads_agree_within_float32_tolerance(saved_model):
    """Other batch sizes / thread counts pick other BLAS kernels: equal within tolerance, not bit for bit."""
    _, adata, directory = saved_model
    encoder = enc.load("scvi", path=directory, trust_pickle=True, device="cpu")
    reference = enc.embed(encoder, adata, batch_size=200, progress=False)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch_size in (1, 13, 200):
                np.testing.assert_allclose(
                    enc.embed(encoder, adata, batch_size=batch_size, progress=False),
                    reference,
                    rtol=FLOAT32_RTOL,
                    atol=FLOAT32_ATOL,
                    err_msg=f"batch_size={batch_size}, threads={threads}",
                )
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA parity needs a GPU; none on this machine")
def test_cuda_matches_cpu(saved_model):
    _, adata, directory = saved_model
    cpu = enc.embed(enc.load("scvi", path=directory, trust_pickle=True, device="cpu"), adata, progress=False)
    gpu = enc.embed(enc.load("scvi", path=directory, trust_pickle=True, device="cuda"), adata, progress=False)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_covariate_encoding_models(tmp_path):
    """encode_covariates with a single batch works (the batch one-hot is empty); with two batches it is refused."""
    adata = _counts()
    scvi.model.SCVI.setup_anndata(adata)
    single = scvi.model.SCVI(adata, n_latent=3, n_hidden=16, encode_covariates=True)
    single.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    single.save(str(tmp_path / "single"))
    encoder = enc.load("scvi", path=tmp_path / "single", trust_pickle=True)
    np.testing.assert_allclose(
        enc.embed(encoder, _counts(), progress=False),
        single.get_latent_representation(),
        rtol=1e-5,
        atol=1e-5,
    )
    batched = _counts()
    batched.obs["batch"] = ["a", "b"] * (batched.n_obs // 2)
    scvi.model.SCVI.setup_anndata(batched, batch_key="batch")
    two = scvi.model.SCVI(batched, n_latent=3, n_hidden=16, encode_covariates=True)
    two.save(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="encode_covariates=False"):
        enc.load("scvi", path=tmp_path / "two", trust_pickle=True)


def test_training_keeps_lightning_quiet():
    """No "Seed set", hardware summary, cloud-logger tip or stop reason; no warning that is not about the model."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            enc_scvi.train(_counts(), epochs=1, n_latent=3, n_hidden=16, progress=False)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught] == []


def test_early_stopping_is_scvi_tools_own_and_recorded_in_the_cached_encoder(tmp_path, monkeypatch):
    seen = {}
    original = scvi.model.SCVI.train

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(scvi.model.SCVI, "train", spy)
    adata = _counts()
    options = {"epochs": 3, "early_stopping": True, "n_latent": 3, "n_hidden": 16}
    run = cl.runs.open_run(tmp_path / "run")
    encoder = cl.runs.steps.load_encoder(run, adata, model="scvi", options=options, device="cpu")
    assert (seen["early_stopping"], seen["max_epochs"]) == (True, 3)
    assert "early_stopping_patience" not in seen  # scvi-tools' default patience and monitor
    record = encoder.training_record
    assert (record["early_stopping"], record["max_epochs"], record["epochs"], record["stopped_early"]) == (
        True, 3, 3, False
    )  # fmt: skip
    assert (
        np.isfinite(record["elbo_validation"]) and record["best_elbo_validation"] <= record["elbo_validation"]
    )
    assert enc_scvi.describe_training(record).startswith("NOT converged")
    assert enc.restore(run.path("encoder"), device="cpu").training_record == record  # kept in the run's cache


def test_training_record_of_a_model_stopped_early():
    model = enc_scvi.train(_counts(), epochs=1, n_latent=3, n_hidden=16, progress=False)
    fixed = enc_scvi.record_training(model, early_stopping=False)
    assert (fixed["epochs"], fixed["elbo_validation"]) == (1, None)  # no validation without early stopping
    assert enc_scvi.describe_training(fixed) == "trained for a fixed 1 epochs (not checked for convergence)"
    stopped = {**fixed, "early_stopping": True, "max_epochs": 400, "epochs": 168, "stopped_early": True,
               "criterion": "validation ELBO", "elbo_validation": 688.14, "best_elbo_validation": 687.9}  # fmt: skip
    assert enc_scvi.describe_training(stopped).startswith("converged by validation ELBO after 168 epochs")


def test_training_threads_follow_the_option_and_are_restored():
    from corelib.device import small_model_threads

    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    with small_model_threads(cpu, n_weights=10):
        assert torch.get_num_threads() == 1  # a small model: one thread by default
    with small_model_threads(cpu, n_weights=10, threads=2):
        assert torch.get_num_threads() == 2  # the demo's `threads: 2`
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1"):
        with small_model_threads(cpu, n_weights=10, threads=0):
            pass
    assert "threads" in enc.MODELS["scvi"]
