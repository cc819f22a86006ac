"""`hifusion hest-bench`: HEST's frozen-encoder protocol on a synthetic task folder in HEST's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from hifusion import constants as C
from hifusion.cli import app
from hifusion.evaluate.hestbench import FeatureSource, hest_probe, make_embedder
from hifusion.models.presets import EncoderPreset, register_preset
from tests.data.test_hest_task import GENES, write_hest_task


def test_hest_probe_follows_hest_rules() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 6)), rng.normal(size=(20, 3))
    pred, info = hest_probe(x, y, x[:5], latent_dim=256)
    # PCA keeps min(256, 20 spots, 6 features) = 6 components; alpha = 100 / (6 x 3 genes)
    assert info == {"n_components": 6, "alpha": 100 / 18}
    assert pred.shape == (5, 3)
    # no intercept: an all-mean feature row (0 after the scaler) predicts exactly 0
    zero, _ = hest_probe(x, y, x.mean(0, keepdims=True))
    np.testing.assert_allclose(zero, 0.0, atol=1e-12)


def test_hest_bench_command(tmp_path: Path) -> None:
    root = write_hest_task(tmp_path / "bench_data")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["hest-bench", "--root", str(root), "--task", "IDC", "--out", str(out),
                                   "--model", "linear_probe", "--option", "encoder=resnet10", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "IDC | linear_probe: Pearson" in res.output
    summary = json.loads((out / C.HEST_SUMMARY_JSON).read_text())
    per_gene = pd.read_csv(out / C.HEST_RESULTS_CSV)
    assert len(summary["folds"]) == 2 and set(per_gene["gene"]) == set(GENES)
    # a fold's number is the mean over genes of the Pearson over its pooled test spots (constant genes left out)
    for f in summary["folds"]:
        g = per_gene[(per_gene.fold == f["fold"]) & ~per_gene.const_truth]
        assert np.isclose(f["pearson_mean"], g["pearson"].mean())
        assert f["n_train"] == 24 and f["n_test"] == 12
    assert np.isclose(summary["pearson_mean"], np.mean([f["pearson_mean"] for f in summary["folds"]]))
    assert sorted(p.name for p in (out / "features").iterdir()) == ["S0.npy", "S1.npy", "S2.npy"]
    # an existing results folder needs --resume; with it, the features are read back, not recomputed
    again = CliRunner().invoke(app, ["hest-bench", "--root", str(root), "--task", "IDC", "--out", str(out),
                                     "--option", "encoder=resnet10"])
    assert again.exit_code != 0
    again = CliRunner().invoke(app, ["hest-bench", "--root", str(root), "--task", "IDC", "--out", str(out),
                                     "--option", "encoder=resnet10", "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / C.HEST_SUMMARY_JSON).read_text())["pearson_mean"] == summary["pearson_mean"]


def test_a_preset_encoder_gets_its_own_normalisation_and_input_side() -> None:
    """HEST feeds every encoder its own transform; a registry model built on a preset is probed the same way."""
    from hifusion.models.presets import _PRESETS

    register_preset(EncoderPreset(
        name="tiny-hest-test", title="test preset", arch="resnet10t", options={}, feature_dim=512, embedding="mean",
        input_px=64, mpp=None, mean=(0.7, 0.6, 0.8), std=(0.15, 0.2, 0.1), weight_file="none.bin",
        layout="timm", params_m=4.9))
    try:
        emb = make_embedder(FeatureSource("linear_probe", {"encoder": "tiny-hest-test"}), patch_mpp=0.5, patch_px=224)
    finally:
        _PRESETS.remove("tiny-hest-test")  # the preset tables of other tests list the published presets only
    assert emb.size == 64 and emb.norm["mean"] == [0.7, 0.6, 0.8] and emb.norm["std"] == [0.15, 0.2, 0.1]
    assert emb(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 512)
    plain = make_embedder(FeatureSource("linear_probe", {"encoder": "resnet10"}), patch_mpp=0.5, patch_px=224)
    assert plain.size is None and plain.norm["mean"] == [0.485, 0.456, 0.406]  # ImageNet, at the patch's size


def test_hest_bench_scores_a_trained_checkpoint(tmp_path: Path) -> None:
    """`--checkpoint`: a trained model's spot features, its patches resampled from HEST's 0.5 um/px to its scale."""
    from tests.predict.slides import PIXEL_SIZE, write_checkpoint

    root = write_hest_task(tmp_path / "bench_data")
    ckpt = write_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["hest-bench", "--root", str(root), "--task", "IDC", "--out", str(out),
                                   "--checkpoint", str(ckpt), "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / C.HEST_SUMMARY_JSON).read_text())
    assert len(summary["folds"]) == 2 and np.isfinite([f["pearson_mean"] for f in summary["folds"]]).all()
    emb = make_embedder(FeatureSource(checkpoint=ckpt), patch_mpp=0.5, patch_px=224)
    assert emb.size == max(8, round(224 * 0.5 / PIXEL_SIZE))  # the checkpoint's own scale
