"""Rebuild the model a checkpoint describes: registry + the checkpoint format, no training code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hifusion.checkpoint import model_state, read_checkpoint, read_meta
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.errors import CheckpointError
from hifusion.models.registry import create_model


def rebuild_options(options: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model options without the encoder weight files: the checkpoint holds every weight, so the
    files (or a hub download, `encoder_weights: hub`) are not needed again, and may be absent where it predicts."""
    return {k: None if k.endswith("encoder_weights") else v for k, v in options.items()}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, metadata)."""
    ckpt = read_checkpoint(path)
    meta = read_meta(ckpt, path)
    model = create_model(meta.model_name, n_genes=len(meta.panel), **rebuild_options(meta.model_options))
    try:
        model.load_state_dict(model_state(ckpt), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model the checkpoint describes ({exc})", path) from exc
    model.eval()
    return model, meta
