"""The baseline fitters through the real benchmark on tiny synthetic data (one epoch each), and their checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hifusion import constants as C
from hifusion.config import ModelConfig, parse_config
from hifusion.evaluate.protocols import run_benchmark
from tests.synthetic import tiny_config, write_dataset

TINY = {
    "histogene": {"patch_px": 8, "dim": 16, "depth": 1, "heads": 2, "n_pos": 16},
    "hist2st": {"patch_px": 14, "channels": 8, "patch": 7, "kernel": 3, "conv_depth": 1, "dim": 16, "depth": 1,
                "heads": 2, "gnn_depth": 1, "n_pos": 16},
    "triplex": {"encoder": "resnet10", "dim": 16, "heads": 2, "neighbour_depth": 1, "global_depth": 1, "n_pos": 16},
    "linear_probe": {"encoder": "resnet10", "n_components": 8},
    "bleep": {"encoder": "resnet10", "proj_dim": 8, "k": 5},
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = write_dataset(tmp_path_factory.mktemp("raw"))
    base = tmp_path_factory.mktemp("bench")
    cfg = parse_config(tiny_config(root, base / "cache", base, epochs=1, val={"mode": "spatial_block",
                                                                             "fraction": 0.25}))
    models = [ModelConfig(name=n, options=o) for n, o in TINY.items()]
    res = run_benchmark(cfg, base / "out", models=models, figures=False)
    return base, res


def test_every_baseline_is_scored(bench: tuple[Path, object]) -> None:
    base, res = bench
    assert set(res.metrics["model"]) == set(TINY)
    assert set(res.metrics["section"]) == {"P2", "Q1"}
    assert np.isfinite(res.metrics["value"]).all()
    for name in TINY:
        with np.load(base / "out" / "runs" / "fixed" / name / C.PREDICTIONS_NPZ) as z:
            assert z["P2"].shape == (36, 20) and np.isfinite(z["P2"]).all()
    hist = (base / "out" / "runs" / "fixed" / "histogene" / C.RUN_METRICS).read_text()
    assert "val_mse" in hist and "train_loss" in hist  # validation on the held-out block, as for spot models


@pytest.mark.parametrize("name", ["histogene", "linear_probe", "bleep"])
def test_checkpoints_predict_alone(bench: tuple[Path, object], name: str) -> None:
    from hifusion.config import TrainConfig
    from hifusion.data.cache.reader import load_cache
    from hifusion.data.splitdata import section_array_coords
    from hifusion.inference import predict_rows, predict_section
    from hifusion.models import model_entry
    from hifusion.models.loading import load_checkpoint
    from hifusion.train.module import ExpressionModule, SectionModule

    base, _ = bench
    run = base / "out" / "runs" / "fixed" / name
    ckpt = run / C.CKPT_DIR / (C.CKPT_BEST if (run / C.CKPT_DIR / C.CKPT_BEST).exists() else C.CKPT_LAST)
    model, meta = load_checkpoint(ckpt)
    adata, patches = load_cache(base / "cache", "P2")
    rows = np.arange(36)
    if model_entry(name).input_kind == "section":
        again = predict_section(SectionModule(model, TrainConfig(), meta), patches, rows,
                                section_array_coords(adata), meta.patch)
    else:
        again = predict_rows(ExpressionModule(model, TrainConfig(), meta), patches, rows, meta.patch)
    with np.load(run / C.PREDICTIONS_NPZ) as z:
        np.testing.assert_allclose(again, z["P2"], atol=1e-4)


@pytest.mark.parametrize(("name", "options"), [("bleep", TINY["bleep"]), ("hist2st", {**TINY["hist2st"],
                                                                                      "zinb_weight": 0.25})])
def test_gene_scaled_labels_are_refused_where_labels_are_not_regressed(tmp_path: Path, name: str,
                                                                        options: dict) -> None:
    """A retrieval model returns training labels and a count likelihood needs counts: z-scored labels would make
    both wrong, so `train.scale_labels: gene` stops them with an error naming the model."""
    from hifusion.errors import ConfigError

    root = write_dataset(tmp_path / "raw")
    cfg = parse_config(tiny_config(root, tmp_path / "cache", tmp_path, epochs=1, scale_labels="gene"))
    with pytest.raises(ConfigError, match=f"model '{name}'.*scale_labels"):
        run_benchmark(cfg, tmp_path / "out", models=[ModelConfig(name=name, options=options)], figures=False)
