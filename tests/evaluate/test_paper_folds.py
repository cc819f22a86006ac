"""The papers' folds as shipped configs, run end to end on synthetic cohorts with as many patients and sections.

HER2ST's 8 patients A-H (two sections each for A-D, one each for E-H: the release has six and three; the folds
depend on patients only) in the HiFusion paper's four folds; the ST-Net cohort (23 patients, release layout) in
TRIPLEX's 8 folds and ST-Net's leave-one-patient-out. Tiny sections (3 x 3 spots, 16 px patches) and cheap models
(the mean profile; a random-feature linear probe on HER2ST) keep this short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from hifusion.evaluate.report import POOLED
from tests.synthetic import write_section, write_stnet_section

REPO = Path(__file__).resolve().parents[2]
HER2ST_SECTIONS = [f"{p}{i}" for p in "ABCD" for i in (1, 2)] + [f"{p}1" for p in "EFGH"]
TRIPLEX_PATIENTS = [p for fold in yaml.safe_load((REPO / "configs" / "stnet_triplex_folds.yaml").read_text())
                    ["protocol"]["folds"] for p in fold]


def _tiny(config: str, root: Path, tmp: Path, probe: bool = True) -> Any:
    """A shipped config with its protocol kept and everything that costs time made tiny."""
    raw = yaml.safe_load((REPO / "configs" / config).read_text())
    raw["output"] = str(tmp)
    raw["data"]["cache"] = str(tmp / "cache")
    raw["data"]["prepare"].update({"root": str(root), "spot_um": 80.0, "spot_px": 16, "region_factor": 2.0})
    raw["data"]["genes"] = {"method": "top_mean", "n": 12}
    raw["models"] = [{"name": "mean_profile"}]
    if probe:
        raw["models"].append({"name": "linear_probe", "options": {"encoder": "resnet10", "n_components": 4}})
    raw["train"].update({"num_workers": 0, "batch_size": 64})
    raw.pop("adapt", None)
    raw.pop("adapt_variants", None)
    return parse_config(raw)


def _folds(res: Any) -> dict[str, set[str]]:
    m = res.metrics
    return {split: set(g["section"]) for split, g in m[m.model == "mean_profile"].groupby("split")}


def test_hifusion_paper_folds_over_full_her2st(tmp_path: Path) -> None:
    root = tmp_path / "her2st"
    for i, s in enumerate(HER2ST_SECTIONS):
        write_section(root, s, seed=i, grid=3)
    res = run_benchmark(_tiny("her2st_2d_paper_folds.yaml", root, tmp_path), tmp_path / "out", figures=False)
    folds = _folds(res)
    assert len(folds) == 4
    assert folds["2d-fold1"] == {"A1", "A2", "E1"}  # test patients {A, E}
    assert folds["2d-fold4"] == {s for s in HER2ST_SECTIONS if s[0] in "DH"}
    assert set().union(*folds.values()) == set(HER2ST_SECTIONS)  # every section tested exactly once
    pooled = res.conventions
    assert set(pooled["section"]) == {POOLED}
    assert set(pooled["split"]) == set(folds) and set(pooled["model"]) == {"mean_profile", "linear_probe"}


def test_stnet_patient_folds(tmp_path: Path) -> None:
    from hifusion.data.cache.reader import cache_patients
    from hifusion.data.splits import make_splits

    root = tmp_path / "stnet"
    assert len(TRIPLEX_PATIENTS) == 23
    for i, p in enumerate(TRIPLEX_PATIENTS):
        write_stnet_section(root, p, "C1", seed=i, grid=3)
    cfg = _tiny("stnet_triplex_folds.yaml", root, tmp_path, probe=False)
    res = run_benchmark(cfg, tmp_path / "out", figures=False)
    folds = _folds(res)
    assert len(folds) == 8 and folds["2d-fold8"] == {"BC23944_C1", "BC24044_C1"}
    assert pd.Series([len(v) for v in folds.values()]).sum() == 23
    # ST-Net's own protocol on the same cache: one patient per fold, 23 folds
    lopo = _tiny("stnet_lopo.yaml", root, tmp_path).protocol
    splits = make_splits(lopo.name, cache_patients(tmp_path / "cache"), folds=lopo.folds, k=lopo.k)
    assert len(splits) == 23 and all(len(s.test) == 1 and len(s.train) == 22 for s in splits)
