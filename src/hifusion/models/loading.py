"""Rebuild the model a checkpoint describes: registry + the checkpoint format, no training code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hifusion.checkpoint import model_state, read_checkpoint
from hifusion.constants import CKPT_META_KEY
from hifusion.errors import CheckpointError
from hifusion.models.registry import create_model


def rebuild_options(options: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model options without the encoder weight files: the checkpoint holds every weight, so the
    files (or a hub download, `encoder_weights: hub`) are not needed again, and may be absent where it predicts."""
    return {k: None if k.endswith("encoder_weights") else v for k, v in options.items()}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, metadata)."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get(CKPT_META_KEY)
    if not isinstance(meta, dict) or not {"model", "panel", "patch", "normalisation"} <= set(meta):
        raise CheckpointError("checkpoint lacks hifusion metadata (model options, gene panel, patch scale)", path)
    model = create_model(meta["model"]["name"], n_genes=len(meta["panel"]), **rebuild_options(meta["model"]["options"]))
    try:
        model.load_state_dict(model_state(ckpt), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model the checkpoint describes ({exc})", path) from exc
    model.eval()
    return model, meta
