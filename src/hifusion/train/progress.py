"""Training progress as one plain line per epoch, for log files, cluster jobs and CI (no terminal to draw a bar on).

Lightning's bar redraws one line with carriage returns, so a log file only keeps its last state: a run looks silent
for minutes. `EpochLines` prints `[hifusion] <model> epoch 3/12: train loss 0.4123, val_mse 0.3012, val_pcc_gene
0.2140, 41.2 s` to stderr at the end of each epoch instead (rank 0 only), whenever the bar is not shown.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from hifusion.progress import format_seconds, say, use_bars

VAL_KEYS = ("val_mse", "val_pcc_gene")  # validation figures worth a glance, when a validation split exists


def use_bar() -> bool:
    """Lightning's bar only on an interactive terminal with bars allowed (see `hifusion.progress`)."""
    return use_bars()


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
