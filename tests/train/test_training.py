"""End-to-end training on a tiny synthetic HER2ST-layout dataset: outputs, determinism, resume, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hifusion import constants as C
from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from tests.synthetic import tiny_config, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "c"


def _run(dataset: Path, cache: Path, out: Path, models: list[str] | None = None, resume: bool = False, **train):
    cfg = parse_config(tiny_config(dataset, cache, out.parent, **train))
    chosen = [m for m in cfg.benchmark_models() if models is None or m.name in models]
    return run_benchmark(cfg, out, models=chosen, resume=resume, figures=False)


def _preds(out: Path, model: str = "hifusion") -> dict[str, np.ndarray]:
    with np.load(out / "runs" / "fixed" / model / C.PREDICTIONS_NPZ) as z:
        return {k: z[k] for k in z.files}


def test_training_run_writes_everything(dataset: Path, cache: Path, tmp_path: Path) -> None:
    res = _run(dataset, cache, tmp_path / "run")
    out = res.out
    for name in ("config.yaml", "run.json", "metrics.csv", "per_gene.csv", "report.md"):
        assert (out / name).is_file(), name
    run = out / "runs" / "fixed" / "hifusion"
    history = pd.read_csv(run / C.RUN_METRICS)
    assert list(history["epoch"]) == [0, 1]
    assert {"train_loss", "train_final_mse", "train_level_mse", "train_align", "lr"} <= set(history.columns)
    assert (run / C.CKPT_DIR / C.CKPT_LAST).is_file()
    assert not (run / C.CKPT_DIR / C.CKPT_BEST).exists()  # no validation split configured
    import anndata as ad

    pred = ad.read_h5ad(out / "predictions" / "hifusion" / "P2.h5ad")
    assert pred.shape == (36, 20) and "truth" in pred.layers and pred.obsm["spatial"].shape == (36, 2)
    models = set(res.metrics["model"])
    assert models == {"hifusion", "mean_profile"}
    assert np.isfinite(res.metrics["value"]).all()


def test_same_seed_same_metrics(dataset: Path, cache: Path, tmp_path: Path) -> None:
    a = _run(dataset, cache, tmp_path / "a", models=["hifusion"])
    b = _run(dataset, cache, tmp_path / "b", models=["hifusion"])
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    ha = pd.read_csv(tmp_path / "a" / "runs" / "fixed" / "hifusion" / C.RUN_METRICS)
    hb = pd.read_csv(tmp_path / "b" / "runs" / "fixed" / "hifusion" / C.RUN_METRICS)
    cols = [c for c in ha.columns if c != "seconds"]
    pd.testing.assert_frame_equal(ha[cols], hb[cols])


def test_checkpoint_is_self_describing_and_safe(dataset: Path, cache: Path, tmp_path: Path) -> None:
    from hifusion.inference import predict_rows
    from hifusion.models.loading import load_checkpoint
    from hifusion.train.module import ExpressionModule

    out = tmp_path / "run"
    _run(dataset, cache, out, models=["hifusion"])
    ckpt = out / "runs" / "fixed" / "hifusion" / C.CKPT_DIR / C.CKPT_LAST
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # no arbitrary pickle needed
    assert raw["hifusion"]["patch"] == {"pixel_size": 5.0, "spot_px": 16, "region_px": 32}
    model, meta = load_checkpoint(ckpt)
    assert len(meta.panel) == 20 and meta.label == "logprop"
    from hifusion.config import TrainConfig
    from hifusion.data.cache.reader import load_cache

    module = ExpressionModule(model, TrainConfig(), meta)
    _, patches = load_cache(cache, "P2")
    again = predict_rows(module, patches, np.arange(36), meta.patch)
    np.testing.assert_allclose(again, _preds(out)["P2"], atol=1e-5)


def test_resume_after_crash_matches_uninterrupted(dataset: Path, cache: Path, tmp_path: Path, monkeypatch) -> None:
    from hifusion.train.module import ExpressionModule

    full = _run(dataset, cache, tmp_path / "full", models=["hifusion"], epochs=3)
    original = ExpressionModule.on_train_batch_start

    def crash_at_epoch_2(self, batch, batch_idx):  # the run dies after epoch 1's checkpoint was written
        if self.current_epoch == 2:
            raise RuntimeError("simulated crash")
        original(self, batch, batch_idx)

    monkeypatch.setattr(ExpressionModule, "on_train_batch_start", crash_at_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(dataset, cache, tmp_path / "crashed", models=["hifusion"], epochs=3)
    monkeypatch.setattr(ExpressionModule, "on_train_batch_start", original)
    resumed = _run(dataset, cache, tmp_path / "crashed", models=["hifusion"], epochs=3, resume=True)
    pd.testing.assert_frame_equal(full.metrics, resumed.metrics)
    hist = pd.read_csv(tmp_path / "crashed" / "runs" / "fixed" / "hifusion" / C.RUN_METRICS)
    assert list(hist["epoch"]) == [0, 1, 2]


def test_validation_split_writes_best_checkpoint(dataset: Path, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "val"
    _run(dataset, cache, out, models=["hifusion"], val={"mode": "spatial_block", "fraction": 0.25})
    run = out / "runs" / "fixed" / "hifusion"
    assert (run / C.CKPT_DIR / C.CKPT_BEST).is_file()
    history = pd.read_csv(run / C.RUN_METRICS)
    assert "val_mse" in history.columns and "val_pcc_gene" in history.columns


def test_max_steps_per_epoch_caps_the_batches_of_each_epoch(dataset: Path, cache: Path, tmp_path: Path) -> None:
    _run(dataset, cache, tmp_path / "cap", models=["hifusion"], max_steps_per_epoch=1)
    ckpt = torch.load(tmp_path / "cap" / "runs" / "fixed" / "hifusion" / C.CKPT_DIR / C.CKPT_LAST,
                      map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2  # 2 epochs of one batch each (P1 alone has 36 spots)


def test_gene_scaled_labels_train_in_z_scores_and_predict_in_label_units(dataset: Path, cache: Path,
                                                                          tmp_path: Path) -> None:
    """`train.scale_labels: gene`: the checkpoint holds the training labels' per-gene mean and std, the model's raw
    outputs are z-scores, and every prediction path (benchmark and checkpoint) maps them back to label units."""
    from hifusion.data.cache.reader import load_cache
    from hifusion.inference import Predictor, predict_rows
    from hifusion.models.loading import load_checkpoint

    out = tmp_path / "run"
    _run(dataset, cache, out, models=["hifusion"], scale_labels="gene")
    model, meta = load_checkpoint(out / "runs" / "fixed" / "hifusion" / C.CKPT_DIR / C.CKPT_LAST)
    scale = meta.label_scale
    assert len(scale["mean"]) == len(scale["std"]) == 20 and min(scale["std"]) > 0
    np.testing.assert_allclose(scale["mean"], meta.train_mean, atol=1e-5)  # no centring: the pooled mean
    _, patches = load_cache(cache, "P2")
    module = Predictor(model, meta).eval()
    again = predict_rows(module, patches, np.arange(36), meta.patch)
    np.testing.assert_allclose(again, _preds(out)["P2"], atol=1e-5)
    raw = predict_rows(Predictor(model, meta.with_changes(label_scale=None)).eval(), patches, np.arange(36),
                       meta.patch)
    np.testing.assert_allclose(again, raw * np.asarray(scale["std"]) + np.asarray(scale["mean"]), rtol=1e-4,
                               atol=1e-4)
    assert abs(float(raw.mean())) < abs(float(again.mean()))  # z-scores sit near 0, labels (log proportions) do not


def test_last_batch_of_one_spot_is_held_over(dataset: Path, cache: Path, tmp_path: Path) -> None:
    """A training set one spot over a multiple of the batch size: BatchNorm cannot train on a batch of one, so that
    spot waits for the next epoch's shuffle rather than crashing the fit (found on a small Visium HD section)."""
    from tests.synthetic import GRID

    res = _run(dataset, cache, tmp_path / "run", models=["hifusion"], batch_size=GRID * GRID - 1, epochs=1)
    assert np.isfinite(res.metrics["value"]).all()
