"""The files whole-slide prediction writes: AnnData (scanpy-ready), CSV, per-gene maps and an HTML index.

Every file is written atomically (hifusion.io), so an interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion import constants as C
from hifusion.io import atomic_path, atomic_write_text

DEFAULT_MAP_GENES = 6
MAP_SPACING_FRACTION = 0.8  # predict maps: disc diameter at most this share of the distance between spots


def map_genes(panel: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """Genes to draw: the requested ones, else the marker genes present in the panel, else the first six."""
    if requested:
        return list(dict.fromkeys(requested))
    markers = [g for g in C.MARKER_GENES if g in panel]
    return markers or list(panel[:DEFAULT_MAP_GENES])


def safe_name(gene: str) -> str:
    """A file name for a gene (names such as 'HLA-DRB1' are kept; path separators and the like are replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", gene) or "gene"


LABEL_UNITS = {
    "logprop": "logprop: ln((count + 1) / sum over the panel of (count + 1)) per spot, predicted (not measured)",
    "log1p_cpm": "log1p_cpm: ln(1 + count per 10,000 of the spot's total), predicted (not measured)",
}


def label_unit(label: str) -> str:
    """The unit of a prediction in words, from the label transform the model was trained on."""
    return LABEL_UNITS.get(label, f"{label} (the checkpoint's label transform), predicted (not measured)")


def checkpoint_sha256(path: str | Path | None) -> str | None:
    """The SHA-256 recorded beside a checkpoint (written with it), else computed from the file; None without one."""
    if path is None or not Path(path).is_file():
        return None
    from hifusion.checkpoint import HASH_SUFFIX, file_sha256, recorded_digests

    listed = recorded_digests(Path(path).with_name(Path(path).name + HASH_SUFFIX))
    return listed[0] if len(listed) == 1 else file_sha256(Path(path))


def provenance(model: str, label: str, checkpoint: str | Path | None, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """What uns['hifusion'] of every prediction file states: unit, model, checkpoint and its hash, recipe, version."""
    from hifusion import __version__

    return {"model": model, C.UNS_UNIT: label_unit(label), "label": label,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            C.UNS_CHECKPOINT_SHA256: checkpoint_sha256(checkpoint),
            C.UNS_RECIPE: {k: v for k, v in recipe.items() if v is not None}, C.UNS_VERSION: __version__}


def set_prediction(adata: Any, pred: np.ndarray, info: Mapping[str, Any]) -> Any:
    """The prediction in layers['predicted'] and in X (plotting, older code), and uns['hifusion'] = info."""
    pred = np.asarray(pred, dtype=np.float32)
    adata.X = pred
    adata.layers[C.LAYER_PREDICTED] = pred.copy()
    adata.uns[C.UNS_HIFUSION] = {k: v for k, v in info.items() if v is not None}
    return adata


def build_anndata(
    pred: np.ndarray,
    coords: np.ndarray,
    barcodes: Sequence[str],
    panel: Sequence[str],
    obs: Mapping[str, np.ndarray],
    slide_id: str,
    thumbnail: np.ndarray,
    scalef: float,
    spot_diameter_px: float,
    info: Mapping[str, Any],
) -> Any:
    """Spots x genes AnnData laid out like a Space Ranger section, so `scanpy.pl.spatial(adata, color=gene)` works."""
    import anndata as ad

    adata = ad.AnnData(X=np.asarray(pred, dtype=np.float32), obs=pd.DataFrame(dict(obs), index=list(barcodes)))
    adata.var_names = pd.Index([str(g) for g in panel])
    adata.obsm[C.OBSM_SPATIAL] = np.asarray(coords, dtype=np.float64)
    adata.uns[C.UNS_SPATIAL] = {
        slide_id: {
            "images": {C.UNS_HIRES: np.asarray(thumbnail, dtype=np.uint8)},
            "scalefactors": {C.UNS_HIRES_SCALEF: float(scalef), C.UNS_SPOT_DIAMETER: float(spot_diameter_px)},
        }
    }
    return set_prediction(adata, pred, info)


def write_h5ad(adata: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def write_csv(path: Path, barcodes: Sequence[str], coords: np.ndarray, pred: np.ndarray, panel: Sequence[str]) -> Path:
    """barcode, x, y (level-0 pixels), then one column per panel gene."""
    df = pd.DataFrame(np.asarray(pred, dtype=np.float32), columns=[str(g) for g in panel])
    df.insert(0, "y", np.asarray(coords)[:, 1])
    df.insert(0, "x", np.asarray(coords)[:, 0])
    df.insert(0, "barcode", list(barcodes))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def write_maps(
    folder: Path,
    genes: Sequence[str],
    panel: Sequence[str],
    pred: np.ndarray,
    coords: np.ndarray,
    thumbnail: np.ndarray,
    scalef: float,
    spot_diameter_px: float,
    label: str,
) -> dict[str, Path]:
    """One PNG per gene over the thumbnail, in the report's map layout (`hifusion.plots.plot_spot_maps`).

    A virtual spot stands for its field of view (`spot_diameter_px`), but discs are drawn no wider than
    `MAP_SPACING_FRACTION` of the spacing of neighbouring spots, so the H&E stays visible between them.
    """
    from hifusion.plots import SINGLE_MAP_INCH, plot_spot_maps

    col = {g: i for i, g in enumerate(panel)}
    spacing = _spacing(np.asarray(coords, dtype=np.float64))
    if spacing > 0:
        spot_diameter_px = min(float(spot_diameter_px), MAP_SPACING_FRACTION * spacing)
    out = {}
    for g in genes:
        out[g] = plot_spot_maps(
            folder / f"{safe_name(g)}.png", thumbnail, scalef, coords, {"predicted": np.asarray(pred)[:, [col[g]]]},
            [g], spot_diameter_px, label=label, panel_inch=SINGLE_MAP_INCH,
        )
    return out


def _spacing(coords: np.ndarray) -> float:
    """Median distance from a spot to its nearest neighbour (0 for fewer than two spots)."""
    if len(coords) < 2:
        return 0.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(coords).query(coords, k=2)
    return float(np.median(d[:, 1]))


def write_index(path: Path, maps: Mapping[str, Path], info: Mapping[str, Any]) -> Path:
    """A self-contained page showing the maps side by side, with the run's parameters underneath."""
    cards = "\n".join(
        f'<figure><img src="{html.escape(p.relative_to(path.parent).as_posix())}" alt="{html.escape(g)}">'
        f"<figcaption>{html.escape(g)}</figcaption></figure>"
        for g, p in maps.items()
    )
    rows = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in info.items()
    )
    title = f"hifusion predictions: {info.get('slide', '')}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.maps {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1em; }}
figure {{ margin: 0; }} img {{ width: 100%; height: auto; border: 1px solid #ddd; }}
figcaption {{ text-align: center; font-weight: bold; }}
table {{ border-collapse: collapse; margin-top: 1.5em; }} th, td {{ text-align: left; padding: 2px 10px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Predicted expression (no measurement): values are in the checkpoint's label transform.</p>
<div class="maps">
{cards}
</div>
<table>
{rows}
</table>
</body></html>
"""
    atomic_write_text(path, page)
    return path
