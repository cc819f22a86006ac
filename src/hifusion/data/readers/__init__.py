"""Reader registry: `read_section(fmt, root, section, ...)` and `list_sections(fmt, root)` for every input format.

Each format module provides `list_sections(root)` and `read(root, section, *, mpp, coord_scale, patient, image, ...)`
returning a validated `Section`; the registry adds the checks that need the image (it exists, is readable, and every
spot centre lies on it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hifusion.constants import DEFAULT_SPOT_UM
from hifusion.data.readers import h5ad, her2st, stnet, visium, visium_hd
from hifusion.data.section import Section
from hifusion.errors import ConfigError, InputError


@dataclass(frozen=True)
class Reader:
    """One input format: how to discover its sections and read one."""

    name: str
    list_sections: Callable[[Path], list[str]]
    read: Callable[..., Section]
    # patch field of view (um) when the user sets none, from the reader options; None: the paper's DEFAULT_SPOT_UM
    default_spot_um: Callable[[dict[str, Any] | None], float] | None = None

    def spot_um(self, options: dict[str, Any] | None = None) -> float:
        return self.default_spot_um(options) if self.default_spot_um is not None else DEFAULT_SPOT_UM


READERS: dict[str, Reader] = {
    m.FORMAT: Reader(m.FORMAT, m.list_sections, m.read, getattr(m, "default_spot_um", None))
    for m in (her2st, stnet, visium, h5ad, visium_hd)
}


def get_reader(fmt: str) -> Reader:
    try:
        return READERS[fmt]
    except KeyError:
        raise ConfigError(f"unknown data format {fmt!r}; choose one of {sorted(READERS)}") from None


def list_sections(fmt: str, root: str | Path) -> list[str]:
    """Section ids found under `root` in format `fmt`."""
    root = Path(root)
    if not root.exists():
        raise InputError("data folder not found", root)
    return get_reader(fmt).list_sections(root)


def read_section(
    fmt: str,
    root: str | Path,
    section: str,
    *,
    mpp: float | None = None,
    coord_scale: float | None = None,
    patient: str | None = None,
    image: str | Path | None = None,
    check_image: bool = True,
    **options: Any,
) -> Section:
    """Read one section; `mpp` and `coord_scale` override what the files say (coord_scale multiplies pixel coords)."""
    root = Path(root)
    if not root.exists():
        raise InputError("data folder not found", root)
    if coord_scale is not None and not float(coord_scale) > 0:
        raise ConfigError(f"coordinate scale of {section} must be positive, got {coord_scale}")
    if mpp is not None and not float(mpp) > 0:
        raise ConfigError(f"um/px of {section} must be positive, got {mpp}")
    sec = get_reader(fmt).read(
        root,
        section,
        mpp=mpp,
        coord_scale=coord_scale,
        patient=patient,
        image=Path(image) if image else None,
        **options,
    )
    if check_image:
        if sec.image_array is None and not sec.image_path.is_file():
            raise InputError("image not found", sec.image_path)
        with sec.open_image() as img:
            sec.check_on_image(img.size)
    return sec


__all__ = ["READERS", "Reader", "Section", "get_reader", "list_sections", "read_section"]
