"""Figures are written as real PNGs of the expected pixel size, without pyplot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hifusion.plots import (
    BAR_INCH,
    DPI,
    SPOT_MAP_INCH,
    backdrop,
    faded,
    plot_marker_maps,
    plot_spot_maps,
    plot_training_curves,
    unit_label,
)


def _size(cols: int, rows: int, panel: float = SPOT_MAP_INCH) -> tuple[int, int]:
    """Pixel size of a map grid: `cols` sources (measured + models) x `rows` genes, plus the colour bar column."""
    return int(round((panel * cols + BAR_INCH) * DPI)), int(round(panel * rows * DPI))


def _slide(n: int = 30) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(0)
    thumb = rng.integers(150, 255, size=(120, 100, 3), dtype=np.uint8)
    coords = rng.uniform(100, 900, size=(n, 2))  # full resolution; thumbnail is 10x smaller
    return thumb, coords, 0.1


def _open(path: Path) -> Image.Image:
    assert path.exists() and path.stat().st_size > 1000
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    return img


def test_marker_maps(tmp_path: Path) -> None:
    thumb, coords, scalef = _slide()
    genes = ["ACTB", "ERBB2", "KRT19", "GNAS"]
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(30, 4))
    truth[:, 3] = 0.5  # constant: titled PCC=n/a
    preds = {"hifusion": truth + rng.normal(size=truth.shape), "mean_profile": np.tile(truth.mean(0), (30, 1))}
    out = plot_marker_maps(
        tmp_path / "m.png",
        thumb,
        scalef,
        coords,
        truth,
        preds,
        genes,
        ["ERBB2", "KRT19", "CD74", "GNAS"],
        spot_diameter_px=100.0,
    )
    img = _open(out)
    assert img.size == _size(3, 3)  # measured + 2 models, 3 marker rows present
    assert not list(tmp_path.glob(".*.tmp"))


def test_marker_maps_no_thumbnail_and_no_markers(tmp_path: Path) -> None:
    _, coords, scalef = _slide(12)
    truth = np.random.default_rng(2).normal(size=(12, 6))
    out = plot_marker_maps(
        tmp_path / "m.png",
        None,
        scalef,
        coords,
        truth,
        {"a": truth * 0.5},
        list("uvwxyz"),
        ["ERBB2"],
        spot_diameter_px=50.0,
    )
    assert _open(out).size == _size(2, 4)  # falls back to the 4 most variable genes
    with pytest.raises(ValueError, match="shape"):
        plot_marker_maps(
            tmp_path / "x.png",
            None,
            scalef,
            coords,
            truth,
            {"a": truth[:, :2]},
            list("uvwxyz"),
            ["u"],
            spot_diameter_px=50.0,
        )


def test_training_curves(tmp_path: Path) -> None:
    epochs = np.arange(5)
    curves = {
        "hifusion": pd.DataFrame({"epoch": epochs, "train_loss": 1 / (epochs + 1), "val_loss": 1.2 / (epochs + 1)}),
        # logger-style: train and val on separate rows with NaNs
        "stnet": pd.DataFrame(
            {"epoch": [0, 0, 1, 1], "train_loss": [1.0, np.nan, 0.8, np.nan], "val_loss": [np.nan, 1.1, np.nan, 0.9]}
        ),
    }
    assert _open(plot_training_curves(tmp_path / "c.png", curves)).size == (800, 300)
    assert _open(plot_training_curves(tmp_path / "e.png", {})).size == (400, 300)


def test_marker_maps_accepts_swapped_gene_arguments(tmp_path: Path) -> None:
    _, coords, scalef = _slide(10)
    panel = ["ACTB", "ERBB2", "KRT19"]
    truth = np.random.default_rng(3).normal(size=(10, 3))
    out = plot_marker_maps(
        tmp_path / "s.png", None, scalef, coords, truth, {"a": truth}, ["ERBB2", "CD74", "KRT19", "FASN"], panel, 50.0
    )
    assert _open(out).size == _size(2, 2)


def test_spot_maps_shared_scale_units_and_faded_background(tmp_path: Path) -> None:
    """One colour scale per gene over truth and models; discs at the spot diameter; the H&E only as grey backdrop."""
    from matplotlib.collections import EllipseCollection
    from matplotlib.figure import Figure

    thumb, coords, scalef = _slide(20)
    truth = np.linspace(0, 1, 20)[:, None]
    pred = 3 * truth + 5  # a model far off the truth's scale is still drawn on the shared scale
    drawn: list = []
    orig = Figure.savefig

    def spy(self, *a, **k):  # look at the figure as drawn, before it is written
        drawn.extend(c for ax in self.axes for c in ax.collections if isinstance(c, EllipseCollection))
        drawn.append([ax.get_ylabel() for ax in self.axes])
        return orig(self, *a, **k)

    Figure.savefig = spy
    try:
        plot_spot_maps(tmp_path / "s.png", thumb, scalef, coords, {"measured": truth, "m": pred}, ["ERBB2"], 55.0,
                       label="log1p_cpm")
    finally:
        Figure.savefig = orig
    discs, labels = drawn[:-1], drawn[-1]
    assert len(discs) == 2 and discs[0].norm.vmin == discs[1].norm.vmin and discs[0].norm.vmax == discs[1].norm.vmax
    lo, hi = np.percentile(np.r_[truth.ravel(), pred.ravel()], [2, 98])
    assert discs[0].norm.vmin == pytest.approx(lo) and discs[0].norm.vmax == pytest.approx(hi)
    np.testing.assert_allclose(discs[0]._widths * 2, 55.0 * scalef)  # matplotlib keeps half-widths
    assert any("log1p counts per 10k" in t for t in labels)
    assert "log share" in unit_label("logprop") and unit_label("zscore") == "zscore"
    f = faded(thumb)
    assert (f[..., 0] == f[..., 1]).all() and f.min() >= 255 * 0.6 - 1  # grey, and pale


def test_backdrop_crops_and_averages_in_thumbnail_coordinates() -> None:
    """The once-per-figure backdrop is the faded thumbnail over the view, block-averaged, and its extent puts every
    block where its pixels were: a bright 4x4 block at columns 40-43, rows 20-23 stays at those coordinates."""
    thumb = np.zeros((100, 120, 3), dtype=np.uint8)
    thumb[20:24, 40:44] = 255
    back = backdrop(thumb, (10.0, 89.0, 8.0, 71.0), panel_px=20)  # 80 x 64 px view -> blocks of 64 // 20 = 3
    assert back is not None
    img, (left, right, bottom, top) = back
    step = 3
    assert img.shape == ((72 - 8) // step, (90 - 10) // step, 4) and (img[..., 3] == 255).all()
    assert (left, top) == (10 - 0.5, 8 - 0.5)
    assert right - left == img.shape[1] * step and bottom - top == img.shape[0] * step
    rows, cols = np.nonzero(img[..., 0] > faded(np.zeros((1, 1, 3), np.uint8))[0, 0, 0])
    centre_x, centre_y = left + (cols.mean() + 0.5) * step, top + (rows.mean() + 0.5) * step  # block centres
    assert abs(centre_x - 41.5) <= step / 2 and abs(centre_y - 21.5) <= step / 2
    assert backdrop(None, (0.0, 1.0, 0.0, 1.0), 10) is None
    assert backdrop(thumb, (500.0, 600.0, 500.0, 600.0), 10) is None  # view outside the image
