#!/usr/bin/env python3
"""Time and peak memory of `prepare` at paper size (224 px spot / 448 px region) on real HER2ST sections.

Usage: python benchmarks/prepare.py [--all] [--spot-px 224] [--root ../shared/data/her2st]
Targets (reported, not gated): C2 in < 30 s and < 2 GB peak RSS on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from hifusion.config import PrepareConfig
from hifusion.data.cache.reader import load_cache
from hifusion.data.prepare import prepare_sections

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "her2st")
    ap.add_argument("--all", action="store_true", help="also C3 and C4")
    ap.add_argument("--spot-px", type=int, default=224)
    ap.add_argument("--compression", default=None, choices=[None, "lzf"])
    args = ap.parse_args()
    if not (args.root / "ST-cnts").is_dir():
        sys.exit(f"HER2ST data not found at {args.root}")
    sections = ["C2", "C3", "C4"] if args.all else ["C2"]
    sizes = f"spot {args.spot_px} px / region {2 * args.spot_px} px"
    print(f"prepare {sections} at {sizes}, compression={args.compression}")
    with tempfile.TemporaryDirectory() as tmp:
        for s in sections:
            t0 = time.perf_counter()
            cfg = PrepareConfig(format="her2st", root=args.root, sections=[s], spot_px=args.spot_px,
                                compression=args.compression or "none")
            prepare_sections(cfg, tmp, progress=False)
            dt = time.perf_counter() - t0
            adata, patches = load_cache(tmp, s)
            size = sum(p.stat().st_size for p in Path(tmp).glob(f"{s}.*")) / 1e6
            print(
                f"{s}: {adata.n_obs} spots in {dt:.1f} s ({adata.n_obs / dt:.0f} spots/s), "
                f"files {size:.0f} MB, peak RSS so far {peak_rss_mb():.0f} MB"
            )
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
