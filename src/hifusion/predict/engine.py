"""Whole-slide inference: checkpoint + slide -> predicted expression at virtual (or given) spots, maps and files.

The checkpoint is self-describing (model, panel, label transform, patch scale, normalisation), so a slide and its
microns per pixel are all prediction needs. Patches are cut with the same function as `prepare` and run through
`hifusion.inference` (the preprocessing and inference loop training uses), so a spot predicted here and the same
spot in the patch cache agree. Nothing here imports training code or Lightning.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hifusion import constants as C
from hifusion.data.tissue import DEFAULT_MIN_FRACTION, default_pitch_um, detect_tissue, spot_grid, tissue_fraction
from hifusion.errors import CheckpointError, ConfigError, InputError
from hifusion.inference import Predictor, calibration_key, predict_loader
from hifusion.predict import outputs
from hifusion.predict.slide import PatchStream, Slide, open_slide
from hifusion.preprocess import centre_on, project_genes, rescale_warnings, smooth_spatial
from hifusion.stain import lab_stats

GRID_KINDS = ("hex", "square")
CALIBRATE = ("none", "centre", "shrink", "auto")
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


def check_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The patch scale, panel and label transform prediction relies on; CheckpointError when absent or malformed."""
    try:
        patch = meta["patch"]
        pixel_size, spot_px, region_px = float(patch["pixel_size"]), int(patch["spot_px"]), int(patch["region_px"])
        panel = [str(g) for g in meta["panel"]]
        label = str(meta["label"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata incomplete (patch scale, panel or label: {exc})", path) from exc
    if not (pixel_size > 0 and 0 < spot_px <= region_px and panel):
        raise CheckpointError(f"checkpoint metadata malformed (patch {patch}, {len(panel)} genes)", path)
    return {"pixel_size": pixel_size, "spot_px": spot_px, "region_px": region_px, "panel": panel, "label": label}


def load_predictor(checkpoint: str | Path, device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """(`inference.Predictor` in eval mode on the device, metadata) from a training checkpoint."""
    from hifusion.models.loading import load_checkpoint

    path = Path(checkpoint)
    model, meta = load_checkpoint(path)
    if getattr(model, "input_kind", "spot_region") != "spot_region":
        raise CheckpointError(f"model '{meta['model'].get('name')}' does not predict from image patches", path)
    check_meta(meta, path)
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
    module: Any, slide: Slide, coords: np.ndarray, *, batch_size: int = 64, workers: int | None = None,
    progress: bool = False, adabn: bool = False, tta: bool = False, calibrate: str = "none",
    smooth_um: float = 0.0, gene_pcs: int = 0, gene_axes: tuple[np.ndarray, np.ndarray] | None = None,
    adapt_spots: int = ADAPT_SPOTS,
) -> np.ndarray:
    """Predictions (N, G) for level-0 spot centres, streamed batch by batch from the slide.

    Test-time options use this slide's images only: stain normalisation (when the checkpoint was trained with it)
    and `adabn` read up to `adapt_spots` of its spots first; `tta` averages the 8 D4 views; `smooth_um` averages
    each spot with its neighbours (Gaussian sigma in microns, at the slide's level-0 um/px); `gene_pcs` keeps each
    spot's deviation from the slide's mean along the first `gene_pcs` of `gene_axes` (axes, sd: the training labels'
    co-expression axes from the recipe); `calibrate='centre'` sets each gene's slide mean to the training mean stored
    in the checkpoint.
    """
    meta = module.meta
    device = next(module.parameters()).device
    if workers is None:
        workers = 1 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))
    patch = meta["patch"]
    stream = PatchStream(slide, patch["pixel_size"], patch["spot_px"], patch["region_px"], batch_size, workers)
    if not len(coords):
        return np.zeros((0, len(meta["panel"])), dtype=np.float32)
    sample = _sample(np.asarray(coords), adapt_spots)
    source = None
    if (meta.get("stain") or {}).get("normalise", "none") != "none":
        source = lab_stats(b["spot"] for b in stream.batches(sample))
    adabn_batches = _with_source(stream.batches(sample), source) if adabn else None
    batches = _with_source(_progress(stream.batches(coords), len(coords), progress), source)
    pred = predict_loader(module, batches, adabn_batches=adabn_batches, tta=tta)
    if smooth_um > 0:
        pred = smooth_spatial(pred, np.asarray(coords, np.float64) * slide.mpp, smooth_um)
    if gene_pcs > 0:
        if gene_axes is None or len(gene_axes[0]) < gene_pcs:
            raise ConfigError(f"gene_pcs {gene_pcs} needs at least that many co-expression axes from the recipe")
        pred = project_genes(pred, gene_axes[0][:gene_pcs], gene_axes[1])
    if calibrate == "auto":  # the benchmark's fitted factor where there is one, else centring alone (if it can)
        calibrate = ("shrink" if _has_shrink(module, adabn, tta, smooth_um, gene_pcs)
                     else "centre" if "train_mean" in meta else "none")
    if calibrate in ("centre", "shrink"):
        if "train_mean" not in meta:
            raise CheckpointError(f"calibrate '{calibrate}' needs the training mean, which this checkpoint predates")
        factor = 1.0 if calibrate == "centre" else shrink_for(module, adabn, tta, smooth_um, gene_pcs)
        pred = centre_on(pred, np.asarray(meta["train_mean"], np.float64), factor)
    elif calibrate != "none":
        raise ConfigError(f"calibrate must be one of {CALIBRATE}, got '{calibrate}'")
    return pred


