"""The tissue rule, used by `prepare` (per spot patch) and `predict` / `pretrain` (per slide thumbnail), and the
virtual spot grid laid over the tissue.

A new slide has no spot array, so prediction places virtual spots: a hexagonal (Visium-like) or square (legacy ST)
lattice, kept where enough of the spot's field of view is tissue. Detection works on a thumbnail (at most 2000 px on
its long side) because whole-slide pixels never need to be in memory for it.

Tissue rule (documented for users): a pixel is tissue when its saturation exceeds an Otsu threshold (clipped to
[`MIN_SCORE`, `MAX_SCORE`]; stained tissue is coloured, glass, dust and shadows are grey) or, for pale stroma, a lower
saturation with local texture (smooth coloured glare on the glass stays out), it is not near-black (masked
background, black ink) and it is not ink: green/cyan/blue hues (70-215 degrees) that H&E never shows saturated, or
dense saturated blue-violet patches. Then morphology (opening, closing, hole filling) and removal of small specks.

Per spot patch (`spot_tissue_fraction`, the check in `prepare`) the same saturation and value thresholds apply per
pixel without the morphology, and a pixel darker than glass also counts: enough to tell a spot on tissue from one on a
blank, black or white image.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, signal

MIN_SCORE = 0.08  # saturation below this is glass noise; keeps blank slides blank
MAX_SCORE = 0.2  # saturation above this is tissue whatever Otsu says (a thumbnail full of tissue has no glass mode)
PALE_SATURATION, TEXTURE_SD, TEXTURE_WINDOW = 0.1, 0.02, 5  # pale stroma: faintly coloured but textured, unlike glare
BLACK_VALUE = 0.2  # max channel under this: black masked background or black ink
GREY_TISSUE_VALUE = 0.75  # per spot patch: unstained but darker than glass (grey scans, dense tissue) still counts
PEN_HUE = (70.0, 215.0)  # degrees: yellow-green .. blue; no H&E pixel of the HER2ST sections falls here saturated
PEN_SATURATION = 0.3
VIOLET_PEN_HUE = (215.0, 240.0)  # blue-violet ink overlaps the bluest haematoxylin: only dense, saturated patches
VIOLET_PEN_SATURATION = 0.6
VIOLET_PEN_WINDOW, VIOLET_PEN_DENSITY = 9, 0.9
PEN_DILATE_PX = 2  # ink strokes have blurred, off-hue fringes
DEFAULT_MIN_FRACTION = 0.5  # a grid spot is kept when at least half its field of view is tissue


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value (0-1) of a uint8 RGB image; numpy-only so it stays fast on big thumbnails."""
    x, mx, delta, sat = _saturation_value(rgb)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    d = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6.0, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0)) * 60.0
    hue = np.where(delta > 0, hue, 0.0)
    return hue.astype(np.float32), sat.astype(np.float32), mx.astype(np.float32)


def _saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(RGB in 0-1, value = max channel, max - min channel, saturation) of a uint8 RGB image, float32."""
    x = np.asarray(rgb)[..., :3].astype(np.float32) / 255.0
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    return x, mx, delta, sat


def spot_tissue_fraction(patch: np.ndarray) -> float:
    """Share of a patch's pixels that look like tissue: not near-black and either coloured or darker than glass."""
    _, val, _, sat = _saturation_value(patch)
    tissue = (val >= BLACK_VALUE) & ((sat > MIN_SCORE) | (val < GREY_TISSUE_VALUE))
    return float(tissue.mean()) if tissue.size else 0.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance of the histogram)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return 1.0
    hist, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def pen_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Green/cyan/blue ink (saturated, hue outside the H&E range) and dense blue-violet ink, slightly dilated.

    Haematoxylin reaches hue ~220 degrees at saturations up to ~0.7 (HER2ST B4, C2, C3), so blue-violet pixels count
    as ink only where they fill a whole `VIOLET_PEN_WINDOW` neighbourhood, as a marker stroke does and nuclei do not.
    """
    hue, sat, val = rgb_to_hsv(thumbnail)
    lit = val >= BLACK_VALUE
    pen = (hue >= PEN_HUE[0]) & (hue < PEN_HUE[1]) & (sat >= PEN_SATURATION) & lit
    violet = (hue >= VIOLET_PEN_HUE[0]) & (hue < VIOLET_PEN_HUE[1]) & (sat >= VIOLET_PEN_SATURATION) & lit
    if violet.any():
        dense = ndimage.uniform_filter(violet.astype(np.float32), VIOLET_PEN_WINDOW) >= VIOLET_PEN_DENSITY
        pen |= ndimage.binary_dilation(dense, iterations=VIOLET_PEN_WINDOW // 2) & violet
    return ndimage.binary_dilation(pen, iterations=PEN_DILATE_PX) if pen.any() else pen


def detect_tissue(thumbnail: np.ndarray, *, min_object_px: int | None = None) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail: white/black background and coloured pen marks are excluded.

    `min_object_px`: connected pieces smaller than this (thumbnail pixels) are dropped (default: 0.01% of the image,
    at least 16 px); prediction passes the area of one spot's field of view.
    """
    img = np.asarray(thumbnail)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"thumbnail must be (H, W, 3), got shape {img.shape}")
    _, score, val = rgb_to_hsv(img)
    black = val < BLACK_VALUE
    score[black] = 0.0  # black masked background is background: it joins the white mode of the histogram
    pen = pen_mask(img)
    valid = ~black & ~pen
    thr = float(np.clip(otsu_threshold(score[~pen]), MIN_SCORE, MAX_SCORE)) if valid.any() else 1.0
    gray = img[..., :3].astype(np.float32).mean(axis=-1) / 255.0
    mean = ndimage.uniform_filter(gray, TEXTURE_WINDOW)
    sd = np.sqrt(np.maximum(ndimage.uniform_filter(gray * gray, TEXTURE_WINDOW) - mean * mean, 0.0))
    tissue = ((score > thr) | ((score > PALE_SATURATION) & (sd > TEXTURE_SD))) & valid
    tissue = ndimage.binary_opening(tissue, structure=np.ones((3, 3), bool))
    tissue = ndimage.binary_closing(tissue, structure=np.ones((3, 3), bool), iterations=2)
    tissue = ndimage.binary_fill_holes(tissue)
    tissue &= valid  # hole filling must not bring back ink or black areas enclosed by tissue
    if min_object_px is None:
        min_object_px = max(16, int(1e-4 * tissue.size))
    labels, n = ndimage.label(tissue)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= min_object_px
        keep[0] = False
        tissue = keep[labels]
    return tissue


