"""A pretraining killed with SIGKILL and resumed ends with the same weights, bit for bit, as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hifusion import constants as C
from tests.pretrain.conftest import pretrain_config
from tests.robustness.helpers import run_inprocess, sigkill_when

EPOCHS = 4


def _rows(out: Path) -> int:
    try:
        return len((out / C.PRETRAIN_LOG).read_text().splitlines()) - 1
    except OSError:
        return 0


def _kill_after_two_epochs(args: list[str], out: Path, timeout: float = 240) -> None:
    sigkill_when(args, lambda: _rows(out) >= 2 and (out / C.PRETRAIN_STATE).is_file(), "pretraining", timeout)


def test_sigkill_then_resume_gives_identical_weights(pre_dataset: Path, pre_cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    cfg = pretrain_config(tmp_path / "c.yaml", pre_dataset, pre_cache, epochs=EPOCHS)
    args = ["pretrain", str(cfg), "--sections", "P1", "--threads", "1"]  # 36 tiles, 4 steps of 8 per epoch
    killed, full = tmp_path / "killed", tmp_path / "full"
    _kill_after_two_epochs([*args, "--out", str(killed)], killed)
    assert not (killed / C.PRETRAIN_WEIGHTS).exists() and _rows(killed) < EPOCHS
    res = run_inprocess([*args, "--out", str(killed), "--resume"], monkeypatch, capsys)
    assert res.code == 0, res.stderr
    res = run_inprocess([*args, "--out", str(full)], monkeypatch, capsys)
    assert res.code == 0, res.stderr
    a, b = load_file(str(killed / C.PRETRAIN_WEIGHTS)), load_file(str(full / C.PRETRAIN_WEIGHTS))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [",".join(r.split(",")[:-1]) for r in (killed / C.PRETRAIN_LOG).read_text().splitlines()]
    assert strip == [",".join(r.split(",")[:-1]) for r in (full / C.PRETRAIN_LOG).read_text().splitlines()]
    # a resume with other settings is refused, naming the state file
    other = run_inprocess([*args, "--out", str(killed), "--resume", "--lr", "0.5"], monkeypatch, capsys)
    assert other.code == 2 and C.PRETRAIN_STATE in other.stderr and "other tiles or settings" in other.stderr
