"""What a split keeps in memory per section: obs, obsm and uns, without the counts matrix or the H&E thumbnail.

A benchmark over a 1,000-section cohort loads every section of every fold. Holding each section's full AnnData (all
genes' counts and the up-to-2,000 px thumbnail in `uns['spatial']`) makes memory grow with the cohort; the labels of
the gene panel (float32) are all that training and scoring need. `drop_images` and `without_counts` make a section
lean; `spatial_uns` gives `uns['spatial']` back with its images, re-read from the cache file when they were dropped
(prediction files and marker maps, a few sections at a time).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import anndata as ad

from hifusion import constants as C
from hifusion.data.cache.reader import read_images

STRIPPED = "images_dropped"  # set in uns['hifusion'] when drop_images removed the images


def drop_images(adata: ad.AnnData) -> ad.AnnData:
    """Remove the images held in `uns['spatial'][library]['images']` (in place); `spatial_uns` re-reads them."""
    spatial = adata.uns.get(C.UNS_SPATIAL)
    if isinstance(spatial, dict) and any(isinstance(v, dict) and v.get("images") for v in spatial.values()):
        adata.uns[C.UNS_SPATIAL] = {k: ({kk: vv for kk, vv in v.items() if kk != "images"} if isinstance(v, dict)
                                        else v) for k, v in spatial.items()}
        adata.uns.setdefault(C.UNS_HIFUSION, {})[STRIPPED] = True
    return adata


def without_counts(adata: ad.AnnData) -> ad.AnnData:
    """The same spots with obs, obsm and uns but no counts (no genes): what remains needed once labels are made."""
    return ad.AnnData(obs=adata.obs, obsm={k: adata.obsm[k] for k in adata.obsm}, uns=dict(adata.uns))


def spatial_uns(adata: ad.AnnData) -> dict[str, Any] | None:
    """`uns['spatial']` with its images: as held, or re-read from the cache `.h5ad` if `drop_images` removed them."""
    spatial = adata.uns.get(C.UNS_SPATIAL)
    info = adata.uns.get(C.UNS_HIFUSION, {})
    if spatial is None or not info.get(STRIPPED):
        return spatial
    out = copy.copy(spatial)
    path = Path(str(info.get("h5ad_path", "")))
    if not path.is_file():
        return out
    for lib in out:
        images = read_images(str(path), str(lib))
        if images is not None and isinstance(out[lib], dict):
            out[lib] = {**out[lib], "images": dict(images)}
    return out