def default_pitch_um(pixel_size: float, spot_px: int) -> float:
    """Default grid pitch: twice the spot field of view (spot_px * pixel_size um), rounded to a whole micron.

    At the paper's scale (224 px at ~0.69 um/px = 154.6 um) this is 309 um: neighbouring spot patches do not overlap
    and the region patches (2x the spot side) tile the tissue. Pass `pitch_um` for denser maps (e.g. 200 for the
    legacy ST array, 100 for Visium).
    """
    return float(round(2.0 * float(spot_px) * float(pixel_size)))


def lattice(width: float, height: float, pitch_px: float, kind: str = "hex") -> tuple[np.ndarray, np.ndarray]:
    """All lattice points inside a width x height image: (N, 2) float (x, y) and (N, 2) int (col, row) indices.

    `hex`: rows pitch*sqrt(3)/2 apart, odd rows shifted by half a pitch, columns numbered Visium-style (neighbours
    in a row differ by 2). `square`: a plain grid (legacy ST). The first point sits half a pitch from the corner.
    """
    if pitch_px <= 0 or not math.isfinite(pitch_px):
        raise ValueError(f"pitch must be positive, got {pitch_px}")
    if kind not in ("hex", "square"):
        raise ValueError(f"grid must be 'hex' or 'square', got {kind!r}")
    dy = pitch_px * math.sqrt(3) / 2 if kind == "hex" else pitch_px
    rows = np.arange(pitch_px / 2, height, dy)
    xs, idx = [], []
    for j, y in enumerate(rows):
        shift = pitch_px / 2 if (kind == "hex" and j % 2) else 0.0
        x = np.arange(pitch_px / 2 + shift, width, pitch_px)
        if not len(x):
            continue
        i = np.arange(len(x))
        col = 2 * i + (j % 2) if kind == "hex" else i
        xs.append(np.stack([x, np.full_like(x, y)], axis=1))
        idx.append(np.stack([col, np.full_like(col, j)], axis=1))
    if not xs:
        return np.zeros((0, 2)), np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(xs), np.concatenate(idx).astype(np.int64)


def tissue_fraction(mask: np.ndarray, scale: float, coords: np.ndarray, diameter_px: float) -> np.ndarray:
    """Fraction of a disc of `diameter_px` (level-0 pixels) around each level-0 (x, y) that the mask calls tissue.

    `scale` is thumbnail pixels per level-0 pixel. Discs under one thumbnail pixel read the pixel under the centre.
    """
    m = np.asarray(mask, dtype=np.float32)
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if not len(xy):
        return np.zeros(0, dtype=np.float32)
    r = diameter_px * scale / 2.0
    if r >= 1.0:
        k = int(math.floor(r))
        yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
        disc = ((xx**2 + yy**2) <= r * r).astype(np.float32)
        disc /= disc.sum()
        m = signal.fftconvolve(m, disc, mode="same").clip(0.0, 1.0)
    ix = np.clip(np.floor(xy[:, 0] * scale).astype(np.int64), 0, m.shape[1] - 1)
    iy = np.clip(np.floor(xy[:, 1] * scale).astype(np.int64), 0, m.shape[0] - 1)
    return m[iy, ix].astype(np.float32)


def spot_grid(
    mask: np.ndarray,
    scale: float,
    pitch_px: float,
    kind: str = "hex",
    *,
    diameter_px: float | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    image_size: tuple[int, int] | None = None,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Virtual spot centres (N, 2) in level-0 pixels on a `kind` lattice, kept where the tissue fraction suffices.

    `scale`: thumbnail pixels per level-0 pixel; `pitch_px`, `diameter_px` (the disc the fraction is measured on,
    default half the pitch) in level-0 pixels; `image_size` (level-0 width, height) defaults to mask size / scale.
    With `return_index`, also the (col, row) lattice indices and the tissue fractions of the kept spots.
    """
    h, w = np.asarray(mask).shape[:2]
    width, height = image_size if image_size is not None else (w / scale, h / scale)
    pts, idx = lattice(width, height, pitch_px, kind)
    frac = tissue_fraction(mask, scale, pts, pitch_px / 2 if diameter_px is None else diameter_px)
    keep = frac >= min_fraction
    if return_index:
        return pts[keep], idx[keep], frac[keep]
    return pts[keep]
