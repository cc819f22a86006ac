"""Readers of every format, scale derivation and overrides, and every bad input naming its file."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from conftest import GENES, MPP, PITCH, spot_grid

from hifusion.data.readers import list_sections, read_section
from hifusion.data.readers._common import pitch_mpp
from hifusion.errors import ConfigError, InputError


def test_her2st_reads_grid(make_her2st):
    root = make_her2st(("T1", "T2"))
    assert list_sections("her2st", root) == ["T1", "T2"]
    sec = read_section("her2st", root, "T1")
    assert sec.patient == "T" and sec.n_spots == 12 and sec.source_format == "her2st"
    assert sec.mpp == pytest.approx(MPP)
    assert sec.spot_diameter_px == pytest.approx(100 / MPP)
    assert sec.barcodes[0] == "1x1" and sec.counts.dtype == np.float32
    assert list(sec.genes) == GENES and sec.image_path.name == "T1_HE.jpg"
    np.testing.assert_allclose(sec.centers_px[1], [150 + PITCH, 130])


def test_her2st_selection_and_join(make_her2st):
    spots = spot_grid()
    spots["selected"] = 1
    spots.loc[0, "selected"] = 0
    root = make_her2st(spots=spots)
    sec = read_section("her2st", root, "T1")
    assert sec.n_spots == 11 and "1x1" not in sec.barcodes


def test_her2st_overrides(make_her2st):
    root = make_her2st()
    assert read_section("her2st", root, "T1", mpp=0.5).mpp == 0.5
    sec = read_section("her2st", root, "T1", coord_scale=0.5)  # pixel coords halved -> mpp doubles
    assert sec.mpp == pytest.approx(2 * MPP)
    np.testing.assert_allclose(sec.centers_px[0], [75, 65])
    with pytest.raises(ConfigError):
        read_section("her2st", root, "T1", coord_scale=-1)


def test_pitch_fit_rotation_invariant(tmp_path):
    grid = spot_grid()
    a = grid[["new_x", "new_y"]].to_numpy()
    th = np.deg2rad(30)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    px = a @ rot.T * 290.0 + 17
    assert pitch_mpp(px, a, tmp_path) == pytest.approx(200 / 290.0)
    with pytest.raises(InputError, match="too few spots"):
        pitch_mpp(px[:2], a[:2], tmp_path / "s.tsv")


def test_stnet(make_stnet):
    root = make_stnet()
    assert list_sections("stnet", root) == ["BC1_C1"]
    sec = read_section("stnet", root, "BC1_C1")
    assert sec.patient == "BC1" and sec.n_spots == 12 and sec.mpp == pytest.approx(MPP)
    assert sec.gene_ids is not None and sec.gene_ids[0].startswith("ENSG")
    assert sec.annotations is not None and set(sec.annotations["tumour"]) == {"tumor", "non"}


@pytest.mark.parametrize("legacy", [False, True])
def test_visium(make_visium, legacy):
    root = make_visium(legacy=legacy)
    assert list_sections("visium", root) == [root.name]
    with pytest.warns(UserWarning, match="duplicate gene names"):
        sec = read_section("visium", root, root.name)
    assert sec.n_spots == 12  # off-tissue barcodes dropped
    assert sec.mpp == pytest.approx(55 / 27.5)
    assert sec.genes[0] == "G0" and sec.genes[1] == "G0-1" and len(sec.genes) == len(GENES)  # antibody dropped
    assert sec.gene_ids[1] == "ENSG00001"
    np.testing.assert_allclose(sec.centers_px[:2], [[150, 130], [250, 130]])
    assert sec.array_xy[1].tolist() == [2, 1]


def test_h5ad_hest(make_h5ad):
    root = make_h5ad(hest=True)
    sec = read_section("h5ad", root, "S1")
    assert sec.mpp == 0.5 and sec.spot_diameter_px == pytest.approx(110)
    assert sec.image_path.parent.name == "wsis"


def test_h5ad_scanpy_needs_scale(make_h5ad):
    root = make_h5ad(scanpy_uns=True)
    with pytest.raises(InputError, match="um/px unknown") as e:
        read_section("h5ad", root, "S1")
    assert "S1.h5ad" in str(e.value)
    assert read_section("h5ad", root, "S1", visium=True).mpp == pytest.approx(2.0)
    assert read_section("h5ad", root, "S1", mpp=0.7).mpp == 0.7


def test_h5ad_normalised_counts_rejected(make_h5ad):
    root = make_h5ad(normalised=True)
    with pytest.raises(InputError, match="not integers") as e:
        read_section("h5ad", root, "S1", mpp=1.0)
    assert "S1.h5ad" in str(e.value)


# ------------------------------------------------------------------------------------------------ bad inputs
def test_missing_image(make_her2st):
    root = make_her2st()
    img = next((root / "ST-imgs" / "T" / "T1").iterdir())
    img.unlink()
    with pytest.raises(InputError, match="no image file") as e:
        read_section("her2st", root, "T1")
    assert "T1" in str(e.value)


def test_corrupt_image(make_her2st):
    root = make_her2st()
    img = next((root / "ST-imgs" / "T" / "T1").iterdir())
    img.write_bytes(b"not a jpeg at all")
    with pytest.raises(InputError) as e:
        read_section("her2st", root, "T1")
    assert str(img) in str(e.value)


def test_no_shared_barcode(make_her2st):
    spots = spot_grid()
    root = make_her2st()
    spots["x"] += 50
    spots["selected"] = 1
    spots.to_csv(root / "ST-spotfiles" / "T1_selection.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="share no spot barcode") as e:
        read_section("her2st", root, "T1")
    assert "T1.tsv.gz" in str(e.value)


def test_spots_off_image(make_her2st):
    root = make_her2st()
    with pytest.raises(InputError, match="--coord-scale") as e:
        read_section("her2st", root, "T1", coord_scale=3.0)
    assert "T1_selection.tsv" in str(e.value)


def test_non_numeric_counts(make_her2st):
    root = make_her2st()
    path = root / "ST-cnts" / "T1.tsv.gz"
    df = pd.read_csv(path, sep="\t", index_col=0)
    df["G3"] = "lots"
    df.to_csv(path, sep="\t")
    with pytest.raises(InputError, match="non-numeric") as e:
        read_section("her2st", root, "T1")
    assert str(path) in str(e.value)


@pytest.mark.parametrize(("value", "message"), [(-3, "negative"), (2.5, "not integers")])
def test_bad_count_values(make_her2st, value, message):
    counts = np.ones((12, len(GENES)))
    counts[4, 2] = value
    root = make_her2st(counts=counts)
    with pytest.raises(InputError, match=message) as e:
        read_section("her2st", root, "T1")
    assert "T1.tsv.gz" in str(e.value)


def test_nan_counts(make_her2st):
    root = make_her2st()
    path = root / "ST-cnts" / "T1.tsv.gz"
    text = gzip.decompress(path.read_bytes()).decode().splitlines()
    text[2] = text[2].rsplit("\t", 1)[0] + "\tNaN"
    path.write_bytes(gzip.compress(("\n".join(text) + "\n").encode()))
    with pytest.raises(InputError, match="missing values") as e:
        read_section("her2st", root, "T1")
    assert str(path) in str(e.value)


def test_empty_section(make_her2st):
    spots = spot_grid()
    spots["selected"] = 0
    root = make_her2st(spots=spots)
    with pytest.raises(InputError) as e:
        read_section("her2st", root, "T1")
    assert "T1" in str(e.value)


def test_duplicate_spots(make_her2st):
    spots = pd.concat([spot_grid(), spot_grid().iloc[:1]], ignore_index=True)
    root = make_her2st(spots=spots, counts=np.ones((13, 3)))
    with pytest.raises(InputError, match="duplicate spots") as e:
        read_section("her2st", root, "T1")
    assert "T1_selection.tsv" in str(e.value)


def test_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="unknown data format"):
        read_section("nope", tmp_path, "x")
    with pytest.raises(InputError, match="not found"):
        list_sections("her2st", tmp_path / "absent")
