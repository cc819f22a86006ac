"""Shared fixtures: the real HER2ST sections in ../shared/data/her2st (tests using them skip where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_HER2ST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


@pytest.fixture(scope="session")
def her2st_shared() -> Path:
    """Root of the real HER2ST sections (A1, B4, C2-C4), or skip the test with a message saying where it looked."""
    if not (SHARED_HER2ST / "ST-cnts").is_dir():
        pytest.skip(f"real HER2ST data not found at {SHARED_HER2ST} (expected ../shared/data/her2st beside the repo)")
    return SHARED_HER2ST


SHARED_VISIUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "visium_scanpy"


@pytest.fixture(scope="session")
def visium_scanpy() -> Path:
    """scanpy's real Space Ranger 1.0.0 test output (100 spots, blank hires image), or skip saying where it looked."""
    if not (SHARED_VISIUM / "outs" / "filtered_feature_bc_matrix.h5").is_file():
        pytest.skip(f"real Visium fixture not found at {SHARED_VISIUM} (expected ../shared/data/visium_scanpy)")
    return SHARED_VISIUM
