"""Whole-slide prediction: tissue detection, grids, level choice, end-to-end outputs, errors and exact agreement with
the patches `prepare` cuts (same extract function, same module preprocessing)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hifusion import constants as C
from hifusion.data.image import OpenSlideImage, TiffImage, level_image, level_sizes, open_image
from hifusion.data.patches import extract_patch, spot_from_region
from hifusion.data.tissue import lattice
from hifusion.errors import CheckpointError, ConfigError, HifusionError, InputError
from hifusion.geometry import PatchGeometry
from hifusion.predict import (
    Compute,
    SpotLayout,
    choose_level,
    default_pitch_um,
    detect_tissue,
    load_predictor,
    open_slide,
    predict_slide,
    spot_grid,
)
from hifusion.predict.slide import PatchStream
from hifusion.recipe import Recipe

from .slides import CPU, PANEL, PIXEL_SIZE, REGION_PX, SPOT_PX, synthetic_slide, write_checkpoint, write_pyramid_tiff


def reference_predictions(ckpt: Path, image_path: Path, coords: np.ndarray, image_mpp: float,
                          level: int = 0) -> np.ndarray:
    """What the cache path gives: `extract_patch` region patches, centre spot crops, the module's preprocess."""
    module, meta = load_predictor(ckpt, "cpu")
    p = meta.patch
    with open_image(image_path) as img:
        view = level_image(img, level)
        ds = img.size[0] / view.size[0]
        regions = np.stack([extract_patch(view, c / ds, p.region_px, p.pixel_size, image_mpp * ds)[0]
                            for c in np.asarray(coords, dtype=np.float64)])
    spots = spot_from_region(regions, p.spot_px)
    batch = {"spot": torch.from_numpy(np.ascontiguousarray(spots.transpose(0, 3, 1, 2))),
             "region": torch.from_numpy(np.ascontiguousarray(regions.transpose(0, 3, 1, 2)))}
    with torch.no_grad():
        spot, region = module.preprocess(batch)
        return module.model(spot, region).pred.float().numpy()


def write_spots(path: Path, coords: np.ndarray, barcodes: list[str] | None = None) -> Path:
    df = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1]})
    if barcodes is not None:
        df.insert(0, "barcode", barcodes)
    df.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------------ tissue and grid
def test_tissue_mask_excludes_background_and_pen(slide_data) -> None:
    thumb = slide_data.image[::4, ::4]
    mask = detect_tissue(thumb)
    truth, pen = slide_data.tissue[::4, ::4], slide_data.pen[::4, ::4]
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95
    assert not (mask & pen).any()
    assert (mask & ~truth).sum() < 0.005 * mask.sum()


def test_tissue_mask_black_background_and_blank_slide() -> None:
    s = synthetic_slide(384, 512, seed=1)
    img = s.image.copy()
    img[~s.tissue & ~s.pen] = np.random.default_rng(0).integers(0, 12, (int((~s.tissue & ~s.pen).sum()), 3))
    mask = detect_tissue(img)
    assert (mask & s.tissue).sum() / (mask | s.tissue).sum() > 0.9
    assert not mask[~s.tissue].any()
    blank = np.full((300, 400, 3), 240, np.uint8) + np.random.default_rng(1).integers(0, 8, (300, 400, 3), np.uint8)
    assert not detect_tissue(blank).any()


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_spot_grid_on_tissue_only(slide_data, kind: str) -> None:
    scale = 0.25
    mask = detect_tissue(slide_data.image[::4, ::4])
    pitch = 100.0
    pts, idx, frac = spot_grid(mask, scale, pitch, kind, diameter_px=60, image_size=(2048, 1536), return_index=True)
    assert len(pts) > 50 and (frac >= 0.5).all()
    ix, iy = np.round(pts).astype(int).T
    assert slide_data.tissue[iy, ix].mean() > 0.97
    assert not slide_data.pen[iy, ix].any()
    if kind == "hex":
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(len(pts)) * 1e9
        assert np.allclose(d.min(axis=1), pitch)  # six neighbours at one pitch on a hexagonal lattice
        assert ((idx[:, 0] + idx[:, 1]) % 2 == 0).all()  # Visium numbering: col parity follows row parity
    else:
        assert np.allclose(np.diff(np.unique(pts[:, 1])), pitch)


