"""Test-time adaptation and preprocessing shared by the benchmark and whole-slide prediction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from hifusion.preprocess import (
    adabn,
    centre_on,
    d4,
    normalise_images,
    preprocess_images,
    shrink_factor,
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
    meta = {"normalisation": {"mode": "dataset", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
            "stain": {"augment": {}, "normalise": "none", "reference": None}}
    (a,) = preprocess_images([x], meta, augment=True)
    assert torch.equal(a, normalise_images(x, "dataset", [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]))
    meta["stain"]["augment"] = {"brightness": 0.2}
    torch.manual_seed(1)
    b, c = preprocess_images([x, x], meta, augment=True)
    assert torch.equal(b, c)  # the spot and its region get the same colour draw
    assert not torch.equal(b, a)
