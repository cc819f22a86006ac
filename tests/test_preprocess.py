"""Test-time adaptation and preprocessing shared by the benchmark and whole-slide prediction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.geometry import PatchGeometry
from hifusion.preprocess import (
    adabn,
    centre_on,
    d4,
    normalise_images,
    preprocess_images,
    shrink_factor,
    smooth_spatial,
    tta_mean,
)


def test_d4_gives_eight_distinct_views_of_an_asymmetric_patch() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = {tuple(d4(x, k).flatten().tolist()) for k in range(8)}
    assert len(views) == 8
    assert d4(None, 3) is None


def test_tta_mean_of_an_invariant_forward_equals_the_plain_one() -> None:
    spot, region = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)

    def forward(s: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        return s.mean(dim=(2, 3)) + r.amax(dim=(2, 3))  # invariant to flips and rotations

    assert torch.allclose(tta_mean(forward, spot, region, True), forward(spot, region), atol=1e-6)


def test_adabn_reestimates_batchnorm_on_the_target_and_restores_the_model() -> None:
    torch.manual_seed(0)
    owner = SimpleNamespace(model=nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5)))
    owner.model.eval()
    original = owner.model
    target = [torch.randn(5, 3, 4, 4) * 3 + 2, torch.randn(5, 3, 4, 4) * 3 + 2]
    with adabn(owner, target, lambda b: owner.model(b)):
        bn = owner.model[1]
        assert owner.model is not original and not owner.model.training
        feats = torch.cat([original[0](b) for b in target]).detach()
        np.testing.assert_allclose(bn.running_mean.numpy(), feats.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)
        out = owner.model(target[0])
        assert torch.equal(out, owner.model(target[0]))  # eval mode inside: deterministic (no dropout)
    assert owner.model is original
    assert torch.equal(original[1].running_mean, torch.zeros(4))  # the trained model's statistics are untouched
    with adabn(owner, [], lambda b: owner.model(b)):
        assert owner.model is original  # nothing to estimate from: the trained statistics are kept


def test_centre_and_shrink() -> None:
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(30, 5)) + 3.0
    level = np.arange(5.0)
    out = centre_on(pred, level, 0.5)
    np.testing.assert_allclose(out.mean(0), level, atol=1e-5)
    np.testing.assert_allclose(out - out.mean(0), 0.5 * (pred - pred.mean(0)), atol=1e-5)
    truth = 0.4 * (pred - pred.mean(0)) + 7.0
    assert abs(shrink_factor([pred], [truth]) - 0.4) < 1e-9
    assert shrink_factor([pred], [-truth]) == 0.0  # an anti-correlated pattern is shrunk away, not flipped
    assert shrink_factor([pred], [pred * 5]) == 1.0  # never amplified


def test_preprocess_without_stain_options_is_the_plain_normalisation() -> None:
    x = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8)
    meta = CheckpointMeta("m", {}, ["g"], PatchGeometry(1.0, 8, 8),
                          {"mode": "dataset", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
                          stain={"augment": {}, "normalise": "none", "reference": None})
    (a,) = preprocess_images([x], meta, augment=True)
    assert torch.equal(a, normalise_images(x, "dataset", [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]))
    meta.stain["augment"] = {"brightness": 0.2}
    torch.manual_seed(1)
    b, c = preprocess_images([x, x], meta, augment=True)
    assert torch.equal(b, c)  # the spot and its region get the same colour draw
    assert not torch.equal(b, a)
    meta.stain["augment"] = {"resolution": 1.5}
    torch.manual_seed(2)
    d, e = preprocess_images([x, x], meta, augment=True)
    assert torch.equal(d, e) and not torch.equal(d, a)  # one resolution draw per spot too
    (f,) = preprocess_images([x], meta, augment=False)
    assert torch.equal(f, a)  # never at prediction time


def test_spatial_smoothing_removes_spot_noise_and_keeps_a_broad_pattern() -> None:
    """A pattern over many spots survives a one-pitch Gaussian; independent per-spot errors mostly do not."""
    xy = np.stack(np.meshgrid(np.arange(30), np.arange(20)), -1).reshape(-1, 2) * 200.0  # legacy ST pitch, um
    pattern = np.sin(xy[:, 0] / 1500.0)[:, None] + np.cos(xy[:, 1] / 1200.0)[:, None]
    noisy = pattern + np.random.default_rng(0).normal(0, 1.0, (len(xy), 1))
    smoothed = smooth_spatial(noisy, xy, 200.0)
    assert np.corrcoef(smoothed[:, 0], pattern[:, 0])[0, 1] > np.corrcoef(noisy[:, 0], pattern[:, 0])[0, 1] + 0.2
    np.testing.assert_allclose(smooth_spatial(noisy, xy, 0.0), noisy, atol=1e-6)  # 0 is off
    np.testing.assert_allclose(smooth_spatial(np.full((len(xy), 3), 2.5), xy, 300.0), 2.5, atol=1e-6)  # a constant
    far = smooth_spatial(noisy, xy, 1.0)  # no neighbour within 3 sigma: unchanged
    np.testing.assert_allclose(far, noisy, atol=1e-6)
    # the weights are the Gaussian of the distance: two spots 200 um apart with sigma 200 um
    two = smooth_spatial(np.array([[0.0], [1.0]]), np.array([[0.0, 0.0], [200.0, 0.0]]), 200.0)
    w = np.exp(-0.5)
    np.testing.assert_allclose(two[:, 0], [w / (1 + w), 1 / (1 + w)], rtol=1e-6)
    with pytest.raises(ValueError, match="one \\(x, y\\) per spot"):
        smooth_spatial(noisy, xy[:-1], 200.0)
    with pytest.raises(ValueError, match=">= 0"):
        smooth_spatial(noisy, xy, -1.0)


def test_gene_projection_keeps_shared_programmes_and_the_level() -> None:
    """Predictions = two co-expression programmes + independent per-gene error: projecting onto the training labels'
    two axes removes most of the error, keeps the pattern, and leaves each gene's section mean as it was."""
    from hifusion.preprocess import gene_axes, project_genes

    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(2, 40))

    def section(n: int, level: float) -> np.ndarray:
        return rng.normal(size=(n, 2)) @ loadings + level + 0.1 * rng.normal(size=(n, 40))

    train = [section(200, 0.0), section(150, 3.0)]  # the second section's level must not enter the axes
    axes, sd = gene_axes(train, 2)
    assert axes.shape == (2, 40) and sd.shape == (40,)
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-8)
    truth = section(120, 1.0)
    pred = truth + rng.normal(size=truth.shape)
    out = project_genes(pred, axes, sd)
    np.testing.assert_allclose(out.mean(0), pred.mean(0), atol=1e-5)
    assert ((out - truth) ** 2).mean() < 0.3 * ((pred - truth) ** 2).mean()
    full, sd_full = gene_axes(train, 40)
    np.testing.assert_allclose(project_genes(pred, full, sd_full), pred, atol=1e-4)  # every axis: unchanged
    np.testing.assert_allclose(project_genes(pred[:1], axes, sd), pred[:1], atol=1e-6)  # one spot has no pattern
    with pytest.raises(ValueError, match="do not fit"):
        project_genes(pred[:, :30], axes, sd)
