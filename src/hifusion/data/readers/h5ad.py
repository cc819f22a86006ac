"""AnnData `.h5ad` sections with `obsm['spatial']` in full-resolution pixels (scanpy/squidpy and HEST-1k conventions).

um/px comes, in order, from: the per-section override; the HEST metadata JSON (`pixel_size_um_estimated`, in
`<stem>.json` beside the file or `metadata/<stem>.json` here or one folder up, or `metadata=`); Visium scale factors
in `uns['spatial']` when the caller says the data is Visium (`visium=True`); the image file's own metadata (pyramidal
slides). None of these is an InputError: we never guess a scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from hifusion.constants import HEST_PIXEL_SIZE_KEY, OBSM_SPATIAL, UNS_SPATIAL, VISIUM_SPOT_DIAMETER_UM
from hifusion.data.readers._common import IMAGE_SUFFIXES
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


def _scalefactors(adata: ad.AnnData) -> dict[str, Any] | None:
    lib = adata.uns.get(UNS_SPATIAL)
    if isinstance(lib, dict) and lib:
        first = next(iter(lib.values()))
        if isinstance(first, dict) and isinstance(first.get("scalefactors"), dict):
            return dict(first["scalefactors"])
    return None


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
    scale = 1.0 if coord_scale is None else float(coord_scale)
    centers = np.asarray(adata.obsm[OBSM_SPATIAL], dtype=np.float64)[:, :2] * scale

    meta_path = Path(metadata) if metadata else next(iter(_candidates(path, "metadata", (".json",))), None)
    hest = {}
    sf = _scalefactors(adata)
    image_path = Path(image) if image else next(iter(_candidates(path, "wsis", IMAGE_SUFFIXES)), None)
    if image_path is None:
        raise InputError("no image given and none found beside it (or in wsis/); pass the image path (--image)", path)
    if not image_path.is_file():
        raise InputError("image not found", image_path)
    if mpp is not None:
        use_mpp, source = float(mpp), "override"
    elif meta_path is not None:
        use_mpp, hest = _hest_mpp(meta_path)
        use_mpp, source = use_mpp / scale, f"HEST metadata {meta_path.name}"
    elif visium and sf is not None and "spot_diameter_fullres" in sf:
        use_mpp, source = VISIUM_SPOT_DIAMETER_UM / (float(sf["spot_diameter_fullres"]) * scale), "Visium scalefactors"
    else:
        from hifusion.data.image import open_image

        with open_image(image_path) as img:
            img_mpp = img.mpp
        if img_mpp is None:
            raise InputError(
                "um/px unknown: no override, no HEST metadata JSON, and the image records none; "
                f"pass --mpp {section}=<um/px> (or the metadata JSON)",
                path,
            )
        use_mpp, source = img_mpp / scale, "image metadata"

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
        meta={"coord_scale": scale, "mpp_source": source},
        files={"counts": path, "spots": path, "image": image_path},
    )
