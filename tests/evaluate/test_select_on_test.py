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
PLAIN_FLAT = f"hifusion [{C.PLAIN_FLATTERING_VARIANT}]"


def _pooled_mse(metrics: pd.DataFrame, model: str) -> float:
    rows = metrics[(metrics.model == model) & (metrics.section == POOLED) & (metrics.metric == M.HIFUSION_MSE)]
    return float(rows["value"].iloc[0])


def _section_mse(metrics: pd.DataFrame, model: str) -> float:
    return float(metrics[(metrics.model == model) & metrics.section.isin(["P2", "Q1"])
                         & (metrics.metric == "mse")]["value"].mean())


def test_select_on_test_adds_labelled_flattering_rows(tmp_path: Path) -> None:
    """Under a test-time recipe (flips) the test-selected epoch gets two rows, with the recipe and plain; the honest
    model is the last epoch here (no validation)."""
    root = write_dataset(tmp_path / "raw")
    raw = tiny_config(root, tmp_path / "cache", tmp_path, epochs=2, select_on_test="mse")
    raw["adapt"] = {"tta": True}
    raw["adapt_variants"] = {"plain": {}}
    res = run_benchmark(parse_config(raw), tmp_path / "out", figures=False)
    run = tmp_path / "out" / "runs" / "fixed" / "hifusion"
    assert (run / C.CKPT_DIR / C.CKPT_BEST_TEST).is_file() and (run / C.CKPT_DIR / C.CKPT_LAST).is_file()
    history = pd.read_csv(run / C.RUN_METRICS)
    assert C.TEST_MSE_FLATTERING in history.columns and len(history) == 2
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert {"hifusion", "hifusion [plain]", FLAT, PLAIN_FLAT, "mean_profile"} <= set(metrics["model"])
    assert set(metrics.loc[metrics.model.isin([FLAT, PLAIN_FLAT]), "selection"]) == {FLATTERING}
    assert FLATTERING not in set(metrics.loc[metrics.model == "hifusion [plain]", "selection"])
    # the plain flattering row's pooled test MSE is the best per-epoch (plain) test MSE of the run (float32
    # predictions), never worse than the honest plain row, which is the run's last epoch
    assert abs(_pooled_mse(metrics, PLAIN_FLAT) - history[C.TEST_MSE_FLATTERING].min()) < 1e-4
    assert _pooled_mse(metrics, PLAIN_FLAT) <= _pooled_mse(metrics, "hifusion [plain]") + 1e-6
    assert abs(_pooled_mse(metrics, "hifusion [plain]") - history[C.TEST_MSE_FLATTERING].iloc[-1]) < 1e-4
    assert _pooled_mse(metrics, FLAT) != _pooled_mse(metrics, PLAIN_FLAT)  # the recipe acts on the flattering row
    report = res.report.read_text()
    assert "FLATTERING ROWS" in report and FLAT in report and PLAIN_FLAT in report
    assert "## Conventions of published tables" in report

    # benchmarks/select_on_test_plain.py re-scores both checkpoints plainly: the report's plain rows
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "select_on_test_plain.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "--models", "hifusion"], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    rows = {line.split()[2]: [float(x) for x in line.split()[3:]] for line in out[1:]}
    assert set(rows) == {C.CKPT_LAST, C.CKPT_BEST_TEST}
    assert abs(rows[C.CKPT_LAST][0] - _section_mse(metrics, "hifusion [plain]")) < 1e-4
    assert abs(rows[C.CKPT_BEST_TEST][0] - _section_mse(metrics, PLAIN_FLAT)) < 1e-4
