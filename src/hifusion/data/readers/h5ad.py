"""AnnData `.h5ad` sections with `obsm['spatial']` in full-resolution pixels (scanpy/squidpy and HEST-1k conventions).

um/px comes, in order, from: the per-section override; the HEST metadata JSON (`pixel_size_um_estimated`, in
`<stem>.json` beside the file or `metadata/<stem>.json` here or one folder up, or `metadata=`); Visium scale factors
in `uns['spatial']` when the caller says the data is Visium (`visium=True`); the image file's own metadata (pyramidal
slides). None of these is an InputError: we never guess a scale. Scale factors count as Visium when the caller says so
or when they hold `fiducial_diameter_fullres`, which only Space Ranger writes (our own cache files do not).

Image, in order: the one passed (`image=`, `--image SECTION=PATH`); `<stem>.<image suffix>` beside the file or in
`wsis/`; the images scanpy/squidpy keep in `uns['spatial'][library]['images']` (`hires`, else `lowres`), with the
matching `tissue_hires_scalef` / `tissue_lowres_scalef`, which multiply the full-resolution spot coordinates (also
when the passed image is a `tissue_hires_image.png` or `tissue_lowres_image.png`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from hifusion.constants import (
    HEST_PIXEL_SIZE_KEY,
    OBSM_SPATIAL,
    UNS_SPATIAL,
    VISIUM_FIDUCIAL_DIAMETER,
    VISIUM_HIRES_SCALEF,
    VISIUM_LOWRES_SCALEF,
    VISIUM_SPOT_DIAMETER_UM,
)
from hifusion.data.readers._common import IMAGE_SUFFIXES
from hifusion.data.readers.visium import image_scale
from hifusion.data.section import Section
from hifusion.errors import InputError

FORMAT = "h5ad"


def _file(root: Path, section: str) -> Path:
    root = Path(root)
    if root.is_file():
        return root
    path = root / f"{section}.h5ad"
    if not path.is_file():
        raise InputError(f"no {section}.h5ad here", root)
    return path


def list_sections(root: Path) -> list[str]:
    """Stems of the .h5ad files in root (or of root itself when it is a file)."""
    root = Path(root)
    if root.is_file():
        return [root.stem]
    found = sorted(p.stem for p in root.glob("*.h5ad")) if root.is_dir() else []
    if not found:
        raise InputError("no .h5ad files found", root)
    return found


def _candidates(path: Path, sub: str, suffixes: tuple[str, ...]) -> list[Path]:
    stem, here = path.stem, path.parent
    out = []
    for folder in (here, here / sub, here.parent / sub):
        out += [folder / f"{stem}{s}" for s in suffixes]
    return [p for p in out if p.is_file() and p != path]


def _hest_mpp(meta_path: Path) -> tuple[float, dict[str, Any]]:
    try:
        meta = json.loads(meta_path.read_text())
        return float(meta[HEST_PIXEL_SIZE_KEY]), meta
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise InputError(f"no usable {HEST_PIXEL_SIZE_KEY} ({exc})", meta_path) from exc


def _library(adata: ad.AnnData) -> tuple[str, dict[str, Any]] | None:
    """(library id, entry) of the first library in `uns['spatial']` (scanpy/squidpy convention), if any."""
    lib = adata.uns.get(UNS_SPATIAL)
    if isinstance(lib, dict) and lib:
        name, first = next(iter(lib.items()))
        if isinstance(first, dict):
            return str(name), first
    return None


def _scalefactors(adata: ad.AnnData) -> dict[str, Any] | None:
    lib = _library(adata)
    if lib is not None and isinstance(lib[1].get("scalefactors"), dict):
        return dict(lib[1]["scalefactors"])
    return None


def _uns_image(adata: ad.AnnData, sf: dict[str, Any] | None, path: Path) -> tuple[np.ndarray, float, str, str] | None:
    """(image, scale factor, kind, description) of the hires, else lowres, image in `uns['spatial']`; None if none."""
    lib = _library(adata)
    images = lib[1].get("images") if lib is not None else None
    if not isinstance(images, dict):
        return None
    for kind, key in (("hires", VISIUM_HIRES_SCALEF), ("lowres", VISIUM_LOWRES_SCALEF)):
        if kind in images and images[kind] is not None:
            try:
                scalef = float((sf or {})[key])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"uns['spatial']['{lib[0]}'] has a {kind} image but no usable scalefactors['{key}']",
                                 path) from None
            return np.asarray(images[kind]), scalef, kind, f"uns['spatial']['{lib[0]}']['images']['{kind}']"
    return None


def _image_source(image: Path | None, path: Path, adata: Any, sf: dict[str, Any] | None
                  ) -> tuple[Path, np.ndarray | None, float, str, str | None]:
    """(image path, image held in the AnnData or None, coordinate scale, kind, description): the image passed, one
    beside the file (or in wsis/), else the hires/lowres image scanpy keeps in uns['spatial']."""
    image_path = Path(image) if image else next(iter(_candidates(path, "wsis", IMAGE_SUFFIXES)), None)
    if image_path is not None:
        if not image_path.is_file():
            raise InputError("image not found", image_path)
        image_scalef, image_kind = image_scale(image_path.name, sf or {}, path)
        return image_path, None, image_scalef, image_kind, None
    held = _uns_image(adata, sf, path)
    if held is None:
        raise InputError("no image given, none found beside it (or in wsis/) and none in uns['spatial']; "
                         "pass the image path (--image SECTION=PATH)", path)
    image_array, image_scalef, image_kind, image_desc = held
    return path, image_array, image_scalef, image_kind, image_desc


def _section_mpp(mpp: float | None, meta_path: Path | None, visium: bool, sf: dict[str, Any] | None, scale: float,
                 image_path: Path, image_array: np.ndarray | None, section: str, path: Path
                 ) -> tuple[float, str, dict[str, Any]]:
    """(um/px of the coordinates, where it came from, HEST metadata): an override, HEST metadata, Visium
    scalefactors, else the image's own metadata. Never guessed."""
    if mpp is not None:
        return float(mpp), "override", {}
    if meta_path is not None:
        use_mpp, hest = _hest_mpp(meta_path)
        return use_mpp / scale, f"HEST metadata {meta_path.name}", hest
    if visium and sf is not None and "spot_diameter_fullres" in sf:
        return VISIUM_SPOT_DIAMETER_UM / (float(sf["spot_diameter_fullres"]) * scale), "Visium scalefactors", {}
    from hifusion.data.image import open_image

    img_mpp = None
    if image_array is None:
        with open_image(image_path) as img:
            img_mpp = img.mpp
    if img_mpp is None:
        raise InputError(
            "um/px unknown: no override, no HEST metadata JSON, and the image records none; "
            f"pass --mpp {section}=<um/px> (or the metadata JSON)",
            path,
        )
    return img_mpp / scale, "image metadata", {}


