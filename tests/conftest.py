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
