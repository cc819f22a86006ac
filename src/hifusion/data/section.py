"""`Section`: the one in-memory object every reader returns, validated in one place.

Readers differ in layout (HER2ST, ST-Net, Visium, AnnData); everything downstream (prepare, predict) only sees a
`Section`, so checks on counts, barcodes and genes live here and are not repeated per reader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hifusion.errors import InputError


def make_unique(names: np.ndarray) -> np.ndarray:
    """Append `-1`, `-2`, ... to repeated names (scanpy's `var_names_make_unique` rule); first occurrence kept."""
    out = [str(n) for n in names]
    taken = set(out)
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        if name in seen:
            k = seen[name]
            while True:
                k += 1
                candidate = f"{name}-{k}"
                if candidate not in taken:
                    break
            seen[name] = k
            out[i] = candidate
            taken.add(candidate)
        else:
            seen[name] = 0
    return np.asarray(out, dtype=object).astype(str)


@dataclass
class Section:
    """One tissue section: raw counts per spot, spot centres in the image's full-resolution pixels, and its scale.

    `files` maps a role ("counts", "spots", "image", ...) to the file it came from, so errors can name the file.
    """

    section_id: str
    patient: str
    counts: sp.csr_matrix
    barcodes: np.ndarray
    genes: np.ndarray
    gene_ids: np.ndarray | None
    centers_px: np.ndarray
    mpp: float
    image_path: Path
    array_xy: np.ndarray | None = None
    new_xy: np.ndarray | None = None
    spot_diameter_px: float = float("nan")
    source_format: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    annotations: pd.DataFrame | None = None  # extra per-spot columns (e.g. tumour labels), same order as barcodes
    image_array: np.ndarray | None = field(default=None, repr=False)  # an in-memory image (AnnData uns); else a file

    def open_image(self) -> Any:
        """The image spots are cut from: the in-memory array when there is one, else the file at `image_path`."""
        from hifusion.data.image import ArrayImage, open_image

        if self.image_array is not None:
            return ArrayImage(self.image_path, self.image_array)
        return open_image(self.image_path)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_spots(self) -> int:
        return int(self.counts.shape[0])

    def _file(self, role: str) -> Path | str:
        """The file to name in an error about `role`, falling back to the section id."""
        return self.files.get(role) or self.files.get("counts") or f"section {self.section_id}"

    def validate(self) -> None:
        """Check shapes, barcodes, counts and genes; fix what has a standard fix (duplicate gene names)."""
        counts_file = self._file("counts")
        spots_file = self._file("spots")
        if not sp.issparse(self.counts):
            self.counts = sp.csr_matrix(np.asarray(self.counts))
        self.counts = sp.csr_matrix(self.counts, dtype=np.float32)
        n, g = self.counts.shape
        if n == 0:
            msg = f"section {self.section_id} has no spots (after joining counts and spot table)"
            raise InputError(msg, spots_file)
        if g == 0:
            raise InputError(f"section {self.section_id} has no genes", counts_file)
        self.barcodes = np.asarray(self.barcodes).astype(str)
        if self.barcodes.shape != (n,):
            raise InputError(f"{len(self.barcodes)} barcodes for {n} count rows", counts_file)
        uniq, cnt = np.unique(self.barcodes, return_counts=True)
        if (cnt > 1).any():
            dups = uniq[cnt > 1][:3].tolist()
            raise InputError(f"duplicate spot barcodes, e.g. {dups}", spots_file)
        data = self.counts.data
        if data.size:
            if not np.isfinite(data).all():
                raise InputError("counts contain NaN or infinite values", counts_file)
            if (data < 0).any():
                raise InputError("counts contain negative values (raw counts expected)", counts_file)
            if (data != np.round(data)).any():
                raise InputError("counts are not integers (raw counts expected, not normalised values)", counts_file)
        self.counts.eliminate_zeros()
        self.genes = np.asarray(self.genes).astype(str)
        if self.genes.shape != (g,):
            raise InputError(f"{len(self.genes)} gene names for {g} count columns", counts_file)
        if self.gene_ids is not None:
            self.gene_ids = np.asarray(self.gene_ids).astype(str)
            if self.gene_ids.shape != (g,):
                raise InputError(f"{len(self.gene_ids)} gene ids for {g} count columns", counts_file)
        if len(set(self.genes.tolist())) != g:
            n_dup = g - len(set(self.genes.tolist()))
            warnings.warn(
                f"{counts_file}: {n_dup} duplicate gene names made unique with -1, -2 suffixes (gene ids kept)",
                stacklevel=3,
            )
            self.genes = make_unique(self.genes)
        self.centers_px = np.asarray(self.centers_px, dtype=np.float64)
        if self.centers_px.shape != (n, 2):
            raise InputError(f"spot centres have shape {self.centers_px.shape}, expected ({n}, 2)", spots_file)
        if not np.isfinite(self.centers_px).all():
            raise InputError("spot pixel coordinates contain missing or non-numeric values", spots_file)
        for name in ("array_xy", "new_xy"):
            arr = getattr(self, name)
            if arr is not None and np.asarray(arr).shape != (n, 2):
                raise InputError(f"{name} has shape {np.asarray(arr).shape}, expected ({n}, 2)", spots_file)
        if not (np.isfinite(self.mpp) and self.mpp > 0):
            raise InputError(f"um/px must be a positive number, got {self.mpp}", self._file("image"))
        self.mpp = float(self.mpp)
        self.spot_diameter_px = float(self.spot_diameter_px)
        self.image_path = Path(self.image_path)
        if self.annotations is not None and len(self.annotations) != n:
            raise InputError(f"{len(self.annotations)} annotation rows for {n} spots", self._file("annotations"))

    def check_on_image(self, size: tuple[int, int]) -> None:
        """Every spot centre must lie inside the image; otherwise the coordinates are in another frame."""
        w, h = size
        x, y = self.centers_px[:, 0], self.centers_px[:, 1]
        off = (x < 0) | (y < 0) | (x >= w) | (y >= h)
        if off.any():
            raise InputError(
                f"{int(off.sum())} of {self.n_spots} spot centres lie outside the image "
                f"({w} x {h} px; centres span x {x.min():.0f}..{x.max():.0f}, y {y.min():.0f}..{y.max():.0f}); "
                f"the image may be a rescaled copy: pass --coord-scale {self.section_id}=<factor> or the right image",
                self._file("spots"),
            )
