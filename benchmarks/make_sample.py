#!/usr/bin/env python3
"""Regenerate the shipped HER2ST sample (src/hifusion/sample/her2st) from the full sections in ../shared/data/her2st.

Each image is cropped to its spots' bounding box plus a margin wider than a paper-scale region patch (448 px) and
re-saved as JPEG with the source's quantisation tables and chroma subsampling (crop offsets are multiples of 16, the
JPEG block grid, so the re-encoded blocks match the original ones). Spot pixel coordinates are shifted by the crop
offset; counts keep every gene that is non-zero in any of the sections (all-zero columns dropped to save space).

Usage: python benchmarks/make_sample.py [SRC] [DEST]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from PIL import Image, JpegImagePlugin

SECTIONS = ("C2", "C3", "C4")
MARGIN_PX = 480  # > 448 px, the region patch at paper scale (~0.69 um/px)
BLOCK = 16  # JPEG MCU size with 4:2:0 subsampling
REPO = Path(__file__).resolve().parents[1]
README = """# HER2ST sample: sections C2, C3, C4 (patient C), cropped

Shipped with hifusion so that `hifusion prepare` and the demo run offline. Regenerate with
`python benchmarks/make_sample.py` from the full sections.

Source: Andersson A. et al., "Spatial deconvolution of HER2-positive breast cancer delineates tumor-associated cell type
interactions", Nature Communications 12, 6012 (2021), https://doi.org/10.1038/s41467-021-26271-2. Data: Zenodo record
4751624 (https://zenodo.org/record/4751624) and https://github.com/almaan/her2st. Licence: Creative Commons
Attribution 4.0 International (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/). Please cite the paper when
you use these data.

Changes made here (CC BY 4.0 asks that changes be indicated):
- Each full-resolution H&E image (~0.69 um/px) was cropped to the bounding box of its spots plus a margin of at
  least 480 px (wider than a 448 px region patch), clamped to the image, with the top-left corner on the 16 px JPEG
  block grid, and re-saved as JPEG with the original quantisation tables and chroma subsampling.
- `pixel_x`/`pixel_y` in `ST-spotfiles/` were shifted by the crop offset (new = original - offset); nothing else in
  the spot tables changed, so um/px from the array pitch is unchanged.
- `ST-cnts/` keeps every spot and every gene that is non-zero in at least one of C2, C3, C4 (all-zero genes dropped).

Layout: the original HER2ST one (`ST-cnts/<section>.tsv.gz`, `ST-spotfiles/<section>_selection.tsv`,
`ST-imgs/<patient>/<section>/<image>`); read it with `hifusion prepare --format her2st`.

| section | image | crop x0 (px) | crop y0 (px) | cropped size (px) |
|---|---|---|---|---|
{rows}
"""


def crop_box(spots: pd.DataFrame, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Bounding box of the spot centres plus the margin, aligned to the JPEG block grid and clamped to the image."""
    w, h = size
    x0 = max(0, math.floor(spots.pixel_x.min() - MARGIN_PX) // BLOCK * BLOCK)
    y0 = max(0, math.floor(spots.pixel_y.min() - MARGIN_PX) // BLOCK * BLOCK)
    x1 = min(w, math.ceil(spots.pixel_x.max() + MARGIN_PX))
    y1 = min(h, math.ceil(spots.pixel_y.max() + MARGIN_PX))
    return x0, y0, x1, y1


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "her2st"
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "src" / "hifusion" / "sample" / "her2st"
    Image.MAX_IMAGE_PIXELS = None  # the sources are ~92 Mpx; trusted files
    counts = {s: pd.read_csv(src / "ST-cnts" / f"{s}.tsv.gz", sep="\t", index_col=0) for s in SECTIONS}
    nonzero = set()
    for c in counts.values():
        nonzero |= set(c.columns[(c != 0).any(axis=0)])
    offsets = {}
    for s in SECTIONS:
        spots = pd.read_csv(src / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t")
        (img_path,) = sorted((src / "ST-imgs" / "C" / s).iterdir())
        with Image.open(img_path) as im:
            box = crop_box(spots, im.size)
            out_img = dest / "ST-imgs" / "C" / s / img_path.name
            out_img.parent.mkdir(parents=True, exist_ok=True)
            im.crop(box).save(
                out_img,
                "JPEG",
                qtables=im.quantization,
                subsampling=JpegImagePlugin.get_sampling(im),
                optimize=True,
            )
        offsets[s] = (box[0], box[1], box[2] - box[0], box[3] - box[1], img_path.name)
        spots["pixel_x"] = (spots["pixel_x"] - box[0]).round(2)
        spots["pixel_y"] = (spots["pixel_y"] - box[1]).round(2)
        (dest / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
        spots.to_csv(dest / "ST-spotfiles" / f"{s}_selection.tsv", sep="\t", index=False)
        c = counts[s]
        (dest / "ST-cnts").mkdir(parents=True, exist_ok=True)
        c[[g for g in c.columns if g in nonzero]].to_csv(dest / "ST-cnts" / f"{s}.tsv.gz", sep="\t")
    for s, (x0, y0, w, h, name) in offsets.items():
        print(f"{s}: {name} crop x0={x0} y0={y0} size {w} x {h}")
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"sample: {dest} ({total / 1e6:.1f} MB)")
    rows = "\n".join(f"| {s} | {n} | {x0} | {y0} | {w} x {h} |" for s, (x0, y0, w, h, n) in offsets.items())
    (dest / "README.md").write_text(README.format(rows=rows))


if __name__ == "__main__":
    main()