def test_lattice_and_default_pitch() -> None:
    pts, idx = lattice(1000, 800, 200, "hex")
    assert pts[:, 0].min() == 100 and pts[:, 1].min() == 100 and (pts[:, 0] < 1000).all() and (pts[:, 1] < 800).all()
    assert np.isclose(np.diff(np.unique(pts[:, 1]))[0], 200 * math.sqrt(3) / 2)
    assert default_pitch_um(154.6 / 224, 224) == 309.0
    assert default_pitch_um(154.6 / 112, 112) == 309.0
    with pytest.raises(ValueError):
        lattice(100, 100, 10, "triangle")


def test_choose_level() -> None:
    sizes = [(4000, 3000), (1000, 750), (250, 188)]
    assert choose_level(sizes, 0.25, 0.69) == 0  # level 1 is 1.0 um/px: coarser than the target
    assert choose_level(sizes, 0.25, 1.38) == 1
    assert choose_level(sizes, 0.25, 1.0) == 1
    assert choose_level(sizes, 0.25, 100) == 2
    assert choose_level([(10, 10)], 0.5, 0.1) == 0


# ------------------------------------------------------------------------------------------------- pyramid reading
def test_pyramid_levels_tifffile_and_openslide(tmp_path: Path, slide_data) -> None:
    path = write_pyramid_tiff(tmp_path / "flat.tif", slide_data.image, slide_data.mpp, subifds=False)
    with TiffImage(path) as t, OpenSlideImage(path) as o:
        assert level_sizes(t) == level_sizes(o) == [(2048, 1536), (1024, 768), (512, 384)]
        assert t.mpp == pytest.approx(0.5) and o.mpp == pytest.approx(0.5)
        for lv in (1, 2):
            a, b = level_image(t, lv), level_image(o, lv)
            assert a.mpp == b.mpp == pytest.approx(0.5 * 2**lv)
            np.testing.assert_array_equal(a.read_region(-5, 10, 40, 30), b.read_region(-5, 10, 40, 30))


def test_level_patches_match_level0(pyramid_tiff: Path) -> None:
    """Patches cut from level 2 show the same place as patches from level 0 (coordinates scale correctly)."""
    coords = np.array([[700.0, 760.0], [900.3, 600.7], [1200.0, 900.0]])
    out = {}
    for level in (0, 2):
        s = open_slide(pyramid_tiff, mpp=None, target_mpp=PIXEL_SIZE, level=level)
        try:
            stream = PatchStream(s, PatchGeometry(PIXEL_SIZE, SPOT_PX, REGION_PX), 8)
            out[level] = stream.make_batch(stream.level_centres(coords))
        finally:
            s.close()
    diff = (out[0]["region"].float() - out[2]["region"].float()).abs().mean()
    assert diff < 6.0, diff  # resampling noise only; a one-pixel shift of the texture gives ~15


def test_batch_block_read_is_bit_identical(pyramid_tiff: Path) -> None:
    """A batch of neighbouring spots reads its bounding box once; its patches equal per-spot `extract_patch` reads."""
    from hifusion.predict.slide import _Block, block_view

    rng = np.random.default_rng(5)
    groups = [rng.uniform(600, 1000, size=(12, 2)), rng.uniform(0, 150, size=(6, 2))]  # inside; over the corner
    for level in (0, 1):
        s = open_slide(pyramid_tiff, mpp=None, target_mpp=PIXEL_SIZE, level=level)
        try:
            stream = PatchStream(s, PatchGeometry(PIXEL_SIZE, SPOT_PX, REGION_PX), 16)
            for coords in groups:
                centres = stream.level_centres(coords)
                assert isinstance(block_view(s.view, centres, REGION_PX, PIXEL_SIZE, s.level_mpp), _Block)
                got = stream.make_batch(centres)["region"].numpy().transpose(0, 2, 3, 1)
                want = np.stack([extract_patch(s.view, c, REGION_PX, PIXEL_SIZE, s.level_mpp)[0] for c in centres])
                np.testing.assert_array_equal(got, want)
        finally:
            s.close()


