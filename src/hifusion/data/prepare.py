"""`prepare`: read sections, cut region patches around every spot, and write the per-scale patch cache.

Per section it writes `<section>.patches.h5` then `<section>.h5ad`, each through a temporary file renamed on success;
the h5ad is written last and removed first when a section is redone, so a section counts as done (both files present)
only if both were written completely. `cache.json` records the scale; reusing a folder with another scale is an error.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from hifusion.constants import (
    CACHE_MANIFEST,
    DEFAULT_REGION_FACTOR,
    DEFAULT_SPOT_PX,
    DEFAULT_SPOT_UM,
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
    HIRES_MAX_SIDE,
    LOW_COUNTS_THRESHOLD,
    OBS_ARRAY_X,
    OBS_ARRAY_Y,
    OBS_AT_BORDER,
    OBS_LOW_COUNTS,
    OBS_NEW_X,
    OBS_NEW_Y,
    OBS_PATIENT,
    OBS_SECTION,
    OBS_TOTAL_COUNTS,
    OBSM_SPATIAL,
    PATCHES_SUFFIX,
    UNS_HIFUSION,
    UNS_HIRES,
    UNS_HIRES_SCALEF,
    UNS_SPATIAL,
    UNS_SPOT_DIAMETER,
    VAR_GENE_IDS,
)
from hifusion.data.image import open_image
from hifusion.data.patches import iter_patches, region_top_left, spot_from_region
from hifusion.data.readers import list_sections, read_section
from hifusion.data.section import Section
from hifusion.errors import ConfigError, InputError
from hifusion.io import atomic_path, atomic_write_text, make_dir

CACHE_VERSION = 1
COMPRESSIONS = (None, "lzf")  # never gzip: decoding it would dominate data loading during training


@dataclass(frozen=True)
class CacheParams:
    """The physical scale of a cache folder: everything that makes two caches incompatible."""

    spot_um: float = DEFAULT_SPOT_UM
    spot_px: int = DEFAULT_SPOT_PX
    region_factor: float = DEFAULT_REGION_FACTOR

    @property
    def pixel_size(self) -> float:
        """um/px of the stored patches."""
        return self.spot_um / self.spot_px

    @property
    def region_px(self) -> int:
        return region_size(self.spot_px, self.region_factor)

    def manifest(self) -> dict[str, Any]:
        return {**asdict(self), "region_px": self.region_px, "pixel_size": self.pixel_size, "version": CACHE_VERSION}


def region_size(spot_px: int, region_factor: float) -> int:
    """Side of the region patch: round(spot_px * region_factor), made even so spot and region share a centre."""
    r = int(round(spot_px * region_factor))
    return r + (r % 2)


def parse_shard(shard: str | None) -> tuple[int, int]:
    """ "i/n" -> (i, n): take every n-th section starting at the i-th (0-based)."""
    if shard is None:
        return 0, 1
    try:
        i, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise ConfigError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard {shard!r}: need 0 <= i < n")
    return i, n


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


def _same_scale(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    keys = ("spot_um", "spot_px", "region_factor", "region_px")
    try:
        return all(abs(float(old[k]) - float(new[k])) < 1e-9 for k in keys)
    except (KeyError, TypeError, ValueError):
        return False


def ensure_manifest(out: Path, params: CacheParams, fmt: str, overwrite: bool) -> None:
    """Create or check `cache.json`; a folder made at another scale is an error unless `overwrite` (then cleared)."""
    make_dir(out)
    new = {**params.manifest(), "format": fmt, "formats": [fmt]}
    old = read_manifest(out)
    existing = cache_sections(out)
    if old is not None and _same_scale(old, new):
        formats = sorted(set(old.get("formats", [old.get("format", fmt)])) | {fmt})
        new = {**new, "format": old.get("format", fmt), "formats": formats}
    elif old is not None or existing:
        if not overwrite:
            what = (
                f"spot_um={old.get('spot_um')}, spot_px={old.get('spot_px')}, region_factor={old.get('region_factor')}"
                if old
                else "unknown parameters (no cache.json)"
            )
            raise InputError(
                f"this cache was made with {what}, not spot_um={params.spot_um}, spot_px={params.spot_px}, "
                f"region_factor={params.region_factor}; use another folder or --overwrite",
                out / CACHE_MANIFEST,
            )
        for s in existing:  # other scale: every section in here is stale
            for p in section_paths(out, s):
                p.unlink(missing_ok=True)
    atomic_write_text(out / CACHE_MANIFEST, json.dumps(new, indent=2, sort_keys=True) + "\n")


def _obs(section: Section, at_border: np.ndarray, total: np.ndarray) -> pd.DataFrame:
    n = section.n_spots
    array_xy = section.array_xy if section.array_xy is not None else np.full((n, 2), -1, dtype=np.int64)
    new_xy = section.new_xy if section.new_xy is not None else np.full((n, 2), np.nan)
    obs = pd.DataFrame(
        {
            OBS_SECTION: section.section_id,
            OBS_PATIENT: section.patient,
            OBS_ARRAY_X: np.asarray(array_xy[:, 0], dtype=np.int64),
            OBS_ARRAY_Y: np.asarray(array_xy[:, 1], dtype=np.int64),
            OBS_NEW_X: np.asarray(new_xy[:, 0], dtype=np.float64),
            OBS_NEW_Y: np.asarray(new_xy[:, 1], dtype=np.float64),
            OBS_AT_BORDER: at_border.astype(bool),
            OBS_TOTAL_COUNTS: total.astype(np.float64),
            OBS_LOW_COUNTS: total < LOW_COUNTS_THRESHOLD,
        },
        index=pd.Index(section.barcodes, name=None),
    )
    if section.annotations is not None:
        for col in section.annotations.columns:
            if col not in obs.columns:
                obs[col] = section.annotations[col].to_numpy()
    return obs


def _write_patches(
    path: Path, section: Section, image: Any, params: CacheParams, compression: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Write the region patches (one chunk per patch) and return (coords, at_border)."""
    n, r = section.n_spots, params.region_px
    coords = np.array(
        [region_top_left(c, r, params.pixel_size, section.mpp) for c in section.centers_px], dtype=np.int64
    ).reshape(n, 2)
    border = np.zeros(n, dtype=bool)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        img = f.create_dataset(H5_IMG, shape=(n, r, r, 3), dtype=np.uint8, chunks=(1, r, r, 3), compression=compression)
        for i, (patch, b) in enumerate(iter_patches(image, section.centers_px, r, params.pixel_size, section.mpp)):
            img[i] = patch
            border[i] = b
        f.create_dataset(H5_COORDS, data=coords)
        f.create_dataset(H5_BARCODE, data=np.asarray(section.barcodes).astype("S"))
        attrs = {
            H5_ATTR_PIXEL_SIZE: params.pixel_size,
            H5_ATTR_SPOT_PX: params.spot_px,
            H5_ATTR_REGION_PX: r,
            H5_ATTR_SPOT_UM: params.spot_um,
            H5_ATTR_REGION_FACTOR: params.region_factor,
            H5_ATTR_IMAGE_MPP: section.mpp,
            H5_ATTR_SECTION: section.section_id,
            H5_ATTR_PAD_COLOUR: np.asarray(image.pad_colour, dtype=np.uint8),
        }
        f.attrs.update(attrs)
    return coords, border


