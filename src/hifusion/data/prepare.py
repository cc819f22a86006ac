"""`prepare`: read sections, cut region patches around every spot, and write the per-scale patch cache.

Per section it writes `<section>.patches.h5` then `<section>.h5ad`, each through a temporary file renamed on success;
the h5ad is written last and removed first when a section is redone, so a section counts as done (both files present)
only if both were written completely. `cache.json` records the scale; reusing a folder with another scale is an error.

Every spot patch is checked for tissue (`spot_tissue_fraction`): a section most of whose spots sit on background
(blank, black or white glass: the wrong image, or coordinates in another frame) stops with an error naming the image,
unless `allow_background`. Per spot, obs holds the tissue fraction and an `on_tissue` flag.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
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

from hifusion.config import PrepareConfig
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
    HIRES_MAX_SIDE,
    LOW_COUNTS_THRESHOLD,
    MAX_BACKGROUND_SHARE,
    MIN_SPOT_TISSUE_FRACTION,
    OBS_ARRAY_X,
    OBS_ARRAY_Y,
    OBS_AT_BORDER,
    OBS_LOW_COUNTS,
    OBS_NEW_X,
    OBS_NEW_Y,
    OBS_ON_TISSUE,
    OBS_PATIENT,
    OBS_SECTION,
    OBS_TISSUE_FRACTION,
    OBS_TOTAL_COUNTS,
    OBSM_SPATIAL,
    UNS_HIFUSION,
    UNS_HIRES,
    UNS_HIRES_SCALEF,
    UNS_SPATIAL,
    UNS_SPOT_DIAMETER,
    UPSAMPLE_WARN_FACTOR,
    VAR_GENE_IDS,
)
from hifusion.data.cache.layout import cache_sections, is_done, read_manifest, section_paths
from hifusion.data.cache.reader import obs_values
from hifusion.data.patches import iter_patches, region_top_left, spot_from_region
from hifusion.data.readers import get_reader, list_sections, read_section
from hifusion.data.section import Section
from hifusion.data.tissue import spot_tissue_fraction
from hifusion.errors import ConfigError, InputError
from hifusion.geometry import PatchGeometry
from hifusion.io import atomic_path, atomic_write_text, make_dir
from hifusion.progress import counting, format_seconds, say

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

    @property
    def geometry(self) -> PatchGeometry:
        """The sizes patches are cut at (what a checkpoint trained on this cache records)."""
        return PatchGeometry(self.pixel_size, self.spot_px, self.region_px)

    @classmethod
    def of(cls, cfg: PrepareConfig, spot_um: float) -> CacheParams:
        """The scale a prepare config asks for, at `spot_um` (the config's, or the format's default)."""
        return cls(float(spot_um), int(cfg.spot_px), float(cfg.region_factor))

    def manifest(self) -> dict[str, Any]:
        return {**asdict(self), "region_px": self.region_px, "pixel_size": self.pixel_size, "version": CACHE_VERSION}


def _check_compression(compression: str | None) -> None:
    if compression not in COMPRESSIONS:
        raise ConfigError(f"patch compression must be one of {COMPRESSIONS}, got {compression!r}")


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


def image_label(section: Section) -> str:
    """How errors name the image a section is cut from (a file, or an array inside an AnnData file)."""
    return str(section.meta.get("image_desc") or section.image_path)


def scale_report(section: Section, pixel_size: float) -> tuple[str, float]:
    """A line saying which image a section is cut from, at what um/px, and how much patches are enlarged from it."""
    factor = section.mpp / pixel_size
    kind = section.meta.get("image_kind", "")
    scalef = section.meta.get("coord_scale", 1.0)
    src = f"{Path(image_label(section)).name}" + (f" ({kind}, scale factor {scalef:.4g})" if scalef != 1.0 else "")
    how = f"upsampled {factor:.1f}x" if factor > 1.0 + 1e-6 else f"downsampled {1 / factor:.1f}x"
    return (f"prepare {section.section_id}: image {src}: {section.mpp:.3g} um/px; patches at {pixel_size:.3g} um/px "
            f"are {how}"), factor


def _obs(section: Section, at_border: np.ndarray, total: np.ndarray, tissue: np.ndarray) -> pd.DataFrame:
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
            OBS_TISSUE_FRACTION: tissue.astype(np.float32),
            OBS_ON_TISSUE: tissue >= MIN_SPOT_TISSUE_FRACTION,
        },
        index=pd.Index(section.barcodes, name=None),
    )
    if section.annotations is not None:
        for col in section.annotations.columns:
            if col not in obs.columns:
                obs[col] = section.annotations[col].to_numpy()
    return obs


def _write_patches(
    path: Path, section: Section, image: Any, params: CacheParams, compression: str | None,
    allow_background: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the region patches (one chunk per patch) and return (coords, at_border, tissue fraction per spot).

    A section whose spots are mostly background raises before the file is renamed into place, so none is left.
    """
    n, r = section.n_spots, params.region_px
    coords = np.array(
        [region_top_left(c, r, params.pixel_size, section.mpp) for c in section.centers_px], dtype=np.int64
    ).reshape(n, 2)
    border = np.zeros(n, dtype=bool)
    tissue = np.zeros(n, dtype=np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        img = f.create_dataset(H5_IMG, shape=(n, r, r, 3), dtype=np.uint8, chunks=(1, r, r, 3), compression=compression)
        for i, (patch, b) in enumerate(iter_patches(image, section.centers_px, r, params.pixel_size, section.mpp)):
            img[i] = patch
            border[i] = b
            tissue[i] = spot_tissue_fraction(spot_from_region(patch, params.spot_px))
        background = int((tissue < MIN_SPOT_TISSUE_FRACTION).sum())
        if background > MAX_BACKGROUND_SHARE * n and not allow_background:
            raise InputError(
                f"no tissue under the spots of section {section.section_id}: {background} of {n} spot patches are "
                f"background (blank, black or white); pass the image with tissue (--image "
                f"{section.section_id}=PATH), check the spot coordinates, or --allow-background to keep them",
                image_label(section),
            )
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
    return coords, border, tissue


def prepare_section(
    section: Section,
    out: str | Path,
    params: CacheParams = CacheParams(),
    *,
    compression: str | None = None,
    overwrite: bool = False,
    allow_background: bool = False,
) -> Path:
    """Write one section's patch file and h5ad into `out` (skipped when both exist, unless overwrite); returns the h5ad.

    Does not touch cache.json; `prepare_sections` checks and writes it. Mostly-background spots are an InputError
    naming the image unless `allow_background`.
    """
    _check_compression(compression)
    out = Path(out)
    h5ad_path, patch_path = section_paths(out, section.section_id)
    if is_done(out, section.section_id) and not overwrite:
        return h5ad_path
    h5ad_path.unlink(missing_ok=True)  # from here on the section does not look done until the h5ad is back
    with section.open_image() as image:
        section.check_on_image(image.size)
        _, border, tissue = _write_patches(patch_path, section, image, params, compression, allow_background)
        thumb = image.thumbnail(HIRES_MAX_SIDE)
        w_full = image.size[0]
        pad = [int(v) for v in image.pad_colour]
    total = np.asarray(section.counts.sum(axis=1)).ravel()
    obs = _obs(section, border, total, tissue)
    adata = ad.AnnData(X=sp.csr_matrix(section.counts, dtype=np.float32), obs=obs)
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
        "image": image_label(section),
        "image_kind": section.meta.get("image_kind"),
        "upsampling": section.mpp / params.pixel_size,
        "tissue_fraction": float(obs[OBS_ON_TISSUE].mean()),  # share of spots whose patch is on tissue
        "format": section.source_format,
        "coord_scale": section.meta.get("coord_scale", 1.0),
        "mpp_source": section.meta.get("mpp_source", ""),
        "visium_hd": section.meta.get("visium_hd"),  # the spot definition (bins or pseudo-spots) of an HD section
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
    fmt: str, root: str, section: str, out: str, params: CacheParams, opts: dict[str, Any], compression: str | None,
    allow_background: bool = False,
) -> tuple[str, str]:
    """Worker body (top level so a process pool can pickle it); returns (h5ad path, one-line summary)."""
    t0 = time.perf_counter()
    sec = read_section(fmt, root, section, check_image=False, **opts)
    path = prepare_section(sec, out, params, compression=compression, overwrite=True,
                           allow_background=allow_background)
    on = obs_values(path, OBS_ON_TISSUE)  # the obs flag, without loading the whole AnnData again
    summary = (f"{section}: {sec.n_spots} spots, {float(np.mean(on)):.0%} on tissue, "
               f"{format_seconds(time.perf_counter() - t0)}")
    return str(path), summary


