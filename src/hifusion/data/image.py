"""Slide images behind one small interface: size, full-resolution region reads with padding, thumbnails, pad colour.

Backends: PIL for JPEG/PNG (no random access, so the image is decoded once, lazily, and kept: ~3 bytes per pixel,
~280 MB for a 92 Mpx HER2ST JPEG), tifffile for TIFF (level 0 of the pyramid, read chunk-wise through zarr), OpenSlide
for vendor formats (SVS, NDPI, MRXS, ...) and for TIFFs tifffile cannot decode here.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from hifusion.errors import InputError

PIL_MAX_IMAGE_PIXELS = 4_000_000_000  # HER2ST JPEGs are ~92 Mpx, above PIL's bomb guard; raised on purpose
PAD_FRAME_THUMB = 512  # pad colour = median of the outer frame of a thumbnail this size
PAD_FRAME_FRACTION = 0.02
PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf"}


class SlideImage:
    """Base class: subclasses provide `size`, `_read(x0, y0, w, h)` inside the image, and `thumbnail`."""

    path: Path
    mpp: float | None = None  # um/px recorded in the file itself, when there is one

    @property
    def size(self) -> tuple[int, int]:
        raise NotImplementedError

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> np.ndarray:
        """uint8 HxWx3 copy of the whole image whose long side is at most `max_side`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles and decoded pixels."""

    def __enter__(self) -> SlideImage:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @cached_property
    def pad_colour(self) -> tuple[int, int, int]:
        """Median colour of the image's outer frame: white for usual H&E, black for masked copies."""
        t = self.thumbnail(PAD_FRAME_THUMB)
        k = max(1, int(round(PAD_FRAME_FRACTION * min(t.shape[:2]))))
        frame = np.concatenate(
            [t[:k].reshape(-1, 3), t[-k:].reshape(-1, 3), t[:, :k].reshape(-1, 3), t[:, -k:].reshape(-1, 3)]
        )
        med = np.median(frame, axis=0)
        return (int(round(med[0])), int(round(med[1])), int(round(med[2])))

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """uint8 (h, w, 3) at full resolution, top-left (x0, y0); parts outside the image get the pad colour."""
        x0, y0, w, h = int(x0), int(y0), int(w), int(h)
        iw, ih = self.size
        ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, iw), min(y0 + h, ih)
        if ax0 == x0 and ay0 == y0 and ax1 == x0 + w and ay1 == y0 + h:
            return self._read(x0, y0, w, h)
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = np.asarray(self.pad_colour, dtype=np.uint8)
        if ax1 > ax0 and ay1 > ay0:
            out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = self._read(ax0, ay0, ax1 - ax0, ay1 - ay0)
        return out


def _fit(img: Image.Image, max_side: int) -> np.ndarray:
    img = img.convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.BOX, reducing_gap=None)
    return np.asarray(img)