def prepare_section(
    section: Section,
    out: str | Path,
    *,
    spot_um: float = DEFAULT_SPOT_UM,
    spot_px: int = DEFAULT_SPOT_PX,
    region_factor: float = DEFAULT_REGION_FACTOR,
    compression: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one section's patch file and h5ad into `out` (skipped when both exist, unless overwrite); returns the h5ad.

    Does not touch cache.json; `prepare_sections` checks and writes it.
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(f"patch compression must be one of {COMPRESSIONS}, got {compression!r}")
    out = Path(out)
    params = CacheParams(float(spot_um), int(spot_px), float(region_factor))
    h5ad_path, patch_path = section_paths(out, section.section_id)
    if is_done(out, section.section_id) and not overwrite:
        return h5ad_path
    h5ad_path.unlink(missing_ok=True)  # from here on the section does not look done until the h5ad is back
    with open_image(section.image_path) as image:
        section.check_on_image(image.size)
        _, border = _write_patches(patch_path, section, image, params, compression)
        thumb = image.thumbnail(HIRES_MAX_SIDE)
        w_full = image.size[0]
        pad = [int(v) for v in image.pad_colour]
    total = np.asarray(section.counts.sum(axis=1)).ravel()
    adata = ad.AnnData(X=sp.csr_matrix(section.counts, dtype=np.float32), obs=_obs(section, border, total))
    adata.var_names = pd.Index(section.genes)
    ids = section.gene_ids if section.gene_ids is not None else section.genes
    adata.var[VAR_GENE_IDS] = np.asarray(ids).astype(str)
    adata.obsm[OBSM_SPATIAL] = section.centers_px.astype(np.float64)
    adata.uns[UNS_SPATIAL] = {
        section.section_id: {
            "images": {UNS_HIRES: thumb},
            "scalefactors": {
                UNS_HIRES_SCALEF: thumb.shape[1] / w_full,
                UNS_SPOT_DIAMETER: section.spot_diameter_px,
            },
        }
    }
    info: dict[str, Any] = {
        "mpp": section.mpp,
        "image_path": str(section.image_path),
        "format": section.source_format,
        "coord_scale": section.meta.get("coord_scale", 1.0),
        "mpp_source": section.meta.get("mpp_source", ""),
        "pad_colour": pad,
        **{f"{k}_file": str(v) for k, v in section.files.items()},
        **params.manifest(),
    }
    adata.uns[UNS_HIFUSION] = {k: v for k, v in info.items() if v is not None}
    try:
        with atomic_path(h5ad_path) as tmp:
            adata.write_h5ad(tmp)
    except BaseException:
        patch_path.unlink(missing_ok=True)  # no half-prepared section (patches without their h5ad) is left
        raise
    return h5ad_path


def _prepare_one(
    fmt: str, root: str, section: str, out: str, params: CacheParams, opts: dict[str, Any], compression: str | None
) -> str:
    """Worker body (top level so a process pool can pickle it)."""
    sec = read_section(fmt, root, section, check_image=False, **opts)
    path = prepare_section(
        sec,
        out,
        spot_um=params.spot_um,
        spot_px=params.spot_px,
        region_factor=params.region_factor,
        compression=compression,
        overwrite=True,
    )
    return str(path)


def prepare_sections(
    fmt: str,
    root: str | Path,
    sections: Iterable[str] | None,
    out: str | Path,
    *,
    spot_um: float = DEFAULT_SPOT_UM,
    spot_px: int = DEFAULT_SPOT_PX,
    region_factor: float = DEFAULT_REGION_FACTOR,
    mpp: Mapping[str, float] | None = None,
    coord_scale: Mapping[str, float] | None = None,
    images: Mapping[str, str | Path] | None = None,
    reader_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    compression: str | None = None,
    progress: bool = True,
    workers: int = 1,
    shard: str | None = None,
) -> list[Path]:
    """Prepare `sections` (None = every section found) of `root` into the cache folder `out`; returns their h5ad paths.

    `mpp`, `coord_scale` and `images` are per-section overrides; sections already done are skipped unless `overwrite`.
    `workers > 1` prepares sections in parallel processes; `shard="i/n"` takes every n-th section from the i-th.
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(f"patch compression must be one of {COMPRESSIONS}, got {compression!r}")
    if spot_px < 2 or spot_um <= 0 or region_factor < 1:
        got = f"{spot_px}, {spot_um}, {region_factor}"
        raise ConfigError(f"need spot_px >= 2, spot_um > 0, region_factor >= 1 (got {got})")
    out = Path(out)
    names = list(sections) if sections is not None else list_sections(fmt, root)
    for table, label in ((mpp, "mpp"), (coord_scale, "coord_scale"), (images, "image")):
        unknown = sorted(set(table or {}) - set(names))
        if unknown:
            warnings.warn(f"{label} given for sections not being prepared: {unknown}", stacklevel=2)
    i, n = parse_shard(shard)
    names = names[i::n]
    params = CacheParams(float(spot_um), int(spot_px), float(region_factor))
    ensure_manifest(out, params, fmt, overwrite)
    todo = [s for s in names if overwrite or not is_done(out, s)]

    def opts(s: str) -> dict[str, Any]:
        o: dict[str, Any] = dict(reader_options or {})
        o.update(mpp=(mpp or {}).get(s), coord_scale=(coord_scale or {}).get(s), image=(images or {}).get(s))
        return o

    for s in todo:  # fail fast on input problems before hours of patch cutting
        read_section(fmt, root, s, **opts(s))
    with _progress(progress, len(todo)) as advance:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_prepare_one, fmt, str(root), s, str(out), params, opts(s), compression) for s in todo
                ]
                for fut in as_completed(futures):
                    advance(Path(fut.result()).name)
        else:
            for s in todo:
                advance(Path(_prepare_one(fmt, str(root), s, str(out), params, opts(s), compression)).name)
    return [section_paths(out, s)[0] for s in names]


class _progress:
    """A rich progress bar over sections (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self._bar = enabled and total > 0, total, None

    def __enter__(self) -> Any:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("prepare {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self._bar.start()
            task = self._bar.add_task("sections", total=self.total)

            def advance(name: str) -> None:
                self._bar.update(task, advance=1, description=name)  # type: ignore[union-attr]

            return advance
        return lambda name: None

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


class PatchFile:
    """Reader of a `<section>.patches.h5`; opens the HDF5 file lazily once per process (safe in DataLoader workers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
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
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __len__(self) -> int:
        return self._len

    def get(self, i: int) -> np.ndarray:
        """Region patch i: uint8 (region_px, region_px, 3)."""
        return self._file()[H5_IMG][int(i)]

    def get_spot(self, i: int) -> np.ndarray:
        """Spot patch i: the centre spot_px crop of the region patch."""
        return spot_from_region(self.get(i), self.spot_px)

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None
        return state

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