# What `hifusion predict` does when neither the user nor a benchmark's recipe.json says otherwise.
DEFAULT_RECIPE = {"adabn": True, "tta": False, "calibrate": "auto", "smooth_um": 0.0, "gene_pcs": 0}


def resolve_recipe(checkpoint: str | Path, adabn: bool | None = None, tta: bool | None = None,
                   calibrate: str | None = None, smooth_um: float | None = None,
                   gene_pcs: int | None = None) -> tuple[dict[str, Any], str]:
    """Test-time options for `predict`: those given, else the benchmark's recipe beside the checkpoint, else defaults.

    A model is best predicted the way it was evaluated: a 2D (cross-patient) recipe differs from the within-patient
    one, and the benchmark that fitted the checkpoint wrote its recipe to `recipe.json`. Returns the options and where
    the unset ones came from.
    """
    path = Path(checkpoint).parent / C.RECIPE_JSON
    base, source = dict(DEFAULT_RECIPE), "defaults"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            base = {"adabn": bool(saved["adabn"]), "tta": bool(saved["tta"]), "calibrate": str(saved["calibrate"]),
                    "smooth_um": float(saved.get("smooth_um", 0.0)),  # recipes from before smoothing: off
                    "gene_pcs": int(saved.get("gene_pcs", 0))}
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"unreadable test-time recipe ({e}); delete it or pass --adabn/--tta/--calibrate",
                                  path) from e
        if base["calibrate"] not in CALIBRATE:
            raise CheckpointError(f"calibrate must be one of {CALIBRATE}, got '{base['calibrate']}'", path)
        if not 0.0 <= base["smooth_um"] < float("inf"):
            raise CheckpointError(f"smooth_um must be a finite number >= 0, got {base['smooth_um']}", path)
        if base["gene_pcs"] < 0:
            raise CheckpointError(f"gene_pcs must be >= 0, got {base['gene_pcs']}", path)
        source = str(path)
    given = {"adabn": adabn, "tta": tta, "calibrate": calibrate, "smooth_um": smooth_um, "gene_pcs": gene_pcs}
    recipe = {k: base[k] if v is None else v for k, v in given.items()}
    if all(v is not None for v in given.values()):
        source = "command line"
    return recipe, source


