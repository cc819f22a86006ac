"""The checkpoint file format: written atomically with a content hash, read without arbitrary pickle.

A checkpoint is self-describing: besides the weights (`state_dict`, keys prefixed `model.`) it holds the model name
and options, the gene panel, the label transform, the patch scale and the normalisation (key
`constants.CKPT_META_KEY`), so prediction needs nothing else. Training writes it through a Lightning plugin
(`train.callbacks.AtomicCheckpointIO`) and closed-form fitters through `save_model_checkpoint`; both end here, and
nothing here needs Lightning, so prediction reads checkpoints without training code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.constants import CKPT_META_KEY
from hifusion.errors import CheckpointError
from hifusion.io import atomic_path, atomic_write_text

HASH_SUFFIX = ".sha256"
MODEL_PREFIX = "model."  # state_dict keys of the model inside a training checkpoint


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes (in name order): identifies weights that exist only
    in memory, such as a randomly initialised encoder."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file, record its SHA-256 beside it, then rename: a crash never leaves half a file.

    Two files cannot be renamed at once, so while the new file replaces the old one the sidecar lists both digests
    (new first); it lists the new one alone once the rename is done. A kill at any point leaves a checkpoint whose
    digest the sidecar lists, so a resume after a crash never finds a mismatch it cannot explain."""
    path = Path(path)
    sidecar = path.with_name(path.name + HASH_SUFFIX)
    old = recorded_digests(sidecar) if path.is_file() else []
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
        digest = file_sha256(tmp)
        atomic_write_text(sidecar, "\n".join([digest, *old]) + "\n")
    atomic_write_text(sidecar, digest + "\n")


def recorded_digests(sidecar: Path) -> list[str]:
    """The digests a sidecar lists (the current file's first); none when there is no sidecar."""
    return [line.strip() for line in sidecar.read_text().splitlines() if line.strip()] if sidecar.is_file() else []


def save_model_checkpoint(model: torch.nn.Module, meta: CheckpointMeta, path: Path) -> Path:
    """Weights + metadata in the trainer's checkpoint layout, for models fitted without Lightning."""
    state = {f"{MODEL_PREFIX}{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint({"state_dict": state, CKPT_META_KEY: meta.to_dict(), "epoch": 0}, path)
    return path


def verify_checkpoint(path: str | Path) -> None:
    """Compare a checkpoint with its recorded SHA-256 (when one was written)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    sidecar = path.with_name(path.name + HASH_SUFFIX)
    expected = recorded_digests(sidecar)
    if expected and file_sha256(path) not in expected:
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


def read_meta(ckpt: dict[str, Any], path: str | Path) -> CheckpointMeta:
    """The typed metadata of a checkpoint read by `read_checkpoint` (`CheckpointMeta.from_dict` validates it)."""
    return CheckpointMeta.from_dict(ckpt.get(CKPT_META_KEY), path)


def _brief(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} genes: {', '.join(map(str, value[:3]))}, ..."
    return str(value)


def check_resumable(path: str | Path, meta: CheckpointMeta) -> None:
    """Before resuming: the checkpoint is intact, loads without pickle, and was made for the same model, gene panel,
    label transform and patch scale as the run about to continue (`meta`, see `train.fitters.make_meta`)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get(CKPT_META_KEY), dict):
        raise CheckpointError("checkpoint lacks hifusion metadata; cannot resume from it", path)
    old, new = read_meta(ckpt, path).resume_fields(), meta.resume_fields()
    for what in old:
        if old[what] != new[what]:
            raise CheckpointError(
                f"cannot resume: the checkpoint was made for another {what} ({_brief(old[what])}, "
                f"this run: {_brief(new[what])}); use the original config or a new --out", path)


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own state_dict out of a checkpoint (training prefix and torch.compile wrapper removed)."""
    state = {}
    for k, v in ckpt["state_dict"].items():
        if k.startswith(MODEL_PREFIX):
            k = k[len(MODEL_PREFIX):]
            state[k.replace("_orig_mod.", "")] = v  # torch.compile wraps the module
    return state


def load_state_into(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights of a checkpoint into an existing model of the same architecture."""
    model.load_state_dict(model_state(read_checkpoint(path)), strict=True)
