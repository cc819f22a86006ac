"""HER2ST legacy ST layout: ST-cnts/<s>.tsv.gz, ST-spotfiles/<s>_selection.tsv, ST-imgs/<patient>/<s>/<image>."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hifusion.constants import (
    HER2ST_COUNTS_DIR,
    HER2ST_COUNTS_PATTERN,
    HER2ST_IMAGES_DIR,
    HER2ST_SPOTS_DIR,
    HER2ST_SPOTS_PATTERN,
    LEGACY_ST_SPOT_DIAMETER_UM,
)
from hifusion.data.readers._common import (
    join_spots,
    leading_letters,
    numeric_counts,
    pitch_mpp,
    read_counts_table,
    read_table,
    require_columns,
    single_image,
)
from hifusion.data.section import Section
from hifusion.errors import InputError

FORMAT = "her2st"


def list_sections(root: Path) -> list[str]:
    """Sections that have both a counts file and a spot table."""
    cdir = Path(root) / HER2ST_COUNTS_DIR
    if not cdir.is_dir():
        raise InputError(f"not a HER2ST folder (no {HER2ST_COUNTS_DIR}/)", root)
    suffix = HER2ST_COUNTS_PATTERN.format(section="")
    out = []
    for p in sorted(cdir.glob("*" + suffix)):
        s = p.name[: -len(suffix)]
        if (Path(root) / HER2ST_SPOTS_DIR / HER2ST_SPOTS_PATTERN.format(section=s)).is_file():
            out.append(s)
    return out


def read(
    root: Path,
    section: str,
    *,
    mpp: float | None = None,
    coord_scale: float | None = None,
    patient: str | None = None,
    image: Path | None = None,
) -> Section:
    """Read one section; spots = rows in the counts and in the spot table with selected == 1."""
    root = Path(root)
    counts_path = root / HER2ST_COUNTS_DIR / HER2ST_COUNTS_PATTERN.format(section=section)
    spots_path = root / HER2ST_SPOTS_DIR / HER2ST_SPOTS_PATTERN.format(section=section)
    patient = patient or leading_letters(section)
    image_path = Path(image) if image else single_image(root / HER2ST_IMAGES_DIR / patient / section)

    counts_df = read_counts_table(counts_path)
    counts_df.index = counts_df.index.astype(str)
    spots = read_table(spots_path, sep="\t")
    require_columns(spots, ["x", "y", "pixel_x", "pixel_y"], spots_path)
    if "selected" in spots.columns:
        spots = spots[spots["selected"] == 1]
        if spots.empty:
            raise InputError(f"section {section} has no spots: no row has selected == 1", spots_path)
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    rows = join_spots(counts_df.index, spots.index, counts_path, spots_path)
    counts_df = counts_df.iloc[rows]
    spots = spots.loc[counts_df.index]

    scale = 1.0 if coord_scale is None else float(coord_scale)
    centers = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64) * scale
    array_xy = spots[["x", "y"]].to_numpy(dtype=np.int64)
    new_cols = ["new_x", "new_y"] if {"new_x", "new_y"} <= set(spots.columns) else ["x", "y"]
    new_xy = spots[new_cols].to_numpy(dtype=np.float64)
    fitted = pitch_mpp(centers, new_xy, spots_path) if mpp is None else None
    use_mpp = float(mpp) if mpp is not None else float(fitted)  # type: ignore[arg-type]
    return Section(
        section_id=section,
        patient=patient,
        counts=numeric_counts(counts_df, counts_path),
        barcodes=counts_df.index.to_numpy(),
        genes=counts_df.columns.astype(str).to_numpy(),
        gene_ids=None,
        centers_px=centers,
        mpp=use_mpp,
        image_path=image_path,
        array_xy=array_xy,
        new_xy=new_xy,
        spot_diameter_px=LEGACY_ST_SPOT_DIAMETER_UM / use_mpp,
        source_format=FORMAT,
        meta={"coord_scale": scale, "mpp_source": "override" if mpp is not None else "array pitch", "mpp_fit": fitted},
        files={"counts": counts_path, "spots": spots_path, "image": image_path},
    )
