"""Fixtures for whole-slide prediction tests (helpers in slides.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from .slides import SyntheticSlide, synthetic_slide, write_checkpoint, write_pyramid_tiff


@pytest.fixture(scope="session")
def slide_data() -> SyntheticSlide:
    return synthetic_slide()


@pytest.fixture(scope="session")
def pyramid_tiff(tmp_path_factory: pytest.TempPathFactory, slide_data: SyntheticSlide) -> Path:
    return write_pyramid_tiff(tmp_path_factory.mktemp("slides") / "slide.tif", slide_data.image, slide_data.mpp)


@pytest.fixture(scope="session")
def plain_png(tmp_path_factory: pytest.TempPathFactory, slide_data: SyntheticSlide) -> Path:
    """The slide at half resolution (1 um/px) as a PNG, which records no um/px."""
    path = tmp_path_factory.mktemp("slides") / "slide.png"
    Image.fromarray(slide_data.image[::2, ::2]).save(path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt")
