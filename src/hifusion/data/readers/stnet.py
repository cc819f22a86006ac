"""ST-Net data layout (He et al. 2020): <root>/<subtype>/<patient>/<patient>_<section>.{jpg,tsv.gz,spots.txt}.

Section ids are the file stems `<patient>_<section>` (e.g. `BC23270_D2`). Counts are spots x Ensembl gene ids with the
spot id (`<x>x<y>`) in the first column; the spot table carries array x, y and pixel X, Y. Tumour labels
(`<patient>_<section>_Coords.tsv`) are optional and kept as an extra obs column.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from hifusion.constants import (
    LEGACY_ST_SPOT_DIAMETER_UM,
    STNET_COUNTS_PATTERN,
    STNET_IMAGE_PATTERN,
    STNET_SPOTS_PATTERN,
    STNET_TUMOUR_PATTERN,
)
from hifusion.data.readers._common import join_spots, numeric_counts, pitch_mpp, read_counts_table, read_table
from hifusion.data.section import Section
from hifusion.errors import InputError

FORMAT = "stnet"
_SPOT_ID = re.compile(r"^\s*(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)\s*$")
_COUNTS_SUFFIX = STNET_COUNTS_PATTERN.format(patient="", section="")[1:]  # ".tsv.gz"


def list_sections(root: Path) -> list[str]:
    """Stems `<patient>_<section>` of every counts file two folders below root that has a spot table."""
    root = Path(root)
    out = []
    for p in sorted(root.glob(f"*/*/*{_COUNTS_SUFFIX}")):
        stem = p.name[: -len(_COUNTS_SUFFIX)]
        if p.parent.name and stem.startswith(p.parent.name + "_") and (p.parent / f"{stem}.spots.txt").is_file():
            out.append(stem)
    if not out:
        raise InputError("no ST-Net sections found (<subtype>/<patient>/<patient>_<section>.tsv.gz)", root)
    return out


def _locate(root: Path, section: str) -> tuple[Path, str, str]:
    """Folder, patient and short section name of `<patient>_<section>`."""
    hits = sorted(Path(root).glob(f"*/*/{section}{_COUNTS_SUFFIX}"))
    if not hits:
        raise InputError(f"section {section} not found (expected <subtype>/<patient>/{section}{_COUNTS_SUFFIX})", root)
    folder = hits[0].parent
    patient = folder.name
    short = section[len(patient) + 1 :] if section.startswith(patient + "_") else section
    return folder, patient, short


def _spot_xy(index: pd.Index) -> np.ndarray | None:
    """Array x, y parsed from `<x>x<y>` spot ids, or None when they do not follow that form."""
    parsed = [_SPOT_ID.match(str(v)) for v in index]
    if not all(parsed):
        return None
    return np.array([[float(m.group(1)), float(m.group(2))] for m in parsed if m])


def _spot_key(xy: np.ndarray) -> pd.Index:
    """Canonical `<x>x<y>` keys (integers printed without decimals) so that both tables join."""

    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    return pd.Index([f"{fmt(x)}x{fmt(y)}" for x, y in xy])


def read(
    root: Path,
    section: str,
    *,
    mpp: float | None = None,
    coord_scale: float | None = None,
    patient: str | None = None,
    image: Path | None = None,
) -> Section:
    """Read one ST-Net section; um/px from the array pitch (200 um) unless overridden."""
    folder, pat, short = _locate(Path(root), section)
    patient = patient or pat
    counts_path = folder / STNET_COUNTS_PATTERN.format(patient=pat, section=short)
    spots_path = folder / STNET_SPOTS_PATTERN.format(patient=pat, section=short)
    image_path = Path(image) if image else folder / STNET_IMAGE_PATTERN.format(patient=pat, section=short)
    if not image_path.is_file():
        raise InputError("image not found", image_path)

    counts_df = read_counts_table(counts_path)
    cxy = _spot_xy(counts_df.index)
    if cxy is None:
        raise InputError("first column must hold spot ids like 12x34", counts_path)
    counts_df.index = _spot_key(cxy)

    spots = read_table(spots_path, sep=None, engine="python")
    cols = {str(c).strip(): c for c in spots.columns}
    px = next((cols[k] for k in ("X", "pixel_x") if k in cols), None)
    py = next((cols[k] for k in ("Y", "pixel_y") if k in cols), None)
    if px is None or py is None:
        raise InputError(f"spot table needs pixel columns X, Y; found {list(cols)}", spots_path)
    if "x" in cols and "y" in cols:
        sxy = spots[[cols["x"], cols["y"]]].to_numpy(dtype=np.float64)
    else:
        sxy = _spot_xy(spots.iloc[:, 0].astype(str))
        if sxy is None:
            raise InputError("spot table needs array columns x, y or spot ids like 12x34 first", spots_path)
    spots.index = _spot_key(sxy)
    spots["_ax"], spots["_ay"] = sxy[:, 0], sxy[:, 1]
    if "selected" in cols:
        spots = spots[spots[cols["selected"]] == 1]
    rows = join_spots(counts_df.index, spots.index, counts_path, spots_path)
    counts_df = counts_df.iloc[rows]
    spots = spots.loc[counts_df.index]

    scale = 1.0 if coord_scale is None else float(coord_scale)
    centers = spots[[px, py]].to_numpy(dtype=np.float64) * scale
    array_xy = spots[["_ax", "_ay"]].to_numpy(dtype=np.float64)
    fitted = pitch_mpp(centers, array_xy, spots_path) if mpp is None else None
    use_mpp = float(mpp) if mpp is not None else float(fitted)  # type: ignore[arg-type]
    genes = counts_df.columns.astype(str).to_numpy()
    is_ensembl = all(g.startswith("ENS") for g in genes[:50])

    annotations = None
    tumour_path = folder / STNET_TUMOUR_PATTERN.format(patient=pat, section=short)
    if tumour_path.is_file():
        annotations = _tumour_labels(tumour_path, counts_df.index)
    files = {"counts": counts_path, "spots": spots_path, "image": image_path}
    if annotations is not None:
        files["annotations"] = tumour_path
    return Section(
        section_id=section,
        patient=patient,
        counts=numeric_counts(counts_df, counts_path),
        barcodes=counts_df.index.to_numpy(),
        genes=genes,
        gene_ids=genes.copy() if is_ensembl else None,
        centers_px=centers,
        mpp=use_mpp,
        image_path=image_path,
        array_xy=np.rint(array_xy).astype(np.int64) if np.allclose(array_xy, np.rint(array_xy)) else None,
        new_xy=array_xy,
        spot_diameter_px=LEGACY_ST_SPOT_DIAMETER_UM / use_mpp,
        source_format=FORMAT,
        meta={"coord_scale": scale, "mpp_source": "override" if mpp is not None else "array pitch", "mpp_fit": fitted},
        files=files,
        annotations=annotations,
    )


def _tumour_labels(path: Path, keys: pd.Index) -> pd.DataFrame | None:
    """Tumour column joined on the spot id (first column); unreadable label files are skipped with a warning."""
    try:
        df = pd.read_csv(path, sep="\t", index_col=0)
        xy = _spot_xy(df.index)
        col = next((c for c in df.columns if str(c).lower() in ("tumor", "tumour", "label")), None)
        if xy is None or col is None:
            raise ValueError("expected spot ids like 12x34 and a tumor column")
        df.index = _spot_key(xy)
        return pd.DataFrame({"tumour": df[col].reindex(keys).astype(str).to_numpy()}, index=keys.astype(str))
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        warnings.warn(f"{path}: tumour labels skipped ({exc})", stacklevel=2)
        return None
