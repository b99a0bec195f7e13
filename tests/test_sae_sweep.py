"""``corelib.tl.sae.train_many``: a grid of SAEs on the same embeddings, arrays in, trained SAEs out."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import corelib as cl

KW = dict(lr=3e-3, epochs=3, batch_size=128, device="cpu", progress=False)


@pytest.fixture(scope="module")
def x_ND() -> np.ndarray:
    rng = np.random.default_rng(0)
    codes = rng.exponential(size=(400, 24)) * (rng.random((400, 24)) < 0.15)
    return (codes @ rng.normal(size=(24, 12))).astype(np.float32)


def test_train_many_equals_train_one_by_one_fused_or_not(x_ND):
    points = [(24, 2, 0), (32, 3, 0), (24, 2, 1)]
    fused = cl.tl.sae.train_many(x_ND, points, fused=True, **KW)
    separate = cl.tl.sae.train_many(x_ND, points, **KW)
    assert [(r.sae.cfg.n_concepts, r.sae.cfg.k) for r in fused] == [(24, 2), (32, 3), (24, 2)]
    for (c, k, seed), a, b in zip(points, fused, separate, strict=True):
        alone = cl.tl.sae.train(x_ND, c, k, seed=seed, **KW)
        for res in (a, b):
            torch.testing.assert_close(res.sae.W_dec_CD, alone.sae.W_dec_CD)
            assert res.metrics["r2_heldout"] == pytest.approx(alone.metrics["r2_heldout"], abs=1e-6)
            assert list(res.history["epoch"]) == [1, 2, 3]
    # seeds 0 and 1 differ
    assert not torch.allclose(fused[0].sae.W_dec_CD, fused[2].sae.W_dec_CD)


def test_train_many_reports_each_result_as_its_group_finishes(x_ND):
    seen = []
    points = [(16, 2), (20, 2, 1), (24, 3)]  # (c, k) is seed 0
    out = cl.tl.sae.train_many(x_ND, points, fused=True, on_trained=lambda i, r: seen.append((i, r)), **KW)
    # fused groups by seed: seed 0's points (0 and 2) first, then seed 1's
    assert [i for i, _ in seen] == [0, 2, 1]
    assert all(out[i] is r for i, r in seen)
    assert cl.tl.sae.train_many(x_ND, [], **KW) == []


def test_train_many_without_keep_holds_no_finished_sae(x_ND):
    """The run's sweep saves each SAE in on_trained: while the next group trains, the last one is gone."""
    refs, alive_before = [], []

    def saved(i, result):
        gc.collect()
        alive_before.append([ref() is not None for ref in refs])
        refs.append(weakref.ref(result.sae))

    out = cl.tl.sae.train_many(x_ND, [(16, 2), (20, 2, 1), (24, 3, 2)], on_trained=saved, keep=False, **KW)
    assert out == [] and alive_before == [[], [False], [False, False]]


def test_sweep_points_normalise_and_reject_duplicates():
    assert cl.tl.sae.sweep_points([(10, 2), (10, 2, 1)]) == [(10, 2, 0), (10, 2, 1)]
    with pytest.raises(ValueError, match="Duplicate sweep points: c10_k2_s0"):
        cl.tl.sae.sweep_points([(10, 2), (10, 2, 0)])
    with pytest.raises(ValueError, match="Duplicate"):
        cl.tl.sae.train_many(np.zeros((50, 4), dtype=np.float32), [(8, 2), (8, 2)], **KW)
