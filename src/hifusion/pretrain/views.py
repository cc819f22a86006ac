"""Two augmented views of a batch of H&E tiles, batched on the device (no per-image Python loops).

What changes between views is what must not change a tissue description: position and orientation (random crop,
the 8 flips/rotations), a little magnification (crop side jittered around the spot field of view at the tiles' own
um/px, so the encoder learns at the scale it is later used at), stain and colour (HED jitter and brightness /
contrast / saturation from `hifusion.stain`, the same code the expression models train with), focus (Gaussian blur
whose sigma is given in microns) and scanner resolution (`stain.apply_resolution`). Inputs are then standardised as
the expression models' inputs are (`preprocess.standardise`: per patch and channel, or by the tiles' channel mean
and std where the models use `data.normalise: dataset`).

Every random draw comes from the global torch generator, which the training loop seeds per step: a resumed run
replays exactly the views of an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812

from hifusion import stain
from hifusion.preprocess import D4_SIZE, d4, standardise

BLUR_PROBABILITY = (1.0, 0.1)  # BYOL's asymmetric views: the first always blurred, the second rarely


def random_crops(x: torch.Tensor, view_px: int, jitter: float) -> torch.Tensor:
    """Square crops of float images (B, 3, T, T) resized to `view_px`: side view_px * f source pixels, f
    log-uniform in [1 / (1 + jitter), 1 + jitter] (capped at the tile), at a uniform position inside the tile."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    log_f = math.log1p(jitter) * (2.0 * torch.rand(b) - 1.0)
    side = (view_px * torch.exp(log_f)).clamp(max=float(min(h, w)))
    x0 = torch.rand(b) * (w - side)
    y0 = torch.rand(b) * (h - side)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + side, y0 + side], dim=1)
    return roi_align(x, boxes.to(x.device, x.dtype), output_size=view_px, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


def random_d4(x: torch.Tensor) -> torch.Tensor:
    """Each image flipped/rotated by its own element of the dihedral group of the square."""
    k = torch.randint(0, D4_SIZE, (x.shape[0],))
    out = torch.empty_like(x)
    for g in torch.unique(k).tolist():
        idx = (k == g).nonzero(as_tuple=True)[0]
        out[idx] = d4(x[idx], int(g))
    return out


def gaussian_blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Each image blurred by its own Gaussian (sigma in pixels, 0 = unchanged), separable grouped convolution."""
    b, c, h, w = x.shape
    radius = min(max(1, math.ceil(3.0 * float(sigma_px.max()))), h - 1, w - 1)  # reflect padding needs < side
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma_px.to(x.device, x.dtype).clamp_min(1e-3).view(b, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (B, K); sigma ~0 gives a unit impulse
    k = k.repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def make_view(x: torch.Tensor, aug: Any, view_px: int, mpp: float, blur_p: float,
              stats: tuple[list[float], list[float]] | None = None) -> torch.Tensor:
    """One augmented, standardised view (B, 3, view_px, view_px) of float [0, 1] tiles `x`."""
    v = random_d4(random_crops(x, view_px, aug.scale_jitter))
    colour = {k: getattr(aug, k) for k in ("hed", "brightness", "contrast", "saturation")}
    v = stain.apply_colour(v, stain.colour_params(v.shape[0], colour, v))
    if aug.resolution > 0:
        v = stain.apply_resolution(v, stain.resolution_levels(v.shape[0], aug.resolution, v), aug.resolution)
    if aug.blur_um > 0 and blur_p > 0:
        sigma_um = aug.blur_um * torch.rand(v.shape[0]) * (torch.rand(v.shape[0]) < blur_p)
        if bool((sigma_um > 0).any()):
            v = gaussian_blur(v, sigma_um / mpp).clamp(0.0, 1.0)
    return standardise(v, "patch", None, None) if stats is None else standardise(v, "dataset", *stats)


def two_views(tiles_u8: torch.Tensor, aug: Any, view_px: int, mpp: float,
              stats: tuple[list[float], list[float]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BYOL's pair of views of uint8 tiles (B, 3, T, T); `stats` (mean, std): dataset standardisation, else per
    patch."""
    x = tiles_u8.float().div_(255.0)
    return (make_view(x, aug, view_px, mpp, BLUR_PROBABILITY[0], stats),
            make_view(x, aug, view_px, mpp, BLUR_PROBABILITY[1], stats))
