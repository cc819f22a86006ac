"""The patch cache, read side: a section's AnnData + patch file, and the few fields read without loading them whole.

`data.prepare` writes the cache; everything that trains, scores or predicts reads its files through here (the folder
layout is `cache.layout`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np

from hifusion import constants as C
from hifusion.data.cache.handles import close_h5, open_h5
from hifusion.data.cache.layout import cache_sections, section_paths
from hifusion.errors import InputError


class PatchFile:
    """Reader of a `<section>.patches.h5`; the HDF5 handle comes from a bounded per-process LRU (`cache.handles`).

    Opened lazily in the process that reads (safe in DataLoader workers); over a large cohort only the most recently
    read files stay open, so descriptors and HDF5 chunk caches do not grow with the number of sections.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items()}
                self._len = int(f[C.H5_IMG].shape[0])
                self.coords = f[C.H5_COORDS][:]
                self.barcodes = f[C.H5_BARCODE][:].astype(str)
        except (OSError, KeyError) as exc:
            msg = f"not a readable patch file ({exc}); rerun `hifusion prepare --overwrite`"
            raise InputError(msg, self.path) from exc

    def _file(self) -> h5py.File:
        return open_h5(self.path)

    def __len__(self) -> int:
        return self._len

    def get(self, i: int) -> np.ndarray:
        """Region patch i: uint8 (region_px, region_px, 3)."""
        return self._file()[C.H5_IMG][int(i)]

    def close(self) -> None:
        close_h5(self.path)

    pixel_size = property(lambda self: float(self.attrs[C.H5_ATTR_PIXEL_SIZE]))
    spot_px = property(lambda self: int(self.attrs[C.H5_ATTR_SPOT_PX]))
    region_px = property(lambda self: int(self.attrs[C.H5_ATTR_REGION_PX]))
    spot_um = property(lambda self: float(self.attrs[C.H5_ATTR_SPOT_UM]))
    region_factor = property(lambda self: float(self.attrs[C.H5_ATTR_REGION_FACTOR]))
    image_mpp = property(lambda self: float(self.attrs[C.H5_ATTR_IMAGE_MPP]))
    section = property(lambda self: str(self.attrs[C.H5_ATTR_SECTION]))
    pad_colour = property(lambda self: tuple(int(v) for v in self.attrs[C.H5_ATTR_PAD_COLOUR]))


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
    adata.uns.setdefault(C.UNS_HIFUSION, {})["h5ad_path"] = str(h5ad_path)
    return adata, patches


def h5ad_patient(path: str | Path, default: str) -> str:
    """The first spot's `obs['patient']` of a cache `.h5ad`, read from that one column (not the whole AnnData)."""
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        obs = f["obs"]
        if C.OBS_PATIENT not in obs:
            return default
        col = obs[C.OBS_PATIENT]
        if isinstance(col, h5py.Group) and "codes" in col:  # categorical: one code and the category table
            codes = col["codes"]
            return str(read_elem(col["categories"])[int(codes[0])]) if codes.shape[0] else default
        values = read_elem(col)
        return str(values[0]) if len(values) else default


def cache_patients(cache: Path) -> dict[str, str]:
    """Section -> patient for every section in a cache (one obs column of each .h5ad, not the whole AnnData)."""
    return {s: h5ad_patient(Path(cache) / f"{s}{C.H5AD_SUFFIX}", s) for s in cache_sections(cache)}


def obs_values(path: str | Path, key: str) -> np.ndarray:
    """One plain (non-categorical) obs column of a cache `.h5ad`, without loading the whole AnnData."""
    with h5py.File(path, "r") as f:
        return f[f"obs/{key}"][:]


@functools.lru_cache(maxsize=8)
def read_images(path: str, lib: str) -> dict[str, Any] | None:
    """A section's images, read once for the prediction files of all its models and variants (a few sections held)."""
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        key = f"uns/{C.UNS_SPATIAL}/{lib}/images"
        return read_elem(f[key]) if key in f else None
