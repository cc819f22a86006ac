"""Unlabelled H&E tiles for pretraining, all at one physical scale: from the patch cache and from extra slides.

Default source: the region patches of a cache's sections. They are already cut at the cache's scale (`pixel_size`
um/px) by the function `prepare` and `predict` use, they sit on tissue (centred on ST spots), they are read from
HDF5 without decoding a 10k x 10k JPEG per section again, and they carry their section's name, so a benchmark fold
can pretrain on exactly the sections it may see. Their side (region_px, twice the spot side by default) leaves room
for random crops of a spot field of view around the spot.

Extra slides (any image `data.image` opens: SVS/TIFF pyramids, JPEG, PNG) are tiled on tissue with the rule
whole-slide prediction uses (`data.tissue.detect_tissue` on a thumbnail, a square grid of non-overlapping tiles
kept where at least `min_tissue` of a tile is tissue) and cut by `data.patches.extract_patch` at the same um/px.
Their tiles are held in memory (tile_px^2 * 3 bytes each, `max_tiles` per slide at most).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hifusion import constants as C
from hifusion.data.cache.layout import cache_sections, section_paths
from hifusion.data.cache.reader import PatchFile
from hifusion.errors import ConfigError, InputError
from hifusion.geometry import PatchGeometry


@dataclass
class TileSet:
    """uint8 tiles (T, T, 3) at `mpp` um/px from several sources; tile i is looked up by (source, row)."""

    mpp: float
    tile_px: int
    sources: list[str] = field(default_factory=list)  # section names or slide paths
    _readers: list[object] = field(default_factory=list, repr=False)  # PatchFile or ndarray (N, T, T, 3)
    _index: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def add(self, name: str, reader: object, n: int) -> None:
        k = len(self.sources)
        self.sources.append(name)
        self._readers.append(reader)
        self._index += [(k, i) for i in range(n)]

    def __len__(self) -> int:
        return len(self._index)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.sources, 0)
        for k, _ in self._index:
            out[self.sources[k]] += 1
        return out

    def batch(self, idx: np.ndarray) -> np.ndarray:
        """Tiles `idx` as one uint8 array (B, T, T, 3)."""
        out = np.empty((len(idx), self.tile_px, self.tile_px, 3), dtype=np.uint8)
        for j, i in enumerate(np.asarray(idx, dtype=np.int64)):
            k, row = self._index[int(i)]
            reader = self._readers[k]
            out[j] = reader.get(row) if isinstance(reader, PatchFile) else reader[row]
        return out


def cache_scale(cache: Path) -> tuple[float, int, int]:
    """(um/px, spot_px, region_px) of a patch cache, read from its first section's patch file."""
    names = cache_sections(cache)
    if not names:
        raise InputError("the patch cache holds no sections; run `hifusion prepare`", cache)
    pf = PatchFile(section_paths(cache, names[0])[1])
    return pf.pixel_size, pf.spot_px, pf.region_px


def add_cache_sections(tiles: TileSet, cache: Path, sections: list[str]) -> None:
    """Every region patch of `sections` (checked to be at the tile set's scale)."""
    known = set(cache_sections(cache))
    for s in sections:
        if s not in known:
            raise InputError(f"section {s} is not in this cache (it has {', '.join(sorted(known)) or 'none'})",
                             cache)
        pf = PatchFile(section_paths(cache, s)[1])
        if abs(pf.pixel_size - tiles.mpp) > 1e-6 * tiles.mpp or pf.region_px != tiles.tile_px:
            raise InputError(f"section {s} is at {pf.pixel_size:g} um/px, {pf.region_px} px; the tiles are at "
                             f"{tiles.mpp:g} um/px, {tiles.tile_px} px", pf.path)
        tiles.add(s, pf, len(pf))


