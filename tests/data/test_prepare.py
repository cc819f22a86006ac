"""prepare: files and their contents, cache.json, skip-if-done, overwrite, atomic writes, sharding."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
from conftest import MARKER, MPP

import hifusion.data.prepare as prep
from hifusion.constants import CACHE_MANIFEST
from hifusion.data.cache.layout import cache_sections
from hifusion.data.cache.reader import PatchFile, load_cache
from hifusion.errors import ConfigError, InputError
from tests.synthetic import prepare_cache

KW = dict(spot_um=40.0, spot_px=20, region_factor=2.0, progress=False)  # 2 um/px patches from a 2 um/px image


def test_prepare_writes_pair(make_her2st, tmp_path):
    root = make_her2st(("T1",))
    out = tmp_path / "cache"
    paths = prepare_cache("her2st", root, None, out, **KW)
    assert paths == [out / "T1.h5ad"] and cache_sections(out) == ["T1"]
    manifest = json.loads((out / CACHE_MANIFEST).read_text())
    assert manifest["spot_px"] == 20 and manifest["region_px"] == 40 and manifest["format"] == "her2st"
    a, pf = load_cache(out, "T1")
    assert a.n_obs == 12 and len(pf) == 12 and a.X.dtype == np.float32
    assert pf.region_px == 40 and pf.spot_px == 20 and pf.pixel_size == pytest.approx(2.0)
    assert pf.image_mpp == pytest.approx(MPP) and pf.section == "T1" and pf.pad_colour == (255, 255, 255)
    region = pf.get(0)
    assert region.shape == (40, 40, 3) and region.dtype == np.uint8
    r, g, _ = region[20, 20].astype(int)  # the red marker drawn on the spot centre (JPEG: nearly pure)
    assert r > 200 and g < 60 and MARKER[0] == 255
    np.testing.assert_array_equal(pf.coords[0], [150 - 20, 130 - 20])
    assert list(a.obs_names[:2]) == ["1x1", "2x1"] and (pf.barcodes == a.obs_names).all()
    for col in ("section", "patient", "array_x", "array_y", "new_x", "new_y", "at_border", "total_counts"):
        assert col in a.obs
    assert not a.obs["low_counts"].any() and not a.obs["at_border"].any()
    sf = a.uns["spatial"]["T1"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(50) and sf["tissue_hires_scalef"] == pytest.approx(1.0)
    assert a.uns["spatial"]["T1"]["images"]["hires"].shape == (560, 700, 3)
    assert a.uns["hifusion"]["mpp"] == pytest.approx(MPP)
    with h5py.File(out / "T1.patches.h5") as f:
        assert f["img"].chunks == (1, 40, 40, 3) and f["img"].compression is None
    assert pickle.loads(pickle.dumps(pf)).get(3).shape == (40, 40, 3)  # lazily reopened (DataLoader workers)


def test_border_and_low_counts(make_her2st, tmp_path):
    counts = np.full((12, 8), 20)
    counts[0] = 1
    root = make_her2st(counts=counts)
    out = tmp_path / "c"
    prepare_cache("her2st", root, ["T1"], out, spot_um=400.0, spot_px=50, compression="lzf", progress=False)
    a, pf = load_cache(out, "T1")
    assert a.obs["low_counts"].tolist()[:2] == [True, False] and a.obs["total_counts"].iloc[0] == 8
    assert a.obs["at_border"].iloc[0]  # 800 um = 400 px region around (150, 130): crosses
    with h5py.File(out / "T1.patches.h5") as f:
        assert f["img"].compression == "lzf"


def test_parameter_mismatch_and_overwrite(make_her2st, tmp_path):
    root = make_her2st(("T1", "T2"))
    out = tmp_path / "cache"
    prepare_cache("her2st", root, ["T1", "T2"], out, **KW)
    with pytest.raises(InputError, match="--overwrite") as e:
        prepare_cache("her2st", root, ["T1"], out, **{**KW, "spot_px": 10})
    assert CACHE_MANIFEST in str(e.value)
    prepare_cache("her2st", root, ["T1"], out, **{**KW, "spot_px": 10}, overwrite=True)
    assert cache_sections(out) == ["T1"]  # the other-scale T2 was cleared
    assert load_cache(out, "T1")[1].spot_px == 10


def test_skip_if_done(make_her2st, tmp_path, monkeypatch):
    root = make_her2st()
    out = tmp_path / "cache"
    prepare_cache("her2st", root, ["T1"], out, **KW)
    before = (out / "T1.h5ad").stat().st_mtime_ns
    monkeypatch.setattr(prep, "_prepare_one", lambda *a, **k: pytest.fail("redone"))
    prepare_cache("her2st", root, ["T1"], out, **KW)
    assert (out / "T1.h5ad").stat().st_mtime_ns == before


def test_crash_mid_write_leaves_nothing(make_her2st, tmp_path, monkeypatch):
    root = make_her2st()
    out = tmp_path / "cache"

    def boom(*args, **kwargs):
        yield np.zeros((40, 40, 3), np.uint8), False
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prep, "iter_patches", boom)
    with pytest.raises(RuntimeError):
        prepare_cache("her2st", root, ["T1"], out, **KW)
    assert sorted(p.name for p in out.iterdir()) == [CACHE_MANIFEST]


def test_crash_writing_h5ad_section_not_done(make_her2st, tmp_path, monkeypatch):
    root = make_her2st()
    out = tmp_path / "cache"
    monkeypatch.setattr(prep.ad.AnnData, "write_h5ad", lambda *a, **k: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        prepare_cache("her2st", root, ["T1"], out, **KW)
    assert cache_sections(out) == [] and not (out / "T1.h5ad").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    prepare_cache("her2st", root, ["T1"], out, **KW)  # the next run redoes it
    assert cache_sections(out) == ["T1"]


def test_shard_and_bad_options(make_her2st, tmp_path):
    root = make_her2st(("T1", "T2", "T3"))
    out = tmp_path / "cache"
    assert prepare_cache("her2st", root, None, out, **KW, shard="1/2") == [out / "T2.h5ad"]
    assert cache_sections(out) == ["T2"]
    with pytest.raises(ConfigError):
        prepare_cache("her2st", root, None, out, **KW, shard="2/2")
    with pytest.raises(ConfigError):
        prepare_cache("her2st", root, None, out, **KW, compression="gzip")


def test_input_errors_before_any_work(make_her2st, tmp_path):
    root = make_her2st(("T1", "T2"))
    (root / "ST-imgs" / "T" / "T2" / "T2_HE.jpg").unlink()
    with pytest.raises(InputError, match="T2"):
        prepare_cache("her2st", root, None, tmp_path / "c", **KW)
    assert cache_sections(tmp_path / "c") == []


def test_workers(make_her2st, tmp_path):
    root = make_her2st(("T1", "T2"))
    out = tmp_path / "cache"
    prepare_cache("her2st", root, None, out, **KW, workers=2)
    assert cache_sections(out) == ["T1", "T2"]


def test_load_cache_errors(make_her2st, tmp_path):
    root = make_her2st()
    out = tmp_path / "cache"
    prepare_cache("her2st", root, None, out, **KW)
    with pytest.raises(InputError, match="not in this cache"):
        load_cache(out, "T9")
    (out / "T1.patches.h5").write_bytes(b"junk")
    with pytest.raises(InputError, match="patch file") as e:
        PatchFile(out / "T1.patches.h5")
    assert "T1.patches.h5" in str(e.value)


def test_shards_cover_every_section_once_and_rerun_skips(make_her2st, tmp_path, monkeypatch):
    root = make_her2st(("T1", "T2", "T3"))
    out = tmp_path / "cache"
    first = prepare_cache("her2st", root, None, out, **KW, shard="0/2")
    second = prepare_cache("her2st", root, None, out, **KW, shard="1/2")
    names = [p.name for p in first + second]
    assert sorted(names) == ["T1.h5ad", "T2.h5ad", "T3.h5ad"] and len(set(names)) == len(names)
    assert cache_sections(out) == ["T1", "T2", "T3"]
    monkeypatch.setattr(prep, "_prepare_one", lambda *a, **k: pytest.fail("redone"))
    for shard in ("0/2", "1/2"):  # a rerun of either shard (e.g. a requeued array task) skips what is done
        prepare_cache("her2st", root, None, out, **KW, shard=shard)
