"""Cutting patches around spot centres: the one definition used by `prepare` and by whole-slide `predict`.

Geometry: the spot centre is rounded to the nearest full-resolution pixel (cx, cy); the window has side
`out_px * out_mpp / image_mpp` full-resolution pixels and is centred on the top-left corner of pixel (cx, cy), so at
1:1 scale pixel (cx, cy) lands at index (out_px // 2, out_px // 2) of the patch and the window is an exact crop.
Otherwise the window (fractional bounds allowed) is resampled to `out_px` with PIL's antialiased BOX (area) filter when
shrinking and BILINEAR when enlarging. Parts outside the image take the image's pad colour.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from hifusion.data.image import SlideImage

_MARGIN = 2  # extra source pixels read around a resampled window so the filter has support at its edges


def round_half_up(v: float) -> int:
    """Round to the nearest integer, halves up (numpy's banker's rounding would move centres by parity)."""
    return int(math.floor(float(v) + 0.5))


def window(center_xy: tuple[float, float] | np.ndarray, out_px: int, out_mpp: float, image_mpp: float) -> tuple:
    """(x0, y0, side): the float top-left and side, in full-resolution pixels, of the window a patch shows."""
    side = out_px * float(out_mpp) / float(image_mpp)
    cx, cy = round_half_up(center_xy[0]), round_half_up(center_xy[1])
    return cx - side / 2.0, cy - side / 2.0, side


def region_top_left(
    center: tuple[float, float] | np.ndarray, region_px: int, out_mpp: float, image_mpp: float
) -> tuple[int, int]:
    """Integer top-left corner of the region window in full-resolution pixels (the patch file's `coords`)."""
    x0, y0, _ = window(center, region_px, out_mpp, image_mpp)
    return round_half_up(x0), round_half_up(y0)


def crosses_border(x0: float, y0: float, side: float, size: tuple[int, int]) -> bool:
    """True when the window reaches outside the image (so part of the patch is padding)."""
    w, h = size
    return x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h


def extract_patch(
    image: SlideImage, center_xy: tuple[float, float] | np.ndarray, out_px: int, out_mpp: float, image_mpp: float
) -> tuple[np.ndarray, bool]:
    """uint8 (out_px, out_px, 3) patch at `out_mpp` um/px centred on the spot, and whether it crosses the edge."""
    x0, y0, side = window(center_xy, out_px, out_mpp, image_mpp)
    border = crosses_border(x0, y0, side, image.size)
    if side == out_px and float(x0).is_integer() and float(y0).is_integer():
        return image.read_region(int(x0), int(y0), out_px, out_px), border
    ix0, iy0 = math.floor(x0) - _MARGIN, math.floor(y0) - _MARGIN
    ix1, iy1 = math.ceil(x0 + side) + _MARGIN, math.ceil(y0 + side) + _MARGIN
    src = Image.fromarray(image.read_region(ix0, iy0, ix1 - ix0, iy1 - iy0))
    resample = Image.Resampling.BOX if side >= out_px else Image.Resampling.BILINEAR
    box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    return np.asarray(src.resize((out_px, out_px), resample, box=box, reducing_gap=None)), border


def iter_patches(
    image: SlideImage, centers: np.ndarray, out_px: int, out_mpp: float, image_mpp: float
) -> Iterator[tuple[np.ndarray, bool]]:
    """Patches one by one (constant memory); the image object keeps its decoded pixels between spots."""
    for c in np.asarray(centers, dtype=np.float64):
        yield extract_patch(image, c, out_px, out_mpp, image_mpp)


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    """Centre `side` x `side` crop of (..., H, W, C) patch(es); the spot patch is the centre of the region patch."""
    h, w = img.shape[-3], img.shape[-2]
    if side > h or side > w:
        raise ValueError(f"cannot crop {side} px from a {h}x{w} patch")
    top, left = (h - side) // 2, (w - side) // 2
    return img[..., top : top + side, left : left + side, :]


def spot_from_region(region: np.ndarray, spot_px: int) -> np.ndarray:
    """The centre `spot_px` crop of region patch(es) (..., R, R, 3): the spot patch, same centre, same scale."""
    return centre_crop(region, spot_px)
