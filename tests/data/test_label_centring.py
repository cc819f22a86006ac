"""`train.centre_labels: section`: image models fit the pattern within each section, not the level between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hifusion.config import DataConfig, ValConfig, parse_config
from hifusion.data.splitdata import load_split
from hifusion.data.splits import Split
from hifusion.errors import ConfigError
from tests.synthetic import prepare_cache, tiny_config, write_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = write_dataset(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("cache") / "c"
    prepare_cache("her2st", raw, None, out, spot_um=80.0, spot_px=16, progress=False)
    return out


def _data(cache: Path, train: list[str], val: ValConfig | None = None):
    cfg = DataConfig(cache=cache, genes={"method": "top_mean", "n": 10})
    return load_split(cache, Split("fixed", train, ["P2"]), cfg, val or ValConfig())


def test_each_section_is_moved_to_the_pooled_training_mean(cache: Path) -> None:
    data = _data(cache, ["P1", "Q1"])
    level = data.train_labels().mean(0)
    for s in ("P1", "Q1"):
        rows = data.train_rows[s]
        raw, centred = data.fit_labels(s, rows), data.fit_labels(s, rows, "section")
        np.testing.assert_array_equal(raw, data.label_rows(s, rows))  # "none" is the measured labels
        assert centred.dtype == np.float32
        np.testing.assert_allclose(centred.mean(0), level, atol=1e-5)  # every section at the same level ...
        np.testing.assert_allclose(centred - centred.mean(0), raw - raw.mean(0), atol=1e-5)  # ... same pattern
    assert not np.allclose(data.fit_labels("P1", data.train_rows["P1"]).mean(0), level, atol=1e-3)  # they differed
    pooled = data.fit_train_labels("section")
    np.testing.assert_allclose(pooled.mean(0), level, atol=1e-5)  # the output-head start does not move
    with pytest.raises(ConfigError, match="label centring"):
        data.fit_labels("P1", data.train_rows["P1"], "gene")


def test_one_training_section_is_left_as_it_is(cache: Path) -> None:
    data = _data(cache, ["P1"])
    rows = data.train_rows["P1"]
    np.testing.assert_allclose(data.fit_labels("P1", rows, "section"), data.label_rows("P1", rows), atol=1e-5)


def test_validation_band_is_centred_on_its_own_rows(cache: Path) -> None:
    data = _data(cache, ["P1"], ValConfig(mode="spatial_block", fraction=0.3))
    level = data.train_labels().mean(0)
    band = data.fit_labels("P1", data.val_rows["P1"], "section")
    np.testing.assert_allclose(band.mean(0), level, atol=1e-5)


def test_a_benchmark_trains_on_centred_labels(cache: Path, tmp_path: Path) -> None:
    from hifusion.evaluate.protocols import run_benchmark

    raw_root = cache.parent  # the cache already holds the sections: prepare is skipped
    mapping = tiny_config(raw_root, cache, tmp_path, centre_labels="section")
    mapping["data"].pop("prepare")
    mapping["protocol"] = {"name": "fixed", "train": ["P1", "Q1"], "test": ["P2"]}
    mapping["train"]["epochs"] = 1
    cfg = parse_config(mapping)
    assert cfg.train.centre_labels == "section"
    res = run_benchmark(cfg, tmp_path / "run", models=[m for m in cfg.benchmark_models() if m.name == "hifusion"],
                        figures=False)
    assert np.isfinite(res.metrics["value"]).all()
    assert "centre_labels: section" in (tmp_path / "run" / "config.yaml").read_text()
