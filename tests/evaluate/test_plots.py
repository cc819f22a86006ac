"""Figures are written as real PNGs of the expected pixel size, without pyplot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hifusion.evaluate.plots import plot_expression_map, plot_marker_maps, plot_training_curves


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
    assert img.size == (int((3.0 * 3 + 0.8) * 100), 3 * 300)  # 3 columns, 3 marker rows present
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
    assert _open(out).size == (int((3.0 * 2 + 0.8) * 100), 4 * 300)  # falls back to the 4 most variable genes
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


def test_expression_map(tmp_path: Path) -> None:
    thumb, coords, scalef = _slide()
    out = plot_expression_map(tmp_path / "g.png", thumb, scalef, coords, np.arange(30.0), "ERBB2 (predicted)", 100.0)
    assert _open(out).size == (680, 600)
    flat = plot_expression_map(tmp_path / "f.png", None, scalef, coords, np.ones(30), "flat", 100.0)
    assert _open(flat).size == (680, 600)


def test_marker_maps_accepts_swapped_gene_arguments(tmp_path: Path) -> None:
    _, coords, scalef = _slide(10)
    panel = ["ACTB", "ERBB2", "KRT19"]
    truth = np.random.default_rng(3).normal(size=(10, 3))
    out = plot_marker_maps(
        tmp_path / "s.png", None, scalef, coords, truth, {"a": truth}, ["ERBB2", "CD74", "KRT19", "FASN"], panel, 50.0
    )
    assert _open(out).size == (int((3.0 * 2 + 0.8) * 100), 2 * 300)
