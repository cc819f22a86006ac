"""A training run killed with SIGKILL mid-run resumes with `--resume` to the same result as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hifusion import constants as C
from tests.robustness.helpers import last_checkpoint, run_subprocess, sigkill_when, write_config
from tests.synthetic import tiny_config

EPOCHS = 6


def _epochs_done(run: Path) -> int:
    path = run / "runs" / "fixed" / "hifusion" / C.RUN_METRICS
    try:
        return len(pd.read_csv(path))
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return 0


def _kill_mid_run(args: list[str], run: Path, timeout: float = 240) -> None:
    """Start `hifusion ARGS`, SIGKILL it once epoch >= 1 is logged and a checkpoint exists."""
    sigkill_when(args, lambda: _epochs_done(run) >= 2 and last_checkpoint(run).is_file(), "training", timeout)


def test_sigkill_then_resume_matches_uninterrupted(tiny_dataset: Path, tiny_cache: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(tiny_dataset, tiny_cache, tmp_path / "runs",
                                                           epochs=EPOCHS))
    full, killed = tmp_path / "full", tmp_path / "killed"
    res = run_subprocess(["train", str(cfg), "--out", str(full)])
    assert res.code == 0, res.stderr

    _kill_mid_run(["train", str(cfg), "--out", str(killed)], killed)
    done = _epochs_done(killed)
    assert 2 <= done < EPOCHS and not (killed / C.RUN_METRICS).exists()  # really interrupted mid-run

    before = pd.read_csv(killed / "runs" / "fixed" / "hifusion" / C.RUN_METRICS)

    res = run_subprocess(["train", str(cfg), "--out", str(killed), "--resume"])
    assert res.code == 0, res.stderr

    a, b = pd.read_csv(full / C.RUN_METRICS), pd.read_csv(killed / C.RUN_METRICS)
    keys = [c for c in a.columns if c != "value"]
    pd.testing.assert_frame_equal(a[keys], b[keys])
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-4, atol=1e-6)

    ha = pd.read_csv(full / "runs" / "fixed" / "hifusion" / C.RUN_METRICS)
    hb = pd.read_csv(killed / "runs" / "fixed" / "hifusion" / C.RUN_METRICS)
    assert hb["epoch"].tolist() == list(range(EPOCHS))
    assert hb["seconds"].iloc[0] == before["seconds"].iloc[0]  # epoch 0 was not redone: the run resumed
    cols = [c for c in ha.columns if c != "seconds"]
    np.testing.assert_allclose(hb[cols].to_numpy(), ha[cols].to_numpy(), rtol=1e-4, atol=1e-6)
