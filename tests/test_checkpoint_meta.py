"""Typed checkpoint metadata and patch geometry: round trips, metadata of every age, the one validator's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hifusion import checkpoint as ck
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.constants import CKPT_META_KEY
from hifusion.errors import CheckpointError
from hifusion.geometry import PatchGeometry

PATCH = {"pixel_size": 2.0, "spot_px": 16, "region_px": 32}
# what training writes today (`train.fitters.make_meta`), in its order
CURRENT = {
    "stain": {"augment": {"hed": 0.05}, "normalise": "reinhard", "reference": [[70.0, 12.0, -8.0], [12.0, 6.0, 5.0]]},
    "train_mean": [0.5, 1.0],
    "version": "0.1.0",
    "model": {"name": "hifusion", "options": {"tokens": 1, "levels": [1, 4]}},
    "panel": ["ERBB2", "KRT19"],
    "label": "log1p_cpm",
    "patch": PATCH,
    "normalisation": {"mode": "dataset", "mean": [0.7, 0.4, 0.6], "std": [0.2, 0.2, 0.2]},
    "train_sections": ["A1", "B1"],
    "inputs": {"spot": {"encoder": "uni", "source": "spot", "crop_px": 12, "px": 16, "mpp": 0.5,
                        "mean": [0.5] * 3, "std": [0.2] * 3}},
    "label_scale": {"mean": [0.1, 0.2], "std": [1.0, 2.0]},
}
# the first releases' metadata: no stain options, training mean, views or label scale
OLDEST = {"model": {"name": "hifusion", "options": {}}, "panel": ["ERBB2"], "patch": PATCH,
          "normalisation": {"mode": "patch"}, "label": "log1p_cpm"}


def test_geometry_round_trip_and_derived_sizes() -> None:
    g = PatchGeometry.from_dict({**PATCH, "spot_um": 32.0, "region_factor": 2.0})  # cache attrs: extra keys ignored
    assert g == PatchGeometry(2.0, 16, 32) and g.to_dict() == PATCH
    assert list(g.to_dict()) == ["pixel_size", "spot_px", "region_px"]
    assert g.spot_um == 32.0 and g.region_factor == 2.0
    with pytest.raises(ValueError):
        PatchGeometry(2.0, 33, 32)  # the spot is the region's centre crop
    with pytest.raises(ValueError):
        PatchGeometry(0.0, 16, 32)


@pytest.mark.parametrize("stored", [CURRENT, OLDEST], ids=["current", "oldest"])
def test_meta_round_trip_keeps_the_stored_dict(stored: dict) -> None:
    meta = CheckpointMeta.from_dict(stored)
    assert meta.to_dict() == stored
    assert list(meta.to_dict()) == list(stored) or stored is OLDEST  # training's order for what it writes
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta


def test_absent_entries_stay_absent_and_unknown_ones_are_kept() -> None:
    meta = CheckpointMeta.from_dict(OLDEST)
    assert meta.stain is None and meta.train_mean is None and meta.label_scale is None and meta.views == {}
    assert meta.stain_normalise == "none"
    newer = {**CURRENT, "from_the_future": {"x": 1}}
    again = CheckpointMeta.from_dict(newer)
    assert again.extra == {"from_the_future": {"x": 1}} and again.to_dict() == newer


def test_typed_fields() -> None:
    meta = CheckpointMeta.from_dict(CURRENT)
    assert meta.model_name == "hifusion" and meta.model_options == {"tokens": 1, "levels": [1, 4]}
    assert meta.patch == PatchGeometry(2.0, 16, 32) and meta.panel == ["ERBB2", "KRT19"]
    assert meta.stain_normalise == "reinhard" and meta.views["spot"]["encoder"] == "uni"
    assert meta.with_changes(label_scale=None).to_dict() == {k: v for k, v in CURRENT.items() if k != "label_scale"}
    enc = meta.encoder_inputs()  # the metadata part of an embedding key
    assert set(enc) == {"stain", "version", "patch", "normalisation", "inputs"}
    assert "augment" not in enc["stain"] and "augment" in CURRENT["stain"]


@pytest.mark.parametrize(("stored", "problem"), [
    (None, "lacks hifusion metadata"),
    ({k: v for k, v in CURRENT.items() if k != "patch"}, "lacks hifusion metadata"),
    ({**CURRENT, "model": {"options": {}}}, "metadata incomplete"),
    ({**CURRENT, "panel": 3}, "metadata incomplete"),
    ({**CURRENT, "panel": []}, "empty gene panel"),
    ({**CURRENT, "patch": {"pixel_size": 2.0, "spot_px": 16}}, "malformed"),
    ({**CURRENT, "patch": {**PATCH, "spot_px": 64}}, "malformed"),
    ({**CURRENT, "patch": {**PATCH, "pixel_size": "big"}}, "malformed"),
])
def test_the_one_validator_names_file_and_problem(tmp_path: Path, stored: object, problem: str) -> None:
    path = tmp_path / "last.ckpt"
    with pytest.raises(CheckpointError, match=problem) as e:
        CheckpointMeta.from_dict(stored, path)
    assert str(e.value).startswith(str(path))


def test_written_and_read_through_the_checkpoint_file(tmp_path: Path) -> None:
    meta = CheckpointMeta.from_dict(CURRENT)
    path = ck.save_model_checkpoint(torch.nn.Linear(2, 2), meta, tmp_path / "m.ckpt")
    raw = torch.load(path, map_location="cpu", weights_only=True)[CKPT_META_KEY]
    assert raw == CURRENT and list(raw) == list(CURRENT)  # the format on disk is the dict training always wrote
    assert ck.read_meta(ck.read_checkpoint(path), path) == meta
    ck.check_resumable(path, meta)
    with pytest.raises(CheckpointError, match="another gene panel"):
        ck.check_resumable(path, meta.with_changes(panel=["ERBB2", "GNAS"]))
    with pytest.raises(CheckpointError, match="another patch scale"):
        ck.check_resumable(path, meta.with_changes(patch=PatchGeometry(1.0, 16, 32)))
