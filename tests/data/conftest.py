"""Synthetic inputs in every supported layout, generated in tmp_path (no real data needed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

PITCH = 100.0  # px between array positions -> 200 um / 100 px = 2.0 um/px
MPP = 2.0
ORIGIN = (150.0, 130.0)
IMG_SIZE = (700, 560)  # w, h
GENES = [f"G{i}" for i in range(8)]
MARKER = (255, 0, 0)
TISSUE = (235, 190, 220)  # pale eosin pink: what `prepare`'s tissue check counts as tissue (glass stays white)
TISSUE_MARGIN = 60  # px of tissue around the outermost spots; the image's outer frame stays white (pad colour)


def spot_grid(nx: int = 4, ny: int = 3) -> pd.DataFrame:
    """Array x, y and pixel centres of an nx x ny legacy-ST grid."""
    rows = []
    for y in range(1, ny + 1):
        for x in range(1, nx + 1):
            px = ORIGIN[0] + (x - 1) * PITCH
            py = ORIGIN[1] + (y - 1) * PITCH
            rows.append({"x": x, "y": y, "new_x": float(x), "new_y": float(y), "pixel_x": px, "pixel_y": py})
    return pd.DataFrame(rows)


def draw_image(centres: np.ndarray, size: tuple[int, int] = IMG_SIZE, bg: int = 255, marker: int = 2,
               tissue: bool = True) -> np.ndarray:
    """Background `bg`, pink tissue under the spots (unless `tissue=False`), and a red (2*marker+1)-px square on
    the pixel nearest each spot centre."""
    w, h = size
    img = np.full((h, w, 3), bg, np.uint8)
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if tissue and len(c):
        x0, y0 = np.maximum(np.floor(c.min(axis=0) - TISSUE_MARGIN).astype(int), 0)
        x1, y1 = np.ceil(c.max(axis=0) + TISSUE_MARGIN).astype(int)
        img[y0 : y1 + 1, x0 : x1 + 1] = TISSUE
    for cx, cy in np.floor(np.asarray(centres) + 0.5).astype(int):
        img[max(cy - marker, 0) : cy + marker + 1, max(cx - marker, 0) : cx + marker + 1] = MARKER
    return img


def counts_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, size=(n, len(GENES))) + 100


@pytest.fixture
def make_her2st(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a HER2ST legacy folder with the given sections; returns its root."""

    def make(
        sections: tuple[str, ...] = ("T1",),
        *,
        spots: pd.DataFrame | None = None,
        counts: np.ndarray | None = None,
        image: np.ndarray | None = None,
        image_suffix: str = ".jpg",
        root: Path | None = None,
    ) -> Path:
        root = root or tmp_path / "her2st"
        for i, s in enumerate(sections):
            sp_df = spot_grid() if spots is None else spots.copy()
            sp_df["selected"] = sp_df.get("selected", 1)
            (root / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
            sp_df.to_csv(root / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t", index=False)
            c = counts_for(len(sp_df), seed=i) if counts is None else counts
            cdf = pd.DataFrame(
                c, columns=GENES[: c.shape[1]], index=[f"{x}x{y}" for x, y in zip(sp_df.x, sp_df.y, strict=True)]
            )
            (root / "ST-cnts").mkdir(parents=True, exist_ok=True)
            cdf.to_csv(root / "ST-cnts" / f"{s}.tsv.gz", sep="\t")
            folder = root / "ST-imgs" / s.rstrip("0123456789") / s
            folder.mkdir(parents=True, exist_ok=True)
            img = draw_image(sp_df[["pixel_x", "pixel_y"]].to_numpy()) if image is None else image
            kw = {"quality": 95} if image_suffix == ".jpg" else {}
            Image.fromarray(img).save(folder / f"{s}_HE{image_suffix}", **kw)
        return root

    return make


@pytest.fixture
def make_stnet(tmp_path: Path) -> Callable[..., Path]:
    """Factory: an ST-Net layout folder with one section BC1_C1 (subtype HER2_luminal)."""

    def make(with_tumour: bool = True) -> Path:
        root = tmp_path / "stnet"
        folder = root / "HER2_luminal" / "BC1"
        folder.mkdir(parents=True)
        grid = spot_grid()
        ids = [f"{x}x{y}" for x, y in zip(grid.x, grid.y, strict=True)]
        genes = [f"ENSG0000000000{i}" for i in range(len(GENES))]
        pd.DataFrame(counts_for(len(grid)), index=ids, columns=genes).to_csv(folder / "BC1_C1.tsv.gz", sep="\t")
        spots = pd.DataFrame({"x": grid.x, "y": grid.y, "X": grid.pixel_x, "Y": grid.pixel_y})
        spots.to_csv(folder / "BC1_C1.spots.txt", sep="\t", index=False)
        if with_tumour:
            pd.DataFrame({"tumor": ["tumor" if i % 2 else "non" for i in range(len(ids))]}, index=ids).to_csv(
                folder / "BC1_C1_Coords.tsv", sep="\t"
            )
        Image.fromarray(draw_image(grid[["pixel_x", "pixel_y"]].to_numpy())).save(folder / "BC1_C1.jpg", quality=95)
        return root

    return make


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], names: list[str], ids: list[str]) -> None:
    """A Space Ranger v3 feature-barcode matrix: CSC genes x barcodes under /matrix."""
    import scipy.sparse as sp

    m = sp.csc_matrix(np.asarray(counts).T)  # genes x barcodes
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = m.data.astype(np.int32)
        g["indices"] = m.indices.astype(np.int64)
        g["indptr"] = m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        fe = g.create_group("features")
        fe["id"] = np.array(ids, dtype="S")
        fe["name"] = np.array(names, dtype="S")
        fe["feature_type"] = np.array(["Gene Expression"] * (len(ids) - 1) + ["Antibody Capture"], dtype="S")
        fe["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")