def _tile_centres(path: Path, mpp: float | None, tile_mpp: float, tile_px: int, min_tissue: float,
                  max_tiles: int, seed: int) -> tuple[object, np.ndarray]:
    """The open slide and level-0 centres of the tissue tiles (at most `max_tiles`, evenly spread)."""
    from hifusion.data.tissue import detect_tissue, spot_grid
    from hifusion.predict.slide import open_slide

    s = open_slide(path, mpp=mpp, target_mpp=tile_mpp)
    try:
        thumb = s.image.thumbnail(C.HIRES_MAX_SIDE)
        scalef = thumb.shape[1] / s.size[0]
        fov = tile_px * tile_mpp / s.mpp  # tile side in level-0 pixels
        mask = detect_tissue(thumb, min_object_px=max(4, int((fov * scalef) ** 2 / 4)))
        coords = spot_grid(mask, scalef, fov, "square", diameter_px=fov, min_fraction=min_tissue,
                           image_size=s.size)
    except BaseException:
        s.close()
        raise
    if not len(coords):
        s.close()
        raise InputError(f"no tissue tile found (tiles of {tile_px * tile_mpp:.0f} um, >= {min_tissue:.0%} "
                         "tissue on the thumbnail)", path)
    if len(coords) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(coords), max_tiles, replace=False))
        coords = coords[keep]
    return s, coords


def add_slide(tiles: TileSet, path: Path, *, mpp: float | None = None, min_tissue: float = 0.5,
              max_tiles: int = 2000, seed: int = 0) -> None:
    """Tissue tiles of one slide image at the tile set's scale (`mpp`: the slide's level-0 um/px when the file
    records none or records it wrongly)."""
    from hifusion.predict.slide import PatchStream

    path = Path(path)
    s, coords = _tile_centres(path, mpp, tiles.mpp, tiles.tile_px, min_tissue, max_tiles, seed)
    try:
        stream = PatchStream(s, PatchGeometry(tiles.mpp, tiles.tile_px, tiles.tile_px), batch_size=64)
        arr = np.concatenate([b["region"].numpy().transpose(0, 2, 3, 1) for b in stream.batches(coords)])
    finally:
        s.close()
    tiles.add(str(path), np.ascontiguousarray(arr), len(arr))


def gather_tiles(cache: Path | None, sections: list[str] | None, pcfg: Any, *,
                 tile_mpp: float | None = None, tile_px: int | None = None) -> tuple[TileSet, int]:
    """Tiles of the cache's `sections` (None: all) and of `pcfg.slides`, at the cache's scale or, without a cache,
    at `tile_mpp` um/px; returns the tile set and the view side."""
    if cache is not None:
        mpp, spot_px, region_px = cache_scale(cache)
        if tile_mpp is not None and abs(tile_mpp - mpp) > 1e-6 * mpp:
            raise ConfigError(f"--tile-mpp {tile_mpp:g} differs from the cache's {mpp:g} um/px: the tiles are "
                              "cut at the scale the models see", cache)
        view_px = pcfg.view_px or spot_px
        tiles = TileSet(mpp=mpp, tile_px=region_px)
        add_cache_sections(tiles, cache, sections if sections is not None else cache_sections(cache))
    else:
        if tile_mpp is None:
            raise ConfigError("without a config (patch cache), give the tiles' scale: --tile-mpp (um/px)")
        view_px = pcfg.view_px or (int(tile_px) // 2 if tile_px else C.CPU_SPOT_PX)
        tiles = TileSet(mpp=float(tile_mpp), tile_px=int(tile_px or 2 * view_px))
    if view_px > tiles.tile_px:
        raise ConfigError(f"views of {view_px} px cannot be cut from tiles of {tiles.tile_px} px")
    for sl in pcfg.slides:
        add_slide(tiles, sl.path, mpp=sl.mpp, min_tissue=pcfg.min_tissue, max_tiles=pcfg.max_tiles_per_slide,
                  seed=pcfg.seed)
    return tiles, view_px