def read(
    root: Path,
    section: str,
    *,
    mpp: float | None = None,
    coord_scale: float | None = None,
    patient: str | None = None,
    image: Path | None = None,
    metadata: Path | None = None,
    visium: bool = False,
) -> Section:
    """Read one AnnData section; counts from layers['counts'] when present, else X (must be raw counts)."""
    path = _file(Path(root), section)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"not a readable .h5ad file ({exc})", path) from exc
    if OBSM_SPATIAL not in adata.obsm:
        raise InputError(f"no obsm['{OBSM_SPATIAL}'] with spot centres in full-resolution pixels", path)
    counts = adata.layers.get("counts", adata.X)
    counts = sp.csr_matrix(counts) if sp.issparse(counts) else sp.csr_matrix(np.asarray(counts, dtype=np.float64))

    meta_path = Path(metadata) if metadata else next(iter(_candidates(path, "metadata", (".json",))), None)
    sf = _scalefactors(adata)
    image_path, image_array, image_scalef, image_kind, image_desc = _image_source(image, path, adata, sf)
    scale = image_scalef if coord_scale is None else float(coord_scale)  # a user's coordinate scale wins
    centers = np.asarray(adata.obsm[OBSM_SPATIAL], dtype=np.float64)[:, :2] * scale
    visium = visium or (sf is not None and VISIUM_FIDUCIAL_DIAMETER in sf)
    use_mpp, source, hest = _section_mpp(mpp, meta_path, visium, sf, scale, image_path, image_array, section, path)

    if sf is not None and "spot_diameter_fullres" in sf:
        diameter_px = float(sf["spot_diameter_fullres"]) * scale
    elif "spot_diameter" in hest:
        diameter_px = float(hest["spot_diameter"]) / use_mpp
    else:
        diameter_px = VISIUM_SPOT_DIAMETER_UM / use_mpp
    obs = adata.obs
    array_xy = None
    for cx, cy in (("array_col", "array_row"), ("array_x", "array_y")):
        if cx in obs and cy in obs:
            array_xy = obs[[cx, cy]].to_numpy(dtype=np.int64)
            break
    gene_ids = adata.var["gene_ids"].to_numpy() if "gene_ids" in adata.var else None
    return Section(
        section_id=section,
        patient=patient or (str(obs["patient"].iloc[0]) if "patient" in obs else section),
        counts=counts,
        barcodes=adata.obs_names.to_numpy(),
        genes=adata.var_names.to_numpy(),
        gene_ids=gene_ids,
        centers_px=centers,
        mpp=use_mpp,
        image_path=image_path,
        array_xy=array_xy,
        spot_diameter_px=diameter_px,
        source_format=FORMAT,
        meta={"coord_scale": scale, "mpp_source": source, "image_kind": image_kind,
              **({"image_desc": f"{path} {image_desc}"} if image_desc else {})},
        files={"counts": path, "spots": path, "image": image_path},
        image_array=image_array,
    )
