"""10x Visium Space Ranger output: outs/filtered_feature_bc_matrix.h5, outs/spatial/, and an image to cut from.

Image, in order: the one passed (`--image SECTION=PATH`); a full-resolution image beside `outs/`; Space Ranger's
`spatial/tissue_hires_image.png`; its `tissue_lowres_image.png`. The two downsampled copies come with a scale factor in
`scalefactors_json.json` (also applied when `--image` names one of them), which multiplies the full-resolution spot
coordinates. um/px = 55 um / (spot_diameter_fullres * scale factor) (Visium spots are 55 um wide). Only in-tissue spots
are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from hifusion.constants import (
    VISIUM_HIRES_IMAGE,
    VISIUM_HIRES_SCALEF,
    VISIUM_LOWRES_IMAGE,
    VISIUM_LOWRES_SCALEF,
    VISIUM_MATRIX_H5,
    VISIUM_POSITIONS,
    VISIUM_POSITIONS_LEGACY,
    VISIUM_SCALEFACTORS,
    VISIUM_SPATIAL_DIR,
    VISIUM_SPOT_DIAMETER_UM,
)
from hifusion.data.readers._common import IMAGE_SUFFIXES, join_spots, outs_folder, read_table, space_ranger_sections
from hifusion.data.section import Section
from hifusion.errors import InputError

FORMAT = "visium"
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _outs(folder: Path) -> Path | None:
    """The Space Ranger outs folder at or under `folder`, if any."""
    return outs_folder(folder, VISIUM_MATRIX_H5)


def list_sections(root: Path) -> list[str]:
    """One section when root is a Space Ranger output; else every sub-folder that is one."""
    return space_ranger_sections(root, VISIUM_MATRIX_H5, "Space Ranger output")


def _section_outs(root: Path, section: str) -> Path:
    root = Path(root)
    for cand in (root / section, root):
        outs = _outs(cand)
        if outs is not None:
            return outs
    raise InputError(f"no {VISIUM_MATRIX_H5} for section {section}", root)


def read_10x_h5(path: Path) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """Counts (barcodes x genes CSR), barcodes, gene names, gene ids from a 10x HDF5 matrix (v3 or v2 layout)."""
    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f:
                g = f["matrix"]
                feats = g["features"]
                names = feats["name"][:].astype(str)
                ids = feats["id"][:].astype(str)
                ftype = feats["feature_type"][:].astype(str) if "feature_type" in feats else None
            else:
                g = f[next(iter(f.keys()))]
                names, ids, ftype = g["gene_names"][:].astype(str), g["genes"][:].astype(str), None
            n_genes, n_bc = (int(v) for v in g["shape"][:])
            mat = sp.csr_matrix(
                (g["data"][:].astype(np.float32), g["indices"][:], g["indptr"][:]), shape=(n_bc, n_genes)
            )
            barcodes = g["barcodes"][:].astype(str)
    except (OSError, KeyError, StopIteration, ValueError) as exc:
        raise InputError(f"not a readable 10x feature-barcode matrix ({exc})", path) from exc
    if ftype is not None:
        keep = ftype == "Gene Expression"
        mat, names, ids = mat[:, keep], names[keep], ids[keep]
    return mat.tocsr(), barcodes, names, ids


def read_positions(spatial: Path) -> tuple[pd.DataFrame, Path]:
    """tissue_positions.csv (with header) or the older headerless tissue_positions_list.csv."""
    new, old = spatial / VISIUM_POSITIONS, spatial / VISIUM_POSITIONS_LEGACY
    if new.is_file():
        df, path = read_table(new), new
    elif old.is_file():
        df, path = read_table(old, header=None), old
        if df.shape[1] != len(POSITION_COLUMNS):
            raise InputError(f"expected {len(POSITION_COLUMNS)} columns {POSITION_COLUMNS}", old)
        df.columns = POSITION_COLUMNS
    else:
        raise InputError(f"no {VISIUM_POSITIONS} or {VISIUM_POSITIONS_LEGACY}", spatial)
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}", path)
    return df.set_index(df["barcode"].astype(str)), path


def find_image(outs: Path) -> Path | None:
    """The full-resolution image in outs/ or beside it (None when there is none); several is an error."""
    found: list[Path] = []
    for folder in (outs, outs.parent):
        found += [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if found:
            break
    if len(found) > 1:
        raise InputError(f"several images found beside the Space Ranger output ({[p.name for p in found]}); "
                         "pass the image path (--image SECTION=PATH)", outs)
    return found[0] if found else None


# Space Ranger's downsampled images and the scale factor key that maps full-resolution pixels onto each
SPACERANGER_IMAGES = {VISIUM_HIRES_IMAGE: ("hires", VISIUM_HIRES_SCALEF),
                      VISIUM_LOWRES_IMAGE: ("lowres", VISIUM_LOWRES_SCALEF)}


def image_scale(name: str, scalefactors: dict, sf_path: Path | str) -> tuple[float, str]:
    """(scale factor from full-resolution pixels, kind) of an image known by its file name; 1.0 for any other image."""
    if name not in SPACERANGER_IMAGES:
        return 1.0, "full-resolution"
    kind, key = SPACERANGER_IMAGES[name]
    try:
        scalef = float(scalefactors[key])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"no usable {key} for {name}", sf_path) from None
    if not scalef > 0:
        raise InputError(f"{key} must be positive, got {scalef}", sf_path)
    return scalef, kind


def choose_image(outs: Path, scalefactors: dict, sf_path: Path, image: Path | None) -> tuple[Path, float, str]:
    """(image, scale factor, kind): the given image, else full resolution beside outs/, else hires, else lowres."""
    if image is not None:
        path = Path(image)
    else:
        spatial = outs / VISIUM_SPATIAL_DIR
        path = find_image(outs) or next(
            (spatial / n for n in (VISIUM_HIRES_IMAGE, VISIUM_LOWRES_IMAGE) if (spatial / n).is_file()), None
        )
        if path is None:
            raise InputError(f"no image found: no full-resolution image beside the Space Ranger output and no "
                             f"{VISIUM_SPATIAL_DIR}/{VISIUM_HIRES_IMAGE} or {VISIUM_LOWRES_IMAGE}; pass the image "
                             "path (--image SECTION=PATH)", outs)
    scalef, kind = image_scale(path.name, scalefactors, sf_path)
    return path, scalef, kind


def read(
    root: Path,
    section: str,
    *,
    mpp: float | None = None,
    coord_scale: float | None = None,
    patient: str | None = None,
    image: Path | None = None,
) -> Section:
    """Read one Visium section (in-tissue spots only)."""
    outs = _section_outs(Path(root), section)
    matrix_path = outs / VISIUM_MATRIX_H5
    spatial = outs / VISIUM_SPATIAL_DIR
    pos, pos_path = read_positions(spatial)
    sf_path = spatial / VISIUM_SCALEFACTORS
    if not sf_path.is_file():
        raise InputError("scale factors file not found", sf_path)
    try:
        scalefactors = json.loads(sf_path.read_text())
        diameter = float(scalefactors["spot_diameter_fullres"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"no usable spot_diameter_fullres ({exc})", sf_path) from exc
    image_path, image_scalef, image_kind = choose_image(outs, scalefactors, sf_path, image)

    counts, barcodes, names, ids = read_10x_h5(matrix_path)
    pos = pos[pos["in_tissue"] == 1]
    rows = join_spots(pd.Index(barcodes), pos.index, matrix_path, pos_path)
    counts, barcodes = counts[rows], barcodes[rows]
    pos = pos.loc[barcodes]
    scale = image_scalef if coord_scale is None else float(coord_scale)  # a user's coordinate scale wins
    centers = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64) * scale
    diameter_px = diameter * scale
    use_mpp = float(mpp) if mpp is not None else VISIUM_SPOT_DIAMETER_UM / diameter_px
    return Section(
        section_id=section,
        patient=patient or section,
        counts=counts,
        barcodes=barcodes,
        genes=names,
        gene_ids=ids,
        centers_px=centers,
        mpp=use_mpp,
        image_path=image_path,
        array_xy=pos[["array_col", "array_row"]].to_numpy(dtype=np.int64),
        new_xy=None,
        spot_diameter_px=diameter_px,
        source_format=FORMAT,
        meta={"coord_scale": scale, "image_kind": image_kind,
              "mpp_source": "override" if mpp is not None else "spot_diameter_fullres"},
        files={"counts": matrix_path, "spots": pos_path, "image": image_path, "scalefactors": sf_path},
    )
