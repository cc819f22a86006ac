"""The benchmark's leakage rules and outputs, on a tiny synthetic dataset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hifusion import constants as C
from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from tests.synthetic import tiny_config, write_dataset


def _shuffle_counts(root: Path, section: str, seed: int = 0) -> None:
    """Permute which spot each count row belongs to: the test labels become noise; images stay as they are."""
    path = root / "ST-cnts" / f"{section}.tsv.gz"
    df = pd.read_csv(path, sep="\t", index_col=0)
    df.index = np.random.default_rng(seed).permutation(df.index.to_numpy())
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, sep="\t")


def _bench(root: Path, tmp: Path, name: str):
    cfg = parse_config(tiny_config(root, tmp / f"cache_{name}", tmp, epochs=2))
    return run_benchmark(cfg, tmp / name, figures=True)


def test_test_labels_never_reach_training(tmp_path: Path) -> None:
    original = write_dataset(tmp_path / "orig")
    shuffled = write_dataset(tmp_path / "shuf")
    _shuffle_counts(shuffled, "P2")
    _shuffle_counts(shuffled, "Q1", seed=1)
    a = _bench(original, tmp_path, "a")
    b = _bench(shuffled, tmp_path, "b")
    run_a, run_b = (json.loads((r.out / "run.json").read_text()) for r in (a, b))
    assert run_a["gene_panels"] == run_b["gene_panels"]
    ha = pd.read_csv(a.out / "runs" / "fixed" / "hifusion" / C.RUN_METRICS).drop(columns="seconds")
    hb = pd.read_csv(b.out / "runs" / "fixed" / "hifusion" / C.RUN_METRICS).drop(columns="seconds")
    # identical training trajectory (up to float summation order, which CPU kernels do not fix bit for bit)
    pd.testing.assert_frame_equal(ha, hb, rtol=1e-4)
    for model in ("hifusion", "mean_profile"):
        pa = np.load(a.out / "runs" / "fixed" / model / "predictions.npz")
        pb = np.load(b.out / "runs" / "fixed" / model / "predictions.npz")
        for s in ("P2", "Q1"):
            np.testing.assert_allclose(pa[s], pb[s], rtol=0, atol=1e-3)  # same predictions; only scores differ
    # the report has the floor, both models, and figures
    report = (a.out / "report.md").read_text()
    assert "mean_profile" in report and "hifusion" in report
    assert (a.out / "figures" / "maps_P2.png").is_file() and (a.out / "figures" / "training_curves.png").is_file()
    metrics = pd.read_csv(a.out / "metrics.csv")
    assert set(metrics["section"]) == {"P2", "Q1", "(fold)"}  # "(fold)": published conventions over the split
    assert set(metrics.loc[metrics.section == "(fold)", "convention"]) == {"HiFusion / ASIGN", "HEST-Benchmark",
                                                                           "TRIPLEX"}
    # the mean profile ignores the image: PCC-gene exactly 0 (constant prediction scores 0)
    mp = metrics[(metrics.model == "mean_profile") & (metrics.metric == "pcc_gene")]
    assert np.allclose(mp["value"], 0.0)


def test_existing_results_folder_needs_resume(tmp_path: Path) -> None:
    from hifusion.errors import ConfigError

    root = write_dataset(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    cfg = parse_config(tiny_config(root, tmp_path / "cache", tmp_path))
    with pytest.raises(ConfigError, match="--resume"):
        run_benchmark(cfg, out)


def test_stain_options_and_test_time_variants(tmp_path: Path) -> None:
    """Stain normalisation + augmentation in training, and test-time rows from the same fitted models."""
    import anndata as ad

    from hifusion.checkpoint import read_checkpoint
    from hifusion.constants import CKPT_META_KEY

    root = write_dataset(tmp_path / "raw")
    raw = tiny_config(root, tmp_path / "cache", tmp_path, epochs=1)
    raw["train"]["val"] = {"mode": "spatial_block", "fraction": 0.3}
    raw["train"]["batch_size"] = 64  # one batch: no one-spot remainder for BatchNorm
    raw["data"]["stain"] = {"normalise": "reinhard", "augment": {"hed": 0.05, "brightness": 0.1}}
    raw["adapt"] = {"adabn": True, "calibrate": "centre"}
    raw["adapt_variants"] = {"plain": {}, "shrink": {"calibrate": "shrink"}, "tta": {"tta": True},
                             "smooth": {"smooth_um": 300.0}, "pcs": {"smooth_um": 300.0, "gene_pcs": 2}}
    res = run_benchmark(parse_config(raw), tmp_path / "out", figures=False)
    metrics = pd.read_csv(res.out / "metrics.csv")
    labels = set(metrics["model"])
    assert {"hifusion", "hifusion [plain]", "hifusion [shrink]", "hifusion [tta]", "hifusion [smooth]",
            "mean_profile"} <= labels
    assert not any(lab.startswith("mean_profile [") for lab in labels)  # nothing to adapt without an image
    wide = metrics.pivot_table(index=["model", "section"], columns="metric", values="value")
    np.testing.assert_allclose(wide["mse"], wide["mse_bias"] + wide["mse_spatial"], rtol=1e-9, atol=1e-12)
    # the checkpoint carries the stain reference and the training mean that prediction needs
    run = res.out / "runs" / "fixed" / "hifusion"
    meta = read_checkpoint(run / C.CKPT_DIR / C.CKPT_LAST)[CKPT_META_KEY]
    assert meta["stain"]["normalise"] == "reinhard" and np.shape(meta["stain"]["reference"]) == (2, 3)
    assert meta["stain"]["augment"] == {"hed": 0.05, "brightness": 0.1}
    # main row: AdaBN + centre: each gene's section mean is the training mean
    for s in ("P2", "Q1"):
        pred = ad.read_h5ad(res.out / "predictions" / "hifusion" / f"{s}.h5ad").X
        np.testing.assert_allclose(pred.mean(0), meta["train_mean"], atol=1e-4)
    factor = json.loads((run / "done.json").read_text())["shrink_factor[shrink]"]
    assert 0.0 <= factor <= 1.0
    # ... and beside the checkpoints, for `predict --calibrate shrink`
    assert json.loads((run / C.CKPT_DIR / C.CALIBRATION_JSON).read_text()) == {"adabn=0,tta=0": factor}
    # the main row's recipe too, which `predict` follows by default
    recipe = json.loads((run / C.CKPT_DIR / C.RECIPE_JSON).read_text())
    assert recipe == {"adabn": True, "tta": False, "calibrate": "centre", "smooth_um": 0.0, "gene_pcs": 0}
    # the plain row is the unadapted model: its section means are its own
    plain = ad.read_h5ad(res.out / "predictions" / "hifusion [plain]" / "P2.h5ad").X
    assert np.abs(plain.mean(0) - np.asarray(meta["train_mean"])).max() > 1e-4
    # the smoothed row is the plain one averaged over neighbouring spots, at the section's um/px
    from hifusion.preprocess import smooth_spatial

    smooth = ad.read_h5ad(res.out / "predictions" / "hifusion [smooth]" / "P2.h5ad")
    plain_ad = ad.read_h5ad(res.out / "predictions" / "hifusion [plain]" / "P2.h5ad")
    mpp = ad.read_h5ad(tmp_path / "cache" / "P2.h5ad", backed="r").uns[C.UNS_HIFUSION]["mpp"]
    np.testing.assert_allclose(smooth.X, smooth_spatial(plain_ad.X, plain_ad.obsm[C.OBSM_SPATIAL] * mpp, 300.0),
                               atol=1e-5)
    assert smooth.X.var(0).sum() < 0.9 * plain_ad.X.var(0).sum()  # the kernel really averaged neighbours
    # the projected row: the smoothed one with its deviations from the section mean kept along 2 co-expression axes
    # of the training labels (the level stays the model's)
    pcs = ad.read_h5ad(res.out / "predictions" / "hifusion [pcs]" / "P2.h5ad").X
    np.testing.assert_allclose(pcs.mean(0), smooth.X.mean(0), atol=1e-5)
    assert np.linalg.matrix_rank(pcs - pcs.mean(0), tol=1e-4) <= 2 < np.linalg.matrix_rank(smooth.X - smooth.X.mean(0))
    # resuming reads every variant back from the predictions file
    again = run_benchmark(parse_config(raw), tmp_path / "out", figures=False, resume=True)
    pd.testing.assert_frame_equal(again.metrics.reset_index(drop=True), res.metrics.reset_index(drop=True))


def test_seed_ensemble_averages_its_members(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "raw")
    raw = tiny_config(root, tmp_path / "cache", tmp_path, epochs=1, ensemble=2)
    res = run_benchmark(parse_config(raw), tmp_path / "out", figures=False)
    run = res.out / "runs" / "fixed" / "hifusion"
    assert (run / "seed0" / C.CKPT_DIR / C.CKPT_LAST).is_file() and (run / "seed1" / C.CKPT_DIR / C.CKPT_LAST).is_file()
    members = [np.load(run / f"seed{s}" / "member.npz") for s in (0, 1)]
    ens = np.load(run / "predictions.npz")
    for s in ("P2", "Q1"):
        assert np.abs(members[0][s] - members[1][s]).max() > 1e-6  # the seeds really differ
        np.testing.assert_allclose(ens[s], (members[0][s] + members[1][s]) / 2, rtol=1e-6, atol=1e-6)
    info = json.loads((run / "done.json").read_text())
    assert [m["seed"] for m in info["members"]] == [0, 1]


def test_rotation_keeps_every_splits_prediction_file_and_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotation tests each section in several splits: one file per (split, section), none overwritten; with a
    relative results folder (`--out runs/x`) the report still links its maps."""
    import anndata as ad

    root = write_dataset(tmp_path / "raw", sections=("P1", "P2", "P3"))
    raw = tiny_config(root, tmp_path / "cache", tmp_path)
    raw["protocol"] = {"name": "rotation"}
    monkeypatch.chdir(tmp_path)
    res = run_benchmark(parse_config(raw), Path("rot"), models=[parse_config(raw).benchmark_models()[-1]])
    assert res.metrics["model"].unique().tolist() == ["mean_profile"]
    pdir = res.out / "predictions" / "mean_profile"
    files = sorted(p.relative_to(pdir).as_posix() for p in pdir.rglob("*.h5ad"))
    assert files == [f"rot-{tr}/{te}.h5ad" for tr in ("P1", "P2", "P3") for te in ("P1", "P2", "P3") if te != tr]
    # each file holds its own split's prediction: the training mean of that split's training section
    for tr in ("P1", "P2"):
        a = ad.read_h5ad(pdir / f"rot-{tr}" / "P3.h5ad")
        assert np.allclose(a.X, a.X[0])
    p1, p2 = (ad.read_h5ad(pdir / f"rot-{tr}" / "P3.h5ad").X[0] for tr in ("P1", "P2"))
    assert not np.allclose(p1, p2)
    maps = sorted(p.name for p in (res.out / "figures").glob("maps_*.png"))
    assert maps == sorted(f"maps_{te}_rot-{tr}.png" for tr in ("P1", "P2", "P3") for te in ("P1", "P2", "P3")
                          if te != tr)
    assert "![maps_P1_rot-P2](figures/maps_P1_rot-P2.png)" in (res.out / "report.md").read_text()
