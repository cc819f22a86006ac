"""The whole path on a Visium HD output: prepare (55 um pseudo-spots by default), a 2-epoch training run whose
benchmark files are SpatialData too, predict on the HD image with --format spatialdata, and both read back."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml

from hifusion import constants as C
from tests.data.visium_hd_fixture import MPP, make_visium_hd

pytest.importorskip("pyarrow", reason="Visium HD needs pip install 'hifusion[visium-hd]'")
sd = pytest.importorskip("spatialdata", reason="SpatialData output needs pip install 'hifusion[spatial]'")


def test_visium_hd_prepare_train_benchmark_predict_spatialdata(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hifusion.cli import app

    root = tmp_path / "hd"
    make_visium_hd(root, "hd1", seed=0)
    test = make_visium_hd(root, "hd2", seed=1, crop_xy=(4700, 1300))
    cfg = {
        "name": "hd", "output": str(tmp_path / "runs"), "prediction_format": "spatialdata",
        "data": {"cache": str(tmp_path / "cache"),
                 "prepare": {"format": "visium_hd", "root": str(root), "spot_px": 16, "region_factor": 2.0},
                 "genes": {"method": "top_mean", "n": 8}},
        "protocol": {"name": "fixed", "train": ["hd1"], "test": ["hd2"]},
        "model": {"name": "hifusion", "options": {"levels": [1, 4], "tokens": 1, "heads": 2, "embed_dim": 32,
                                                  "spot_encoder": "resnet10", "region_encoder": "resnet10"}},
        "train": {"epochs": 2, "batch_size": 10, "seed": 0, "num_workers": 0},  # 25 spots: no batch of 1
    }
    (tmp_path / "hd.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "hd.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    cache = ad.read_h5ad(tmp_path / "cache" / "hd2.h5ad")
    assert cache.uns["hifusion"]["spot_um"] == pytest.approx(85.03)  # field of view follows the 55 um discs
    assert cache.uns["hifusion"]["visium_hd"]["pitch_um"] == 100.0 and cache.n_obs >= 10

    pred_dir = tmp_path / "run" / "predictions" / "hifusion"
    bench = ad.read_h5ad(pred_dir / "hd2.h5ad")
    np.testing.assert_array_equal(bench.layers[C.LAYER_PREDICTED], bench.X)
    assert bench.layers[C.LAYER_TRUTH].shape == bench.X.shape and len(bench.uns["hifusion"]["checkpoint_sha256"]) == 64
    zarr = sd.read_zarr(pred_dir / "hd2.zarr")
    np.testing.assert_allclose(zarr.shapes[C.SD_SPOTS]["radius"], 27.5)  # the pseudo-spots' true diameter
    np.testing.assert_allclose(np.c_[zarr.shapes[C.SD_SPOTS].geometry.x, zarr.shapes[C.SD_SPOTS].geometry.y],
                               bench.obsm[C.OBSM_SPATIAL] * MPP)

    ckpt = next((tmp_path / "run" / "runs").rglob("last.ckpt"))
    slide = test.sample_dir / "hd2_tissue_image.tif"
    res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--slide", str(slide),
                              "--out", str(tmp_path / "pred"), "--mpp", str(MPP), "--pitch-um", "100", "--device",
                              "cpu", "--format", "spatialdata"])
    assert res.exit_code == 0, res.output
    pred = ad.read_h5ad(tmp_path / "pred" / "predictions.h5ad")
    back = sd.read_zarr(tmp_path / "pred" / C.PREDICTIONS_ZARR)
    np.testing.assert_allclose(back.tables[C.SD_TABLE].X, pred.X)
    assert back.tables[C.SD_TABLE].uns["hifusion"]["checkpoint_sha256"] == bench.uns["hifusion"]["checkpoint_sha256"]
