"""Whole-slide prediction on a real HER2ST section agrees with the patches the data layer cuts for the cache."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from hifusion import constants as C
from hifusion.data.image import open_image
from hifusion.data.patches import iter_patches, spot_from_region
from hifusion.predict import SpotLayout, load_predictor, predict_slide

from .slides import CPU, write_checkpoint

pytestmark = pytest.mark.realdata

HER2ST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "her2st"
C3_MPP = 0.69
CPU_PIXEL_SIZE = C.DEFAULT_SPOT_UM / C.CPU_SPOT_PX  # the CPU profile: 112 px spot, 224 px region, 154.6 um


@pytest.fixture(scope="module")
def c3() -> tuple[Path, pd.DataFrame]:
    images = sorted((HER2ST / C.HER2ST_IMAGES_DIR / "C" / "C3").glob("*.jpg"))
    spots_path = HER2ST / C.HER2ST_SPOTS_DIR / C.HER2ST_SPOTS_PATTERN.format(section="C3")
    if not images or not spots_path.is_file():
        pytest.skip(f"HER2ST C3 not found under {HER2ST} (real-data test needs ../shared/data/her2st)")
    spots = pd.read_csv(spots_path, sep="\t")
    if "selected" in spots.columns:
        spots = spots[spots["selected"] == 1]
    return images[0], spots


def test_c3_spots_match_prepare_patches(tmp_path: Path, c3: tuple[Path, pd.DataFrame]) -> None:
    image, table = c3
    table = table.iloc[::2]  # every other spot (91 of 182) over the whole section keeps the test under ~15 s
    ckpt = write_checkpoint(tmp_path / "c3.ckpt", spot_px=C.CPU_SPOT_PX, region_px=2 * C.CPU_SPOT_PX,
                            pixel_size=CPU_PIXEL_SIZE, seed=7)
    coords = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    barcodes = [f"{x}x{y}" for x, y in zip(table["x"], table["y"], strict=True)]
    spots = tmp_path / "c3_spots.csv"
    pd.DataFrame({"barcode": barcodes, "x": coords[:, 0], "y": coords[:, 1]}).to_csv(spots, index=False)
    out = predict_slide(ckpt, image, tmp_path / "pred", layout=SpotLayout(spots=spots), compute=CPU, mpp=C3_MPP)
    a = ad.read_h5ad(out / "predictions.h5ad")
    assert list(a.obs_names) == barcodes and a.shape == (len(coords), 5)
    assert a.uns[C.UNS_HIFUSION]["level"] == 0
    assert a.obs["tissue_fraction"].mean() > 0.8  # the ST spots lie on the tissue the detector finds

    module, meta = load_predictor(ckpt, "cpu")
    p = meta.patch
    with open_image(image) as img:  # what prepare stores: region patches by extract_patch, spot = centre crop
        regions = np.stack([r for r, _ in iter_patches(img, coords, p.region_px, p.pixel_size, C3_MPP)])
    ref = []
    with torch.no_grad():
        for i in range(0, len(regions), 64):
            r = regions[i : i + 64]
            s = spot_from_region(r, p.spot_px)
            batch = {"spot": torch.from_numpy(np.ascontiguousarray(s.transpose(0, 3, 1, 2))),
                     "region": torch.from_numpy(np.ascontiguousarray(r.transpose(0, 3, 1, 2)))}
            ref.append(module.model(*module.preprocess(batch)).pred.float().numpy())
    np.testing.assert_allclose(a.X, np.concatenate(ref), atol=1e-5, rtol=1e-5)
