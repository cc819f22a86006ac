"""Helpers for whole-slide prediction tests: a tiny real checkpoint and synthetic slides with tissue and ink.

The synthetic slide (2048 x 1536 px at 0.5 um/px) holds one textured pink tissue ellipse with purple "nuclei" on a
white background, blue and blue-violet pen strokes on the glass and a green pen blob over the tissue edge. The masks
of each part are returned so tests can check the tissue detector and the grid against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

from hifusion import __version__
from hifusion.predict import Compute
from tests.fixtures.make_legacy_checkpoint import randomise_batchnorm

SLIDE_MPP = 0.5
PANEL = ["ERBB2", "KRT19", "GENE_A", "GENE_B", "GENE_C"]
TINY_OPTIONS = {
    "levels": [1, 4], "tokens": 1, "heads": 2, "embed_dim": 32,
    "spot_encoder": "resnet10", "region_encoder": "resnet10",
}
SPOT_PX, REGION_PX, PIXEL_SIZE = 32, 64, 2.0  # 64 um spot field of view, read from level 2 of the pyramid
CPU = Compute(device="cpu", progress=False)  # how the tests run `predict_slide`


@dataclass
class SyntheticSlide:
    image: np.ndarray
    tissue: np.ndarray  # bool truth masks, level-0 pixels
    pen: np.ndarray
    mpp: float


def synthetic_slide(h: int = 1536, w: int = 2048, seed: int = 0) -> SyntheticSlide:
    """White glass, a textured H&E-coloured ellipse with haematoxylin dots, blue and green ink."""
    rng = np.random.default_rng(seed)
    img = (242 + rng.integers(0, 6, (h, w, 3))).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((xx - 0.42 * w) / (0.28 * w)) ** 2 + ((yy - 0.5 * h) / (0.32 * h)) ** 2 <= 1
    tex = ndimage.gaussian_filter(rng.random((h, w)), 3)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    pink = np.stack([215 - 60 * tex, 120 - 60 * tex, 180 - 30 * tex], -1).astype(np.uint8)
    img[tissue] = pink[tissue]
    nuclei = tissue & (ndimage.gaussian_filter(rng.random((h, w)), 2) > 0.53)
    img[nuclei] = (95, 60, 150)  # haematoxylin: purple, hue ~ 255 degrees, must not be taken for ink
    blue = (np.abs(xx - 0.86 * w) < 18) & (yy > 0.15 * h) & (yy < 0.85 * h)
    green = ((xx - 0.66 * w) ** 2 + (yy - 0.5 * h) ** 2) <= (0.06 * w) ** 2
    violet = (np.abs(yy - 0.93 * h) < 30) & (xx > 0.1 * w) & (xx < 0.6 * w)
    img[blue] = (20, 100, 200)  # marker blue, hue ~213 degrees
    img[green] = (60, 160, 80)
    img[violet] = (40, 70, 170)  # blue-violet marker, hue ~226 degrees: in the haematoxylin range but dense
    return SyntheticSlide(img, tissue & ~green, blue | green | violet, SLIDE_MPP)


def write_pyramid_tiff(path: Path, img: np.ndarray, mpp: float, *, subifds: bool = True) -> Path:
    """Tiled (256 x 256) pyramidal TIFF, levels 1, 1/2, 1/4, with centimetre resolution tags giving the um/px."""
    res = 1e4 / mpp
    levels = [img]
    for _ in range(2):
        a = levels[-1].astype(np.float32)
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        levels.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    kw = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib", "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        for i, lv in enumerate(levels):
            extra = {"subifds": len(levels) - 1} if (subifds and i == 0) else {}
            tif.write(lv, resolution=(res / 2**i, res / 2**i), subfiletype=1 if i else 0, **kw, **extra)
    return path


def write_checkpoint(
    path: Path,
    *,
    spot_px: int = SPOT_PX,
    region_px: int = REGION_PX,
    pixel_size: float = PIXEL_SIZE,
    panel: list[str] | None = None,
    normalisation: dict | None = None,
    seed: int = 0,
    extra_meta: dict | None = None,
) -> Path:
    """A real checkpoint of a tiny random HiFusion, saved like training saves it (Lightning layout + metadata)."""
    from hifusion.checkpoint_meta import CheckpointMeta
    from hifusion.config import TrainConfig
    from hifusion.models import create_model
    from hifusion.train.callbacks import AtomicCheckpointIO
    from hifusion.train.module import ExpressionModule

    panel = list(panel or PANEL)
    torch.manual_seed(seed)
    model = create_model("hifusion", n_genes=len(panel), **TINY_OPTIONS)
    randomise_batchnorm(model)  # non-trivial statistics, so predictions vary from spot to spot
    meta = {
        "version": __version__,
        "model": {"name": "hifusion", "options": dict(TINY_OPTIONS)},
        "panel": panel,
        "label": "log1p_cpm",
        "patch": {"pixel_size": float(pixel_size), "spot_px": int(spot_px), "region_px": int(region_px)},
        "normalisation": normalisation or {"mode": "patch"},
        "train_sections": ["S1"],
        **(extra_meta or {}),
    }
    module = ExpressionModule(model, TrainConfig(), CheckpointMeta.from_dict(meta))
    state = module.state_dict()
    assert state and all(k.startswith("model.") for k in state)
    AtomicCheckpointIO().save_checkpoint({"state_dict": state, "hifusion": meta}, path)
    return path


