"""Image backends, pad colour, and patch geometry (centring, scale, border flags)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import MARKER
from PIL import Image

from hifusion.data.image import open_image
from hifusion.data.patches import extract_patch, iter_patches, region_top_left, spot_from_region, window
from hifusion.errors import InputError


def _png(tmp_path, arr, name="img.png"):
    p = tmp_path / name
    Image.fromarray(arr).save(p)
    return p


def test_pil_region_and_padding(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    arr[:2], arr[-2:], arr[:, :2], arr[:, -2:] = 255, 255, 255, 255
    with open_image(_png(tmp_path, arr)) as img:
        assert img.size == (80, 50) and img.pad_colour == (255, 255, 255)
        np.testing.assert_array_equal(img.read_region(10, 5, 20, 7), arr[5:12, 10:30])
        r = img.read_region(-5, -3, 10, 10)
        assert (r[:3] == 255).all() and (r[:, :5] == 255).all()
        np.testing.assert_array_equal(r[3:, 5:], arr[:7, :5])
        assert max(img.thumbnail(40).shape[:2]) == 40


def test_pad_colour_black_frame(tmp_path):
    arr = np.zeros((60, 60, 3), np.uint8)
    arr[20:40, 20:40] = 200
    with open_image(_png(tmp_path, arr)) as img:
        assert img.pad_colour == (0, 0, 0)
        assert (img.read_region(50, 50, 20, 20)[15:, 15:] == 0).all()


def test_tiff_backend(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    p = tmp_path / "slide.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(arr, tile=(64, 64), subifds=1, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        tw.write(arr[::2, ::2], tile=(64, 64), subfiletype=1)
    with open_image(p) as img:
        assert img.size == (260, 300) and img.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(img.read_region(70, 90, 100, 50), arr[90:140, 70:170])
        assert max(img.thumbnail(100).shape[:2]) == 100


def test_truncated_jpeg(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    p = tmp_path / "t.jpg"
    Image.fromarray(arr).save(p, quality=90)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    img = open_image(p)  # header is fine
    with pytest.raises(InputError, match="truncated") as e:
        img.read_region(0, 0, 10, 10)
    assert str(p) in str(e.value)
    with pytest.raises(InputError, match="not found"):
        open_image(tmp_path / "absent.jpg")


def _marker_image(tmp_path, centre, size=(400, 300)):
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    cx, cy = (int(np.floor(v + 0.5)) for v in centre)
    arr[cy - 2 : cy + 3, cx - 2 : cx + 3] = MARKER
    return open_image(_png(tmp_path, arr))


def _centroid(patch):
    red = (patch[..., 0] > 200) & (patch[..., 1] < 150)
    ys, xs = np.nonzero(red)
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5, 1.37])
def test_marker_at_patch_centre(tmp_path, scale):
    img = _marker_image(tmp_path, (200.4, 149.6))
    patch, border = extract_patch(img, (200.4, 149.6), 64, out_mpp=scale, image_mpp=1.0)
    assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8 and not border
    cx, cy = _centroid(patch)
    assert abs(cx - 32) <= 1.0 and abs(cy - 32) <= 1.0


def test_identity_scale_is_exact_crop(tmp_path):
    arr = np.random.default_rng(2).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    with open_image(_png(tmp_path, arr)) as img:
        patch, _ = extract_patch(img, (100.2, 80.7), 40, 0.5, 0.5)
        np.testing.assert_array_equal(patch, arr[81 - 20 : 81 + 20, 100 - 20 : 100 + 20])
        assert region_top_left((100.2, 80.7), 40, 0.5, 0.5) == (80, 61)


@pytest.mark.parametrize(("out_mpp", "expected"), [(2.0, 20), (0.5, 80), (1.0, 40)])
def test_resampling_scale(tmp_path, out_mpp, expected):
    arr = np.full((300, 300, 3), 255, np.uint8)
    arr[130:170, 130:170] = 0  # 40 px dark square centred on (150, 150)
    with open_image(_png(tmp_path, arr)) as img:
        patch, _ = extract_patch(img, (150, 150), 100, out_mpp, 1.0)
    dark = (patch[..., 0] < 128).sum(axis=1).max()
    assert abs(int(dark) - expected) <= 1


def test_border_flag_and_pad(tmp_path):
    arr = np.zeros((100, 100, 3), np.uint8)  # black frame -> black padding
    arr[10:90, 10:90] = 120
    with open_image(_png(tmp_path, arr)) as img:
        patches, border = zip(*iter_patches(img, np.array([[50, 50], [5, 50], [95, 95]]), 40, 1.0, 1.0), strict=True)
        assert list(border) == [False, True, True]
        assert (patches[1][:, :15] == 0).all()  # the part left of the image is pad colour
        _, b = extract_patch(img, (20, 20), 40, 1.0, 1.0)  # window [0, 40): touches but does not cross
        assert not b


def test_window_and_spot_crop():
    x0, y0, side = window((10.5, 20.49), 8, 1.0, 0.5)
    assert (x0, y0, side) == (3.0, 12.0, 16.0)
    region = np.arange(8 * 8 * 3).reshape(8, 8, 3)
    np.testing.assert_array_equal(spot_from_region(region, 4), region[2:6, 2:6])
