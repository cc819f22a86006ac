"""Stain handling on image batches, vectorised on the device: colour augmentation and section-level normalisation.

A few grey levels of stain difference between slides move a model's predictions for a whole section; these
functions let training teach the model to ignore such shifts (augmentation) and let prediction map a new slide's
colours to the training sections' (normalisation). Every function takes float RGB batches in [0, 1], shape
(B, 3, H, W), and never imports anything from training or evaluation, so `predict` applies exactly the same code.

Colour spaces (facts, not code, from the literature):
- HED: Ruifrok & Johnston's colour deconvolution with the haematoxylin / eosin / DAB vectors scikit-image uses, in
  its optical-density scale (log intensity divided by log 1e-6); HED jitter as in Tellez et al. (2018/2019):
  each stain channel scaled by U(1-s, 1+s) and shifted by U(-s, s).
- CIELAB (sRGB, D65 white) for Reinhard et al.'s (2001) mean/std transfer, here per section: a section's LAB
  statistics over its spot patches are mapped onto those of the training sections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

# Stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density, as scikit-image defines them.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = float(np.log(1e-6))

# sRGB (linear) -> CIE XYZ, D65 white point.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]], dtype=np.float64)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
_DELTA = 6.0 / 29.0
_GREY = (0.299, 0.587, 0.114)  # luma weights for contrast and saturation


def _mix(x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Apply a 3x3 colour matrix to the channel axis: out[c] = sum_k x[k] * matrix[k, c] (row-vector convention)."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("bkhw,kc->bchw", x, m)


# ----------------------------------------------------------------------------------------------------------- HED
def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> HED stain concentrations (about 0-1 for H&E). Not clipped at 0 (scikit-image clips), so
    that a zero jitter returns the image unchanged, colours outside the stain cone included."""
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    return _mix(od, _HED_FROM_RGB)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hed` (clipped to [0, 1])."""
    return torch.exp(_mix(hed, _RGB_FROM_HED) * _LOG_ADJUST).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------- CIELAB
def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIELAB (L in 0-100, a and b about -128..127)."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0.0) + 0.055) / 1.055) ** 2.4)
    xyz = _mix(lin, _XYZ_FROM_RGB.T) / torch.as_tensor(_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB -> sRGB, clipped to [0, 1]."""
    fy = (lab[:, 0] + 16.0) / 116.0
    f = torch.stack([fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0], dim=1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = xyz * torch.as_tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    lin = _mix(xyz, _RGB_FROM_XYZ.T).clamp(0.0, 1.0)
    return torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1.0 / 2.4) - 0.055).clamp(0.0, 1.0)


def lab_stats(batches: Iterable[torch.Tensor]) -> np.ndarray:
    """(2, 3) per-channel LAB mean and std over every pixel of uint8 or [0, 1] RGB batches: one section's stain."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x in batches:
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        lab = rgb_to_lab(x).double()
        total += lab.sum(dim=(0, 2, 3)).cpu()
        total_sq += (lab * lab).sum(dim=(0, 2, 3)).cpu()
        count += lab.shape[0] * lab.shape[2] * lab.shape[3]
    if count == 0:
        raise ValueError("no pixels to compute stain statistics from")
    mean = total / count
    std = torch.sqrt(torch.clamp(total_sq / count - mean**2, min=1e-6))
    return torch.stack([mean, std]).numpy()


def pool_stats(stats: Iterable[tuple[np.ndarray, int]]) -> np.ndarray:
    """Pool per-section (2, 3) LAB statistics weighted by pixel (or spot) counts: the training reference."""
    m = s2 = None
    n = 0
    for st, w in stats:
        st = np.asarray(st, dtype=np.float64)
        mean, var = st[0], st[1] ** 2
        m = mean * w if m is None else m + mean * w
        s2 = (var + mean**2) * w if s2 is None else s2 + (var + mean**2) * w
        n += w
    if not n or m is None or s2 is None:
        raise ValueError("no sections to pool stain statistics from")
    mean = m / n
    return np.stack([mean, np.sqrt(np.maximum(s2 / n - mean**2, 1e-6))])


def reinhard(x: torch.Tensor, source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Map each image's LAB channels from its section's statistics `source` (B, 2, 3) onto `reference` (2, 3)."""
    lab = rgb_to_lab(x)
    src_m, src_s = source[:, 0].view(-1, 3, 1, 1), source[:, 1].view(-1, 3, 1, 1)
    ref_m, ref_s = reference[0].view(1, 3, 1, 1), reference[1].view(1, 3, 1, 1)
    return lab_to_rgb((lab - src_m) / src_s * ref_s + ref_m)


# ---------------------------------------------------------------------------------------------------- augmentation
def _uniform(n: int, spread: float, like: torch.Tensor, centre: float, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-image uniform draws in [centre - spread, centre + spread] from the global torch generator (seeded per
    batch by the training module, so a resumed run replays the same colours)."""
    r = torch.rand((n, *shape), dtype=torch.float32).to(device=like.device, dtype=like.dtype)
    return centre + spread * (2.0 * r - 1.0)


def colour_params(n: int, cfg: Mapping[str, float], like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Random colour-augmentation parameters for `n` images (one set per image, shared by its spot and region)."""
    p: dict[str, torch.Tensor] = {}
    if cfg.get("hed", 0.0) > 0:
        p["hed_scale"] = _uniform(n, cfg["hed"], like, 1.0, (3, 1, 1))
        p["hed_shift"] = _uniform(n, cfg["hed"], like, 0.0, (3, 1, 1))
    for key in ("brightness", "contrast", "saturation"):
        if cfg.get(key, 0.0) > 0:
            p[key] = _uniform(n, cfg[key], like, 1.0, (1, 1, 1))
    return p


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(_GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def apply_colour(x: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """HED jitter, then brightness, contrast and saturation factors, with the parameters of `colour_params`."""
    if "hed_scale" in p:
        x = hed_to_rgb(rgb_to_hed(x) * p["hed_scale"] + p["hed_shift"])
    if "brightness" in p:
        x = (x * p["brightness"]).clamp(0.0, 1.0)
    if "contrast" in p:
        m = _grey(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - m) * p["contrast"] + m).clamp(0.0, 1.0)
    if "saturation" in p:
        g = _grey(x)
        x = ((x - g) * p["saturation"] + g).clamp(0.0, 1.0)
    return x


# Scanner resolution: the same tissue scanned at 20x instead of 40x, or saved as a downscaled copy, reaches the model
# blurred after resampling to the patch scale. Each spot draws one of _RES_LEVELS log-spaced factors in [1, 1 + r]
# (level 0: unchanged), shared by its spot and region patches (same physical scale); the patch is area-downsampled by
# that factor and resized back (bilinear). Quantised levels keep the work to a few batched resizes.
_RES_LEVELS = 8


def resolution_levels(n: int, spread: float, like: torch.Tensor) -> torch.Tensor:
    """Per-image level in 0.._RES_LEVELS-1 (global torch generator, like `colour_params`)."""
    return torch.randint(0, _RES_LEVELS, (n,)).to(like.device)


def apply_resolution(x: torch.Tensor, levels: torch.Tensor, spread: float) -> torch.Tensor:
    """Images of `x` (B, 3, H, W) seen at 1 / factor of their resolution, factor = (1 + spread) ** (level / 7)."""
    if spread <= 0 or not bool((levels > 0).any()):
        return x
    out = x.clone()
    h, w = x.shape[-2:]
    for lv in torch.unique(levels).tolist():
        if lv == 0:
            continue
        f = (1.0 + spread) ** (lv / (_RES_LEVELS - 1))
        idx = (levels == lv).nonzero(as_tuple=True)[0]
        small = torch.nn.functional.interpolate(x[idx], size=(max(2, round(h / f)), max(2, round(w / f))),
                                                mode="area")
        out[idx] = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear",
                                                   align_corners=False).clamp(0.0, 1.0)
    return out


def stain_meta(augment: Mapping[str, float] | None, normalise: str, reference: np.ndarray | None) -> dict[str, Any]:
    """The stain part of a checkpoint's metadata (primitives only), read back by training and prediction alike."""
    return {
        "augment": {k: float(v) for k, v in (augment or {}).items() if float(v) > 0},
        "normalise": normalise,
        "reference": None if reference is None else np.asarray(reference, dtype=np.float64).tolist(),
    }
