"""The patch cache's folder layout: a section's two files, when it counts as done, the sections present, the manifest.

`data.prepare` writes a section's `<section>.patches.h5` then its `<section>.h5ad` (each renamed into place when
complete), so a section is done exactly when both files exist; `cache.json` records the scale the folder was made at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hifusion.constants import CACHE_MANIFEST, H5AD_SUFFIX, PATCHES_SUFFIX
from hifusion.errors import InputError


def section_paths(out: Path, section: str) -> tuple[Path, Path]:
    """(h5ad, patches) paths of a section in a cache folder."""
    return out / f"{section}{H5AD_SUFFIX}", out / f"{section}{PATCHES_SUFFIX}"


def is_done(out: Path, section: str) -> bool:
    h5ad_path, patch_path = section_paths(out, section)
    return h5ad_path.is_file() and patch_path.is_file()


def cache_sections(cache_dir: str | Path) -> list[str]:
    """Sections with a complete pair of files in a cache folder."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise InputError("cache folder not found; run `hifusion prepare` first", cache_dir)
    names = [p.name[: -len(H5AD_SUFFIX)] for p in cache_dir.glob(f"*{H5AD_SUFFIX}") if not p.name.startswith(".")]
    return sorted(s for s in names if is_done(cache_dir, s))


def read_manifest(cache_dir: str | Path) -> dict[str, Any] | None:
    path = Path(cache_dir) / CACHE_MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"unreadable cache manifest ({exc}); use --overwrite", path) from exc
