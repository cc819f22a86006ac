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
    assert set(metrics["section"]) == {"P2", "Q1"}
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
