"""10x Visium HD (Space Ranger 3/4): `outs/binned_outputs/square_{002,008,016}um/` under one H&E.

Per bin size: `filtered_feature_bc_matrix.h5`, `spatial/tissue_positions.parquet` (barcode, in_tissue, array_row,
array_col, pxl_row_in_fullres, pxl_col_in_fullres) and `spatial/scalefactors_json.json` (`microns_per_pixel` of the
full-resolution image, `bin_size_um`, the hires/lowres scale factors). The spots are the user's choice (`HDSpots`):
the in-tissue bins of one size, or bins summed into pseudo-spots (discs of a diameter on a hex or square grid of a
pitch, in microns). Default (DESIGN 10): 55 um discs on a 100 um hex grid from the 8 um bins.

Image, as for Visium: `--image`, else a full-resolution image in or beside `outs/`, else the bin folder's
`tissue_hires_image.png`, else its lowres copy, each with its scale factor. um/px = microns_per_pixel / scale factor.

Why pyarrow + h5py and not spatialdata-io: a section here is three files (an HDF5 matrix the Visium reader already
reads, a parquet table, a JSON), and spatialdata-io would bring dask, xarray, geopandas and the image stack (~450 MB,
two minutes to install) to build objects this reader would take apart again. Only the parquet needs pyarrow, which is
the `visium-hd` extra; without it the error says what to install.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion import constants as C
from hifusion.data.pseudospots import check_grid, disc_grid
from hifusion.data.readers._common import join_spots, outs_folder, space_ranger_sections
from hifusion.data.readers.visium import POSITION_COLUMNS, find_image, image_scale, read_10x_h5
from hifusion.data.section import Section
from hifusion.errors import ConfigError, InputError

FORMAT = "visium_hd"
EXTRA_HINT = "pip install 'hifusion[visium-hd]' (pyarrow reads Space Ranger's parquet files)"


@dataclass(frozen=True)
class HDSpots:
    """What a spot is: the bins of `bin_um` (disc_um == 0), or discs of `disc_um` every `pitch_um` on `grid`."""

    bin_um: int = C.VISIUM_HD_DEFAULT_BIN_UM
    disc_um: float = C.VISIUM_HD_DEFAULT_DISC_UM
    pitch_um: float = C.VISIUM_HD_DEFAULT_PITCH_UM
    grid: str = "hex"

    def __post_init__(self) -> None:
        if int(self.bin_um) not in C.VISIUM_HD_BIN_SIZES:
            raise ConfigError(f"Visium HD bin size must be one of {C.VISIUM_HD_BIN_SIZES} um, got {self.bin_um}")
        if self.disc_um < 0:
            raise ConfigError(f"pseudo-spot diameter must be >= 0 um (0 = the bins themselves), got {self.disc_um}")
        if self.disc_um > 0:
            check_grid(self.disc_um, self.pitch_um, self.grid)
            if self.disc_um < self.bin_um:
                raise ConfigError(f"pseudo-spots of {self.disc_um} um are narrower than the {self.bin_um} um bins "
                                  "they are summed from; use smaller bins or wider discs")

    @property
    def bins(self) -> bool:
        return self.disc_um == 0

    @property
    def width_um(self) -> float:
        """The spot's physical width: the disc diameter, or the bin side."""
        return float(self.bin_um) if self.bins else float(self.disc_um)


def as_spots(value: HDSpots | dict[str, Any] | None) -> HDSpots:
    if isinstance(value, HDSpots):
        return value
    return HDSpots(**{k: v for k, v in (value or {}).items() if v is not None})


def default_spot_um(options: dict[str, Any] | None) -> float:
    """Patch field of view that follows the spot size (the paper's 154.6 um per 100 um spot): 85 um at 55 um."""
    return round(C.FOV_PER_SPOT_UM * as_spots((options or {}).get("hd_spots")).width_um, 3)


def _outs(folder: Path) -> Path | None:
    return outs_folder(folder, C.VISIUM_HD_BINNED_DIR)


def list_sections(root: Path) -> list[str]:
    """One section when root is a Space Ranger HD output; else every sub-folder that is one."""
    return space_ranger_sections(root, C.VISIUM_HD_BINNED_DIR, "Visium HD output")


def bin_folder(root: Path, section: str, bin_um: int) -> tuple[Path, Path]:
    """(outs, outs/binned_outputs/square_XXXum) of a section; a missing bin size names the sizes present."""
    outs = next((o for o in (_outs(Path(root) / section), _outs(Path(root))) if o is not None), None)
    if outs is None:
        raise InputError(f"no outs/{C.VISIUM_HD_BINNED_DIR}/ for section {section}", root)
    binned = outs / C.VISIUM_HD_BINNED_DIR
    folder = binned / C.VISIUM_HD_BIN_PATTERN.format(bin_um=int(bin_um))
    if not folder.is_dir():
        have = sorted(p.name for p in binned.iterdir() if p.is_dir())
        raise InputError(f"no {folder.name} folder (found {have}); choose another bin size", binned)
    return outs, folder


def read_scalefactors(path: Path, bin_um: int) -> dict[str, Any]:
    """The bin folder's scale factors; `microns_per_pixel` is required (it is the scale of everything)."""
    if not path.is_file():
        raise InputError("scale factors file not found", path)
    try:
        sf = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON file ({exc})", path) from exc
    if not isinstance(sf, dict):
        raise InputError("expected a JSON object of scale factors", path)
    try:
        mpp = float(sf[C.VISIUM_HD_MPP_KEY])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"no usable {C.VISIUM_HD_MPP_KEY} (Space Ranger 3+ writes it for Visium HD); pass "
                         "--mpp SECTION=<um/px of the full-resolution image> if you know it", path) from None
    if not mpp > 0:
        raise InputError(f"{C.VISIUM_HD_MPP_KEY} must be positive, got {mpp}", path)
    size = sf.get(C.VISIUM_HD_BIN_SIZE_KEY)
    if size is not None and abs(float(size) - bin_um) > 1e-6:
        raise InputError(f"{C.VISIUM_HD_BIN_SIZE_KEY} is {size}, but the folder holds {bin_um} um bins", path)
    return sf


