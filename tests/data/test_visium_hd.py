"""Visium HD reader and prepare on a Space Ranger HD output generated from a real H&E crop (visium_hd_fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from hifusion.data.readers import read_section
from hifusion.errors import ConfigError, InputError
from tests.data.visium_hd_fixture import HIRES_SCALEF, MPP, SATURATION_TISSUE, HDFixture, make_visium_hd

pytest.importorskip("pyarrow", reason="Visium HD needs pyarrow: pip install 'hifusion[visium-hd]'")


@pytest.fixture(scope="module")
def hd(tmp_path_factory: pytest.TempPathFactory) -> HDFixture:
    """The 720 px crop (480 um of 2 um bins, 25 pseudo-spots of 55 um): for reading."""
    return make_visium_hd(tmp_path_factory.mktemp("hd"))


@pytest.fixture(scope="module")
def hd_small(tmp_path_factory: pytest.TempPathFactory) -> HDFixture:
    """A 200 px crop (128 um: 4096 2 um bins): for cutting patches of every bin."""
    return make_visium_hd(tmp_path_factory.mktemp("hd_small"), size_px=200)


def _read(fx: HDFixture, **spots: object):
    return read_section("visium_hd", fx.sample_dir.parent, fx.sample_dir.name, hd_spots=spots)


def _grid_sums(fx: HDFixture, k: int) -> np.ndarray:
    """Direct sums of k x k blocks of 2 um bins, (n, n, genes)."""
    n2 = fx.tissue2.shape[0]
    dense = fx.counts2.toarray().reshape(n2 // k, k, n2 // k, k, -1)
    return dense.sum(axis=(1, 3))


@pytest.mark.parametrize("bin_um", [2, 8, 16])
def test_bins_are_the_direct_sums_of_2um_bins_at_their_place(hd: HDFixture, bin_um: int) -> None:
    sec = _read(hd, bin_um=bin_um, disc_um=0)
    k = bin_um // 2
    sums = _grid_sums(hd, k)
    in_tissue = hd.tissue2.reshape(sums.shape[0], k, sums.shape[1], k).any(axis=(1, 3))
    assert sec.n_spots == int(in_tissue.sum())
    col, row = sec.array_xy[:, 0], sec.array_xy[:, 1]
    np.testing.assert_array_equal(sec.counts.toarray(), sums[row, col])
    side = bin_um / MPP  # full-res pixels per bin
    np.testing.assert_allclose(sec.centers_px, np.c_[(col + 0.5) * side, (row + 0.5) * side])
    np.testing.assert_allclose(sec.spot_diameter_px * sec.mpp, bin_um)
    assert sec.counts.sum() == hd.counts2.sum()  # the three bin sizes hold the same molecules
    assert sec.image_path.name == "hd1_tissue_image.tif" and sec.mpp == pytest.approx(MPP)


def test_bin_centres_sit_on_the_tissue_of_the_image(hd_small: HDFixture) -> None:
    """A 2 um bin is in tissue exactly where the image under its centre is stained (the fixture's rule)."""
    sec = _read(hd_small, bin_um=2, disc_um=0)
    img = hd_small.image.astype(np.float32) / 255.0
    val = img.max(-1)
    sat = (val - img.min(-1)) / np.maximum(val, 1e-6)
    half = 1.0 / MPP
    on = []
    for x, y in sec.centers_px:
        x0, x1, y0, y1 = (round(v) for v in (x - half, x + half, y - half, y + half))
        on.append(sat[y0:y1, x0:x1].mean() > SATURATION_TISSUE)
    assert all(on)
    assert sec.n_spots == int(hd_small.tissue2.sum()) < hd_small.tissue2.size  # glass bins are left out


def test_pseudo_spots_are_discs_of_summed_bins(hd: HDFixture) -> None:
    sec = _read(hd)  # the default: 55 um discs on a 100 um hex grid from the 8 um bins
    bins = _read(hd, bin_um=8, disc_um=0)
    assert 10 <= sec.n_spots <= 40
    centres_um, bins_um = sec.centers_px * sec.mpp, bins.centers_px * bins.mpp
    dist = np.linalg.norm(centres_um[:, None] - bins_um[None], axis=-1)
    direct = (dist <= 27.5).astype(np.float32) @ bins.counts.toarray()
    np.testing.assert_array_equal(sec.counts.toarray(), direct)
    assert (sec.annotations["n_bins"].to_numpy() >= 0.5 * np.pi * 27.5**2 / 64).all()
    np.testing.assert_allclose(sec.spot_diameter_px * sec.mpp, 55.0)
    d = np.linalg.norm(centres_um[:, None] - centres_um[None], axis=-1)
    assert np.min(d + 1e9 * np.eye(len(d)), axis=1).min() == pytest.approx(100.0)  # hex pitch
    square = _read(hd, disc_um=100, pitch_um=150, grid="square")
    assert square.n_spots < sec.n_spots and square.counts.sum() > 0


def test_hires_fallback_scales_coordinates_and_mpp(tmp_path: Path) -> None:
    fx = make_visium_hd(tmp_path, size_px=200, full_res=False)
    sec = _read(fx, bin_um=16, disc_um=0)
    assert sec.image_path.name == "tissue_hires_image.png"
    assert sec.mpp == pytest.approx(MPP / HIRES_SCALEF)
    col, row = sec.array_xy[:, 0], sec.array_xy[:, 1]
    np.testing.assert_allclose(sec.centers_px, np.c_[(col + 0.5), (row + 0.5)] * 16 / MPP * HIRES_SCALEF)


def _break(fx: HDFixture, what: str) -> Path:
    spatial = fx.bin_dir(8) / "spatial"
    if what == "missing parquet":
        (spatial / "tissue_positions.parquet").unlink()
        return spatial / "tissue_positions.parquet"
    if what == "malformed parquet":
        (spatial / "tissue_positions.parquet").write_bytes(b"barcode,in_tissue\nnot parquet\n")
        return spatial / "tissue_positions.parquet"
    if what == "parquet without pixel columns":
        import pandas as pd

        p = spatial / "tissue_positions.parquet"
        pd.read_parquet(p).drop(columns=["pxl_row_in_fullres"]).to_parquet(p)
        return p
    sf = spatial / "scalefactors_json.json"
    data = json.loads(sf.read_text())
    del data["microns_per_pixel"]
    sf.write_text(json.dumps(data))
    return sf


@pytest.mark.parametrize("what", ["missing parquet", "malformed parquet", "parquet without pixel columns",
                                  "scalefactors without microns_per_pixel"])
def test_broken_files_are_errors_naming_the_file(tmp_path: Path, what: str) -> None:
    fx = make_visium_hd(tmp_path, size_px=200)
    path = _break(fx, what)
    with pytest.raises(InputError) as err:
        _read(fx, bin_um=8, disc_um=0)
    assert str(path) in str(err.value)


def test_bin_folder_without_image_and_missing_bin_size(tmp_path: Path) -> None:
    fx = make_visium_hd(tmp_path, size_px=200, full_res=False, hires=False)
    with pytest.raises(InputError, match="no image for this bin folder") as err:
        _read(fx, bin_um=16, disc_um=0)
    assert str(fx.bin_dir(16) / "spatial") in str(err.value)
    import shutil

    shutil.rmtree(fx.bin_dir(2))
    with pytest.raises(InputError, match=r"no square_002um folder \(found \['square_008um', 'square_016um'\]\)"):
        _read(fx, bin_um=2, disc_um=0)
    with pytest.raises(ConfigError, match="bin size"):
        _read(fx, bin_um=4, disc_um=0)


@pytest.mark.parametrize("args, spots_um", [
    (["--hd-bin-um", "2", "--hd-disc-um", "0"], 2.0),
    (["--hd-bin-um", "8", "--hd-disc-um", "0"], 8.0),
    (["--hd-bin-um", "16", "--hd-disc-um", "0"], 16.0),
    ([], 55.0),
])
def test_prepare_cli_at_each_bin_size_and_as_pseudo_spots(hd_small: HDFixture, hd: HDFixture, tmp_path: Path,
                                                          args: list[str], spots_um: float) -> None:
    from typer.testing import CliRunner

    from hifusion.cli import app

    fx = hd if spots_um == 55.0 else hd_small  # 55 um discs need room; bins are many, so a small crop
    out = tmp_path / "cache"
    res = CliRunner().invoke(app, ["prepare", "--format", "visium_hd", "--root", str(fx.sample_dir.parent),
                                   "--out", str(out), "--spot-px", "8", "--region-factor", "1", *args])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "cache.json").read_text())
    assert manifest["spot_um"] == pytest.approx(round(1.546 * spots_um, 3))  # the field of view follows the spot
    a = ad.read_h5ad(out / "hd1.h5ad")
    sec = _read(fx, **({"bin_um": int(args[1]), "disc_um": 0} if args else {}))
    assert a.n_obs == sec.n_spots and a.X.sum() == sec.counts.sum()
    np.testing.assert_allclose(a.obsm["spatial"], sec.centers_px)
    assert a.uns["hifusion"]["visium_hd"]["disc_um"] == (55.0 if not args else 0.0)
    assert a.obs["on_tissue"].mean() > 0.9