def read_gene_axes(checkpoint: str | Path, k: int, panel: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The training labels' co-expression axes a benchmark stored in the recipe beside the checkpoint (first `k`)."""
    path = Path(checkpoint).parent / C.RECIPE_JSON
    try:
        stored = json.loads(path.read_text())[C.RECIPE_GENE_AXES]
        axes, sd = np.asarray(stored["axes"], np.float64), np.asarray(stored["sd"], np.float64)
        same_panel = list(stored["panel"]) == list(panel)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"gene_pcs needs the co-expression axes a benchmark stores in {C.RECIPE_JSON} beside "
                              f"the checkpoint ({type(e).__name__}: {e}); use --gene-pcs 0", path) from e
    if not same_panel or axes.ndim != 2 or axes.shape[1] != len(panel) or sd.shape != (len(panel),):
        raise CheckpointError("the recipe's co-expression axes do not match the checkpoint's gene panel", path)
    if len(axes) < k:
        raise CheckpointError(f"gene_pcs {k} asked, but the recipe stores {len(axes)} axes", path)
    return axes[:k], sd


def _has_shrink(module: Any, adabn: bool, tta: bool, smooth_um: float = 0.0, gene_pcs: int = 0) -> bool:
    try:
        shrink_for(module, adabn, tta, smooth_um, gene_pcs)
    except CheckpointError:
        return False
    return True


def shrink_for(module: Any, adabn: bool, tta: bool, smooth_um: float = 0.0, gene_pcs: int = 0) -> float:
    """The shrink factor the benchmark fitted on validation spots for this checkpoint and these test-time options."""
    ckpt = getattr(module, "checkpoint_path", None)
    path = None if ckpt is None else Path(ckpt).parent / C.CALIBRATION_JSON
    key = calibration_key(adabn, tta, smooth_um, gene_pcs)
    try:
        factor = json.loads(path.read_text())[key] if path is not None else None
    except (OSError, ValueError, KeyError):
        factor = None
    if not isinstance(factor, (int, float)) or not 0.0 <= float(factor) <= 1.0:
        raise CheckpointError(f"calibrate 'shrink' needs a shrink factor for {key} in {C.CALIBRATION_JSON} beside "
                              "the checkpoint (written by a benchmark with that calibration); use 'centre'",
                              ckpt)
    return float(factor)


def _check_options(grid: str, pitch_um: float | None, batch_size: int, calibrate: str, smooth_um: float = 0.0,
                   gene_pcs: int = 0, fmt: str = "h5ad") -> None:
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
    if calibrate not in CALIBRATE:
        raise ConfigError(f"calibrate must be one of {CALIBRATE}, got '{calibrate}'")
    if not 0.0 <= smooth_um < float("inf"):
        raise ConfigError(f"smoothing must be a finite number of microns >= 0, got {smooth_um}")
    if gene_pcs < 0:
        raise ConfigError(f"gene_pcs must be >= 0 (0 = off), got {gene_pcs}")


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


