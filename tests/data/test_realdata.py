"""Real HER2ST sections from ../shared/data/her2st (skipped where absent) and the shipped sample."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hifusion.data.cache.reader import load_cache
from hifusion.data.genes import select_panel
from hifusion.data.readers import read_section
from hifusion.data.sample import her2st_sample
from tests.synthetic import prepare_cache

pytestmark = pytest.mark.realdata


def _anchors(her2st_shared):
    path = her2st_shared.parents[1] / "tools" / "anchors.py"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    spec = importlib.util.spec_from_file_location("anchors", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_top_mean_matches_anchors_on_c2(her2st_shared):
    counts, _, _ = _anchors(her2st_shared).load(str(her2st_shared), "C2")
    means = counts.mean(0)
    expected = sorted(means.index, key=lambda g: (-means[g], g))[:250]
    sec = read_section("her2st", her2st_shared, "C2", check_image=False)
    assert select_panel([sec], "top_mean", n=250) == expected


@pytest.mark.parametrize("section", ["B4", "C2", "C3", "C4"])
def test_pitch_mpp_full_resolution(her2st_shared, section):
    assert 0.686 <= read_section("her2st", her2st_shared, section).mpp <= 0.689


def test_a1_coord_scale(her2st_shared):
    sec = read_section("her2st", her2st_shared, "A1", coord_scale=2000 / 6954)
    assert sec.mpp == pytest.approx(3.19, abs=0.01) and sec.n_spots == 346


def test_prepare_c2_cpu_scale(her2st_shared, tmp_path):
    out = tmp_path / "cache"
    prepare_cache("her2st", her2st_shared, ["C2"], out, spot_px=112, progress=False)
    a, pf = load_cache(out, "C2")
    assert a.n_obs == 187 == len(pf) and a.obs["low_counts"].sum() == 2
    assert pf.get(0).shape == (224, 224, 3) and pf.region_px == 224 and pf.spot_px == 112
    assert pf.pixel_size == pytest.approx(154.6 / 112) and pf.image_mpp == pytest.approx(0.688, abs=0.001)
    assert max(a.uns["spatial"]["C2"]["images"]["hires"].shape) <= 2000
    # the shipped sample is the same data, cropped: same panel, same patches up to JPEG re-encoding
    sample = her2st_sample()
    prepare_cache("her2st", sample, ["C2"], tmp_path / "sample", spot_px=112, progress=False)
    b, pb = load_cache(tmp_path / "sample", "C2")
    assert select_panel([a], n=250) == select_panel([b], n=250)
    assert (a.obs_names == b.obs_names).all() and b.uns["hifusion"]["mpp"] == pytest.approx(a.uns["hifusion"]["mpp"])
    diff = np.abs(pf.get(5).astype(int) - pb.get(5).astype(int)).mean()
    assert diff < 1.0


def test_sample_is_small_and_complete():
    root = her2st_sample()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 15e6
    for s in ("C2", "C3", "C4"):
        assert read_section("her2st", root, s).n_spots > 150
