"""The patch cache, read side: which sections a cache holds, its manifest, and a section's AnnData + patch file.

`data.prepare` writes the cache; everything that trains or scores reads it through here (no reader or writer code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np

from hifusion.constants import (
    CACHE_MANIFEST,
    H5_ATTR_IMAGE_MPP,
    H5_ATTR_PAD_COLOUR,
    H5_ATTR_PIXEL_SIZE,
    H5_ATTR_REGION_FACTOR,
    H5_ATTR_REGION_PX,
    H5_ATTR_SECTION,
    H5_ATTR_SPOT_PX,
    H5_ATTR_SPOT_UM,
    H5_BARCODE,
    H5_COORDS,
    H5_IMG,
    H5AD_SUFFIX,
    PATCHES_SUFFIX,
    UNS_HIFUSION,
)
from hifusion.data.h5cache import close_h5, open_h5
from hifusion.data.patches import spot_from_region
from hifusion.errors import InputError


def section_paths(out: Path, section: str) -> tuple[Path, Path]:
    """(h5ad, patches) paths of a section in a cache folder."""
    return out / f"{section}{H5AD_SUFFIX}", out / f"{section}{PATCHES_SUFFIX}"


def is_done(out: Path, section: str) -> bool:
    h5ad_path, patch_path = section_paths(out, section)
    return h5ad_path.is_file() and patch_path.is_file()


def cache_sections(cache_dir: str | Path) -> list[str]:
    """Sections with a complete pair of files in a cache folder."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise InputError("cache folder not found; run `hifusion prepare` first", cache_dir)
    names = [p.name[: -len(H5AD_SUFFIX)] for p in cache_dir.glob(f"*{H5AD_SUFFIX}") if not p.name.startswith(".")]
    return sorted(s for s in names if is_done(cache_dir, s))


def read_manifest(cache_dir: str | Path) -> dict[str, Any] | None:
    path = Path(cache_dir) / CACHE_MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"unreadable cache manifest ({exc}); use --overwrite", path) from exc


class PatchFile:
    """Reader of a `<section>.patches.h5`; the HDF5 handle comes from a bounded per-process LRU (`data.h5cache`).

    Opened lazily in the process that reads (safe in DataLoader workers); over a large cohort only the most recently
    read files stay open, so descriptors and HDF5 chunk caches do not grow with the number of sections.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items()}
                self._len = int(f[H5_IMG].shape[0])
                self.coords = f[H5_COORDS][:]
                self.barcodes = f[H5_BARCODE][:].astype(str)
        except (OSError, KeyError) as exc:
            msg = f"not a readable patch file ({exc}); rerun `hifusion prepare --overwrite`"
            raise InputError(msg, self.path) from exc

    def _file(self) -> h5py.File:
        return open_h5(self.path)

    def __len__(self) -> int:
        return self._len

    def get(self, i: int) -> np.ndarray:
        """Region patch i: uint8 (region_px, region_px, 3)."""
        return self._file()[H5_IMG][int(i)]

    def get_spot(self, i: int) -> np.ndarray:
        """Spot patch i: the centre spot_px crop of the region patch."""
        return spot_from_region(self.get(i), self.spot_px)

    def close(self) -> None:
        close_h5(self.path)

    pixel_size = property(lambda self: float(self.attrs[H5_ATTR_PIXEL_SIZE]))
    spot_px = property(lambda self: int(self.attrs[H5_ATTR_SPOT_PX]))
    region_px = property(lambda self: int(self.attrs[H5_ATTR_REGION_PX]))
    spot_um = property(lambda self: float(self.attrs[H5_ATTR_SPOT_UM]))
    region_factor = property(lambda self: float(self.attrs[H5_ATTR_REGION_FACTOR]))
    image_mpp = property(lambda self: float(self.attrs[H5_ATTR_IMAGE_MPP]))
    section = property(lambda self: str(self.attrs[H5_ATTR_SECTION]))
    pad_colour = property(lambda self: tuple(int(v) for v in self.attrs[H5_ATTR_PAD_COLOUR]))


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_cache(cache_dir: str | Path, section: str) -> tuple[ad.AnnData, PatchFile]:
    """The section's AnnData (raw counts) and its patch file, checked to be in the same spot order."""
    cache_dir = Path(cache_dir)
    h5ad_path, patch_path = section_paths(cache_dir, section)
    for p in (h5ad_path, patch_path):
        if not p.is_file():
            raise InputError(f"section {section} is not in this cache; run `hifusion prepare` for it", p)
    try:
        adata = ad.read_h5ad(h5ad_path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"not a readable cache file ({exc}); rerun `hifusion prepare --overwrite`", h5ad_path) from exc
    patches = PatchFile(patch_path)
    if len(patches) != adata.n_obs or not np.array_equal(patches.barcodes, adata.obs_names.to_numpy().astype(str)):
        raise InputError("patch file and h5ad disagree on the spots; rerun `hifusion prepare --overwrite`", patch_path)
    adata.uns.setdefault(UNS_HIFUSION, {})["h5ad_path"] = str(h5ad_path)
    return adata, patches
