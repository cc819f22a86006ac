"""Whole-slide inference: checkpoint + slide -> predicted expression at virtual (or given) spots, maps and files.

The checkpoint is self-describing (model, panel, label transform, patch scale, normalisation), so a slide and its
microns per pixel are all prediction needs. Patches are cut with the same function as `prepare` and run through
`hifusion.inference` (the preprocessing and inference loop training uses), so a spot predicted here and the same
spot in the patch cache agree. Nothing here imports training code or Lightning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hifusion import constants as C
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.contracts import BatchPredictor
from hifusion.data.tissue import DEFAULT_MIN_FRACTION, default_pitch_um, detect_tissue, spot_grid, tissue_fraction
from hifusion.errors import CheckpointError, ConfigError, InputError
from hifusion.geometry import PatchGeometry
from hifusion.inference import Predictor, predict_loader
from hifusion.predict import outputs
from hifusion.predict.slide import PatchStream, Slide, open_slide
from hifusion.preprocess import rescale_warnings
from hifusion.recipe import PLAIN, GeneAxes, Recipe, adjust, calibrated, read_gene_axes, resolve_calibration
from hifusion.stain import lab_stats

GRID_KINDS = ("hex", "square")
OUTPUT_FORMATS = ("h5ad", "spatialdata")
SD_IMAGE_MAX_SIDE = 4096  # long side of the H&E kept in a SpatialData output (the slide itself may be far larger)


def resolve_device(device: str) -> torch.device:
    """'auto' -> the first GPU if there is one, else the CPU; other values as torch spells them ('cuda:1', 'cpu')."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device '{device}' (auto, cpu, cuda, cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' asked for, but no CUDA GPU is available")
    return dev


@dataclass(frozen=True)
class SpotLayout:
    """Where a slide is predicted: the centres of a `spots` file (CSV/TSV x, y in level-0 pixels, optional
    barcode), else a `grid` ('hex' Visium-like, 'square' legacy ST) every `pitch_um` microns (None:
    `default_pitch_um`) over the tissue, kept where at least `min_tissue` of a spot's field of view is tissue."""

    spots: str | Path | None = None
    grid: str = "hex"
    pitch_um: float | None = None
    min_tissue: float = DEFAULT_MIN_FRACTION


@dataclass(frozen=True)
class Compute:
    """How prediction runs: spots per forward pass, device ('auto', 'cpu', 'cuda:N'), patch-reading threads (None:
    1 on CPU, up to 8 on a GPU) and a progress bar or lines."""

    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    progress: bool = True


def load_predictor(checkpoint: str | Path, device: str = "auto") -> tuple[Predictor, CheckpointMeta]:
    """(`inference.Predictor` in eval mode on the device, metadata) from a training checkpoint."""
    from hifusion.models.loading import load_checkpoint
    from hifusion.models.registry import model_entry

    path = Path(checkpoint)
    model, meta = load_checkpoint(path)
    if model_entry(meta.model_name).input_kind != "spot_region":
        raise CheckpointError(f"model '{meta.model_name}' does not predict from image patches", path)
    meta.require_label(path)
    for line in rescale_warnings(meta):  # a preset encoder fed from patches at another scale, as in training
        warnings.warn(line, stacklevel=2)
    module = Predictor(model, meta)
    module.checkpoint_path = path  # where calibration files beside it are looked up
    module.to(resolve_device(device)).eval()
    return module, meta


