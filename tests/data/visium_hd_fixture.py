"""A Visium HD Space Ranger output in the exact layout, generated from a real H&E crop (the HER2ST C2 image shipped
in the package), small enough for the tests.

Counts are drawn per 2 um bin (Poisson, each gene's rate following the H&E under the bin: darker = more nuclei,
pinker = more stroma), only under tissue; the 8 and 16 um bins are the sums of their 4x4 and 8x8 blocks of 2 um
bins, as Space Ranger bins them. Layout:

    <root>/<sample>/<sample>_tissue_image.tif                 the full-resolution image (optional)
    <root>/<sample>/outs/binned_outputs/square_{002,008,016}um/
        filtered_feature_bc_matrix.h5                         in-tissue bins only
        spatial/tissue_positions.parquet                      every bin of the grid, in_tissue 0/1
        spatial/scalefactors_json.json                        microns_per_pixel, bin_size_um, ...
        spatial/tissue_hires_image.png, tissue_lowres_image.png  (optional)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

from hifusion.data.sample import her2st_sample

MPP = 0.6868  # um/px of the HER2ST C2 scan the crop comes from (the 200 um array pitch gives 0.686-0.689)
CROP_XY = (4300, 500)  # top-left of the crop in the shipped C2 image: tumour with an edge of glass
BIN_UM = (2, 8, 16)
N_GENES = 12
HIRES_SCALEF = 0.5
LOWRES_SCALEF = 0.125
SATURATION_TISSUE = 0.12  # this scan's glass is faintly pink (saturation ~0.07)


@dataclass
class HDFixture:
    """What the generator wrote, for tests to check the reader against."""

    sample_dir: Path
    outs: Path
    image: np.ndarray  # the full-resolution crop (H, W, 3)
    counts2: sp.csr_matrix  # 2 um bins of the whole grid (rows = row-major grid), genes
    tissue2: np.ndarray  # (rows, cols) bool: 2 um bins under tissue
    origin_px: tuple[float, float]  # full-res pixel of the grid's top-left corner
    genes: list[str]

    def bin_dir(self, bin_um: int) -> Path:
        return self.outs / "binned_outputs" / f"square_{bin_um:03d}um"


def crop_image(size_px: int, crop_xy: tuple[int, int] = CROP_XY) -> np.ndarray:
    path = next((her2st_sample() / "ST-imgs" / "C" / "C2").glob("*.jpg"))
    with Image.open(path) as im:
        x0, y0 = crop_xy
        return np.asarray(im.convert("RGB").crop((x0, y0, x0 + size_px, y0 + size_px)))


def _bin_means(values: np.ndarray, side_px: float, n: int) -> np.ndarray:
    """Mean of a per-pixel map over each of n x n square bins of side `side_px` (nearest pixel edges)."""
    edges = np.round(np.arange(n + 1) * side_px).astype(int)
    values = values[: edges[-1], : edges[-1]]
    rows = np.add.reduceat(values, edges[:-1], axis=0)
    sums = np.add.reduceat(rows, edges[:-1], axis=1)
    area = np.outer(np.diff(edges), np.diff(edges))
    return sums / np.maximum(area, 1)


def draw_counts(img: np.ndarray, n2: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts per 2 um bin (row-major n2 x n2 grid) and the tissue mask of the bins."""
    x = img.astype(np.float32) / 255.0
    val, lo = x.max(-1), x.min(-1)
    sat = np.where(val > 0, (val - lo) / np.maximum(val, 1e-6), 0.0)
    side = 2.0 / MPP
    dark = _bin_means(1.0 - x.mean(-1), side, n2)
    pink = _bin_means(x[..., 0] - x[..., 2], side, n2)
    tissue = _bin_means(sat, side, n2) > SATURATION_TISSUE
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.005, 0.06, N_GENES)
    a, b = rng.normal(0, 3, N_GENES), rng.normal(0, 3, N_GENES)
    ref = tissue if tissue.any() else np.ones_like(tissue)
    d, p = (dark - dark[ref].mean()).ravel(), (pink - pink[ref].mean()).ravel()
    rate = base[None] * np.exp(np.clip(np.outer(d, a) + np.outer(p, b), -3, 3)) * tissue.ravel()[:, None]
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32)), tissue


