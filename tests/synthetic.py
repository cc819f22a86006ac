"""Tiny synthetic HER2ST-layout datasets for fast CPU tests of training, benchmarking and prediction.

Each section is a small image with spots on a 40 px array pitch (5 um/px from the 200 um legacy pitch); a spot's
colour encodes the expression of a few genes, so models have real signal to learn.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PITCH_PX = 40  # 200 um / 40 px = 5 um/px
GRID = 6  # 6 x 6 spots per section
N_GENES = 30


def _section_arrays(seed: int, n_genes: int, grid: int) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Image, counts (spot ids `<x>x<y>` x genes) and spot table of one synthetic section."""
    rng = np.random.default_rng(seed)
    side = PITCH_PX * (grid + 2)
    img = np.full((side, side, 3), 235, np.uint8)
    rows, counts, spots = [], [], []
    genes = [f"G{i:02d}" for i in range(n_genes)]
    for ix in range(1, grid + 1):
        for iy in range(1, grid + 1):
            px, py = ix * PITCH_PX + rng.normal(0, 0.5), iy * PITCH_PX + rng.normal(0, 0.5)
            signal = rng.random()
            colour = np.array([200 - 150 * signal, 80 + 100 * signal, 160], np.uint8)
            cx, cy = int(round(px)), int(round(py))
            img[cy - 12 : cy + 12, cx - 12 : cx + 12] = colour
            lam = np.linspace(1, 40, n_genes) * (0.5 + np.where(np.arange(n_genes) % 2 == 0, signal, 1 - signal))
            counts.append(rng.poisson(lam))
            name = f"{ix}x{iy}"
            rows.append(name)
            spots.append((ix, iy, ix + 0.01, iy - 0.01, px, py, 1))
    df = pd.DataFrame(np.array(counts), index=rows, columns=genes)
    sp = pd.DataFrame(spots, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"])
    return img, df, sp


def write_section(root: Path, section: str, seed: int, *, n_genes: int = N_GENES, grid: int = GRID) -> None:
    """Write one section (counts, spot table, image) in the HER2ST legacy layout under `root`."""
    patient = section.rstrip("0123456789")
    img, df, sp = _section_arrays(seed, n_genes, grid)
    cdir, sdir, idir = root / "ST-cnts", root / "ST-spotfiles", root / "ST-imgs" / patient / section
    for d in (cdir, sdir, idir):
        d.mkdir(parents=True, exist_ok=True)
    with gzip.open(cdir / f"{section}.tsv.gz", "wt") as fh:
        df.to_csv(fh, sep="\t")
    sp.to_csv(sdir / f"{section}_selection.tsv", sep="\t", index=False)
    Image.fromarray(img).save(idir / f"{section}_HE.png")


def write_stnet_section(root: Path, patient: str, section: str, seed: int, *, n_genes: int = N_GENES,
                        grid: int = GRID, subtype: str = "HER2_luminal") -> None:
    """One section in the ST-Net release layout: <subtype>/<patient>/<patient>_<section>.{jpg,tsv.gz,spots.txt}."""
    img, df, sp = _section_arrays(seed, n_genes, grid)
    folder = root / subtype / patient
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{patient}_{section}.tsv.gz", "wt") as fh:
        df.to_csv(fh, sep="\t")
    sp.rename(columns={"pixel_x": "X", "pixel_y": "Y"})[["x", "y", "X", "Y"]].to_csv(
        folder / f"{patient}_{section}.spots.txt", sep="\t", index=False)
    Image.fromarray(img).save(folder / f"{patient}_{section}.jpg", quality=95)


def write_dataset(root: Path, sections: tuple[str, ...] = ("P1", "P2", "Q1")) -> Path:
    for i, s in enumerate(sections):
        write_section(root, s, seed=100 + i)
    return root


def tiny_config(root: Path, cache: Path, output: Path, **train: object) -> dict:
    """A config mapping for tiny end-to-end runs (16 px spot, 32 px region, levels [1, 4])."""
    return {
        "name": "tiny",
        "output": str(output),
        "data": {
            "cache": str(cache),
            "prepare": {"format": "her2st", "root": str(root), "spot_um": 80.0, "spot_px": 16, "region_factor": 2.0},
            "genes": {"method": "top_mean", "n": 20},
        },
        "protocol": {"name": "fixed", "train": ["P1"], "test": ["P2", "Q1"]},
        "model": {"name": "hifusion", "options": {"levels": [1, 4], "tokens": 1, "heads": 2, "embed_dim": 32,
                                                  "spot_encoder": "resnet10", "region_encoder": "resnet10"}},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "num_workers": 0, **train},
    }


_RUN_OPTIONS = ("overwrite", "progress", "workers", "shard")


def prepare_cache(fmt: str, root: Path, sections: list[str] | None, out: Path, **kw: object) -> list[Path]:
    """`data.prepare.prepare_sections` with the prepare options as keywords (those of `config.PrepareConfig`, plus
    `images` for its `image` and `compression=None` for "none"), the way tests spell them."""
    from hifusion.config import prepare_config
    from hifusion.data.prepare import prepare_sections

    run = {k: kw.pop(k) for k in _RUN_OPTIONS if k in kw}
    if "images" in kw:
        kw["image"] = kw.pop("images")
    if "compression" in kw and kw["compression"] is None:
        kw["compression"] = "none"
    cfg = prepare_config(format=fmt, root=root, sections=sections, **{k: v for k, v in kw.items() if v is not None})
    return prepare_sections(cfg, out, **run)


def cached_runs(base: Path, bench: Callable[..., object]) -> dict:
    """A benchmark of frozen-encoder models run three times on one synthetic dataset, for the embedding cache's
    tests: `first` fills the cache, `second` reads it, `off` runs without it (`bench(root, cache, out,
    embedding_cache=...)` returns what a test compares). `files`/`files_after`: the embedding files (name ->
    mtime) after the first run and after all three."""
    import torch

    from hifusion import constants as C

    def files(cache: Path) -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in sorted((cache / C.EMBEDDINGS_DIR).glob("*"))}

    torch.set_num_threads(1)
    root = write_dataset(base / "raw")
    cache = base / "cache"
    first = bench(root, cache, base / "first")
    after_first = files(cache)
    second = bench(root, cache, base / "second")
    off = bench(root, cache, base / "off", embedding_cache=False)
    return {"root": root, "base": base, "cache": cache, "first": first, "second": second, "off": off,
            "files": after_first, "files_after": files(cache)}
