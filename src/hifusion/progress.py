"""Progress that works everywhere: a rich bar on a terminal, plain one-line reports in log files and cluster jobs.

A bar redrawn with carriage returns is unreadable in a log file (only its last state survives), so when stderr is not
a terminal, or bars are switched off with `HIFUSION_PROGRESS=0` (CI does this), the commands print one plain line per
unit of work instead, prefixed `[hifusion] ` like the package's other notes: per epoch (train), per section
(prepare), every 10% of the spots (predict). Those lines are few and carry the figures a user watches (loss,
validation scores, seconds), so they are printed in both cases.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PROGRESS_ENV = "HIFUSION_PROGRESS"  # "0": no bars (plain lines still appear)
PREFIX = "[hifusion] "  # marks progress notes on stderr (the CLI's errors start with "error: ")


def bars_allowed() -> bool:
    """False when the user or CI switched bars off (`HIFUSION_PROGRESS=0`)."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def use_bars() -> bool:
    """A redrawn bar only on an interactive terminal with bars allowed; plain lines otherwise (a bar redrawn with
    carriage returns is unreadable in a log file or cluster job, where only its last state survives)."""
    return bars_allowed() and stderr_is_terminal()


def say(message: str) -> None:
    """One plain `[hifusion] ...` line on stderr, flushed at once so log files and job output show it as it happens."""
    print(f"{PREFIX}{message}", file=sys.stderr, flush=True)


def stderr_console() -> Any:
    """A rich console on stderr (stdout stays for results)."""
    from rich.console import Console

    return Console(stderr=True)


def format_seconds(seconds: float) -> str:
    """'42.0 s', '3 min 05 s' or '1 h 02 min': short and readable in a log line."""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class StepLines:
    """Plain lines at every `step` fraction of `total` (10% by default): "predict: 500/5000 spots (10%), 12.3 s"."""

    def __init__(self, what: str, total: int, unit: str, step: float = 0.1) -> None:
        self.what, self.total, self.unit, self.step = what, max(0, int(total)), unit, float(step)
        self.done, self.next_report, self.t0 = 0, self.step, time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += int(n)
        if not self.total:
            return
        frac = self.done / self.total
        if frac + 1e-12 >= self.next_report or self.done >= self.total:
            dt = time.perf_counter() - self.t0
            rate = self.done / dt if dt > 0 else float("nan")
            say(f"{self.what}: {self.done}/{self.total} {self.unit} ({frac:.0%}), {format_seconds(dt)}, "
                f"{rate:.1f} {self.unit}/s")
            while self.next_report <= frac + 1e-12:
                self.next_report += self.step


@contextmanager
def counting(what: str, total: int, unit: str, *, enabled: bool = True,
             per_item: bool = False) -> Iterator[Callable[..., None]]:
    """Count `total` units of work; yields `advance(n=1, note=None)`. The one progress display of the commands.

    On an interactive terminal with bars allowed: a rich bar (`what`, done/total `unit`, time left), each note printed
    above it as `what note`. Otherwise plain lines: with `per_item` one per call (`what [done/total] note`), else
    every 10% of the total (`StepLines`). Nothing at all when not `enabled` or there is nothing to count.
    """
    if not enabled or total <= 0:
        yield lambda n=1, note=None: None
        return
    if not use_bars():
        steps, done = StepLines(what, total, unit), 0

        def line(n: int = 1, note: str | None = None) -> None:
            nonlocal done
            done += int(n)
            if per_item:
                say(f"{what} [{done}/{total}] {note}")
            else:
                steps.advance(n)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeRemainingColumn())
    with Progress(*columns, console=stderr_console()) as bar:
        task = bar.add_task(what, total=total)

        def advance(n: int = 1, note: str | None = None) -> None:
            if note:
                bar.console.print(f"{what} {note}")
            bar.advance(task, n)

        yield advance
