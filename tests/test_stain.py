"""Stain handling on tensors: colour-space round trips, augmentation and section-level Reinhard normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hifusion import stain as S


def _batch(seed: int = 0, n: int = 3, side: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, side, side), generator=g) * 0.9 + 0.05


def test_lab_matches_reference_values_and_round_trips() -> None:
    white = S.rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    red = S.rgb_to_lab(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten()
    np.testing.assert_allclose(white.numpy(), [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(red.numpy(), [53.24, 80.09, 67.20], atol=0.02)  # CIELAB of sRGB red, D65
    x = _batch()
    assert torch.allclose(S.lab_to_rgb(S.rgb_to_lab(x)), x, atol=1e-5)


def test_hed_round_trip_and_zero_jitter_is_identity() -> None:
    x = _batch(1)
    assert torch.allclose(S.hed_to_rgb(S.rgb_to_hed(x)), x, atol=1e-5)
    p = {"hed_scale": torch.ones(3, 3, 1, 1), "hed_shift": torch.zeros(3, 3, 1, 1)}
    assert torch.allclose(S.apply_colour(x, p), x, atol=1e-5)


def test_colour_params_are_seeded_per_image_and_bounded() -> None:
    cfg = {"hed": 0.05, "brightness": 0.1, "contrast": 0.1, "saturation": 0.1}
    x = _batch(2, n=16)
    torch.manual_seed(7)
    a = S.colour_params(16, cfg, x)
    torch.manual_seed(7)
    b = S.colour_params(16, cfg, x)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert (a["hed_scale"] - 1).abs().max() <= 0.05 and a["hed_shift"].abs().max() <= 0.05
    assert (a["brightness"] - 1).abs().max() <= 0.1 and len(torch.unique(a["brightness"])) == 16
    y = S.apply_colour(x, a)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)


def test_reinhard_maps_a_section_onto_the_reference() -> None:
    ref_imgs = _batch(3, n=4, side=16)
    tinted = (ref_imgs * torch.tensor([0.85, 0.95, 1.0]).view(1, 3, 1, 1) + 0.03).clamp(0, 1)  # another "slide"
    ref = S.lab_stats([ref_imgs])
    src = S.lab_stats([tinted])
    assert np.abs(src - ref).max() > 1.0
    out = S.reinhard(tinted, torch.as_tensor(src).float().expand(4, 2, 3), torch.as_tensor(ref).float())
    np.testing.assert_allclose(S.lab_stats([out]), ref, atol=0.5)  # within half a LAB unit after clipping
    same = S.reinhard(ref_imgs, torch.as_tensor(ref).float().expand(4, 2, 3), torch.as_tensor(ref).float())
    assert torch.allclose(same, ref_imgs, atol=1e-4)  # a section already at the reference is left as it is


def test_lab_stats_of_uint8_and_pooling() -> None:
    u8 = (torch.rand(2, 3, 4, 4) * 255).to(torch.uint8)
    np.testing.assert_allclose(S.lab_stats([u8]), S.lab_stats([u8.float() / 255]), atol=1e-6)
    a, b = S.lab_stats([u8[:1]]), S.lab_stats([u8[1:]])
    np.testing.assert_allclose(S.pool_stats([(a, 16), (b, 16)]), S.lab_stats([u8]), atol=1e-4)
    with pytest.raises(ValueError):
        S.lab_stats([])


def test_resolution_augmentation_blurs_by_the_drawn_factor_and_keeps_level_zero() -> None:
    """Level 0 leaves a spot as it is; higher levels remove more fine detail; the draws are seeded."""
    side = 32
    wave = torch.sin(2 * torch.pi * torch.arange(side).float() / 6)  # a 6 px period: fine but above Nyquist
    x = (0.5 + 0.4 * wave.view(-1, 1) * wave.view(1, -1)).expand(8, 3, side, side).clone()
    levels = torch.arange(8)
    y = S.apply_resolution(x, levels, 1.5)
    assert torch.equal(y[0], x[0]) and y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    detail = [(y[i] - y[i].mean()).abs().mean().item() for i in range(8)]
    assert all(a > b for a, b in zip(detail[:-1], detail[1:], strict=True))  # less detail with every level
    assert detail[7] < 0.25 * detail[0]  # 2.5x coarser
    assert torch.equal(S.apply_resolution(x, levels, 0.0), x)  # spread 0 is off
    torch.manual_seed(3)
    a = S.resolution_levels(64, 1.5, x)
    torch.manual_seed(3)
    assert torch.equal(a, S.resolution_levels(64, 1.5, x)) and int(a.min()) >= 0 and int(a.max()) <= 7
    assert len(torch.unique(a)) > 4