def read_spots(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Spot centres (N, 2) in level-0 pixels and barcodes from a CSV/TSV with columns x, y (optional barcode)."""
    path = Path(path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        df = pd.read_csv(path, sep=sep)
    except FileNotFoundError as exc:
        raise InputError("spots file not found", path) from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read spots file ({exc})", path) from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    if not {"x", "y"} <= set(df.columns):
        raise InputError(f"spots file needs columns x and y (level-0 pixels); found {list(df.columns)}", path)
    if not len(df):
        raise InputError("spots file has no rows", path)
    xy = df[["x", "y"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise InputError(f"{int(bad.sum())} row(s) with non-numeric x/y, first at data row {int(np.argmax(bad)) + 1}",
                         path)
    w, h = size
    off = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h)
    if off.any():
        i = int(np.argmax(off))
        raise InputError(f"{int(off.sum())} spot(s) lie outside the slide ({w} x {h} px), first at data row {i + 1}: "
                         f"({xy[i, 0]:g}, {xy[i, 1]:g})", path)
    if "barcode" in df.columns:
        barcodes = df["barcode"].astype(str).tolist()
        dup = pd.Index(barcodes).duplicated()
        if dup.any():
            raise InputError(f"duplicate barcode '{barcodes[int(np.argmax(dup))]}' in spots file", path)
    else:
        barcodes = [f"spot_{i}" for i in range(len(xy))]
    return xy, barcodes


def _progress(batches: Iterable[dict[str, torch.Tensor]], n_spots: int, enabled: bool) -> Iterator[Any]:
    """Count spots as batches go to the model: a rich bar on a terminal, else plain lines (when enabled)."""
    from hifusion.progress import counting

    with counting("predict", n_spots, "spots", enabled=enabled) as advance:
        for b in batches:
            yield b
            advance(len(b["spot"]))


ADAPT_SPOTS = 2048  # spots sampled from the slide for its stain statistics and AdaBN (all when fewer)


def _sample(coords: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` spots of the slide, spread over it (seeded), in their original order."""
    if len(coords) <= n:
        return coords
    return coords[np.sort(np.random.default_rng(seed).choice(len(coords), n, replace=False))]


def _with_source(batches: Iterable[dict[str, torch.Tensor]], source: np.ndarray | None) -> Iterator[Any]:
    """Attach the slide's stain statistics to every batch (what stain normalisation maps onto the reference)."""
    src = None if source is None else torch.as_tensor(np.asarray(source, np.float32))
    for b in batches:
        if src is not None:
            b["stain_src"] = src.expand(len(b["spot"]), 2, 3)
        yield b


def predict_coords(
    module: BatchPredictor, slide: Slide, coords: np.ndarray, *, batch_size: int = 64, workers: int | None = None,
    progress: bool = False, recipe: Recipe = PLAIN, gene_axes: GeneAxes | None = None,
    adapt_spots: int = ADAPT_SPOTS,
) -> np.ndarray:
    """Predictions (N, G) for level-0 spot centres, streamed batch by batch from the slide, under a test-time recipe.

    The recipe uses this slide's images only: stain normalisation (when the checkpoint was trained with it) and
    AdaBN read up to `adapt_spots` of its spots first; then the recipe's chain (`hifusion.recipe`), smoothing at the
    slide's level-0 um/px, projecting on `gene_axes` (the training labels' co-expression axes from recipe.json) and
    calibrating on the training mean stored in the checkpoint (and the shrink factor beside it).
    """
    meta = module.meta
    device = next(module.parameters()).device
    if workers is None:
        workers = 1 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))
    stream = PatchStream(slide, meta.patch, batch_size, workers)
    if not len(coords):
        return np.zeros((0, len(meta.panel)), dtype=np.float32)
    sample = _sample(np.asarray(coords), adapt_spots)
    source = None
    if meta.stain_normalise != "none":
        source = lab_stats(b["spot"] for b in stream.batches(sample))
    adabn_batches = _with_source(stream.batches(sample), source) if recipe.adabn else None
    batches = _with_source(_progress(stream.batches(coords), len(coords), progress), source)
    pred = predict_loader(module, batches, adabn_batches=adabn_batches, tta=recipe.tta)
    pred = adjust(pred, recipe, lambda: np.asarray(coords, np.float64) * slide.mpp, gene_axes)
    ckpt = getattr(module, "checkpoint_path", None)
    recipe, factor = resolve_calibration(recipe, None if ckpt is None else Path(ckpt).parent,
                                         meta.train_mean is not None)
    level = np.asarray(meta.train_mean, np.float64) if recipe.calibrate != "none" else None
    return calibrated(pred, recipe, level, factor)


def _check_options(grid: str, pitch_um: float | None, batch_size: int, fmt: str = "h5ad") -> None:
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output format must be one of {OUTPUT_FORMATS}, got '{fmt}'")
    if fmt == "spatialdata":  # fail before the model runs, not after
        from hifusion.predict.spatialdata import require_spatialdata

        require_spatialdata()
    if grid not in GRID_KINDS:
        raise ConfigError(f"grid must be one of {GRID_KINDS}, got '{grid}'")
    if pitch_um is not None and not pitch_um > 0:
        raise ConfigError(f"pitch must be positive, got {pitch_um} um")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")


def _grid_spots(s: Slide, mask: np.ndarray, scalef: float, fov_px: float, pitch: float, grid: str,
                min_tissue: float, slide_path: Path) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Virtual spots every `pitch` um over the tissue: (level-0 centres, barcodes 'colxrow', obs columns)."""
    coords, idx, frac = spot_grid(mask, scalef, pitch / s.mpp, grid, diameter_px=fov_px, min_fraction=min_tissue,
                                  image_size=s.size, return_index=True)
    if not len(coords):
        found = "no tissue found" if not mask.any() else f"no grid spot is >= {min_tissue:.0%} tissue"
        raise InputError(f"{found} on the slide thumbnail (white/black background and pen marks excluded; "
                         f"pitch {pitch:g} um)", slide_path)
    barcodes = [f"{c}x{r}" for c, r in idx]
    return coords, barcodes, {C.OBS_ARRAY_X: idx[:, 0], C.OBS_ARRAY_Y: idx[:, 1], "tissue_fraction": frac}


def _choose_spots(s: Slide, geometry: PatchGeometry, mask: np.ndarray, scalef: float, fov_px: float,
                  layout: SpotLayout, slide_path: Path,
                  ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray], float | None]:
    """The spots to predict: a `spots` file's centres, else a grid over the tissue; (coords, barcodes, obs, pitch)."""
    if layout.spots is not None:
        coords, barcodes = read_spots(layout.spots, s.size)
        return coords, barcodes, {"tissue_fraction": tissue_fraction(mask, scalef, coords, fov_px)}, None
    pitch = (float(layout.pitch_um) if layout.pitch_um is not None
             else default_pitch_um(geometry.pixel_size, geometry.spot_px))
    coords, barcodes, obs = _grid_spots(s, mask, scalef, fov_px, pitch, layout.grid, layout.min_tissue, slide_path)
    return coords, barcodes, obs, pitch


