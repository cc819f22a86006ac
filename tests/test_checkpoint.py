"""The checkpoint file and its SHA-256 sidecar stay consistent through a kill between their two renames."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hifusion import checkpoint as ck
from hifusion.errors import CheckpointError


def _ckpt(value: float) -> dict:
    return {"state_dict": {"w": torch.full((3,), value)}}


def test_kill_after_the_file_rename_leaves_a_readable_checkpoint(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.ckpt"
    ck.write_checkpoint(_ckpt(1.0), path)
    calls = {"n": 0}
    real = ck.atomic_write_text

    def dies_second_time(p: Path, text: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the sidecar's final rewrite, after the new checkpoint was renamed into place
            raise KeyboardInterrupt("killed")
        real(p, text)

    monkeypatch.setattr(ck, "atomic_write_text", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        ck.write_checkpoint(_ckpt(2.0), path)
    monkeypatch.setattr(ck, "atomic_write_text", real)
    assert len(ck.recorded_digests(path.with_name(path.name + ck.HASH_SUFFIX))) == 2
    assert float(ck.read_checkpoint(path)["state_dict"]["w"][0]) == 2.0
    ck.write_checkpoint(_ckpt(3.0), path)  # the next write leaves one digest again
    assert ck.recorded_digests(path.with_name(path.name + ck.HASH_SUFFIX)) == [ck.file_sha256(path)]


def test_kill_before_the_file_rename_keeps_the_old_checkpoint_valid(tmp_path: Path) -> None:
    path = tmp_path / "state.ckpt"
    ck.write_checkpoint(_ckpt(1.0), path)
    sidecar = path.with_name(path.name + ck.HASH_SUFFIX)
    old = sidecar.read_text().strip()
    sidecar.write_text(f"{'0' * 64}\n{old}\n")  # as left by a kill between the sidecar write and the rename
    assert float(ck.read_checkpoint(path)["state_dict"]["w"][0]) == 1.0


def test_a_modified_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.ckpt"
    ck.write_checkpoint(_ckpt(1.0), path)
    torch.save(_ckpt(5.0), path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        ck.read_checkpoint(path)