# ------------------------------------------------------------------------------------------------------- end to end
def test_predict_pyramid_end_to_end(tmp_path: Path, checkpoint: Path, pyramid_tiff: Path, slide_data) -> None:
    out = predict_slide(checkpoint, pyramid_tiff, tmp_path / "pred", compute=CPU)
    a = ad.read_h5ad(out / "predictions.h5ad")
    n = a.n_obs
    assert n >= 10 and a.shape == (n, len(PANEL)) and list(a.var_names) == PANEL
    assert a.X.dtype == np.float32 and np.isfinite(a.X).all() and a.X.std(axis=0).min() > 0
    xy = a.obsm[C.OBSM_SPATIAL]
    assert xy.shape == (n, 2)
    ix, iy = np.round(xy).astype(int).T
    assert slide_data.tissue[iy, ix].all() and not slide_data.pen[iy, ix].any()
    info = a.uns[C.UNS_HIFUSION]
    assert info["level"] == 2 and info["mpp"] == pytest.approx(0.5) and info["mpp_source"] == "file"
    assert info["pitch_um"] == default_pitch_um(PIXEL_SIZE, SPOT_PX) and info["grid"] == "hex"
    assert info["label"] == "log1p_cpm"
    sp = a.uns[C.UNS_SPATIAL]["slide"]
    hires = sp["images"][C.UNS_HIRES]
    assert hires.dtype == np.uint8 and hires.shape == (1500, 2000, 3)  # long side C.HIRES_MAX_SIDE
    sf = sp["scalefactors"]
    assert sf[C.UNS_HIRES_SCALEF] == pytest.approx(hires.shape[1] / 2048)
    assert sf[C.UNS_SPOT_DIAMETER] == pytest.approx(SPOT_PX * PIXEL_SIZE / 0.5)
    csv = pd.read_csv(out / "predictions.csv")
    assert list(csv.columns) == ["barcode", "x", "y", *PANEL] and len(csv) == n
    np.testing.assert_allclose(csv[PANEL].to_numpy(), a.X, rtol=1e-5, atol=1e-6)
    assert list(csv["barcode"]) == list(a.obs_names)
    maps = sorted(p.name for p in (out / "maps").iterdir())
    assert maps == ["ERBB2.png", "KRT19.png"]  # the marker genes present in the panel
    for m in maps:
        with Image.open(out / "maps" / m) as im:
            assert im.size[0] > 300
    page = (out / "index.html").read_text()
    assert 'src="maps/ERBB2.png"' in page and 'src="maps/KRT19.png"' in page
    assert not list(out.rglob("*.tmp"))

    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, PendingDeprecationWarning))
        sc.pl.spatial(a, color="ERBB2", show=False)  # laid out for scanpy as is


def test_predict_matches_cache_patches_exactly(tmp_path: Path, checkpoint: Path, pyramid_tiff: Path) -> None:
    """Predictions at given spots equal the model on `extract_patch` patches + module preprocessing (1e-5)."""
    coords = np.array([[820.0, 770.0], [701.4, 655.6], [1000.5, 980.49], [60.0, 40.0], [2040.0, 1530.0]])
    spots = write_spots(tmp_path / "spots.csv", coords, [f"s{i}" for i in range(len(coords))])
    for level, bs, workers in ((0, 64, 1), (None, 2, 2)):  # one batch inline; small batches from two threads
        out = predict_slide(checkpoint, pyramid_tiff, tmp_path / f"p{level}", layout=SpotLayout(spots=spots),
                            compute=Compute(progress=False, device="cpu", batch_size=bs, workers=workers), level=level)
        a = ad.read_h5ad(out / "predictions.h5ad")
        assert list(a.obs_names) == [f"s{i}" for i in range(len(coords))]
        np.testing.assert_allclose(a.obsm[C.OBSM_SPATIAL], coords)
        used = a.uns[C.UNS_HIFUSION]["level"]
        assert used == (0 if level == 0 else 2)
        ref = reference_predictions(checkpoint, pyramid_tiff, coords, 0.5, level=used)
        np.testing.assert_allclose(a.X, ref, atol=1e-5, rtol=1e-5)
        assert list(a.obs[C.OBS_AT_BORDER]) == [False, False, False, True, True]