def read_positions(path: Path) -> pd.DataFrame:
    """tissue_positions.parquet, indexed by barcode; missing, unreadable or incomplete is an error naming it."""
    if not path.is_file():
        raise InputError("bin positions file not found", path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"reading this file needs pyarrow: {EXTRA_HINT}", path) from None
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a corrupt or non-parquet file
        raise InputError(f"not a readable parquet table ({type(exc).__name__}: {exc})", path) from exc
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; found {list(map(str, df.columns))[:10]}", path)
    return df.set_index(df["barcode"].astype(str))


def choose_image(outs: Path, folder: Path, sf: dict[str, Any], sf_path: Path,
                 image: Path | None) -> tuple[Path, float, str]:
    """(image, scale factor, kind): the given image, else full resolution in/beside outs/, else hires, else lowres."""
    if image is None:
        spatial = folder / C.VISIUM_SPATIAL_DIR
        image = find_image(outs) or next(
            (spatial / n for n in (C.VISIUM_HIRES_IMAGE, C.VISIUM_LOWRES_IMAGE) if (spatial / n).is_file()), None)
        if image is None:
            raise InputError(f"no image for this bin folder: no full-resolution image in or beside {outs} and no "
                             f"{C.VISIUM_HIRES_IMAGE} or {C.VISIUM_LOWRES_IMAGE} here; pass the microscope image "
                             "(--image SECTION=PATH)", spatial)
    scalef, kind = image_scale(Path(image).name, sf, sf_path)
    return Path(image), scalef, kind


def _pseudo_spots(counts: Any, barcodes: np.ndarray, pos: pd.DataFrame, mpp_full: float, spots: HDSpots,
                  path: Path) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(counts, barcodes, centres in full-res px, grid index, bins per spot) of the discs over the bins."""
    bins_um = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64) * mpp_full
    g = disc_grid(bins_um, spots.bin_um, spots.disc_um, spots.pitch_um, spots.grid, C.VISIUM_HD_MIN_DISC_COVER)
    if not len(g.centres_um):
        raise InputError(f"no {spots.disc_um:g} um pseudo-spot is {C.VISIUM_HD_MIN_DISC_COVER:.0%} covered by "
                         f"in-tissue {spots.bin_um} um bins; use smaller discs or the bins themselves", path)
    names = np.array([f"d{spots.disc_um:g}_{c:04d}_{r:04d}" for c, r in g.index])
    return (g.members @ counts).tocsr(), names, g.centres_um / mpp_full, g.index, g.n_bins


def read(
    root: Path,
    section: str,
    *,
    mpp: float | None = None,
    coord_scale: float | None = None,
    patient: str | None = None,
    image: Path | None = None,
    hd_spots: HDSpots | dict[str, Any] | None = None,
) -> Section:
    """Read one Visium HD section: in-tissue bins of one size, as spots or summed into pseudo-spots."""
    spots = as_spots(hd_spots)
    outs, folder = bin_folder(Path(root), section, spots.bin_um)
    spatial = folder / C.VISIUM_SPATIAL_DIR
    sf_path = spatial / C.VISIUM_SCALEFACTORS
    sf = read_scalefactors(sf_path, spots.bin_um)
    pos_path = spatial / C.VISIUM_HD_POSITIONS
    pos = read_positions(pos_path)
    image_path, image_scalef, image_kind = choose_image(outs, folder, sf, sf_path, image)
    matrix_path = folder / C.VISIUM_MATRIX_H5
    if not matrix_path.is_file():
        raise InputError("feature-barcode matrix not found", matrix_path)
    counts, barcodes, names, ids = read_10x_h5(matrix_path)
    pos = pos[pos["in_tissue"] == 1]
    rows = join_spots(pd.Index(barcodes), pos.index, matrix_path, pos_path)
    counts, barcodes = counts[rows], barcodes[rows]
    pos = pos.loc[barcodes]
    mpp_full = float(sf[C.VISIUM_HD_MPP_KEY])
    n_bins = None
    if spots.bins:
        centres = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
        array_xy = pos[["array_col", "array_row"]].to_numpy(dtype=np.int64)
    else:
        counts, barcodes, centres, array_xy, n_bins = _pseudo_spots(counts, barcodes, pos, mpp_full, spots, pos_path)
    scale = image_scalef if coord_scale is None else float(coord_scale)  # a user's coordinate scale wins
    use_mpp = float(mpp) if mpp is not None else mpp_full / scale
    return Section(
        section_id=section, patient=patient or section, counts=counts, barcodes=barcodes, genes=names, gene_ids=ids,
        centers_px=centres * scale, mpp=use_mpp, image_path=image_path, array_xy=array_xy, new_xy=None,
        spot_diameter_px=spots.width_um / use_mpp, source_format=FORMAT,
        meta={"coord_scale": scale, "image_kind": image_kind, "visium_hd": asdict(spots),
              "mpp_source": "override" if mpp is not None else C.VISIUM_HD_MPP_KEY},
        files={"counts": matrix_path, "spots": pos_path, "image": image_path, "scalefactors": sf_path},
        annotations=None if n_bins is None else pd.DataFrame({C.OBS_N_BINS: n_bins}),
    )
