"""`train.select_on_test`: one training run gives the honest row and the flattering (test-selected) row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from hifusion import constants as C
from hifusion import metrics as M
from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from hifusion.evaluate.report import FLATTERING, POOLED
from tests.synthetic import tiny_config, write_dataset

FLAT = f"hifusion [{C.FLATTERING_VARIANT}]"


def test_select_on_test_adds_a_labelled_flattering_row(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "raw")
    raw = tiny_config(root, tmp_path / "cache", tmp_path, epochs=2, select_on_test="mse")
    res = run_benchmark(parse_config(raw), tmp_path / "out", figures=False)
    run = tmp_path / "out" / "runs" / "fixed" / "hifusion"
    assert (run / C.CKPT_DIR / C.CKPT_BEST_TEST).is_file() and (run / C.CKPT_DIR / C.CKPT_LAST).is_file()
    history = pd.read_csv(run / C.RUN_METRICS)
    assert C.TEST_MSE_FLATTERING in history.columns and len(history) == 2
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert {"hifusion", FLAT, "mean_profile"} <= set(metrics["model"])
    assert set(metrics.loc[metrics.model == FLAT, "selection"]) == {FLATTERING}
    # the flattering row's pooled test MSE is the best per-epoch test MSE of the run (float32 predictions)
    flat_mse = metrics[(metrics.model == FLAT) & (metrics.section == POOLED) & (metrics.metric == M.HIFUSION_MSE)]
    assert abs(float(flat_mse["value"].iloc[0]) - history[C.TEST_MSE_FLATTERING].min()) < 1e-4
    # and never worse than the honest row (last epoch here: no validation), which is the same run's last epoch
    honest = metrics[(metrics.model == "hifusion") & (metrics.section == POOLED) & (metrics.metric == M.HIFUSION_MSE)]
    assert float(flat_mse["value"].iloc[0]) <= float(honest["value"].iloc[0]) + 1e-6
    assert abs(float(honest["value"].iloc[0]) - history[C.TEST_MSE_FLATTERING].iloc[-1]) < 1e-4
    report = res.report.read_text()
    assert "FLATTERING ROWS" in report and FLAT in report
    assert "## Conventions of published tables" in report

    # benchmarks/select_on_test_plain.py re-scores both checkpoints plainly; the honest one gives the report's row
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "select_on_test_plain.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "--models", "hifusion"], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    rows = {line.split()[2]: [float(x) for x in line.split()[3:]] for line in out[1:]}
    assert set(rows) == {C.CKPT_LAST, C.CKPT_BEST_TEST}
    ours = metrics[(metrics.model == "hifusion") & (metrics.section.isin(["P2", "Q1"])) & (metrics.metric == "mse")]
    assert abs(rows[C.CKPT_LAST][0] - float(ours["value"].mean())) < 1e-4