def _choose_spots(s: Slide, m: dict[str, Any], mask: np.ndarray, scalef: float, fov_px: float,
                  spots: str | Path | None, pitch_um: float | None, grid: str, min_tissue: float, slide_path: Path,
                  ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray], float | None]:
    """The spots to predict: a `spots` file's centres, else a grid over the tissue; (coords, barcodes, obs, pitch)."""
    if spots is not None:
        coords, barcodes = read_spots(spots, s.size)
        return coords, barcodes, {"tissue_fraction": tissue_fraction(mask, scalef, coords, fov_px)}, None
    pitch = float(pitch_um) if pitch_um is not None else default_pitch_um(m["pixel_size"], m["spot_px"])
    coords, barcodes, obs = _grid_spots(s, mask, scalef, fov_px, pitch, grid, min_tissue, slide_path)
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
    spots: str | Path | None = None,
    grid: str = "hex",
    pitch_um: float | None = None,
    genes: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    min_tissue: float = DEFAULT_MIN_FRACTION,
    level: int | None = None,
    workers: int | None = None,
    adabn: bool = False,
    tta: bool = False,
    calibrate: str = "none",
    smooth_um: float = 0.0,
    gene_pcs: int = 0,
    fmt: str = "h5ad",
) -> Path:
    """Predict a whole slide: predictions.h5ad, .csv, maps/<gene>.png, index.html (and with `fmt="spatialdata"`
    predictions.zarr) in `out`. Spots: a `grid` ('hex' Visium-like or 'square' legacy ST) every `pitch_um` microns
    (default: `default_pitch_um`) over the tissue, kept where at least `min_tissue` of the spot's field of view is
    tissue; or the centres of a `spots` CSV (x, y in level-0 pixels, optional barcode). `mpp` (level-0 um/px)
    overrides the file's and is required when the file records none. `level` forces a pyramid level (default: the
    coarsest level at least as fine as the patch scale). Returns the output folder."""
    checkpoint, slide_path, out = Path(checkpoint), Path(slide), Path(out)
    _check_options(grid, pitch_um, batch_size, calibrate, smooth_um, gene_pcs, fmt)
    module, meta = load_predictor(checkpoint, device)
    m = check_meta(meta, checkpoint)
    panel = m["panel"]
    axes = read_gene_axes(checkpoint, gene_pcs, panel) if gene_pcs > 0 else None
    unknown = [g for g in genes or [] if g not in panel]
    if unknown:
        raise ConfigError(f"gene(s) not in the checkpoint's panel of {len(panel)}: {', '.join(unknown)}", checkpoint)
    show = outputs.map_genes(panel, genes)

    s = open_slide(slide_path, mpp=mpp, target_mpp=m["pixel_size"], level=level)
    try:
        width, height = s.size
        thumb = s.image.thumbnail(C.HIRES_MAX_SIDE)
        scalef = thumb.shape[1] / width
        fov_px = m["spot_px"] * m["pixel_size"] / s.mpp  # spot field of view, level-0 pixels
        mask = detect_tissue(thumb, min_object_px=max(4, int(np.pi * (fov_px * scalef / 2) ** 2)))
        coords, barcodes, obs, pitch = _choose_spots(s, m, mask, scalef, fov_px, spots, pitch_um, grid, min_tissue,
                                                     slide_path)
        stream = PatchStream(s, m["pixel_size"], m["spot_px"], m["region_px"], batch_size)
        obs[C.OBS_AT_BORDER] = stream.at_border(coords)
        pred = predict_coords(module, s, coords, batch_size=batch_size, workers=workers, progress=progress,
                              adabn=adabn, tta=tta, calibrate=calibrate, smooth_um=smooth_um, gene_pcs=gene_pcs,
                              gene_axes=axes)
        recipe = {"adabn": adabn, "tta": tta, "calibrate": calibrate, "smooth_um": smooth_um, "gene_pcs": gene_pcs}
        info = {**outputs.provenance(meta["model"]["name"], m["label"], checkpoint, recipe),
            "slide": str(slide_path), "mpp": s.mpp, "mpp_source": s.mpp_source,
            "level": s.level, "level_mpp": s.level_mpp,
            "pixel_size": m["pixel_size"], "spot_px": m["spot_px"], "region_px": m["region_px"],
            "spots": "file" if spots is not None else "grid", "spots_file": None if spots is None else str(spots),
            "grid": None if spots is not None else grid, "pitch_um": pitch,
            "min_tissue_fraction": None if spots is not None else float(min_tissue), "n_spots": int(len(coords)),
            "device": str(next(module.parameters()).device),
            **recipe, "stain_normalise": (meta.get("stain") or {}).get("normalise", "none")}
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
    maps = outputs.write_maps(out / C.MAPS_DIR, show, panel, pred, coords, thumb, scalef, fov_px, m["label"])
    outputs.write_index(out / C.INDEX_HTML, maps, {k: v for k, v in info.items() if v is not None})
    return out
