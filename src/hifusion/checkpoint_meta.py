"""Typed checkpoint metadata: what prediction needs besides the weights, and its one validator.

The metadata travels in a checkpoint under `constants.CKPT_META_KEY` as a dict of primitives (so
`torch.load(weights_only=True)` reads it). This module is the only one that reads or writes that dict's keys (the
names live in `constants.py`): everything else gets a `CheckpointMeta` from `from_dict` and writes one back with
`to_dict`. The format on disk is unchanged: keys an older checkpoint lacks are None here and stay absent when
written again, keys a newer version added are kept untouched in `extra`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hifusion import constants as C
from hifusion.errors import CheckpointError
from hifusion.geometry import PatchGeometry

# entries that every checkpoint since the first release holds; anything else is optional
REQUIRED = (C.META_MODEL, C.META_PANEL, C.META_PATCH, C.META_NORMALISATION)
_KNOWN = (C.META_STAIN, C.META_TRAIN_MEAN, C.META_VERSION, C.META_MODEL, C.META_PANEL, C.META_LABEL, C.META_PATCH,
          C.META_NORMALISATION, C.META_TRAIN_SECTIONS, C.META_INPUTS, C.META_LABEL_SCALE)
# entries that do not change what reaches an image encoder (see `encoder_inputs`)
_NOT_ENCODER_INPUT = frozenset({C.META_TRAIN_MEAN, C.META_MODEL, C.META_PANEL, C.META_LABEL, C.META_TRAIN_SECTIONS,
                                C.META_LABEL_SCALE})


@dataclass
class CheckpointMeta:
    """A checkpoint's metadata: the model to rebuild, its gene panel and label transform, the patch geometry and
    the image rules (normalisation, stain handling, preset encoder views); optional entries are None when absent."""

    model_name: str
    model_options: dict[str, Any]
    panel: list[str]
    patch: PatchGeometry
    normalisation: dict[str, Any]
    label: str | None = None  # absent only in hand-made metadata; prediction needs it
    stain: dict[str, Any] | None = None  # `stain.stain_meta`
    train_mean: list[float] | None = None  # the level `calibrate: centre` restores
    version: str | None = None
    train_sections: list[str] | None = None
    inputs: dict[str, dict[str, Any]] | None = None  # preset encoder views, `models.encoders.preset_inputs`
    label_scale: dict[str, list[float]] | None = None  # per-gene mean/std of z-scored labels (`scale_labels: gene`)
    extra: dict[str, Any] = field(default_factory=dict)  # entries this version does not know, kept as read

    # -------------------------------------------------------------------------------------------- reading, writing
    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None) -> CheckpointMeta:
        """The one validator: CheckpointError naming `path` and the problem when an entry prediction relies on is
        absent or malformed (model, gene panel, patch geometry, normalisation; label when present)."""
        if not isinstance(d, Mapping) or not set(REQUIRED) <= set(d):
            raise CheckpointError("checkpoint lacks hifusion metadata (model options, gene panel, patch scale)", path)
        try:
            model = d[C.META_MODEL]
            name, options = str(model[C.META_MODEL_NAME]), dict(model[C.META_MODEL_OPTIONS])
            panel = [str(g) for g in d[C.META_PANEL]]
            norm = dict(d[C.META_NORMALISATION])
            label = None if d.get(C.META_LABEL) is None else str(d[C.META_LABEL])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata incomplete (model, panel, normalisation or label: {exc})",
                                  path) from exc
        try:
            patch = PatchGeometry.from_dict(d[C.META_PATCH])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata malformed (patch {d[C.META_PATCH]}: {exc})", path) from exc
        if not panel:
            raise CheckpointError("checkpoint metadata malformed (an empty gene panel)", path)
        return cls(model_name=name, model_options=options, panel=panel, patch=patch, normalisation=norm, label=label,
                   stain=d.get(C.META_STAIN), train_mean=d.get(C.META_TRAIN_MEAN), version=d.get(C.META_VERSION),
                   train_sections=d.get(C.META_TRAIN_SECTIONS), inputs=d.get(C.META_INPUTS),
                   label_scale=d.get(C.META_LABEL_SCALE), extra={k: v for k, v in d.items() if k not in _KNOWN})

    def to_dict(self) -> dict[str, Any]:
        """The dict stored in a checkpoint, in the order training has always written it; absent entries stay
        absent, unknown ones are written back as read."""
        out = {C.META_STAIN: self.stain, C.META_TRAIN_MEAN: self.train_mean, C.META_VERSION: self.version,
               C.META_MODEL: {C.META_MODEL_NAME: self.model_name, C.META_MODEL_OPTIONS: self.model_options},
               C.META_PANEL: self.panel, C.META_LABEL: self.label, C.META_PATCH: self.patch.to_dict(),
               C.META_NORMALISATION: self.normalisation, C.META_TRAIN_SECTIONS: self.train_sections,
               C.META_INPUTS: self.inputs, C.META_LABEL_SCALE: self.label_scale}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    def with_changes(self, **changes: Any) -> CheckpointMeta:
        """A copy with some fields replaced (the others shared)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------------------------------------- questions
    @property
    def stain_normalise(self) -> str:
        """The stain normalisation the model was trained with ('none' for checkpoints without stain options)."""
        return str((self.stain or {}).get("normalise", "none"))

    @property
    def views(self) -> dict[str, dict[str, Any]]:
        """Preset encoder views by image input ('spot', 'region'); empty without presets."""
        return self.inputs or {}

    def require_label(self, path: str | Path | None = None) -> str:
        if self.label is None:
            raise CheckpointError("checkpoint metadata incomplete (no label transform)", path)
        return self.label

    def resume_fields(self) -> dict[str, Any]:
        """What a run may only resume from a checkpoint made with: model, gene panel, label transform, patch scale
        (entries as stored, so an older checkpoint compares as it always did)."""
        d = self.to_dict()
        return {what: d.get(key) for key, what in ((C.META_MODEL, "model"), (C.META_PANEL, "gene panel"),
                                                   (C.META_LABEL, "label transform"), (C.META_PATCH, "patch scale"))}

    def encoder_inputs(self) -> dict[str, Any]:
        """The entries that can change what reaches an image encoder (normalisation, stain normalisation, patch
        geometry, version, views, and whatever later preprocessing records): the metadata part of an embedding
        cache key. Stain augmentation acts in training only, never on an embedding."""
        meta = {k: copy.deepcopy(v) for k, v in self.to_dict().items() if k not in _NOT_ENCODER_INPUT}
        if isinstance(meta.get(C.META_STAIN), dict):
            meta[C.META_STAIN] = {k: v for k, v in meta[C.META_STAIN].items() if k != "augment"}
        return meta
