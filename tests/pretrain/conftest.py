"""A tiny dataset, its patch cache (16 px spot, 32 px region at 5 um/px) and a config with a small pretraining."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.robustness.helpers import write_config
from tests.synthetic import tiny_config, write_dataset

# timm's tiny test ResNet (0.4 M parameters), small heads and batches: seconds on two cores. The paper's resnet18 and
# resnet10 are pretrained in test_pretrain.py::two_encoders and loaded into every image model there.
PRETRAIN = {"encoders": ["test_resnet"], "epochs": 2, "batch_size": 8, "hidden_dim": 64, "proj_dim": 32, "threads": 1}


@pytest.fixture(scope="session")
def pre_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pretrain_raw"))


@pytest.fixture(scope="session")
def pre_cache(pre_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hifusion.config import parse_config
    from hifusion.evaluate.protocols import ensure_cache

    cache = tmp_path_factory.mktemp("pretrain_cache") / "c"
    ensure_cache(parse_config(tiny_config(pre_dataset, cache, cache.parent / "runs")).data, progress=False)
    return cache


def pretrain_config(path: Path, dataset: Path, cache: Path, **pretrain: object) -> Path:
    """A tiny config file whose `pretrain` section is PRETRAIN updated with `pretrain`."""
    data = tiny_config(dataset, cache, path.parent / "runs")
    data["pretrain"] = {**PRETRAIN, **pretrain}
    return write_config(path, data)
