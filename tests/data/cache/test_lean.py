"""A split keeps lean sections (no counts, no thumbnail) in memory; the thumbnail comes back from the cache file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hifusion import constants as C
from hifusion.data.cache.lean import drop_images, spatial_uns, without_counts
from hifusion.data.cache.reader import load_cache
from tests.synthetic import prepare_cache, write_dataset


def test_lean_section_round_trip(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "raw", sections=("P1",))
    prepare_cache("her2st", root, ["P1"], tmp_path / "cache", spot_px=16, progress=False)
    full, patches = load_cache(tmp_path / "cache", "P1")
    thumb = np.asarray(full.uns[C.UNS_SPATIAL]["P1"]["images"][C.UNS_HIRES])
    scalef = full.uns[C.UNS_SPATIAL]["P1"]["scalefactors"][C.UNS_HIRES_SCALEF]

    lean, _ = load_cache(tmp_path / "cache", "P1")
    drop_images(lean)
    assert "images" not in lean.uns[C.UNS_SPATIAL]["P1"]
    lean = without_counts(lean)
    assert lean.n_vars == 0 and lean.n_obs == full.n_obs
    assert lean.obs.equals(full.obs)
    assert np.array_equal(lean.obsm[C.OBSM_SPATIAL], full.obsm[C.OBSM_SPATIAL])

    back = spatial_uns(lean)
    assert back is not None
    assert np.array_equal(np.asarray(back["P1"]["images"][C.UNS_HIRES]), thumb)
    assert back["P1"]["scalefactors"][C.UNS_HIRES_SCALEF] == scalef
    assert spatial_uns(full) is full.uns[C.UNS_SPATIAL]  # nothing dropped: returned as held
    patches.close()


def test_h5ad_patient_reads_one_column(tmp_path: Path) -> None:
    import anndata as ad
    import pandas as pd

    from hifusion.data.cache.reader import h5ad_patient

    for name, obs in (("cat", pd.DataFrame({"patient": pd.Categorical(["B", "B"])}, index=["a", "b"])),
                      ("str", pd.DataFrame({"patient": ["A", "A"]}, index=["a", "b"])),
                      ("none", pd.DataFrame(index=["a", "b"]))):
        a = ad.AnnData(obs=obs)
        a.write_h5ad(tmp_path / f"{name}.h5ad")
        via_anndata = str(obs["patient"].iloc[0]) if "patient" in obs else name
        assert h5ad_patient(tmp_path / f"{name}.h5ad", name) == via_anndata