@pytest.mark.parametrize("norm", [None, {"mode": "dataset", "mean": [0.7, 0.5, 0.7], "std": [0.15, 0.2, 0.1]}])
def test_plain_png_needs_mpp(tmp_path: Path, plain_png: Path, norm: dict | None) -> None:
    ckpt = write_checkpoint(tmp_path / "c.ckpt", normalisation=norm, seed=3)
    with pytest.raises(InputError, match=r"slide\.png: .*--mpp"):
        predict_slide(ckpt, plain_png, tmp_path / "x", compute=CPU)
    coords = np.array([[400.0, 380.0], [300.2, 420.7], [520.0, 300.0]])
    spots = write_spots(tmp_path / "spots.csv", coords)
    out = predict_slide(ckpt, plain_png, tmp_path / "png", layout=SpotLayout(spots=spots), compute=CPU, mpp=1.0,
                        genes=["GENE_B"])
    a = ad.read_h5ad(out / "predictions.h5ad")
    assert list(a.obs_names) == ["spot_0", "spot_1", "spot_2"] and a.uns[C.UNS_HIFUSION]["mpp_source"] == "option"
    np.testing.assert_allclose(a.X, reference_predictions(ckpt, plain_png, coords, 1.0), atol=1e-5, rtol=1e-5)
    assert [p.name for p in (out / "maps").iterdir()] == ["GENE_B.png"]
    grid = predict_slide(ckpt, plain_png, tmp_path / "sq", layout=SpotLayout(grid="square", pitch_um=100),
                         compute=CPU, mpp=1.0)
    g = ad.read_h5ad(grid / "predictions.h5ad")
    assert g.n_obs > 20 and np.allclose(np.diff(np.unique(g.obsm[C.OBSM_SPATIAL][:, 0])), 100.0)


# ----------------------------------------------------------------------------------------------------------- errors
def test_spot_file_errors(tmp_path: Path, checkpoint: Path, plain_png: Path) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"px": [1.0], "py": [2.0]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"bad\.csv: .*columns x and y"):
        predict_slide(checkpoint, plain_png, tmp_path / "o", layout=SpotLayout(spots=bad), compute=CPU, mpp=1.0)
    off = write_spots(tmp_path / "off.csv", np.array([[10.0, 10.0], [5000.0, 10.0]]))
    with pytest.raises(InputError, match=r"off\.csv: 1 spot\(s\) lie outside the slide \(1024 x 768 px\)"):
        predict_slide(checkpoint, plain_png, tmp_path / "o", layout=SpotLayout(spots=off), compute=CPU, mpp=1.0)
    dup = write_spots(tmp_path / "dup.csv", np.array([[10.0, 10.0], [20.0, 10.0]]), ["a", "a"])
    with pytest.raises(InputError, match="duplicate barcode"):
        predict_slide(checkpoint, plain_png, tmp_path / "o", layout=SpotLayout(spots=dup), compute=CPU, mpp=1.0)


def test_checkpoint_and_slide_errors(tmp_path: Path, checkpoint: Path, plain_png: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        predict_slide(tmp_path / "nope.ckpt", plain_png, tmp_path / "o", compute=Compute(progress=False), mpp=1.0)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        predict_slide(junk, plain_png, tmp_path / "o", compute=Compute(progress=False), mpp=1.0)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(CheckpointError, match=r"bare\.ckpt: .*metadata"):
        predict_slide(bare, plain_png, tmp_path / "o", compute=Compute(progress=False), mpp=1.0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="broken.png"):
        predict_slide(checkpoint, broken, tmp_path / "o", compute=CPU, mpp=1.0)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((400, 500, 3), 244, np.uint8)).save(blank)
    with pytest.raises(InputError, match=r"blank\.png: no tissue found"):
        predict_slide(checkpoint, blank, tmp_path / "o", compute=CPU, mpp=1.0)
    with pytest.raises(ConfigError, match="NOPE"):
        predict_slide(checkpoint, plain_png, tmp_path / "o", compute=CPU, mpp=1.0, genes=["NOPE"])
    with pytest.raises(InputError, match="plausible"):
        predict_slide(checkpoint, plain_png, tmp_path / "o", compute=CPU, mpp=-1.0)
    assert not (tmp_path / "o").exists()


