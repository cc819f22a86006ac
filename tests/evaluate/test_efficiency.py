"""The efficiency table: a sane row for every registered model at tiny sizes, and its Markdown/CSV outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hifusion.evaluate.efficiency import PROFILES, Profile, efficiency_table, markdown_table, write_efficiency
from hifusion.models import list_models

TINY = Profile(
    "tiny",
    16,
    batch=2,
    section_spots=6,
    options={
        "hifusion": {"levels": [1, 4], "tokens": 1, "heads": 2, "embed_dim": 32, "spot_encoder": "resnet10"},
        "stnet": {"encoder": "resnet10"},
        "histogene": {"patch_px": 8, "dim": 16, "depth": 1, "heads": 2},
        "hist2st": {
            "patch_px": 8,
            "channels": 8,
            "patch": 4,
            "kernel": 3,
            "dim": 16,
            "depth": 1,
            "heads": 2,
            "gnn_depth": 1,
        },
        "triplex": {"encoder": "resnet10", "dim": 16, "heads": 2, "neighbour_depth": 1, "global_depth": 1},
        "linear_probe": {"encoder": "resnet10", "n_components": 4},
        "bleep": {"encoder": "resnet10", "proj_dim": 16},
    },
)


def test_every_registered_model_gets_a_sane_row(tmp_path: Path) -> None:
    table = efficiency_table(
        profiles=[TINY, Profile("tiny32", 32, batch=2, section_spots=6, options=TINY.options)], iters=1
    )
    assert set(table["model"]) == set(list_models())
    assert len(table) == 2 * len(list_models())
    for col in ("params_m", "gmac_per_spot", "ms_per_spot", "peak_mem_mb"):
        assert np.isfinite(table[col]).all() and (table[col] >= 0).all(), col
    by = table.set_index(["model", "profile"])
    assert by.loc[("mean_profile", "tiny"), "gmac_per_spot"] == 0
    for m in ("hifusion", "stnet", "triplex", "bleep", "linear_probe"):
        assert by.loc[(m, "tiny"), "gmac_per_spot"] > 0 and by.loc[(m, "tiny"), "params_m"] > 0
        # convolutional cost grows with the patch area (4x pixels)
        assert by.loc[(m, "tiny32"), "gmac_per_spot"] > 2 * by.loc[(m, "tiny"), "gmac_per_spot"], m
    assert by.loc[("linear_probe", "tiny"), "trainable_m"] == 0
    md, csv = write_efficiency(table, tmp_path / "eff.md")
    text = md.read_text()
    assert "GMAC/spot tiny (16 px)" in text and "GMAC/spot tiny32 (32 px)" in text
    assert all(f"| {m} |" in text for m in list_models())
    assert len(pd.read_csv(csv)) == len(table)
    assert markdown_table(table) == text


def test_builtin_profiles_cover_paper_and_cpu() -> None:
    assert PROFILES["paper"].spot_px == 224 and PROFILES["paper"].region_px == 448
    assert PROFILES["cpu"].spot_px == 112 and PROFILES["cpu"].options["hifusion"]["levels"] == [1, 4, 16]
