"""The bundled, pretrained demo encoder (corelib/datasets/pretrained/pbmc3k_scvi): its files are what its record
says, it loads without pickle, the demo's params name it, a damaged copy is refused, and its command remakes it.

Bit equality across machines is not possible (float kernels differ between CPUs, and 160-odd epochs amplify
the differences into another local optimum), and scVI's latent axes are not identifiable: an scVI trained under
another seed agrees with the bundled one in linear CKA only 0.50 (a 15-epoch one 0.60). So the remade encoder is
compared with the bundled one in what does not depend on that noise and does depend on the recipe (measured on
the bundled, a seed-1 and under-trained scVIs, issue 25):

- the same architecture and genes, exactly;
- converged by the same criterion (a recipe capped at 15 or 60 epochs is not), with the best validation ELBO
  within 1% (bundled 687.9 per cell; seed 1: 696.9 on other held-out cells; capped at 15 epochs: 701.5);
- the same spread of the embedding over its 50 dimensions, the participation ratio of its covariance spectrum
  within 15% (bundled 23.4, seed 1 23.1; 60 epochs 16.3, 15 epochs 3.0, random weights 7.5);
- what the demo does with it: a c500_k32 SAE's held-out R^2 within 0.01 (bundled 0.921, seed 1 0.921;
  60 epochs 0.938, random weights 0.962, 15 epochs 0.992).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import corelib as cl
from corelib.datasets import _pretrained
from corelib.encoders import scvi as _scvi

pytest.importorskip("scvi")

ROOT = Path(__file__).resolve().parents[1]
NAME = "pbmc3k_scvi"
#: Relative difference of the best validation ELBO (per cell) to the bundled one's.
ELBO_RTOL = 0.01
#: Relative difference of the embedding's participation ratio to the bundled one's.
SPREAD_RTOL = 0.15
#: Absolute difference of the c500_k32 SAE's held-out R^2 to the bundled embedding's.
R2_ATOL = 0.01


def participation_ratio(emb_ND: np.ndarray) -> float:
    """How many dimensions an embedding spreads over: ``(sum l)^2 / sum l^2`` of its covariance eigenvalues."""
    eig_D = np.linalg.eigvalsh(np.cov(emb_ND.astype(np.float64).T))
    return float(eig_D.sum() ** 2 / (eig_D**2).sum())


def sae_r2(emb_ND: np.ndarray) -> float:
    """Held-out R^2 of the demo's selected SAE (c500_k32, notebook 02's settings) on an embedding."""
    result = cl.tl.sae.train(
        emb_ND, 500, 32, lr=0.003, epochs=150, batch_size=256, seed=0, device="cpu", progress=False
    )
    return result.metrics["r2_heldout"]


@pytest.fixture(scope="module")
def pbmc3k():
    return cl.datasets.load("pbmc3k")


@pytest.fixture(scope="module")
def bundled():
    return cl.encoders.load("scvi", path=cl.datasets.pretrained(NAME), device="cpu")


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """The reproduce command's output (about 2 min on 2 idle cores)."""
    folder = tmp_path_factory.mktemp("pretrain") / NAME
    cl.encoders.pretrained.train_demo(folder, progress=False)
    return folder


def _embed(encoder, adata) -> np.ndarray:
    return cl.encoders.embed(encoder, adata.copy(), progress=False)


def test_bundled_files_match_their_record():
    folder = cl.datasets.pretrained(NAME)
    record = json.loads((folder / "record.json").read_text())
    assert set(record["sha256"]) == {"encoder.json", "encoder.safetensors"}
    for file, digest in record["sha256"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest
    config = json.loads((folder / "encoder.json").read_text())
    assert config["config"]["training_record"] == record["training"]
    assert record["recipe"] == cl.encoders.pretrained.DEMO_RECIPE
    assert sum(f.stat().st_size for f in folder.iterdir()) < 8e6  # a few MB


def test_loads_without_pickle(bundled, pbmc3k):
    folder = cl.datasets.pretrained(NAME)
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "encoder.safetensors", "record.json"]
    tensors = load_file(str(folder / "encoder.safetensors"))  # plain arrays, read without torch or pickle
    assert bundled.name == "scvi" and bundled.dim == 50 and bundled.genes == list(pbmc3k.var_names)
    first = bundled.linear_head().weight.detach().numpy()
    np.testing.assert_array_equal(first, tensors["z_encoder.encoder.fc_layers.Layer 0.0.weight"])
    assert bundled.training_record["stopped_early"]


