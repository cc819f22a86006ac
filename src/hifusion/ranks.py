"""Which process of a distributed run this is, known before any Trainer exists (no torch import).

Lightning's DDP runs the same command once per process: its own launcher re-executes it for ranks > 0 (setting
LOCAL_RANK, NODE_RANK), torchrun sets RANK for every process, SLURM sets SLURM_PROCID. Files shared by the run
(results folder, patch cache, tables, report) are written by global rank 0 alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_global_zero() -> bool:
    """True unless a launcher variable names a non-zero rank (so also True when not distributed)."""
    return all(os.environ.get(k, "0").strip() in ("", "0") for k in _RANK_VARS)


def local_rank() -> int:
    """This process's index on its node (0 when not distributed): which of the node's GPUs is its own, known before
    Lightning assigns one (work done before `fit`, such as computing frozen-encoder embeddings, goes there)."""
    value = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")).strip()
    return int(value) if value.isdigit() else 0


def wait_until(ready: Callable[[], bool], what: str, path: Path, timeout_s: float = 6 * 3600,
               poll_s: float = 2.0) -> None:
    """Non-zero ranks wait for something rank 0 writes (the patch cache) instead of writing it concurrently."""
    from hifusion.errors import ConfigError

    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise ConfigError(f"rank 0 did not finish {what} within {timeout_s:.0f} s; run `hifusion prepare` "
                              "before launching the distributed job", path)
        time.sleep(poll_s)
