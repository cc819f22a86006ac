#!/usr/bin/env python3
"""Score a finished benchmark's saved predictions under a grid of spatial smoothing widths (`adapt.smooth_um`).

Usage:
  python benchmarks/smoothing_grid.py RUN_DIR [--sigmas 0,150,200,300,400,600,800] [--models "hifusion centred"]

Why offline: smoothing acts on predictions and spot positions only, so a grid over sigma needs no inference; the
benchmark's own `adapt_variants` give the same figures for any single sigma. Run it on development runs only (the
2D development pairs, the rotation protocol), never to choose a sigma on test sections. Prints MSE / PCC-gene per
model, section and sigma, and the mean over sections.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a benchmark's output folder (with config.yaml and predictions/)")
    ap.add_argument("--sigmas", default="0,150,200,300,400,600,800", help="comma-separated sigmas in microns")
    ap.add_argument("--models", default=None, help="comma-separated model labels (default: every model)")
    args = ap.parse_args()

    import anndata as ad

    from hifusion import constants as C
    from hifusion.config import load_config
    from hifusion.metrics import section_metrics
    from hifusion.preprocess import smooth_spatial

    cfg = load_config(args.run / "config.yaml")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    wanted = None if args.models is None else set(args.models.split(","))
    pred_root = args.run / "predictions"
    if not pred_root.is_dir():
        raise SystemExit(f"{pred_root}: no predictions (is this a finished benchmark folder?)")
    mpp: dict[str, float] = {}
    print(f"{'model':30s} {'section':12s} " + " ".join(f"{s:>14g}" for s in sigmas))
    for mdir in sorted(p for p in pred_root.iterdir() if p.is_dir()):
        if wanted is not None and mdir.name not in wanted:
            continue
        rows = []
        for f in sorted(mdir.rglob(f"*{C.H5AD_SUFFIX}")):
            section = f.name[: -len(C.H5AD_SUFFIX)]
            if section not in mpp:
                cached = ad.read_h5ad(cfg.data.cache / f"{section}{C.H5AD_SUFFIX}", backed="r")
                mpp[section] = float(cached.uns[C.UNS_HIFUSION]["mpp"])
            a = ad.read_h5ad(f)
            xy = np.asarray(a.obsm[C.OBSM_SPATIAL], np.float64) * mpp[section]
            scores = [section_metrics(smooth_spatial(a.X, xy, s), a.layers["truth"]) for s in sigmas]
            rows.append([(m["mse"], m["pcc_gene"]) for m in scores])
            name = str(f.relative_to(mdir).with_suffix(""))
            print(f"{mdir.name:30s} {name:12s} " + " ".join(f"{m:.4f} / {r:.3f}" for m, r in rows[-1]))
        if len(rows) > 1:
            mean = np.mean(np.asarray(rows), axis=0)
            print(f"{mdir.name:30s} {'mean':12s} " + " ".join(f"{m:.4f} / {r:.3f}" for m, r in mean))


if __name__ == "__main__":
    main()
