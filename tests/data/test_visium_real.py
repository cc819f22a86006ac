"""The real Space Ranger 1.0.0 output scanpy tests on (../shared/data/visium_scanpy; skipped where absent).

It ships no full-resolution image and a blank (all-black) hires image: `prepare` must refuse the blank image by name,
and cut correct patches from the lowres image at its scale factor when asked to.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from hifusion.data.cache.reader import load_cache
from hifusion.data.readers import list_sections, read_section
from hifusion.data.readers.visium import read_10x_h5
from hifusion.errors import InputError
from tests.synthetic import prepare_cache

pytestmark = pytest.mark.realdata
SECTION = "visium_scanpy"  # the reader names a Space Ranger folder after the folder holding outs/
KW = dict(spot_px=112, progress=False)
MPP_LOWRES = 55.0 / (89.42751063343188 * 0.045004502)  # 13.67 um/px


def _lowres(root):
    return root / "outs" / "spatial" / "tissue_lowres_image.png"


def test_section_name_and_default_image(visium_scanpy):
    assert list_sections("visium", visium_scanpy) == [SECTION]
    sec = read_section("visium", visium_scanpy, SECTION)  # no full-res image: the hires one, at its scale factor
    assert sec.image_path.name == "tissue_hires_image.png" and sec.n_spots == 100
    assert sec.meta["coord_scale"] == pytest.approx(0.150015)
    assert sec.mpp == pytest.approx(55.0 / (89.42751063343188 * 0.150015))


def test_blank_hires_image_is_refused_by_name(visium_scanpy, tmp_path):
    with pytest.raises(InputError, match="no tissue under the spots") as e:
        prepare_cache("visium", visium_scanpy, None, tmp_path / "c", **KW)
    assert "tissue_hires_image.png" in str(e.value) and "--allow-background" in str(e.value)
    assert not list((tmp_path / "c").glob("*.h5*"))  # nothing half-written
    prepare_cache("visium", visium_scanpy, None, tmp_path / "c", allow_background=True, **KW)
    a, _ = load_cache(tmp_path / "c", SECTION)
    assert not a.obs["on_tissue"].any() and a.uns["hifusion"]["tissue_fraction"] == 0.0


def test_lowres_image_patches_sit_on_their_spots(visium_scanpy, tmp_path):
    out = tmp_path / "c"
    with pytest.warns(UserWarning, match=r"upsampled 9\.9x"):
        prepare_cache("visium", visium_scanpy, None, out, images={SECTION: _lowres(visium_scanpy)}, **KW)
    a, pf = load_cache(out, SECTION)
    assert a.n_obs == 100 == len(pf) and pf.image_mpp == pytest.approx(MPP_LOWRES) and 13.6 < pf.image_mpp < 13.8
    assert a.obs["on_tissue"].all() and a.uns["hifusion"]["image_kind"] == "lowres"
    # spot centres are the full-resolution positions times tissue_lowres_scalef
    pos = read_section("visium", visium_scanpy, SECTION, image=_lowres(visium_scanpy))
    sf = json.loads((visium_scanpy / "outs" / "spatial" / "scalefactors_json.json").read_text())
    _, barcodes, _, _ = read_10x_h5(visium_scanpy / "outs" / "filtered_feature_bc_matrix.h5")
    assert set(barcodes) == set(a.obs_names)
    np.testing.assert_allclose(a.obsm["spatial"], pos.centers_px)
    assert a.uns["spatial"][SECTION]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        sf["spot_diameter_fullres"] * sf["tissue_lowres_scalef"])
    # the centre of each cut patch shows the lowres pixels around the spot's scaled position (the window is centred
    # on the corner of pixel (cx, cy), so the centre of the patch is the mean of the 2 x 2 pixels meeting there)
    img = np.asarray(Image.open(_lowres(visium_scanpy)).convert("RGB")).astype(np.float64)
    c = pf.region_px // 2
    got, want = [], []
    for i, (x, y) in enumerate(a.obsm["spatial"]):
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        want.append(img[cy - 1 : cy + 1, cx - 1 : cx + 1].reshape(-1, 3).mean(0))
        got.append(pf.get(i)[c - 3 : c + 3, c - 3 : c + 3].reshape(-1, 3).astype(np.float64).mean(0))
    got, want = np.array(got), np.array(want)
    assert np.abs(got - want).max() < 3.0
    assert np.abs(got - np.roll(want, 1, axis=0)).mean() > 5 * np.abs(got - want).mean() + 1.0  # not any pixel


def test_h5ad_with_scanpy_images(visium_scanpy, tmp_path):
    """scanpy.read_visium's layout: counts, obsm['spatial'] in full-res pixels, images + scale factors in uns."""
    from hifusion.data.readers.visium import read_positions

    counts, barcodes, names, _ = read_10x_h5(visium_scanpy / "outs" / "filtered_feature_bc_matrix.h5")
    pos, _ = read_positions(visium_scanpy / "outs" / "spatial")
    pos = pos.loc[barcodes]
    sf = json.loads((visium_scanpy / "outs" / "spatial" / "scalefactors_json.json").read_text())
    lowres = np.asarray(Image.open(_lowres(visium_scanpy)).convert("RGB"), dtype=np.float32) / 255.0  # as scanpy
    hires = np.zeros((2000, 2000, 3), np.float32)
    a = ad.AnnData(X=counts)
    a.obs_names, a.var_names = barcodes, [f"{g}_{i}" for i, g in enumerate(names)]
    a.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    a.uns["spatial"] = {"lib": {"images": {"hires": hires, "lowres": lowres}, "scalefactors": sf}}
    a.write_h5ad(tmp_path / "S1.h5ad")
    with pytest.raises(InputError, match=r"no tissue under the spots") as e:
        prepare_cache("h5ad", tmp_path / "S1.h5ad", None, tmp_path / "c", **KW)
    assert "S1.h5ad" in str(e.value) and "['images']['hires']" in str(e.value)
    del a.uns["spatial"]["lib"]["images"]["hires"]
    a.write_h5ad(tmp_path / "S2.h5ad")
    with pytest.warns(UserWarning, match="upsampled"):
        prepare_cache("h5ad", tmp_path / "S2.h5ad", None, tmp_path / "c2", **KW)
    b, pf = load_cache(tmp_path / "c2", "S2")
    assert pf.image_mpp == pytest.approx(MPP_LOWRES) and b.uns["hifusion"]["image_kind"] == "lowres"
    np.testing.assert_allclose(b.obsm["spatial"], a.obsm["spatial"] * sf["tissue_lowres_scalef"])


def test_cli_prepare_visium(visium_scanpy, tmp_path):
    """The done-when of issue 15 as a user types it: refused by name, then written from the lowres image."""
    import os
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hifusion.cli", "prepare", *args], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})

    help_text = cli("--help").stdout
    assert "--image" in help_text and "--allow-background" in help_text
    base = ("--format", "visium", "--root", str(visium_scanpy), "--spot-px", "112")
    res = cli(*base, "--out", str(tmp_path / "a"))
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "tissue_hires_image.png: no tissue under the spots" in errors[0]
    res = cli(*base, "--out", str(tmp_path / "b"), "--image", f"{SECTION}={_lowres(visium_scanpy)}")
    assert res.returncode == 0, res.stderr
    assert "13.7 um/px" in res.stderr and "warning: " in res.stderr and "upsampled 9.9x" in res.stderr
    assert "100 spots, 100% on tissue" in res.stderr
    assert load_cache(tmp_path / "b", SECTION)[0].n_obs == 100
