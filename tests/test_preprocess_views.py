"""Preset encoder inputs in the shared preprocessing: centre crop of the preset's field of view, resize on the device,
the preset's mean/std; a checkpoint without `inputs` is prepared exactly as before."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.geometry import PatchGeometry
from hifusion.preprocess import normalise_images, preprocess_images, rescale_warnings

MEAN, STD = [0.7, 0.6, 0.7], [0.2, 0.25, 0.15]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    region = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    return region[..., 8:24, 8:24].clone(), region  # the spot is the region's centre, as in the cache


def _meta(**views: dict) -> CheckpointMeta:
    return CheckpointMeta("tiny", {}, ["g"], PatchGeometry(5.0, 16, 32), {"mode": "patch"}, inputs=views or None)


def _view(source: str, crop: int, px: int, mpp: float | None = 2.5) -> dict:
    return {"encoder": "tiny", "mpp": mpp, "mean": MEAN, "std": STD, "source": source, "crop_px": crop, "px": px}


def test_without_views_nothing_changes() -> None:
    spot, region = _batch()
    out = preprocess_images([spot, region], _meta())
    assert torch.equal(out[0], normalise_images(spot, "patch", None, None))
    assert torch.equal(out[1], normalise_images(region, "patch", None, None))


def test_spot_view_is_the_centre_crop_resized_with_the_preset_statistics() -> None:
    spot, region = _batch()
    spot_in, region_in = preprocess_images([spot, region], _meta(spot=_view("spot", 8, 16)))
    crop = spot.float()[..., 4:12, 4:12] / 255.0
    want = F.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    want = (want - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(spot_in, want)
    assert torch.equal(region_in, normalise_images(region, "patch", None, None))  # not a preset: as before


def test_a_view_wider_than_the_spot_is_cut_from_the_region_and_downsampled() -> None:
    spot, region = _batch(1)
    views = {"spot": _view("region", 24, 12), "region": _view("region", 32, 16)}
    spot_in, region_in = preprocess_images([spot, region], _meta(**views), keep=("spot",))
    assert region_in is None and spot_in.shape == (3, 3, 12, 12)
    crop = region.float()[..., 4:28, 4:28] / 255.0
    want = F.interpolate(crop, size=(12, 12), mode="bilinear", align_corners=False, antialias=True)
    want = (want - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(spot_in, want)


def test_one_warning_per_rescaled_encoder_naming_both_scales() -> None:
    meta = _meta(spot=_view("spot", 8, 16), region=_view("region", 32, 64))
    assert rescale_warnings(meta) == ["encoder 'tiny' expects 2.5 um/px, the cache holds 5 um/px: patches are "
                                      "resized 2x on the device"]
    assert rescale_warnings(_meta(spot=_view("spot", 16, 16, mpp=None))) == []
    assert rescale_warnings(_meta()) == []