def _write_zarr(path: Path, adata: Any, he: np.ndarray, he_um: float, coords: np.ndarray, mpp: float,
                fov_px: float) -> None:
    """The SpatialData twin of predictions.h5ad: `he` at `he_um` um/px, spots at their field of view, in microns."""
    from hifusion.predict.spatialdata import build_spatialdata, write_spatialdata

    write_spatialdata(build_spatialdata(adata, he, he_um, np.asarray(coords) * mpp, fov_px * mpp), path)


def predict_slide(
    checkpoint: str | Path,
    slide: str | Path,
    out: str | Path,
    *,
    mpp: float | None = None,
    level: int | None = None,
    layout: SpotLayout = SpotLayout(),
    compute: Compute = Compute(),
    genes: Sequence[str] | None = None,
    recipe: Recipe = PLAIN,
    fmt: str = "h5ad",
) -> Path:
    """Predict a whole slide: predictions.h5ad, .csv, maps/<gene>.png, index.html (and with `fmt="spatialdata"`
    predictions.zarr) in `out`, at the spots of `layout` (a grid over the tissue, or a spots file). `mpp` (level-0
    um/px) overrides the file's and is required when the file records none. `level` forces a pyramid level (default:
    the coarsest level at least as fine as the patch scale). `recipe`: the test-time options (`hifusion.recipe`; the
    CLI resolves them with `resolve_recipe`). Returns the output folder."""
    checkpoint, slide_path, out = Path(checkpoint), Path(slide), Path(out)
    _check_options(layout.grid, layout.pitch_um, compute.batch_size, fmt)
    module, meta = load_predictor(checkpoint, compute.device)
    panel, geo, label = meta.panel, meta.patch, meta.require_label(checkpoint)
    axes = read_gene_axes(checkpoint.parent, recipe.gene_pcs, panel) if recipe.gene_pcs > 0 else None
    unknown = [g for g in genes or [] if g not in panel]
    if unknown:
        raise ConfigError(f"gene(s) not in the checkpoint's panel of {len(panel)}: {', '.join(unknown)}", checkpoint)
    show = outputs.map_genes(panel, genes)

    s = open_slide(slide_path, mpp=mpp, target_mpp=geo.pixel_size, level=level)
    try:
        width, height = s.size
        thumb = s.image.thumbnail(C.HIRES_MAX_SIDE)
        scalef = thumb.shape[1] / width
        fov_px = geo.spot_px * geo.pixel_size / s.mpp  # spot field of view, level-0 pixels
        mask = detect_tissue(thumb, min_object_px=max(4, int(np.pi * (fov_px * scalef / 2) ** 2)))
        coords, barcodes, obs, pitch = _choose_spots(s, geo, mask, scalef, fov_px, layout, slide_path)
        stream = PatchStream(s, geo, compute.batch_size)
        obs[C.OBS_AT_BORDER] = stream.at_border(coords)
        pred = predict_coords(module, s, coords, batch_size=compute.batch_size, workers=compute.workers,
                              progress=compute.progress, recipe=recipe, gene_axes=axes)
        spots = layout.spots
        info = {**outputs.provenance(meta.model_name, label, checkpoint, recipe.to_dict()),
            "slide": str(slide_path), "mpp": s.mpp, "mpp_source": s.mpp_source,
            "level": s.level, "level_mpp": s.level_mpp,
            "pixel_size": geo.pixel_size, "spot_px": geo.spot_px, "region_px": geo.region_px,
            "spots": "file" if spots is not None else "grid", "spots_file": None if spots is None else str(spots),
            "grid": None if spots is not None else layout.grid, "pitch_um": pitch,
            "min_tissue_fraction": None if spots is not None else float(layout.min_tissue),
            "n_spots": int(len(coords)), "device": str(next(module.parameters()).device),
            **recipe.to_dict(), "stain_normalise": meta.stain_normalise}
        he = s.image.thumbnail(SD_IMAGE_MAX_SIDE) if fmt == "spatialdata" else None
    finally:
        s.close()

    slide_id = slide_path.stem
    out.mkdir(parents=True, exist_ok=True)
    adata = outputs.build_anndata(pred, coords, barcodes, panel, obs, slide_id, thumb, scalef, fov_px, info)
    outputs.write_h5ad(adata, out / C.PREDICTIONS_H5AD)
    if he is not None:
        _write_zarr(out / C.PREDICTIONS_ZARR, adata, he, s.mpp * width / he.shape[1], coords, s.mpp, fov_px)
    outputs.write_csv(out / C.PREDICTIONS_CSV, barcodes, coords, pred, panel)
    maps = outputs.write_maps(out / C.MAPS_DIR, show, panel, pred, coords, thumb, scalef, fov_px, label)
    outputs.write_index(out / C.INDEX_HTML, maps, {k: v for k, v in info.items() if v is not None})
    return out