def test_demo_params_name_it_with_its_recipe():
    params = cl.runs.params.load_params(ROOT / "params" / "demo.yaml")
    assert params["model_path"] == str(cl.datasets.pretrained(NAME))
    recipe = cl.encoders.pretrained.DEMO_RECIPE
    assert {k: params[k] for k in ("dataset", "model", "seed", "model_options")} == {
        k: recipe[k] for k in ("dataset", "model", "seed", "model_options")
    }
    raw = yaml.safe_load((ROOT / "params" / "demo.yaml").read_text())
    assert raw["model_path"] == f"bundled:{NAME}"


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """A copy of the bundled folder that :func:`corelib.datasets.pretrained` finds instead of the shipped one."""
    shutil.copytree(cl.datasets.pretrained(NAME), tmp_path / "pretrained" / NAME)
    monkeypatch.setattr(_pretrained, "bundled_path", lambda name: tmp_path / name)
    return tmp_path / "pretrained" / NAME


def test_a_damaged_or_missing_checkpoint_is_refused(copy):
    assert cl.datasets.pretrained(NAME) == copy
    weights = copy / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"encoder.safetensors is damaged.*pretrain-demo"):
        cl.datasets.pretrained(NAME)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks .*encoder.safetensors"):
        cl.datasets.pretrained(NAME)
    with pytest.raises(
        FileNotFoundError, match=rf"no bundled pretrained encoder 'pbmc3k_scgpt'.*bundled: {NAME}"
    ):
        cl.datasets.pretrained("pbmc3k_scgpt")


def test_params_naming_an_unknown_bundled_encoder_fail_at_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("dataset: pbmc3k\nmodel: scvi\nmodel_path: bundled:nope\n")
    with pytest.raises(FileNotFoundError, match="no bundled pretrained encoder 'nope'"):
        cl.runs.params.load_params(path)


@pytest.fixture(scope="module")
def reference(bundled, pbmc3k):
    """The bundled encoder's embedding of pbmc3k: its participation ratio and its SAE's held-out R^2."""
    emb_ND = _embed(bundled, pbmc3k)
    return participation_ratio(emb_ND), sae_r2(emb_ND)


def _agrees(encoder, pbmc3k, reference) -> dict[str, bool]:
    """Which of the embedding checks an encoder passes against the bundled one."""
    emb_ND = _embed(encoder, pbmc3k)
    spread, r2 = reference
    return {
        "spread": participation_ratio(emb_ND) == pytest.approx(spread, rel=SPREAD_RTOL),
        "sae_r2": sae_r2(emb_ND) == pytest.approx(r2, abs=R2_ATOL),
    }


def test_the_command_reproduces_it(retrained, bundled, pbmc3k, reference):
    remade = cl.encoders.restore(retrained, device="cpu")
    config, original = remade.config(), bundled.config()
    mine, theirs = config.pop("training_record"), original.pop("training_record")
    assert config == original  # architecture, genes, name
    assert mine["stopped_early"] and mine["criterion"] == theirs["criterion"]
    assert mine["best_elbo_validation"] == pytest.approx(theirs["best_elbo_validation"], rel=ELBO_RTOL)
    assert json.loads((retrained / "record.json").read_text())["recipe"] == cl.encoders.pretrained.DEMO_RECIPE
    assert _agrees(remade, pbmc3k, reference) == {"spread": True, "sae_r2": True}


def test_other_recipes_fail_the_checks(bundled, pbmc3k, reference):
    """Negative controls: training capped at 15 epochs (not converged, worse ELBO, another geometry) and the
    random-weight control."""
    short = _scvi.train_encoder(
        pbmc3k, seed=0, early_stopping=True, epochs=15, n_latent=50, threads=2, progress=False
    )
    record, bundled_record = short.training_record, bundled.training_record
    assert not record["stopped_early"]
    assert record["best_elbo_validation"] > bundled_record["best_elbo_validation"] * (1 + ELBO_RTOL)
    assert _agrees(short, pbmc3k, reference) == {"spread": False, "sae_r2": False}
    assert _agrees(bundled.random_control(0), pbmc3k, reference) == {"spread": False, "sae_r2": False}
