"""The patch geometry: the physical scale and sizes patches are cut at.

One typed value for what the patch cache holds, what a model was trained on (the checkpoint's `patch` entry) and
what whole-slide prediction cuts from a slide, so the three numbers never travel apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hifusion.constants import H5_ATTR_PIXEL_SIZE, H5_ATTR_REGION_PX, H5_ATTR_SPOT_PX


@dataclass(frozen=True)
class PatchGeometry:
    """Spot and region patches, square and centred on the same point, at `pixel_size` um/px.

    The spot patch is the centre `spot_px` crop of the region patch; `spot_um` and `region_factor` are derived
    (the cache records the requested values beside them, see `data.prepare.CacheParams`)."""

    pixel_size: float  # um/px of the patches
    spot_px: int
    region_px: int

    def __post_init__(self) -> None:
        if not (self.pixel_size > 0 and 0 < self.spot_px <= self.region_px):
            raise ValueError(f"patch geometry needs pixel_size > 0 and 0 < spot_px <= region_px, got {self}")

    @property
    def spot_um(self) -> float:
        """The spot patch's field of view in microns."""
        return self.spot_px * self.pixel_size

    @property
    def region_factor(self) -> float:
        return self.region_px / self.spot_px

    def to_dict(self) -> dict[str, Any]:
        """Primitives only, in the checkpoint's order (loadable with `torch.load(weights_only=True)`)."""
        return {H5_ATTR_PIXEL_SIZE: float(self.pixel_size), H5_ATTR_SPOT_PX: int(self.spot_px),
                H5_ATTR_REGION_PX: int(self.region_px)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatchGeometry:
        """From a checkpoint's `patch` entry or a patch file's attrs (other keys ignored); KeyError, TypeError or
        ValueError when a size is missing or malformed."""
        return cls(float(d[H5_ATTR_PIXEL_SIZE]), int(d[H5_ATTR_SPOT_PX]), int(d[H5_ATTR_REGION_PX]))
