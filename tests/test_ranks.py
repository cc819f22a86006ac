"""Which process of a distributed run this is, from the launchers' variables."""

from __future__ import annotations

import pytest

from hifusion.ranks import is_global_zero, local_rank


def test_local_rank_from_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOCAL_RANK", "SLURM_LOCALID", "RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID",
                "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert local_rank() == 0 and is_global_zero()
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert local_rank() == 3
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's and torchrun's variable wins
    assert local_rank() == 1 and not is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "x")
    assert local_rank() == 0
