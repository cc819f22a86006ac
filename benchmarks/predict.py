#!/usr/bin/env python3
"""Whole-slide prediction speed and peak memory: model-only inference and end-to-end prediction side by side.

Usage: python benchmarks/predict.py [--spots 2000] [--batch-size 64] [--device cpu] [--json out.json]

The slide (19,000 x 16,000 px at 0.5 um/px, tiled 256 px, zlib, levels 1, 1/2, 1/4, 1/8, 1/16; ~50 mm2 of tissue) is
written once by a child process (so its generation does not count in this process's peak RSS) and reused. The model
is the CPU profile of HiFusion (levels [1, 4, 16], 112 px spot, 224 px region, ResNet-18/ResNet-10, 250 genes) with
random weights: figures measure plumbing and compute, not accuracy.

Phases, all on the same --spots spots of the grid and at the same batch size:
1. slide open + thumbnail + tissue + grid;
2. patch streaming alone (reading and resampling), keeping the uint8 patches in memory;
3. model only: those in-memory batches through `predict_loader` (the same preprocessing, device transfer and model
   call as prediction), so no reading or patching is timed;
4. end to end: `predict_coords` over the same spots in one call (reading, patching and the model overlapping).
The ratio end-to-end / model-only says how much of the model's speed whole-slide prediction keeps (target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLIDE_MPP = 0.5
SLIDE_W, SLIDE_H = 19_000, 16_000
TILE = 256
DOWNSAMPLES = (1, 2, 4, 8, 16)
PITCH_UM = 100.0  # Visium-like density so 5,000 spots fit on one section
CPU_OPTIONS = {"levels": [1, 4, 16], "tokens": 2}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------------------------------- synthetic slide
def _texture(seed: int = 0, side: int = 1024) -> np.ndarray:
    from scipy import ndimage

    t = ndimage.gaussian_filter(np.random.default_rng(seed).random((side, side)), 3, mode="wrap")
    return ((t - t.min()) / (t.max() - t.min())).astype(np.float32)


def _tile(tex: np.ndarray, x0: int, y0: int, ds: int) -> np.ndarray:
    """One 256 x 256 tile of level `ds`: white glass, a large H&E-coloured ellipse with dark nuclei."""
    xs = (x0 + np.arange(TILE)) * ds
    ys = (y0 + np.arange(TILE)) * ds
    ex, ey = (xs[None, :] - 0.5 * SLIDE_W) / (0.46 * SLIDE_W), (ys[:, None] - 0.5 * SLIDE_H) / (0.46 * SLIDE_H)
    inside = ex**2 + ey**2 <= 1
    out = np.full((TILE, TILE, 3), 243, np.uint8)
    if inside.any():
        n = tex.shape[0]
        t = tex[np.ix_((ys // max(1, ds // 2)) % n, (xs // max(1, ds // 2)) % n)]
        rgb = np.stack([215 - 60 * t, 120 - 60 * t, 180 - 30 * t], -1).astype(np.uint8)
        rgb[t > 0.62] = (95, 60, 150)
        out[inside] = rgb[inside]
    out[(ys >= SLIDE_H)[:, None] | (xs >= SLIDE_W)[None, :]] = 0  # beyond the image edge (padding of edge tiles)
    return out


def make_slide(path: Path) -> None:
    """Write the pyramid tile by tile (bounded memory); resolution tags carry the um/px."""
    import tifffile

    from hifusion.io import atomic_path

    tex = _texture()
    res = 1e4 / SLIDE_MPP
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, ds in enumerate(DOWNSAMPLES):
            w, h = math.ceil(SLIDE_W / ds), math.ceil(SLIDE_H / ds)
            tiles = (_tile(tex, x, y, ds) for y in range(0, h, TILE) for x in range(0, w, TILE))
            tif.write(tiles, shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                      compression="zlib", compressionargs={"level": 1}, resolution=(res / ds, res / ds),
                      resolutionunit="CENTIMETER", subfiletype=1 if i else 0,
                      **({"subifds": len(DOWNSAMPLES) - 1} if i == 0 else {}))


# ------------------------------------------------------------------------------------------------- benchmark
def make_checkpoint(path: Path, n_genes: int = 250) -> Path:
    import torch

    from hifusion import __version__
    from hifusion import constants as C
    from hifusion.checkpoint import save_model_checkpoint
    from hifusion.checkpoint_meta import CheckpointMeta
    from hifusion.models import create_model

    torch.manual_seed(0)
    panel = [f"G{i:04d}" for i in range(n_genes)]
    model = create_model("hifusion", n_genes=n_genes, **CPU_OPTIONS)
    meta = {
        "version": __version__, "model": {"name": "hifusion", "options": CPU_OPTIONS}, "panel": panel,
        "label": "log1p_cpm", "normalisation": {"mode": "patch"}, "train_sections": [],
        "patch": {"pixel_size": C.DEFAULT_SPOT_UM / C.CPU_SPOT_PX, "spot_px": C.CPU_SPOT_PX,
                  "region_px": 2 * C.CPU_SPOT_PX},
    }
    return save_model_checkpoint(model, CheckpointMeta.from_dict(meta), path)


def run(args: argparse.Namespace) -> dict:
    import torch

    from hifusion import constants as C
    from hifusion.inference import predict_loader
    from hifusion.predict import detect_tissue, load_predictor, open_slide, predict_coords, spot_grid
    from hifusion.predict.slide import PatchStream

    slide_path = args.slide
    if not slide_path.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make-slide", str(slide_path)], check=True)
        print(f"wrote {slide_path} ({slide_path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        module, meta = load_predictor(make_checkpoint(Path(tmp) / "cpu.ckpt"), args.device)
    geo = meta.patch
    p = geo.to_dict()
    res: dict = {"device": str(next(module.parameters()).device), "torch_threads": torch.get_num_threads(),
                 "batch_size": args.batch_size, "slide_px": [SLIDE_W, SLIDE_H], "slide_mpp": SLIDE_MPP,
                 "patch": p, "model": {"name": "hifusion", **CPU_OPTIONS, "genes": len(meta.panel)}}

    t0 = time.perf_counter()
    s = open_slide(slide_path, mpp=None, target_mpp=p["pixel_size"])
    thumb = s.image.thumbnail(C.HIRES_MAX_SIDE)
    scalef = thumb.shape[1] / s.size[0]
    fov_px = p["spot_px"] * p["pixel_size"] / s.mpp
    mask = detect_tissue(thumb, min_object_px=int(np.pi * (fov_px * scalef / 2) ** 2))
    coords = spot_grid(mask, scalef, PITCH_UM / s.mpp, "hex", diameter_px=fov_px, image_size=s.size)
    res["grid_spots_found"] = int(len(coords))
    coords = coords[: args.spots]
    res["spots"] = int(len(coords))
    res["level"], res["level_mpp"] = s.level, s.level_mpp
    res["setup_s"] = round(time.perf_counter() - t0, 2)
    res["peak_rss_mb_after_setup"] = round(peak_rss_mb(), 0)

    t0 = time.perf_counter()
    stream = PatchStream(s, geo, args.batch_size, workers=1)
    batches = list(stream.batches(coords))  # uint8 patches kept for the model-only phase
    dt = time.perf_counter() - t0
    n_read = sum(len(b["spot"]) for b in batches)
    res["patches_only"] = {"spots": n_read, "seconds": round(dt, 2), "spots_per_s": round(n_read / dt, 1)}
    res["peak_rss_mb_after_patches"] = round(peak_rss_mb(), 0)  # slide reading + the patches kept in memory

    predict_loader(module, batches[:1])  # warm-up (allocator, kernels) outside both timings
    model_s, e2e_s, model_cpu, e2e_cpu = [], [], [], []
    for _ in range(args.rounds):  # alternate, so a change of machine load hits both phases alike
        t0, c0 = time.perf_counter(), time.process_time()
        predict_loader(module, batches)
        model_s.append(time.perf_counter() - t0)
        model_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        predict_coords(module, s, coords, batch_size=args.batch_size)
        e2e_s.append(time.perf_counter() - t0)
        e2e_cpu.append(time.process_time() - c0)
    del batches
    n = len(coords)
    model_rate, e2e_rate = n * len(model_s) / sum(model_s), n * len(e2e_s) / sum(e2e_s)
    res["model_only"] = {"spots": n, "seconds": [round(v, 2) for v in model_s], "spots_per_s": round(model_rate, 2)}
    res["end_to_end"] = {"spots": n, "seconds": [round(v, 2) for v in e2e_s], "spots_per_s": round(e2e_rate, 2)}
    res["ratio"] = round(e2e_rate / model_rate, 3)
    # CPU seconds of this process (all its threads): on a machine shared with other jobs the wall-clock ratio drifts
    # with their load, while the CPU-time ratio says what the ratio would be with the cores to ourselves
    res["cpu_s_per_spot"] = {"model_only": round(sum(model_cpu) / (n * len(model_cpu)), 5),
                             "end_to_end": round(sum(e2e_cpu) / (n * len(e2e_cpu)), 5)}
    res["cpu_ratio"] = round(sum(model_cpu) / sum(e2e_cpu), 3)
    res["load_average_1min"] = round(os.getloadavg()[0], 2)
    s.close()
    res["peak_rss_mb"] = round(peak_rss_mb(), 0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spots", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1, help="model-only / end-to-end pairs, alternated")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slide", type=Path, default=Path(tempfile.gettempdir()) / "hifusion-bench-slide.tif")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--make-slide", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_slide is not None:
        make_slide(args.make_slide)
        return
    res = run(args)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    rows = [
        ("spots on the grid", f"{res['spots']} (of {res['grid_spots_found']} found, pitch {PITCH_UM:g} um, hex)"),
        ("pyramid level read", f"{res['level']} ({res['level_mpp']:g} um/px)"),
        ("batch size / torch threads", f"{res['batch_size']} / {res['torch_threads']}"),
        ("open + thumbnail + tissue + grid", f"{res['setup_s']} s"),
        ("patch streaming only", f"{res['patches_only']['spots_per_s']} spots/s"),
        ("model only (patches in memory)", f"{res['model_only']['spots_per_s']} spots/s"),
        ("end to end (predict_coords)", f"{res['end_to_end']['spots_per_s']} spots/s"),
        ("end to end / model only (wall clock)", f"{res['ratio']:.2f}"),
        ("load average (1 min) at the end", f"{res['load_average_1min']} on {os.cpu_count()} CPUs"),
        ("peak RSS after setup / patch streaming", f"{res['peak_rss_mb_after_setup']:.0f} / "
                                                   f"{res['peak_rss_mb_after_patches']:.0f} MB"),
        ("peak RSS (with model activations)", f"{res['peak_rss_mb']:.0f} MB"),
    ]
    cpu = res["cpu_s_per_spot"]
    rows.insert(8, ("end to end / model only (CPU time)",
                    f"{res['cpu_ratio']:.2f} ({cpu['end_to_end'] * 1e3:.1f} vs {cpu['model_only'] * 1e3:.1f} "
                    "CPU ms/spot)"))
    width = max(len(k) for k, _ in rows)
    print(f"\n{'measure':<{width}} | value\n{'-' * width}-|------")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


if __name__ == "__main__":
    main()
