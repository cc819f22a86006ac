"""Pretraining inside a 2D benchmark: each fold pretrains on its own training sections' images only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hifusion import constants as C
from tests.pretrain.conftest import PRETRAIN
from tests.synthetic import tiny_config


def _config(dataset: Path, cache: Path, out: Path, **pretrain: object) -> dict:
    data = tiny_config(dataset, cache, out)
    data["protocol"] = {"name": "2d", "folds": [["P"], ["Q"]]}
    data["models"] = [{"name": "linear_probe", "options": {"encoder": "test_resnet", "encoder_weights": C.PRETRAINED,
                                                          "n_components": 2}}]
    data["pretrain"] = {**PRETRAIN, "epochs": 1, **pretrain}
    return data


def test_each_fold_pretrains_on_its_training_images_only(pre_dataset: Path, pre_cache: Path, tmp_path: Path) -> None:
    from hifusion.config import parse_config
    from hifusion.evaluate.protocols import run_benchmark
    from hifusion.pretrain.loop import read_pretrain_meta

    cfg = parse_config(_config(pre_dataset, pre_cache, tmp_path))
    res = run_benchmark(cfg, tmp_path / "bench", figures=False)
    run = json.loads((res.out / "run.json").read_text())
    seen = {split: info["test_resnet"]["sources"] for split, info in run["pretrained"].items()}
    tests = {s["name"]: s["test"] for s in run["splits"]}
    trains = {s["name"]: s["train"] + s["val"] for s in run["splits"]}
    assert len(seen) == 2
    for split, sources in seen.items():
        assert sorted(sources) == sorted(trains[split]) and not set(sources) & set(tests[split])
        weights = res.out / "runs" / split / C.PRETRAIN_DIR / "test_resnet" / C.PRETRAIN_WEIGHTS
        assert read_pretrain_meta(weights)["sources"] == sources
        # the model of that split was built from that file (its checkpoint records the resolved option)
        done = json.loads((res.out / "runs" / split / "linear_probe" / "done.json").read_text())
        from hifusion.checkpoint import read_checkpoint

        meta = read_checkpoint(done["checkpoint"])[C.CKPT_META_KEY]
        assert meta["model"]["options"]["encoder_weights"] == str(weights)
    assert yaml.safe_load((res.out / C.RUN_CONFIG).read_text())["pretrain"]["encoders"] == ["test_resnet"]
    metrics = res.metrics
    assert set(metrics["model"]) == {"linear_probe", "mean_profile"}


def test_test_images_only_when_the_recipe_says_so() -> None:
    from hifusion.data.splits import Split
    from hifusion.pretrain.folds import split_sections

    split = Split(name="f", train=["A1", "A2"], test=["B1"], val=["A3"])
    assert split_sections(split, include_test=False) == ["A1", "A2", "A3"]
    assert split_sections(split, include_test=True) == ["A1", "A2", "A3", "B1"]


def test_a_model_asking_for_an_encoder_nobody_pretrains_fails_at_once(pre_dataset: Path, pre_cache: Path,
                                                                      tmp_path: Path) -> None:
    from hifusion.config import parse_config
    from hifusion.errors import ConfigError
    from hifusion.evaluate.protocols import run_benchmark

    cfg = parse_config(_config(pre_dataset, pre_cache, tmp_path, encoders=["resnet18"]))
    with pytest.raises(ConfigError, match="asks for a pretrained test_resnet"):
        run_benchmark(cfg, tmp_path / "bench", figures=False)
    assert not (tmp_path / "bench" / "runs").exists()
