"""Pseudo-spots: square bins (Visium HD) summed into discs of a given diameter on a hex or square grid.

Everything is in microns, so a disc is the same tissue area whatever the image. A bin belongs to every disc its
centre lies in (discs wider than the pitch overlap and share bins, as real spots would not: say so in the choice).
A disc is kept when its in-tissue bins cover at least `min_cover` of its area, so discs on the tissue edge that hold a
sliver of tissue do not become spots with a fraction of a spot's counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from hifusion.errors import ConfigError

GRIDS = ("hex", "square")


@dataclass(frozen=True)
class DiscGrid:
    """The kept discs: centres (x, y) in microns, (column, row) grid index, and the bins x discs membership."""

    centres_um: np.ndarray  # (n, 2)
    index: np.ndarray  # (n, 2) int: column, row (hex: Visium numbering, odd rows shifted by half a pitch)
    members: sp.csr_matrix  # (n_discs, n_bins) 0/1
    n_bins: np.ndarray  # (n,) bins per disc


def check_grid(disc_um: float, pitch_um: float, grid: str) -> None:
    if grid not in GRIDS:
        raise ConfigError(f"pseudo-spot grid must be one of {GRIDS}, got {grid!r}")
    if not (np.isfinite(disc_um) and disc_um > 0 and np.isfinite(pitch_um) and pitch_um > 0):
        raise ConfigError(f"pseudo-spot diameter and pitch must be positive microns, got {disc_um} and {pitch_um}")


def grid_points(lo: np.ndarray, hi: np.ndarray, pitch_um: float, grid: str) -> tuple[np.ndarray, np.ndarray]:
    """Grid centres covering the box [lo, hi] (microns) and their (column, row) index; rows run along y."""
    dy = pitch_um * np.sqrt(3.0) / 2.0 if grid == "hex" else pitch_um
    rows = np.arange(int(np.floor((hi[1] - lo[1]) / dy)) + 1)
    cols = np.arange(int(np.floor((hi[0] - lo[0]) / pitch_um)) + 2)  # one more: odd hex rows are shifted
    cc, rr = np.meshgrid(cols, rows)
    cc, rr = cc.ravel(), rr.ravel()
    x = lo[0] + cc * pitch_um + (np.where(rr % 2 == 1, pitch_um / 2.0, 0.0) if grid == "hex" else 0.0)
    y = lo[1] + rr * dy
    keep = x <= hi[0] + pitch_um / 2.0
    # Visium numbering on a hex grid: array columns step by 2, odd rows at odd columns
    col_idx = 2 * cc + (rr % 2) if grid == "hex" else cc
    return np.c_[x, y][keep], np.c_[col_idx, rr][keep].astype(np.int64)


def disc_grid(bins_um: np.ndarray, bin_um: float, disc_um: float, pitch_um: float, grid: str = "hex",
              min_cover: float = 0.5) -> DiscGrid:
    """Discs of `disc_um` every `pitch_um` over the bins' extent; keeps those whose bins cover >= min_cover."""
    check_grid(disc_um, pitch_um, grid)
    bins_um = np.asarray(bins_um, dtype=np.float64)
    lo, hi = bins_um.min(axis=0), bins_um.max(axis=0)
    centres, index = grid_points(lo, hi, pitch_um, grid)
    hits = cKDTree(bins_um).query_ball_point(centres, r=disc_um / 2.0)
    n_in = np.array([len(h) for h in hits], dtype=np.int64)
    full = np.pi * (disc_um / 2.0) ** 2 / float(bin_um) ** 2  # bins a disc holds when all of it is on tissue
    keep = np.flatnonzero((n_in > 0) & (n_in >= min_cover * full))
    rows = np.repeat(np.arange(len(keep)), n_in[keep])
    cols = np.concatenate([np.asarray(hits[i], dtype=np.int64) for i in keep]) if len(keep) else np.zeros(0, int)
    members = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(keep), len(bins_um)))
    return DiscGrid(centres[keep], index[keep], members, n_in[keep])