def block_sum(counts2: sp.csr_matrix, n2: int, k: int) -> sp.csr_matrix:
    """Sum k x k blocks of the n2 x n2 grid of 2 um bins (row-major) into (n2 // k)^2 bins (row-major)."""
    n = n2 // k
    r, c = np.divmod(np.arange(n2 * n2), n2)
    ok = (r < n * k) & (c < n * k)
    target = (r // k) * n + (c // k)
    agg = sp.csr_matrix((np.ones(ok.sum(), np.float32), (target[ok], np.flatnonzero(ok))), shape=(n * n, n2 * n2))
    return (agg @ counts2).tocsr()


def write_10x_h5(path: Path, counts: sp.csr_matrix, barcodes: list[str], genes: list[str]) -> None:
    """A Space Ranger feature-barcode matrix: CSC genes x barcodes under /matrix."""
    m = sp.csc_matrix(counts.T)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = m.data.astype(np.int32)
        g["indices"] = m.indices.astype(np.int64)
        g["indptr"] = m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        fe = g.create_group("features")
        fe["id"] = np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        fe["name"] = np.array(genes, dtype="S")
        fe["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        fe["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")


def write_bin_folder(folder: Path, bin_um: int, counts: sp.csr_matrix, in_tissue: np.ndarray, n: int,
                     origin: tuple[float, float], genes: list[str], img: np.ndarray, hires: bool) -> None:
    """One square_XXXum folder: matrix of the in-tissue bins, parquet of every bin, scale factors, images."""
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    rows, cols = np.divmod(np.arange(n * n), n)
    side = bin_um / MPP
    barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    pos = pd.DataFrame({
        "barcode": barcodes, "in_tissue": in_tissue.ravel().astype(np.int32), "array_row": rows, "array_col": cols,
        "pxl_row_in_fullres": origin[1] + (rows + 0.5) * side, "pxl_col_in_fullres": origin[0] + (cols + 0.5) * side,
    })
    pos.to_parquet(spatial / "tissue_positions.parquet", index=False)
    keep = np.flatnonzero(in_tissue.ravel())
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts[keep], [barcodes[i] for i in keep], genes)
    sf = {"spot_diameter_fullres": side, "bin_size_um": float(bin_um), "microns_per_pixel": MPP,
          "tissue_hires_scalef": HIRES_SCALEF, "tissue_lowres_scalef": LOWRES_SCALEF,
          "fiducial_diameter_fullres": 1000.0, "regist_target_img_scalef": HIRES_SCALEF}
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    if hires:
        h, w = img.shape[:2]
        for name, f in (("tissue_hires_image.png", HIRES_SCALEF), ("tissue_lowres_image.png", LOWRES_SCALEF)):
            Image.fromarray(img).resize((round(w * f), round(h * f)), Image.Resampling.BOX).save(spatial / name)


def make_visium_hd(root: Path, sample: str = "hd1", *, size_px: int = 720, seed: int = 0, full_res: bool = True,
                   hires: bool = True, crop_xy: tuple[int, int] = CROP_XY) -> HDFixture:
    """Write a Visium HD output for `sample` under `root` from a `size_px` square crop of the real C2 H&E."""
    img = crop_image(size_px, crop_xy)
    n2 = int(size_px * MPP // 16) * 8  # 2 um bins per side, a whole number of 16 um bins
    counts2, tissue2 = draw_counts(img, n2, seed)
    origin = (0.0, 0.0)
    genes = [f"GENE{i}" for i in range(N_GENES)]
    sample_dir = root / sample
    outs = sample_dir / "outs"
    for b in BIN_UM:
        k = b // 2
        n = n2 // k
        counts = counts2 if k == 1 else block_sum(counts2, n2, k)
        in_tissue = tissue2 if k == 1 else tissue2.reshape(n, k, n, k).any(axis=(1, 3))
        write_bin_folder(outs / "binned_outputs" / f"square_{b:03d}um", b, counts, in_tissue, n, origin, genes, img,
                         hires)
    if full_res:
        import tifffile

        tifffile.imwrite(sample_dir / f"{sample}_tissue_image.tif", img)
    return HDFixture(sample_dir, outs, img, counts2, tissue2, origin, genes)