def test_cli_predict(tmp_path: Path, checkpoint: Path, plain_png: Path) -> None:
    from typer.testing import CliRunner

    from hifusion.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), "--slide", str(plain_png), "--out",
                             str(tmp_path / "cli"), "--mpp", "1.0", "--genes", "ERBB2,GENE_A", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in (tmp_path / "cli" / "maps").iterdir()) == ["ERBB2.png", "GENE_A.png"]
    bad = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), "--slide", str(plain_png), "--out",
                              str(tmp_path / "cli2")])
    assert isinstance(bad.exception, HifusionError) and "--mpp" in str(bad.exception)


def test_predict_test_time_options_use_the_slide_images_only(tmp_path: Path, plain_png: Path) -> None:
    """Stain normalisation from the slide's own spots, AdaBN, D4 averaging and centring, as the benchmark does them."""
    from hifusion.preprocess import adabn, smooth_spatial
    from hifusion.stain import lab_stats

    ref = [[70.0, 12.0, -8.0], [12.0, 6.0, 5.0]]
    train_mean = [0.5, -0.25, 1.0, 2.0]
    ckpt = write_checkpoint(tmp_path / "c.ckpt", seed=5, panel=["GENE_A", "GENE_B", "GENE_C", "ERBB2"],
                            extra_meta={"stain": {"augment": {"hed": 0.05}, "normalise": "reinhard", "reference": ref},
                                        "train_mean": train_mean})
    coords = np.array([[400.0, 380.0], [300.2, 420.7], [520.0, 300.0], [450.0, 460.0]])
    spots = write_spots(tmp_path / "spots.csv", coords)
    module, meta = load_predictor(ckpt, "cpu")
    p = meta.patch
    with open_image(plain_png) as img:
        regions = np.stack([extract_patch(img, c, p.region_px, p.pixel_size, 1.0)[0] for c in coords])
    crops = spot_from_region(regions, p.spot_px)
    batch = {"spot": torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))),
             "region": torch.from_numpy(np.ascontiguousarray(regions.transpose(0, 3, 1, 2)))}
    batch["stain_src"] = torch.as_tensor(lab_stats([batch["spot"]]), dtype=torch.float32).expand(len(coords), 2, 3)
    with torch.no_grad():
        plain = module.predict_batch(batch).numpy()
        tta = module.predict_batch(batch, tta=True).numpy()
        with adabn(module, [batch], lambda b: module.predict_batch(b)):
            adapted = module.predict_batch(batch).numpy()
    runs = {}
    for name, kw in {"plain": {}, "tta": {"tta": True}, "adabn": {"adabn": True},
                     "centre": {"calibrate": "centre"}, "smooth": {"smooth_um": 150.0}}.items():
        out = predict_slide(ckpt, plain_png, tmp_path / name, layout=SpotLayout(spots=spots), compute=CPU, mpp=1.0,
                            recipe=Recipe(**kw))
        runs[name] = ad.read_h5ad(out / "predictions.h5ad")
    np.testing.assert_allclose(runs["plain"].X, plain, atol=1e-5)
    np.testing.assert_allclose(runs["tta"].X, tta, atol=1e-5)
    np.testing.assert_allclose(runs["adabn"].X, adapted, atol=1e-5)
    assert np.abs(adapted - plain).max() > 1e-4 and np.abs(tta - plain).max() > 1e-4
    np.testing.assert_allclose(runs["centre"].X.mean(0), train_mean, atol=1e-5)
    np.testing.assert_allclose(runs["centre"].X - runs["centre"].X.mean(0), plain - plain.mean(0), atol=1e-5)
    # smoothing in microns at the slide's um/px (1.0 here): the same as smoothing the plain predictions by hand
    np.testing.assert_allclose(runs["smooth"].X, smooth_spatial(plain, coords * 1.0, 150.0), atol=1e-5)
    assert np.abs(runs["smooth"].X - plain).max() > 1e-4
    info = runs["adabn"].uns[C.UNS_HIFUSION]
    assert info["adabn"] and info["stain_normalise"] == "reinhard"
    with pytest.raises(ConfigError, match="calibrate"):
        predict_slide(ckpt, plain_png, tmp_path / "bad", layout=SpotLayout(spots=spots), mpp=1.0,
                      compute=Compute(progress=False), recipe=Recipe.of(calibrate="median"))
    with pytest.raises(CheckpointError, match="shrink factor"):  # no factor fitted by a benchmark beside it
        predict_slide(ckpt, plain_png, tmp_path / "bad", layout=SpotLayout(spots=spots), mpp=1.0,
                      compute=Compute(progress=False), recipe=Recipe(calibrate="shrink"))
    (ckpt.parent / C.CALIBRATION_JSON).write_text('{"adabn=0,tta=0": 0.25}')
    out = predict_slide(ckpt, plain_png, tmp_path / "shrink", layout=SpotLayout(spots=spots), mpp=1.0,
                        compute=Compute(progress=False), recipe=Recipe(calibrate="shrink"))
    x = ad.read_h5ad(out / "predictions.h5ad").X
    np.testing.assert_allclose(x - x.mean(0), 0.25 * (plain - plain.mean(0)), atol=1e-5)


