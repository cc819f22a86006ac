"""Helpers shared by the readers: scale from the array pitch, numeric tables, image discovery."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hifusion.constants import LEGACY_ST_PITCH_UM
from hifusion.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".btf", ".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms")


def leading_letters(section: str) -> str:
    """HER2ST patients are the leading letters of the section id (A1 -> A, C2 -> C)."""
    m = re.match(r"[A-Za-z]+", section)
    return m.group(0) if m else section


def pitch_mpp(pixel_xy: np.ndarray, array_xy: np.ndarray, path: Path, pitch_um: float = LEGACY_ST_PITCH_UM) -> float:
    """um/px from a least-squares affine fit of pixel positions on array positions (one array unit = `pitch_um`).

    The scale is sqrt(|det|) of the fitted 2x2 map, so a rotated or flipped image gives the same answer.
    """
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    array_xy = np.asarray(array_xy, dtype=np.float64)
    ok = np.isfinite(pixel_xy).all(1) & np.isfinite(array_xy).all(1)
    a = np.c_[array_xy[ok], np.ones(int(ok.sum()))]
    if ok.sum() < 3 or np.linalg.matrix_rank(a) < 3:
        raise InputError("too few spots to derive um/px from the array pitch; pass --mpp <section>=<um/px>", path)
    coef, *_ = np.linalg.lstsq(a, pixel_xy[ok], rcond=None)
    det = abs(float(np.linalg.det(coef[:2])))
    if not det > 0:
        raise InputError("array and pixel coordinates do not determine a scale; pass --mpp <section>=<um/px>", path)
    return pitch_um / float(np.sqrt(det))


def numeric_counts(df: pd.DataFrame, path: Path) -> sp.csr_matrix:
    """Spots x genes table -> CSR float32; any non-numeric column is an InputError naming the file."""
    bad = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise InputError(f"non-numeric counts in column(s) {[str(b) for b in bad[:3]]}", path)
    values = df.to_numpy(dtype=np.float32, na_value=np.nan)
    if np.isnan(values).any():
        raise InputError("counts contain missing values", path)
    return sp.csr_matrix(values)


def read_table(path: Path, **kwargs: object) -> pd.DataFrame:
    """pandas.read_csv with errors turned into InputError naming the file."""
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        return pd.read_csv(path, **kwargs)  # type: ignore[arg-type]
    except (ValueError, OSError, pd.errors.ParserError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read table ({exc})", path) from exc


def read_counts_table(path: Path) -> pd.DataFrame:
    """Spots x genes table (first column the spot id) with gene names exactly as written: pandas would rename a
    repeated name to `G.1`; `Section` warns and makes them unique the scanpy way (`G-1`) instead."""
    df = read_table(path, sep="\t", index_col=0)
    header = read_table(path, sep="\t", header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    if len(header) == df.shape[1] + 1:
        df.columns = pd.Index([str(h) for h in header[1:]])
    return df


def require_columns(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; found {list(map(str, df.columns))[:10]}", path)


def single_image(folder: Path) -> Path:
    """The one image file in `folder` (hidden files and non-images ignored); none or several is an error."""
    if not folder.is_dir():
        raise InputError("image folder not found", folder)
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not found:
        raise InputError("no image file found here", folder)
    if len(found) > 1:
        raise InputError(f"several images found ({[p.name for p in found]}); pass the image explicitly", folder)
    return found[0]


def join_spots(count_index: pd.Index, spot_index: pd.Index, counts_path: Path, spots_path: Path) -> np.ndarray:
    """Positions (in the counts table) of spots present in both tables; sharing none is an error."""
    dup = spot_index[spot_index.duplicated()]
    if len(dup):
        raise InputError(f"duplicate spots in the spot table, e.g. {list(dup[:3])}", spots_path)
    dup = count_index[count_index.duplicated()]
    if len(dup):
        raise InputError(f"duplicate spot barcodes, e.g. {list(dup[:3])}", counts_path)
    keep = count_index.isin(spot_index)
    if not keep.any():
        raise InputError(
            f"the counts share no spot barcode with the spot table {spots_path} "
            f"(counts e.g. {list(count_index[:2])}, spot table e.g. {list(spot_index[:2])})",
            counts_path,
        )
    return np.flatnonzero(keep)


def outs_folder(folder: Path, marker: str) -> Path | None:
    """The Space Ranger `outs` folder at or under `folder`: the first of the two that holds `marker` (a file or
    folder name, e.g. the feature matrix or `binned_outputs`)."""
    for cand in (folder, folder / "outs"):
        if (cand / marker).exists():
            return cand
    return None


def space_ranger_sections(root: Path, marker: str, what: str) -> list[str]:
    """One section when root is a Space Ranger output (named after the folder holding `outs/`); else every
    sub-folder that is one. `what` names the output in the error when there is none."""
    root = Path(root)
    if outs_folder(root, marker) is not None:
        return [root.parent.name if root.name == "outs" else root.name]
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and outs_folder(p, marker) is not None) \
        if root.is_dir() else []
    if not found:
        raise InputError(f"no {what} found (expected {marker} in outs/)", root)
    return found
