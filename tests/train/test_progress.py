"""Training progress without a terminal: one plain line per epoch (log files, cluster jobs, CI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hifusion
from hifusion.progress import StepLines, format_seconds, use_bars
from hifusion.train.callbacks import EpochLines
from tests.synthetic import tiny_config, write_dataset


def test_epoch_line_text() -> None:
    line = EpochLines("hifusion").line(2, 12, {"train_loss": 0.41234, "val_mse": 0.3, "val_pcc_gene": 0.2}, 41.24)
    assert line == "hifusion epoch 3/12: train loss 0.4123, val_mse 0.3000, val_pcc_gene 0.2000, 41.2 s"
    assert EpochLines().line(0, -1, {}, 75).startswith("epoch 1: 1 min 15 s")


def test_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("HIFUSION_PROGRESS", "1")
    assert use_bars()
    monkeypatch.setenv("HIFUSION_PROGRESS", "0")
    assert not use_bars()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setenv("HIFUSION_PROGRESS", "1")
    assert not use_bars()
    assert format_seconds(3725) == "1 h 02 min"


def test_step_lines_every_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    steps = StepLines("predict", 1000, "spots")
    for start in range(0, 1000, 64):
        steps.advance(min(64, 1000 - start))
    lines = capsys.readouterr().err.strip().splitlines()
    assert 9 <= len(lines) <= 10 and lines[-1].startswith("[hifusion] predict: 1000/1000 spots (100%)")


def test_train_without_terminal_prints_one_line_per_epoch(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "raw")
    cfg = tiny_config(root, tmp_path / "cache", tmp_path / "out", epochs=3,
                      val={"mode": "spatial_block", "fraction": 0.25})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    src = str(Path(hifusion.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "HIFUSION_PROGRESS"}  # bars allowed, but stderr is a pipe
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "hifusion.cli", "train", str(tmp_path / "cfg.yaml")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    epochs = [ln for ln in res.stderr.splitlines() if re.search(r" epoch \d+/3: ", ln)]
    assert len(epochs) == 3, res.stderr
    assert all(ln.startswith("[hifusion] ") and "train loss" in ln and "val_mse" in ln and ln.endswith(" s")
               for ln in epochs), epochs
    assert "\r" not in res.stderr  # no bar redraws in a log file


def test_counting_plain_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a terminal: one line per item with `per_item`, else a line every 10%; nothing when disabled."""
    from hifusion.progress import counting

    monkeypatch.setenv("HIFUSION_PROGRESS", "0")
    with counting("prepare", 2, "sections", per_item=True) as advance:
        advance(1, "A1: 10 spots")
        advance(1, "B1: 12 spots")
    with counting("predict", 100, "spots") as advance:
        for _ in range(4):
            advance(25)
    with counting("predict", 100, "spots", enabled=False) as advance:
        advance(100)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["[hifusion] prepare [1/2] A1: 10 spots", "[hifusion] prepare [2/2] B1: 12 spots"]
    assert [ln.split(" (")[0] for ln in lines[2:]] == [f"[hifusion] predict: {n}/100 spots" for n in (25, 50, 75, 100)]
