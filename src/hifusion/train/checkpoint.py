"""Lightning's side of the checkpoint format (`hifusion.checkpoint`): the trainer writes through the same atomic,
hashed writer that closed-form fitters use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from hifusion.checkpoint import HASH_SUFFIX, write_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through `hifusion.checkpoint.write_checkpoint` (atomic rename, SHA-256 sidecar)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        write_checkpoint(checkpoint, path)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + HASH_SUFFIX).unlink(missing_ok=True)