class PilImage(SlideImage):
    """JPEG/PNG: header read at open, pixels decoded once on the first region read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, PIL_MAX_IMAGE_PIXELS)
        with self._open() as im:
            self._size = (int(im.width), int(im.height))
            self._format = im.format
        self._arr: np.ndarray | None = None

    def _open(self) -> Image.Image:
        try:
            return Image.open(self.path)
        except (OSError, Image.DecompressionBombError, ValueError) as exc:
            raise InputError(f"cannot open image ({exc})", self.path) from exc

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def pixels(self) -> np.ndarray:
        """The decoded image (H, W, 3) uint8; decoding errors (truncated, corrupt files) are InputErrors."""
        if self._arr is None:
            try:
                with self._open() as im:
                    im.load()
                    rgb = im if im.mode == "RGB" else im.convert("RGB")
                    self._arr = np.asarray(rgb)
            except (OSError, ValueError, SyntaxError) as exc:
                raise InputError(f"cannot decode image, truncated or corrupt? ({exc})", self.path) from exc
        return self._arr

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return self.pixels[y0 : y0 + h, x0 : x0 + w]

    def thumbnail(self, max_side: int) -> np.ndarray:
        try:
            if self._format == "JPEG":  # DCT-domain draft: same result whether or not the pixels are decoded
                with self._open() as im:
                    im.draft("RGB", (max_side, max_side))
                    return _fit(im, max_side)
            return _fit(Image.fromarray(self.pixels), max_side)
        except OSError as exc:
            raise InputError(f"cannot decode image, truncated or corrupt? ({exc})", self.path) from exc

    def close(self) -> None:
        self._arr = None


class ArrayImage(SlideImage):
    """An image already in memory (e.g. scanpy's `uns['spatial'][lib]['images']['hires']`); `path` names its source.

    Float images in [0, 1] (scanpy's convention) are scaled to uint8; grey images get three channels.
    """

    def __init__(self, path: Path | str, array: np.ndarray) -> None:
        self.path = Path(path)
        a = np.asarray(array)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] < 3 or min(a.shape[:2]) < 1:
            raise InputError(f"image array has shape {a.shape}, expected (height, width, 3)", self.path)
        a = a[..., :3]
        if a.dtype != np.uint8:
            a = a.astype(np.float64)
            a = np.clip(np.rint(a * 255.0 if np.nanmax(a) <= 1.0 else a), 0, 255).astype(np.uint8)
        self._arr = np.ascontiguousarray(a)

    @property
    def size(self) -> tuple[int, int]:
        return int(self._arr.shape[1]), int(self._arr.shape[0])

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return self._arr[y0 : y0 + h, x0 : x0 + w]

    def thumbnail(self, max_side: int) -> np.ndarray:
        return _fit(Image.fromarray(self._arr), max_side)


def _tiff_mpp(tif: object) -> float | None:
    """um/px from an Aperio-style `MPP = ` description or a centimetre resolution tag; None when absent."""
    page = tif.pages[0]  # type: ignore[attr-defined]
    m = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags and int(tags["ResolutionUnit"].value) == 3:
        num, den = tags["XResolution"].value
        if num:
            return 1e4 * den / num
    return None


class TiffImage(SlideImage):
    """TIFF via tifffile: level 0 read chunk-wise (zarr store), lower pyramid levels used for thumbnails."""

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self.path = path
        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        if series.axes not in ("YXS", "YX"):
            raise ValueError(f"unsupported axes {series.axes}")
        self._levels = [zarr.open(self._tif.aszarr(series=0, level=i), mode="r") for i in range(len(series.levels))]
        self._size = (int(series.levels[0].shape[1]), int(series.levels[0].shape[0]))
        self.mpp = _tiff_mpp(self._tif)
        self._read(0, 0, 1, 1)  # fails now (not mid-prepare) if the compression cannot be decoded here

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @staticmethod
    def _rgb(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.dtype != np.uint8:
            a = (a / max(1, np.iinfo(a.dtype).max if a.dtype.kind in "ui" else 1) * 255).astype(np.uint8)
        return np.ascontiguousarray(a[..., :3])

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return self._rgb(self._levels[0][y0 : y0 + h, x0 : x0 + w])

    def thumbnail(self, max_side: int) -> np.ndarray:
        level = self._levels[0]
        for z in self._levels:  # the smallest level still at least max_side on its long side
            if max(z.shape[:2]) >= max_side:
                level = z
        return _fit(Image.fromarray(self._rgb(level[:])), max_side)

    def close(self) -> None:
        self._tif.close()


def _fill_alpha(region: Any, pad_colour: tuple[int, int, int]) -> np.ndarray:
    """OpenSlide's RGBA region -> RGB, transparent pixels (no scanned data) filled with the padding colour."""
    rgba = np.asarray(region)
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = np.asarray(pad_colour, dtype=np.uint8)
    return rgb


class OpenSlideImage(SlideImage):
    """Vendor whole-slide formats through OpenSlide (level 0 regions, its own thumbnails, mpp from properties)."""

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        self._slide = openslide.OpenSlide(str(path))
        mpp = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = float(mpp) if mpp else None

    @property
    def size(self) -> tuple[int, int]:
        w, h = self._slide.dimensions
        return int(w), int(h)

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return _fill_alpha(self._slide.read_region((x0, y0), 0, (w, h)), self.pad_colour)

    def thumbnail(self, max_side: int) -> np.ndarray:
        return _fit(self._slide.get_thumbnail((max_side, max_side)), max_side)

    def close(self) -> None:
        self._slide.close()


def open_image(path: str | Path) -> SlideImage:
    """Open a slide image with the backend its file type needs; missing or unreadable files are InputErrors."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image not found", path)
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return PilImage(path)
    errors = []
    backends: list[type[SlideImage]] = [TiffImage, OpenSlideImage] if suffix in TIFF_SUFFIXES else [OpenSlideImage]
    for backend in backends:
        try:
            return backend(path)  # type: ignore[call-arg]
        except Exception as exc:  # noqa: BLE001 - any backend failure means "try the next one"
            errors.append(f"{backend.__name__}: {exc}")
    try:
        return PilImage(path)
    except InputError:
        pass
    raise InputError(f"cannot read image ({'; '.join(errors)})", path)


# ---------------------------------------------------------------------------------------- pyramid levels (predict)
class _LevelView(SlideImage):
    """One pyramid level presented as a SlideImage, so `extract_patch` can cut patches from it unchanged.

    Handles stay with the parent (closing the view does nothing); the pad colour and thumbnails are the parent's, so a
    level view pads exactly like level 0 does.
    """

    def __init__(self, parent: SlideImage, level: int, size: tuple[int, int], reader: object) -> None:
        self.path = parent.path
        self.parent = parent
        self.level = int(level)
        self._size = (int(size[0]), int(size[1]))
        self._reader = reader
        self.downsample = parent.size[0] / self._size[0]
        self.mpp = None if parent.mpp is None else parent.mpp * self.downsample

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def pad_colour(self) -> tuple[int, int, int]:  # type: ignore[override]
        return self.parent.pad_colour

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return self._reader(x0, y0, w, h)  # type: ignore[operator]

    def thumbnail(self, max_side: int) -> np.ndarray:
        return self.parent.thumbnail(max_side)


def level_sizes(image: SlideImage) -> list[tuple[int, int]]:
    """(width, height) of every pyramid level, level 0 first; one entry for images without a pyramid."""
    if isinstance(image, TiffImage):
        return [(int(z.shape[1]), int(z.shape[0])) for z in image._levels]
    if isinstance(image, OpenSlideImage):
        return [(int(w), int(h)) for w, h in image._slide.level_dimensions]
    return [image.size]


def level_image(image: SlideImage, level: int) -> SlideImage:
    """Pyramid level `level` of `image` as a SlideImage in that level's pixels (level 0: the image itself).

    Whole-slide prediction reads patches from the coarsest level that is still at least as fine as the patch scale,
    so a 0.25 um/px scan is not read at full resolution to make 1.4 um/px patches.
    """
    sizes = level_sizes(image)
    if not 0 <= level < len(sizes):
        raise ValueError(f"level {level} out of range (the image has {len(sizes)})")
    if level == 0:
        return image
    if isinstance(image, TiffImage):
        z = image._levels[level]

        def read(x0: int, y0: int, w: int, h: int) -> np.ndarray:
            return TiffImage._rgb(z[y0 : y0 + h, x0 : x0 + w])

        return _LevelView(image, level, sizes[level], read)
    if isinstance(image, OpenSlideImage):
        slide = image._slide
        ds = float(slide.level_downsamples[level])

        def read_os(x0: int, y0: int, w: int, h: int) -> np.ndarray:  # OpenSlide takes level-0 coordinates
            return _fill_alpha(slide.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level, (w, h)),
                               image.pad_colour)

        return _LevelView(image, level, sizes[level], read_os)
    raise ValueError(f"{type(image).__name__} has no pyramid levels")
