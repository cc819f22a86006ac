"""Reading patches straight from a slide, in batches, with bounded memory.

Patches are cut by `hifusion.data.patches.extract_patch`, the function `prepare` uses, so a spot predicted here sees
exactly the pixels it would have in the patch cache (when read from level 0). Pyramids (OpenSlide formats, tiled
TIFF) are read region by region from the coarsest level that is still at least as fine as the patch scale; a level
other than 0 is the scanner's own downsampled copy, so it agrees with `prepare` to resampling noise, not bit for bit.

Speed: a batch's spots are neighbours on the grid, so their region windows overlap; on a pyramid the batch reads the
bounding box of its windows once (`BLOCK_AREA_FACTOR` caps it) and cuts every patch from that block in memory, instead
of decoding the same tiles for each spot. The patches are bit-identical to per-spot reads. Batches are prepared by a
reading thread ahead of the model (`batches`), so reading and patching overlap with inference.

Memory: a pyramid is never loaded whole; in flight are at most `workers + 2` batches of uint8 patches (64 spots at
448 px: ~48 MB per batch) plus one tile cache per reading thread. Plain JPEG/PNG have no random access: they are
decoded once and kept, 3 bytes per pixel (a 9300 x 9900 HER2ST JPEG: ~280 MB; a 100k x 80k JPEG would need 24 GB:
convert such a file to a tiled pyramidal TIFF first, e.g. `vips tiffsave in.jpg out.tif --tile --pyramid`).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hifusion.data.image import PilImage, SlideImage, level_image, level_sizes, open_image
from hifusion.data.patches import crosses_border, extract_patch, spot_from_region, window
from hifusion.errors import InputError
from hifusion.geometry import PatchGeometry

MPP_RANGE = (0.01, 100.0)  # um/px outside this is a unit mix-up (inches, dpi), not a microscope scan
BLOCK_AREA_FACTOR = 4.0  # read a batch's bounding box at once when it is at most this many times its windows' area


class _Block(SlideImage):
    """A view of `base` whose reads inside a pre-read block come from memory (same pixels, no tile decoding)."""

    def __init__(self, base: SlideImage, x0: int, y0: int, block: np.ndarray) -> None:
        self.path, self.mpp, self._base = base.path, base.mpp, base
        self._x0, self._y0, self._block = x0, y0, block

    @property
    def size(self) -> tuple[int, int]:
        return self._base.size

    @property
    def pad_colour(self) -> tuple[int, int, int]:  # type: ignore[override]
        return self._base.pad_colour

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        bx, by = x0 - self._x0, y0 - self._y0
        bh, bw = self._block.shape[:2]
        if bx >= 0 and by >= 0 and bx + w <= bw and by + h <= bh:
            return self._block[by : by + h, bx : bx + w]
        return self._base._read(x0, y0, w, h)

    def thumbnail(self, max_side: int) -> np.ndarray:
        return self._base.thumbnail(max_side)


def block_view(view: SlideImage, centres: np.ndarray, out_px: int, out_mpp: float, image_mpp: float) -> SlideImage:
    """`view`, or a `_Block` holding the bounding box of the patch windows of `centres` when that box is compact."""
    if isinstance(view, PilImage) or len(centres) < 2:  # decoded images are in memory already
        return view
    wins = np.array([window(c, out_px, out_mpp, image_mpp) for c in centres], dtype=np.float64)
    margin = 3  # the resampler reads 2 px around a window (data.patches._MARGIN), plus rounding
    x0, y0 = np.floor(wins[:, :2].min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil((wins[:, :2] + wins[:, 2:3]).max(axis=0)).astype(int) + margin
    w, h = view.size
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)
    if x1 <= x0 or y1 <= y0:
        return view
    if (x1 - x0) * (y1 - y0) > BLOCK_AREA_FACTOR * float((wins[:, 2] ** 2).sum()):
        return view  # scattered spots: reading the box would cost more than the windows
    return _Block(view, x0, y0, view._read(x0, y0, x1 - x0, y1 - y0))


def resolve_mpp(image: SlideImage, mpp: float | None) -> tuple[float, str]:
    """Level-0 um/px and where it came from: the user's value wins over the file's; neither is an error."""
    if mpp is not None:
        if not (math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
            raise InputError(f"--mpp {mpp} is not a plausible microns-per-pixel value", image.path)
        return float(mpp), "option"
    if image.mpp is None:
        raise InputError("image resolution (microns per pixel) unknown: pass --mpp, e.g. --mpp 0.5", image.path)
    if not MPP_RANGE[0] <= image.mpp <= MPP_RANGE[1]:
        raise InputError(f"the file records {image.mpp:g} um/px, which is implausible: pass --mpp", image.path)
    return float(image.mpp), "file"


def choose_level(sizes: list[tuple[int, int]], mpp0: float, target_mpp: float) -> int:
    """The coarsest pyramid level whose um/px is still <= the target (patches are only ever shrunk, never enlarged)."""
    best = 0
    for i, (w, _) in enumerate(sizes):
        if mpp0 * sizes[0][0] / w <= target_mpp * (1 + 1e-9):
            best = i
    return best


@dataclass
class Slide:
    """An open slide, its level-0 scale, and the pyramid level patches are read from."""

    path: Path
    image: SlideImage  # level 0
    mpp: float  # level-0 um/px
    mpp_source: str
    level: int
    view: SlideImage  # the level patches are cut from
    level_mpp: float
    downsample: float  # level-0 pixels per view pixel (x)
    _opened: list[SlideImage] = field(default_factory=list, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def close(self) -> None:
        """Close the slide and every per-thread handle opened for reading."""
        for im in self._opened:
            im.close()
        self._opened.clear()
        self.image.close()


def open_slide(path: str | Path, *, mpp: float | None, target_mpp: float, level: int | None = None) -> Slide:
    """Open a slide (InputError naming the file if unreadable), resolve its um/px, and pick the level to read."""
    image = open_image(path)
    try:
        mpp0, source = resolve_mpp(image, mpp)
        sizes = level_sizes(image)
        lvl = choose_level(sizes, mpp0, target_mpp) if level is None else int(level)
        if not 0 <= lvl < len(sizes):
            raise InputError(f"level {lvl} does not exist (the slide has {len(sizes)})", path)
        view = level_image(image, lvl)
        ds = sizes[0][0] / sizes[lvl][0]
    except BaseException:
        image.close()
        raise
    return Slide(Path(path), image, mpp0, source, lvl, view, mpp0 * ds, ds)


class PatchStream:
    """Batches of uint8 (spot, region) tensors for spot centres in level-0 pixels, in order, with prefetch.

    Each reading thread has its own file handle (tifffile and OpenSlide handles are not shared across threads); a
    decoded JPEG/PNG is shared read-only. At most `workers + 2` batches exist at a time.
    """

    def __init__(self, slide: Slide, geometry: PatchGeometry, batch_size: int, workers: int = 1) -> None:
        self.slide, self.pixel_size = slide, float(geometry.pixel_size)
        self.spot_px, self.region_px = int(geometry.spot_px), int(geometry.region_px)
        self.batch_size, self.workers = max(1, int(batch_size)), max(1, int(workers))
        self._local = threading.local()
        self._lock = threading.Lock()

    def _view(self) -> SlideImage:
        s = self.slide
        if self.workers == 1 or isinstance(s.image, PilImage):
            return s.view
        v = getattr(self._local, "view", None)
        if v is None:
            img = open_image(s.path)
            with self._lock:
                s._opened.append(img)
            v = self._local.view = level_image(img, s.level)
        return v

    def level_centres(self, coords: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) -> coordinates in the pixels of the level patches are read from."""
        return np.asarray(coords, dtype=np.float64).reshape(-1, 2) / self.slide.downsample

    def at_border(self, coords: np.ndarray) -> np.ndarray:
        """Whether each region patch reaches outside the slide (part of it is padding)."""
        out = []
        for c in self.level_centres(coords):
            x0, y0, side = window(c, self.region_px, self.pixel_size, self.slide.level_mpp)
            out.append(crosses_border(x0, y0, side, self.slide.view.size))
        return np.asarray(out, dtype=bool)

    def make_batch(self, centres: np.ndarray) -> dict[str, torch.Tensor]:
        """One batch: region patches cut by `extract_patch`, spot patches their centre crops (as in the cache)."""
        view = block_view(self._view(), centres, self.region_px, self.pixel_size, self.slide.level_mpp)
        regions = np.stack(
            [extract_patch(view, c, self.region_px, self.pixel_size, self.slide.level_mpp)[0] for c in centres]
        )
        spots = spot_from_region(regions, self.spot_px)
        return {
            "spot": torch.from_numpy(np.ascontiguousarray(spots.transpose(0, 3, 1, 2))),
            "region": torch.from_numpy(np.ascontiguousarray(regions.transpose(0, 3, 1, 2))),
        }

    def batches(self, coords: np.ndarray) -> Iterator[dict[str, torch.Tensor]]:
        """Batches in the order of `coords`; patches are prepared by worker threads ahead of the consumer."""
        centres = self.level_centres(coords)
        chunks = [centres[i : i + self.batch_size] for i in range(0, len(centres), self.batch_size)]
        if isinstance(self.slide.image, PilImage):
            self.slide.image.pixels  # noqa: B018 - decode once here, not concurrently in every thread
        self.slide.view.pad_colour  # noqa: B018 - computed once before threads share it
        if self.workers == 1 and len(chunks) <= 1:
            for ch in chunks:
                yield self.make_batch(ch)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="hifusion-patches") as pool:
            pending: deque = deque()
            try:
                for ch in chunks:
                    pending.append(pool.submit(self.make_batch, ch))
                    if len(pending) > self.workers + 1:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()
