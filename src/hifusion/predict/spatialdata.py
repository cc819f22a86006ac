"""Predictions as a SpatialData zarr (scverse): the H&E as a multiscale image, the spots as circles at their true
diameter, and the prediction table linked to them, all in one coordinate system in microns.

It opens with `spatialdata.read_zarr`, draws with spatialdata-plot and napari-spatialdata. The spatialdata stack is
heavy (dask, xarray, geopandas, ~450 MB), so it is the `spatial` extra and imported only here, inside the function;
without it the error says what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion import constants as C
from hifusion.errors import ConfigError, InputError

EXTRA_HINT = "pip install 'hifusion[spatial]' (spatialdata, spatialdata-plot)"
PYRAMID_MIN_SIDE = 256  # multiscale levels halve the image until its long side would drop under this


def require_spatialdata() -> Any:
    try:
        import spatialdata
    except ImportError:
        raise ConfigError(f"SpatialData output needs the spatialdata packages: {EXTRA_HINT}") from None
    return spatialdata


def pyramid_factors(shape: tuple[int, int]) -> list[int]:
    """Halving factors for the image pyramid (none for a small image)."""
    factors, side = [], max(shape)
    while side // 2 >= PYRAMID_MIN_SIDE:
        factors.append(2)
        side //= 2
    return factors


def build_spatialdata(table: Any, image: np.ndarray, image_um_per_px: float, centres_um: np.ndarray,
                      diameter_um: float) -> Any:
    """SpatialData of the H&E (`image_um_per_px` per pixel of `image`), spot circles and the table (spots in order)."""
    require_spatialdata()
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    cs = C.SD_COORDINATE_SYSTEM
    rgb = np.moveaxis(np.asarray(image, dtype=np.uint8)[..., :3], -1, 0)
    factors = pyramid_factors(rgb.shape[1:])
    he = Image2DModel.parse(rgb, dims=("c", "y", "x"), c_coords=["r", "g", "b"], scale_factors=factors or None,
                            transformations={cs: Scale([image_um_per_px, image_um_per_px], axes=("y", "x"))})
    n = table.n_obs
    ids = np.arange(n)
    spots = ShapesModel.parse(np.asarray(centres_um, dtype=np.float64), geometry=0,
                              radius=np.full(n, float(diameter_um) / 2.0), index=ids,
                              transformations={cs: Identity()})
    t = table.copy()
    t.obs[C.SD_REGION_KEY] = pd.Categorical([C.SD_SPOTS] * n)
    t.obs[C.SD_INSTANCE_KEY] = ids
    t.obs[C.SD_BARCODE] = np.asarray(t.obs_names).astype(str)
    t.uns.pop(C.UNS_SPATIAL, None)  # the thumbnail lives in the image element here
    t = TableModel.parse(t, region=C.SD_SPOTS, region_key=C.SD_REGION_KEY, instance_key=C.SD_INSTANCE_KEY)
    return SpatialData(images={C.SD_IMAGE: he}, shapes={C.SD_SPOTS: spots}, tables={C.SD_TABLE: t})


def write_spatialdata(sdata: Any, path: str | Path) -> Path:
    """Write into a temporary folder beside `path`, then swap it in: no half-written zarr is ever left at `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        target = tmp / final.name
        sdata.write(target)
        old = final.with_name(f".{final.name}.old")
        if final.exists():
            os.replace(final, old)
        os.replace(target, final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise InputError(f"cannot write the SpatialData zarr ({exc.strerror or exc})", final) from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return final