@pytest.fixture
def make_visium(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a Space Ranger `outs/` folder; legacy=True writes the headerless tissue_positions_list.csv."""

    def make(legacy: bool = False, duplicate_gene: bool = True) -> Path:
        outs = tmp_path / ("vis_old" if legacy else "vis_new") / "outs"
        (outs / "spatial").mkdir(parents=True)
        grid = spot_grid()
        n = len(grid)
        barcodes = [f"AAAC{i:04d}-1" for i in range(n + 2)]  # two extra barcodes off tissue
        names = list(GENES) + ["AB_CD3"]
        if duplicate_gene:
            names[1] = names[0]
        ids = [f"ENSG{i:05d}" for i in range(len(names))]
        cnt = np.random.default_rng(3).integers(0, 20, size=(n + 2, len(names)))
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", cnt, barcodes, names, ids)
        pos = pd.DataFrame(
            {
                "barcode": barcodes,
                "in_tissue": [1] * n + [0, 0],
                "array_row": list(grid.y) + [0, 0],
                "array_col": list(grid.x) + [0, 0],
                "pxl_row_in_fullres": list(grid.pixel_y) + [10, 10],
                "pxl_col_in_fullres": list(grid.pixel_x) + [10, 20],
            }
        )
        if legacy:
            pos.to_csv(outs / "spatial" / "tissue_positions_list.csv", header=False, index=False)
        else:
            pos.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
        (outs / "spatial" / "scalefactors_json.json").write_text(
            json.dumps({"spot_diameter_fullres": 27.5, "tissue_hires_scalef": 0.1, "fiducial_diameter_fullres": 40})
        )
        Image.fromarray(draw_image(grid[["pixel_x", "pixel_y"]].to_numpy())).save(outs / "image.png")
        return outs.parent

    return make


@pytest.fixture
def make_h5ad(tmp_path: Path) -> Callable[..., Path]:
    """Factory: an AnnData file with obsm['spatial']; hest=True adds metadata/<id>.json and wsis/<id>.png."""

    def make(hest: bool = False, scanpy_uns: bool = False, normalised: bool = False) -> Path:
        root = tmp_path / "hest"
        (root / "st").mkdir(parents=True)
        grid = spot_grid()
        x = counts_for(len(grid)).astype(np.float32)
        if normalised:
            x = np.log1p(x / 7.0)
        a = ad.AnnData(X=x)
        a.obs_names = [f"s{i}" for i in range(len(grid))]
        a.var_names = GENES
        a.obsm["spatial"] = grid[["pixel_x", "pixel_y"]].to_numpy()
        a.obs["array_col"], a.obs["array_row"] = grid.x.to_numpy(), grid.y.to_numpy()
        if scanpy_uns:
            a.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": 27.5}}}
        a.write_h5ad(root / "st" / "S1.h5ad")
        img = Image.fromarray(draw_image(grid[["pixel_x", "pixel_y"]].to_numpy()))
        if hest:
            (root / "metadata").mkdir()
            meta = {"pixel_size_um_estimated": 0.5, "spot_diameter": 55}
            (root / "metadata" / "S1.json").write_text(json.dumps(meta))
            (root / "wsis").mkdir()
            img.save(root / "wsis" / "S1.png")
        else:
            img.save(root / "st" / "S1.png")
        return root / "st"

    return make