def prepare_sections(
    cfg: PrepareConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
    shard: str | None = None,
) -> list[Path]:
    """Prepare the sections `cfg` names (None = every section found) of `cfg.root` (None: the HER2ST sample shipped
    with the package) into the cache folder `out`; returns their h5ad paths.

    `cfg.spot_um` None takes the format's default field of view (`Reader.spot_um`: 154.6 um, or following the spot
    size for Visium HD). `cfg.mpp`, `cfg.coord_scale` and `cfg.image` are per-section overrides; sections already
    done are skipped unless `overwrite`.
    `workers > 1` prepares sections in parallel processes; `shard="i/n"` takes every n-th section from the i-th.
    With `progress`, each section's image, um/px and resampling factor and, once done, its share of spots on tissue
    are reported on stderr. Patches enlarged more than 4x from the image draw a warning (they hold little detail).
    """
    fmt, root, reader_options = cfg.format, dataset_root(cfg), cfg.reader_options()
    mpp, coord_scale, images = cfg.mpp or None, cfg.coord_scale or None, cfg.image or None
    compression = None if cfg.compression == "none" else cfg.compression
    _check_compression(compression)
    allow_background = cfg.allow_background
    spot_um = cfg.spot_um
    if spot_um is None:  # the format's default: the paper's 154.6 um, or following the spot size (Visium HD)
        spot_um = get_reader(fmt).spot_um(dict(reader_options or {}))
    if cfg.spot_px < 2 or spot_um <= 0 or cfg.region_factor < 1:
        got = f"{cfg.spot_px}, {spot_um}, {cfg.region_factor}"
        raise ConfigError(f"need spot_px >= 2, spot_um > 0, region_factor >= 1 (got {got})")
    out = Path(out)
    names = list(cfg.sections) if cfg.sections is not None else list_sections(fmt, root)
    for table, label in ((mpp, "mpp"), (coord_scale, "coord_scale"), (images, "image")):
        unknown = sorted(set(table or {}) - set(names))
        if unknown:
            warnings.warn(f"{label} given for sections not being prepared: {unknown}", stacklevel=2)
    i, n = parse_shard(shard)
    names = names[i::n]
    params = CacheParams.of(cfg, spot_um)
    ensure_manifest(out, params, fmt, overwrite)
    todo = [s for s in names if overwrite or not is_done(out, s)]

    def opts(s: str) -> dict[str, Any]:
        o: dict[str, Any] = dict(reader_options or {})
        o.update(mpp=(mpp or {}).get(s), coord_scale=(coord_scale or {}).get(s), image=(images or {}).get(s))
        return o

    for s in todo:  # fail fast on input problems before hours of patch cutting
        sec = read_section(fmt, root, s, **opts(s))
        line, factor = scale_report(sec, params.pixel_size)
        if progress:
            say(line)
        if factor > UPSAMPLE_WARN_FACTOR:
            warnings.warn(
                f"{image_label(sec)}: patches of section {s} are upsampled {factor:.1f}x from the image "
                f"({sec.mpp:.3g} um/px to {params.pixel_size:.3g} um/px), so they hold little detail; pass a "
                f"higher-resolution image (--image {s}=PATH) if there is one",
                stacklevel=2,
            )
    with counting("prepare", len(todo), "sections", enabled=progress, per_item=True) as advance:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_prepare_one, fmt, str(root), s, str(out), params, opts(s), compression,
                                allow_background)
                    for s in todo
                ]
                for fut in as_completed(futures):
                    advance(1, fut.result()[1])
        else:
            for s in todo:
                _, summary = _prepare_one(fmt, str(root), s, str(out), params, opts(s), compression, allow_background)
                advance(1, summary)
    return [section_paths(out, s)[0] for s in names]


def dataset_root(cfg: PrepareConfig) -> Path:
    """The dataset root a prepare config reads (None: the HER2ST sample inside the package)."""
    if cfg.root is not None:
        return Path(cfg.root)
    from hifusion.data.sample import her2st_sample

    return her2st_sample()
