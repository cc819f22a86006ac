"""What Lightning calls back into: one plain line per epoch, the per-epoch metrics file, checkpoint I/O.

Lightning's bar redraws one line with carriage returns, so a log file only keeps its last state: a run looks silent
for minutes. `EpochLines` prints `[hifusion] <model> epoch 3/12: train loss 0.4123, val_mse 0.3012, val_pcc_gene
0.2140, 41.2 s` to stderr at the end of each epoch instead (rank 0 only), whenever the bar is not shown.
Checkpoints go through `hifusion.checkpoint.write_checkpoint` (atomic rename, SHA-256 sidecar), the writer
closed-form fitters use too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hifusion.checkpoint import HASH_SUFFIX, write_checkpoint
from hifusion.constants import TEST_MSE_FLATTERING
from hifusion.io import atomic_write_text
from hifusion.progress import format_seconds, say

VAL_KEYS = ("val_mse", "val_pcc_gene")  # validation figures worth a glance, when a validation split exists


class EpochLines(L.Callback):
    """One `[hifusion] ... epoch i/n: train loss, validation figures, seconds` line per finished epoch."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        say(self.line(trainer.current_epoch, trainer.max_epochs, trainer.callback_metrics,
                      time.perf_counter() - self.t0))

    def line(self, epoch: int, max_epochs: int | None, metrics: Any, seconds: float) -> str:
        """The text of one epoch's line (separate so it can be tested without a Trainer)."""
        parts = []
        if "train_loss" in metrics:
            parts.append(f"train loss {float(metrics['train_loss']):.4f}")
        parts += [f"{k} {float(metrics[k]):.4f}" for k in VAL_KEYS if k in metrics]
        parts.append(format_seconds(seconds))
        total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
        who = f"{self.name} " if self.name else ""
        return f"{who}epoch {epoch + 1}{total}: " + ", ".join(parts)


class EpochMetricsWriter(L.Callback):
    """One row per epoch in `metrics.csv`: losses, loss parts, learning rate, validation scores."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        self.t0 = time.perf_counter()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:  # after a resumed run's state is restored
        if self.path.exists() and trainer.current_epoch > 0:  # resumed: keep the epochs already done
            old = pd.read_csv(self.path)
            self.rows = old[old["epoch"] < trainer.current_epoch].to_dict("records")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        row: dict[str, float] = {"epoch": trainer.current_epoch}
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        for k, v in sorted(trainer.callback_metrics.items()):
            row[k] = float(v)
        row["seconds"] = time.perf_counter() - self.t0
        self.rows.append(row)
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))


class TestSelection(L.Callback):
    """`train.select_on_test: mse` (never the default): after every epoch, score the TEST sections and keep the
    weights of the epoch with the lowest test MSE, as the HiFusion reference code selects its epoch. This flatters
    the score; it exists only to measure by how much, beside the honest checkpoint of the same run.

    `score()` returns the test MSE of the current weights; `save(path)` writes them. The best value survives a
    resume (Lightning stores callback state in last.ckpt). The per-epoch value goes into the run's metrics file
    as `test_mse_FLATTERING` (this callback runs before `EpochMetricsWriter`).
    """

    def __init__(self, score: Callable[[], float], save: Callable[[Path], Any], path: Path) -> None:
        self.score, self.save, self.path = score, save, path
        self.best, self.best_epoch = math.inf, -1

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        mse = float(self.score())
        trainer.callback_metrics[TEST_MSE_FLATTERING] = torch.tensor(mse)
        if mse < self.best:
            self.best, self.best_epoch = mse, int(trainer.current_epoch)
            self.save(self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state_dict["best"]), int(state_dict["best_epoch"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through `hifusion.checkpoint.write_checkpoint` (atomic rename, SHA-256 sidecar)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        write_checkpoint(checkpoint, path)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + HASH_SUFFIX).unlink(missing_ok=True)