def test_predict_follows_the_benchmark_recipe_beside_the_checkpoint(tmp_path: Path, plain_png: Path) -> None:
    """Unset test-time options come from recipe.json (how the benchmark scored the model), else the defaults."""
    from typer.testing import CliRunner

    from hifusion.cli import app
    from hifusion.recipe import PREDICT_DEFAULTS, resolve_recipe

    ckpt = write_checkpoint(tmp_path / "c" / "last.ckpt", seed=3, extra_meta={"train_mean": [0.0] * len(PANEL)})
    assert resolve_recipe(ckpt) == (PREDICT_DEFAULTS, "defaults")
    (ckpt.parent / C.RECIPE_JSON).write_text('{"adabn": false, "tta": true, "calibrate": "none"}')  # pre-smoothing
    recipe, source = resolve_recipe(ckpt)
    assert recipe.to_dict() == {"adabn": False, "tta": True, "calibrate": "none", "smooth_um": 0.0, "gene_pcs": 0}
    assert source.endswith(C.RECIPE_JSON)
    (ckpt.parent / C.RECIPE_JSON).write_text('{"adabn": false, "tta": true, "calibrate": "none", "smooth_um": 150}')
    assert resolve_recipe(ckpt, tta=False)[0].to_dict() == {"adabn": False, "tta": False, "calibrate": "none",
                                                            "smooth_um": 150, "gene_pcs": 0}
    assert resolve_recipe(ckpt, adabn=True, tta=False, calibrate="centre", smooth_um=0.0, gene_pcs=0) == (
        Recipe(adabn=True, calibrate="centre"), "command line")
    spots = write_spots(tmp_path / "spots.csv", np.array([[400.0, 380.0], [300.2, 420.7], [520.0, 300.0]]))
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--slide", str(plain_png), "--out",
                              str(tmp_path / "cli"), "--mpp", "1.0", "--spots", str(spots), "--device", "cpu",
                              "--no-tta", "--smooth-um", "0"])
    assert res.exit_code == 0, res.output
    assert "adabn=False, tta=False, calibrate=none, smooth_um=0.0, gene_pcs=0" in res.output
    info = ad.read_h5ad(tmp_path / "cli" / "predictions.h5ad").uns[C.UNS_HIFUSION]
    assert (info["adabn"], info["tta"], info["calibrate"], info["smooth_um"]) == (False, False, "none", 0.0)
    (ckpt.parent / C.RECIPE_JSON).write_text('{"adabn": false, "tta": false, "calibrate": "none", "smooth_um": -5}')
    with pytest.raises(CheckpointError, match="smooth_um"):
        resolve_recipe(ckpt)
    (ckpt.parent / C.RECIPE_JSON).write_text('{"adabn": false}')
    with pytest.raises(CheckpointError, match="recipe"):
        resolve_recipe(ckpt)
    # a recipe that projects onto co-expression axes carries them; predict applies them as the benchmark did
    from hifusion.preprocess import project_genes

    axes = np.linalg.qr(np.random.default_rng(0).normal(size=(len(PANEL), 2)))[0].T  # 2 orthonormal axes
    sd = np.linspace(0.5, 1.5, len(PANEL))
    recipe = {"adabn": False, "tta": False, "calibrate": "none", "smooth_um": 0.0, "gene_pcs": 2,
              C.RECIPE_GENE_AXES: {"panel": list(PANEL), "axes": axes.tolist(), "sd": sd.tolist()}}
    (ckpt.parent / C.RECIPE_JSON).write_text(json.dumps(recipe))
    assert resolve_recipe(ckpt)[0].gene_pcs == 2
    plain = ad.read_h5ad(tmp_path / "cli" / "predictions.h5ad").X
    out = predict_slide(ckpt, plain_png, tmp_path / "pcs", layout=SpotLayout(spots=spots), compute=CPU, mpp=1.0,
                        recipe=resolve_recipe(ckpt)[0])
    pcs = ad.read_h5ad(out / "predictions.h5ad")
    np.testing.assert_allclose(pcs.X, project_genes(plain, axes, sd), atol=1e-5)
    np.testing.assert_allclose(pcs.X.mean(0), plain.mean(0), atol=1e-5)  # the slide's level is the model's
    assert pcs.uns[C.UNS_HIFUSION]["gene_pcs"] == 2
    with pytest.raises(CheckpointError, match="stores 2 axes"):
        predict_slide(ckpt, plain_png, tmp_path / "bad", layout=SpotLayout(spots=spots), mpp=1.0,
                      compute=Compute(progress=False), recipe=Recipe(gene_pcs=3))
    recipe[C.RECIPE_GENE_AXES]["panel"] = list(PANEL)[::-1]
    (ckpt.parent / C.RECIPE_JSON).write_text(json.dumps(recipe))
    with pytest.raises(CheckpointError, match="gene panel"):
        predict_slide(ckpt, plain_png, tmp_path / "bad", layout=SpotLayout(spots=spots), mpp=1.0,
                      compute=Compute(progress=False), recipe=Recipe(gene_pcs=2))
    (ckpt.parent / C.RECIPE_JSON).write_text('{"adabn": false, "tta": false, "calibrate": "none"}')
    with pytest.raises(CheckpointError, match="co-expression axes"):
        predict_slide(ckpt, plain_png, tmp_path / "bad", layout=SpotLayout(spots=spots), mpp=1.0,
                      compute=Compute(progress=False), recipe=Recipe(gene_pcs=2))
    with pytest.raises(ConfigError, match="gene_pcs"):
        predict_slide(ckpt, plain_png, tmp_path / "bad", layout=SpotLayout(spots=spots), mpp=1.0,
                      compute=Compute(progress=False), recipe=Recipe.of(gene_pcs=-1))


def test_map_discs_leave_room_between_spots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Predict maps draw a virtual spot no wider than 80% of the spot spacing (the H&E shows between discs)."""
    import hifusion.plots as plots
    from hifusion.predict import outputs

    xy = np.array([[x * 100.0, y * 100.0] for x in range(4) for y in range(3)])
    assert outputs._spacing(xy) == pytest.approx(100.0) and outputs._spacing(xy[:1]) == 0.0
    drawn = {}
    monkeypatch.setattr(plots, "plot_spot_maps", lambda *a, **k: drawn.setdefault("d", a[6]))
    outputs.write_maps(tmp_path, ["g"], ["g"], np.zeros((12, 1)), xy, np.zeros((10, 10, 3), np.uint8), 0.01, 300.0,
                       "logprop")
    assert drawn["d"] == pytest.approx(80.0)
