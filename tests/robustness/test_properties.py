"""Property-based: random valid sections survive `prepare` -> `load_cache` unchanged; random corruptions are rejected
with an InputError and leave no file behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hifusion.data.cache.reader import load_cache
from hifusion.errors import InputError
from tests.robustness.helpers import MARKER, partial_files, write_her2st
from tests.synthetic import prepare_cache

SPOT_PX = 8
PROBE = (0, 0, 255)  # colour of the one marked spot; all others are red
PROPS = settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def sections(draw: st.DrawFn) -> dict:
    nx, ny = draw(st.integers(2, 5)), draw(st.integers(1, 4))
    pitch = draw(st.sampled_from([40, 50, 80, 100]))  # 200 um / pitch: 5, 4, 2.5, 2 um/px, exact in binary
    genes = draw(st.lists(st.from_regex(r"[A-Z][A-Z0-9]{0,5}", fullmatch=True), min_size=2, max_size=8, unique=True))
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.floats(0.0, 1.0))
    margin = draw(st.integers(1, 40))
    rng = np.random.default_rng(seed)
    n = nx * ny
    counts = rng.integers(0, 500, size=(n, len(genes))) * (rng.random((n, len(genes))) < density)
    jitter = rng.integers(-2, 3, size=(n, 2)) * 0.25  # quarter pixels: exact in decimal text and in binary
    table = pd.DataFrame({
        "x": np.tile(np.arange(1, nx + 1), ny), "y": np.repeat(np.arange(1, ny + 1), nx),
    })
    table["new_x"], table["new_y"] = table.x.astype(float), table.y.astype(float)
    table["pixel_x"] = margin + (table.x - 1) * pitch + jitter[:, 0]
    table["pixel_y"] = margin + (table.y - 1) * pitch + jitter[:, 1]
    table["selected"] = 1
    probe = draw(st.integers(0, n - 1))
    return {"table": table, "counts": counts, "genes": genes, "pitch": pitch, "margin": margin, "probe": probe}


def _write(root: Path, s: dict) -> Path:
    table = s["table"]
    w = int(table.pixel_x.max()) + s["margin"] + 1
    h = int(table.pixel_y.max()) + s["margin"] + 1
    f = write_her2st(root, spots=table, counts=s["counts"], genes=s["genes"], size=(w, h))
    from PIL import Image

    img = np.asarray(Image.open(f.image)).copy()
    cx, cy = np.floor(table[["pixel_x", "pixel_y"]].to_numpy()[s["probe"]] + 0.5).astype(int)
    img[cy - 1: cy + 2, cx - 1: cx + 2] = PROBE
    Image.fromarray(img).save(f.image)
    return root


def _prepare(root: Path, out: Path, s: dict) -> None:
    mpp = 200.0 / s["pitch"]
    prepare_cache("her2st", root, ["T1"], out, spot_um=SPOT_PX * mpp, spot_px=SPOT_PX, mpp={"T1": mpp},
                     progress=False)


@PROPS
@given(sections())
def test_valid_sections_round_trip(s: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        root, out = _write(Path(d) / "raw", s), Path(d) / "cache"
        _prepare(root, out, s)
        adata, patches = load_cache(out, "T1")
        table = s["table"]
        barcodes = [f"{x}x{y}" for x, y in zip(table.x, table.y, strict=True)]
        assert adata.obs_names.tolist() == barcodes and patches.barcodes.tolist() == barcodes
        assert adata.var_names.tolist() == s["genes"]
        np.testing.assert_array_equal(adata.X.toarray(), s["counts"].astype(np.float32))
        np.testing.assert_array_equal(adata.obsm["spatial"], table[["pixel_x", "pixel_y"]].to_numpy())
        assert adata.obs["total_counts"].tolist() == s["counts"].sum(axis=1).astype(float).tolist()
        r = patches.region_px
        for i in range(len(patches)):  # 1:1 scale: the spot's own pixel is the centre of its patch
            expected = PROBE if i == s["probe"] else MARKER
            assert tuple(patches.get(i)[r // 2, r // 2]) == expected, i
        patches.close()


CORRUPTIONS = ["duplicate_barcode", "negative_count", "nan_count", "non_integer_count", "off_image"]


@PROPS
@given(sections(), st.sampled_from(CORRUPTIONS), st.integers(0, 10_000))
def test_corrupt_sections_are_rejected_cleanly(s: dict, corruption: str, where: int) -> None:
    table, counts = s["table"].copy(), s["counts"].astype(object)
    n, g = counts.shape
    i, j = where % n, (where // n) % g
    if corruption == "duplicate_barcode":
        if n < 2:
            return
        table.loc[(i + 1) % n, ["x", "y"]] = table.loc[i, ["x", "y"]].to_numpy()
    elif corruption == "negative_count":
        counts[i, j] = -1 - where % 7
    elif corruption == "nan_count":
        counts[i, j] = np.nan
    elif corruption == "non_integer_count":
        counts[i, j] = 0.5 + where % 3
    else:
        table.loc[i, "pixel_x"] = table.pixel_x.max() + s["margin"] + 5 + where
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "raw"
        good = dict(s, table=s["table"])
        _write(raw, good)  # the image fits the original spots
        barcodes = [f"{x}x{y}" for x, y in zip(table.x, table.y, strict=True)]
        pd.DataFrame(counts, index=barcodes, columns=s["genes"]).to_csv(raw / "ST-cnts" / "T1.tsv.gz", sep="\t")
        table.to_csv(raw / "ST-spotfiles" / "T1_selection.tsv", sep="\t", index=False)
        out = Path(d) / "cache"
        try:
            _prepare(raw, out, s)
        except InputError as exc:
            assert exc.path and Path(exc.path).parts[-2] in ("ST-cnts", "ST-spotfiles"), str(exc)
        else:
            raise AssertionError(f"{corruption} at ({i}, {j}) was accepted")
        assert partial_files(out) == []
