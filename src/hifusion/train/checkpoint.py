"""Checkpoints that are written atomically, carry a content hash, and load without arbitrary pickle.

A checkpoint is self-describing: besides the weights it holds the model name and options, the gene panel, the
label transform, the patch scale and the normalisation (key `hifusion`), so prediction needs nothing else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hifusion.errors import CheckpointError
from hifusion.io import atomic_path, atomic_write_text
from hifusion.train.module import CKPT_META_KEY

HASH_SUFFIX = ".sha256"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, record its SHA-256 beside it, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
            digest = file_sha256(tmp)
        atomic_write_text(path.with_name(path.name + HASH_SUFFIX), digest + "\n")

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + HASH_SUFFIX).unlink(missing_ok=True)


def verify_checkpoint(path: str | Path) -> None:
    """Compare a checkpoint with its recorded SHA-256 (when one was written)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    sidecar = path.with_name(path.name + HASH_SUFFIX)
    if sidecar.exists():
        expected = sidecar.read_text().strip()
        if expected and file_sha256(path) != expected:
            raise CheckpointError("checkpoint does not match its recorded SHA-256 (corrupt or modified)", path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dictionary safely: integrity check, then `torch.load(weights_only=True)`."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can trust"
        raise CheckpointError(f"not a readable hifusion checkpoint ({type(exc).__name__})", path) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError("not a hifusion checkpoint (no state_dict)", path)
    return ckpt


def _brief(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} genes: {', '.join(map(str, value[:3]))}, ..."
    return str(value)


def check_resumable(path: str | Path, meta: dict[str, Any]) -> None:
    """Before resuming: the checkpoint is intact, loads without pickle, and was made for the same model, gene panel,
    label transform and patch scale as the run about to continue (`meta`, see `train.fit.make_meta`)."""
    ckpt = read_checkpoint(path)
    old = ckpt.get(CKPT_META_KEY)
    if not isinstance(old, dict):
        raise CheckpointError("checkpoint lacks hifusion metadata; cannot resume from it", path)
    for key, what in (("model", "model"), ("panel", "gene panel"), ("label", "label transform"),
                      ("patch", "patch scale")):
        if old.get(key) != meta.get(key):
            raise CheckpointError(
                f"cannot resume: the checkpoint was made for another {what} ({_brief(old.get(key))}, "
                f"this run: {_brief(meta.get(key))}); use the original config or a new --out", path)


def _model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefix = "model."
    state = {}
    for k, v in ckpt["state_dict"].items():
        if k.startswith(prefix):
            k = k[len(prefix):]
            state[k.replace("_orig_mod.", "")] = v  # torch.compile wraps the module
    return state


def load_state_into(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights of a checkpoint into an existing model of the same architecture."""
    model.load_state_dict(_model_state(read_checkpoint(path)), strict=True)


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, metadata)."""
    from hifusion.models import create_model

    ckpt = read_checkpoint(path)
    meta = ckpt.get(CKPT_META_KEY)
    if not isinstance(meta, dict) or not {"model", "panel", "patch", "normalisation"} <= set(meta):
        raise CheckpointError("checkpoint lacks hifusion metadata (model options, gene panel, patch scale)", path)
    model = create_model(meta["model"]["name"], n_genes=len(meta["panel"]), **meta["model"]["options"])
    try:
        model.load_state_dict(_model_state(ckpt), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model the checkpoint describes ({exc})", path) from exc
    model.eval()
    return model, meta
