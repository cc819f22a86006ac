"""Shared, module-scoped inputs for the robustness suite: a tiny dataset, its cache, and one trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import tiny_config, write_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("robust_raw"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset prepared at the tiny config's scale (16 px spot, 32 px region)."""
    from hifusion.config import parse_config
    from hifusion.evaluate.protocols import ensure_cache

    cache = tmp_path_factory.mktemp("robust_cache") / "c"
    cfg = parse_config(tiny_config(tiny_dataset, cache, cache.parent / "runs"))
    ensure_cache(cfg.data, progress=False)
    return cache


@pytest.fixture(scope="session")
def trained_run(tiny_dataset: Path, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch HiFusion training run (results folder); its checkpoint is under runs/fixed/hifusion."""
    from hifusion.config import parse_config
    from hifusion.evaluate.protocols import run_benchmark

    base = tmp_path_factory.mktemp("robust_trained")
    cfg = parse_config(tiny_config(tiny_dataset, tiny_cache, base, epochs=1))
    out = base / "run"
    run_benchmark(cfg, out, models=[m for m in cfg.benchmark_models() if m.name == "hifusion"], figures=False)
    return out
