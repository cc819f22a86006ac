"""Figures of the report: marker-gene maps on the H&E thumbnail, training curves, single-gene expression maps.

Maps (report and `predict`) share one layout, `plot_spot_maps`: discs at the spot's real diameter over a faded
grey H&E, one colour scale per gene for truth and every model, colour bars that say the unit in words.

Figures are drawn on a ``matplotlib.figure.Figure`` with an Agg canvas created inside each function: no pyplot, no
global backend switch, so importing hifusion never touches a user's interactive matplotlib session, and plotting
works headless. matplotlib itself is imported lazily. PNGs are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion.io import atomic_path
from hifusion.metrics import pcc_columns

PANEL_INCH = 3.0
DPI = 100
CMAP = "viridis"
FALLBACK_GENES = 4  # rows shown when none of the requested marker genes is in the panel


def _figure(width_in: float, height_in: float) -> Any:
    """A pyplot-free figure on an Agg canvas (constrained layout keeps the requested pixel size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    path = Path(out_png)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)  # the temp name ends in .tmp: the format must be explicit
    return path


SPOT_MAP_INCH = 3.6  # one map panel; spots are drawn at their true diameter, so panels must not be tiny
SINGLE_MAP_INCH = 6.0  # a map shown alone (predict: one PNG per gene) gets a larger panel
BAR_INCH = 1.2  # room for a row's colour bar and its two-line label
FADE = 0.6  # H&E under the spots: grey, blended this far toward white, so colours read against it
LIMIT_PERCENTILES = (2.0, 98.0)  # shared colour range of a gene: truth and every model's predictions together
LABEL_UNITS = {  # colour bar text per label transform, in words first
    "logprop": "log share of the spot's panel counts\nln((c+1) / sum over panel of (c+1))",
    "log1p_cpm": "log1p counts per 10k\nln(1 + c / total x 10,000)",
}


def unit_label(label: str | None) -> str:
    """What a value of the label transform means, for a colour bar (the transform's name if unknown)."""
    if not label:
        return "expression"
    return LABEL_UNITS.get(str(label), str(label))


def _spots(ax: Any, xy: np.ndarray, values: np.ndarray, diameter: float, norm: Any, cmap: str) -> Any:
    """Draw spots as discs of their true size in thumbnail pixels (scatter sizes are in points, not data units)."""
    from matplotlib.collections import EllipseCollection

    d = np.full(len(xy), diameter, dtype=np.float64)
    coll = EllipseCollection(
        d,
        d,
        np.zeros(len(xy)),
        units="xy",
        offsets=xy,
        offset_transform=ax.transData,
        cmap=cmap,
        norm=norm,
        linewidths=0,
    )
    coll.set_array(np.asarray(values, dtype=np.float64))
    ax.add_collection(coll)
    return coll


def faded(thumbnail: np.ndarray) -> np.ndarray:
    """The H&E as a pale grey backdrop: structure stays visible, but no stain colour competes with the colour scale."""
    img = np.asarray(thumbnail)[..., :3].astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = 255.0 - (1.0 - FADE) * (255.0 - grey)
    return np.repeat(out[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)


def _view(xy: np.ndarray, diameter: float) -> tuple[float, float, float, float]:
    """Data limits (x0, x1, y0, y1) of a map: the spots plus one diameter of margin."""
    if not len(xy):
        return 0.0, 1.0, 0.0, 1.0
    (x0, y0), (x1, y1) = xy.min(axis=0) - diameter, xy.max(axis=0) + diameter
    return float(x0), float(x1), float(y0), float(y1)


def backdrop(thumbnail: np.ndarray | None, view: tuple[float, float, float, float],
             panel_px: int) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
    """The faded thumbnail cropped to the map's view and block-averaged to about the panel's pixel size (RGBA, the
    form matplotlib draws without converting), with its imshow extent in thumbnail pixels.

    Computed once per figure: a report's maps have one panel per gene and source, and each panel would otherwise
    convert and resample the whole hires image twice per save (the demo's two map figures took 32 s, of 1,070).
    Block-averaging to the panel's size is the antialiasing the panel would apply anyway.
    """
    if thumbnail is None:
        return None
    img = np.asarray(thumbnail)
    h, w = img.shape[:2]
    x0, x1, y0, y1 = view
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
    if c1 <= c0 or r1 <= r0:
        return None
    step = max(1, min(c1 - c0, r1 - r0) // max(int(panel_px), 1))
    nw, nh = (c1 - c0) // step, (r1 - r0) // step
    if not nw or not nh:
        return None
    crop = faded(img[r0:r0 + nh * step, c0:c0 + nw * step]).astype(np.float32)
    small = np.full((nh, nw, 4), 255, dtype=np.uint8)
    small[..., :3] = crop.reshape(nh, step, nw, step, 3).mean(axis=(1, 3)).round()
    return small, (c0 - 0.5, c0 + nw * step - 0.5, r0 + nh * step - 0.5, r0 - 0.5)


def _background(ax: Any, back: tuple[np.ndarray, tuple[float, float, float, float]] | None,
                view: tuple[float, float, float, float]) -> None:
    """Show the backdrop (if any) and zoom to the spots, with image orientation (y down)."""
    if back is not None:
        ax.imshow(back[0], extent=back[1], interpolation="antialiased")
    x0, x1, y0, y1 = view
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _display_xy(coords_px: np.ndarray, scalef: float) -> np.ndarray:
    xy = np.asarray(coords_px, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords_px must be (N, 2) full-resolution (x, y), got shape {xy.shape}")
    return xy * float(scalef)


def _limits(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """Shared colour range of a gene: 2nd-98th percentile of all values (truth and models), so one outlier spot
    does not wash the map out and a model is seen on the same scale as the measurement."""
    v = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in values])
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = np.percentile(v, LIMIT_PERCENTILES)
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def plot_spot_maps(
    out_png: str | os.PathLike[str],
    thumbnail: np.ndarray | None,
    scalef: float,
    coords_px: np.ndarray,
    columns: Mapping[str, np.ndarray],
    genes: Sequence[str],
    spot_diameter_px: float,
    *,
    label: str | None = None,
    titles: Mapping[str, Sequence[str]] | None = None,
    panel_inch: float = SPOT_MAP_INCH,
) -> Path:
    """The one map layout of the package (benchmark report and `predict`): a row per gene, a column per source.

    `columns` maps a source name ("measured", a model) to its (N, len(genes)) values, in display order; measured
    values go first so each model sits beside the truth. Spots are discs of their real diameter (`spot_diameter_px`,
    full-resolution pixels) over the faded H&E; each row has one colour scale shared by all sources (2nd-98th
    percentile of all of them) and a colour bar naming the gene and the unit of `label` in words. `titles` gives a
    per-gene panel title for a source (e.g. its PCC); the default is the source's name.
    """
    from matplotlib.colors import Normalize

    xy = _display_xy(coords_px, scalef)
    names = list(columns)
    if not names or not len(genes):
        raise ValueError("nothing to plot: no sources or no genes")
    mats = {m: np.asarray(columns[m], dtype=np.float64).reshape(len(xy), -1) for m in names}
    for m, v in mats.items():
        if v.shape != (len(xy), len(genes)):
            raise ValueError(f"values of {m!r} have shape {v.shape}, expected ({len(xy)}, {len(genes)})")
    diameter = float(spot_diameter_px) * float(scalef)
    fig = _figure(panel_inch * len(names) + BAR_INCH, panel_inch * len(genes))
    axes = fig.subplots(len(genes), len(names), squeeze=False)
    unit = unit_label(label)
    view = _view(xy, diameter)
    back = backdrop(thumbnail, view, int(panel_inch * DPI))
    for i, g in enumerate(genes):
        norm = Normalize(*_limits([mats[m][:, i] for m in names]))
        coll = None
        for j, m in enumerate(names):
            ax = axes[i, j]
            _background(ax, back, view)
            coll = _spots(ax, xy, mats[m][:, i], diameter, norm, CMAP)
            sub = titles[m][i] if titles and m in titles else ""
            ax.set_title((f"{g}: {m}" if g else m) + (f"\n{sub}" if sub else ""), fontsize=10)
        bar = fig.colorbar(coll, ax=list(axes[i, :]), shrink=0.85, fraction=0.04, pad=0.01)
        bar.set_label(f"{g}, {unit}" if g else unit, fontsize=8)
        bar.ax.tick_params(labelsize=8)
    if len(names) > 1:
        fig.suptitle("discs: spots at their real diameter over the H&E (grey); colours: one scale per gene, shared by "
                     "all panels of its row (2nd-98th percentile)", fontsize=9)
    return _save(fig, out_png)


def plot_marker_maps(
    out_png: str | os.PathLike[str],
    thumbnail: np.ndarray | None,
    scalef: float,
    coords_px: np.ndarray,
    truth: np.ndarray,
    preds: Mapping[str, np.ndarray],
    genes: Sequence[str],
    panel: Sequence[str],
    spot_diameter_px: float,
    *,
    label: str | None = None,
) -> Path:
    """The report's maps (`plot_spot_maps`): rows = genes of `panel` present in `genes`, measured then each model.

    `genes` names the columns of `truth` and of each prediction; `panel` lists the genes to show (usually
    MARKER_GENES). Passed the other way round, they are swapped when the lengths make the intent unambiguous.
    `label` is the label transform (its unit goes on the colour bars). When no panel gene is present, the
    `FALLBACK_GENES` genes most variable in the truth are shown instead (a figure beats no figure).
    """
    xy = _display_xy(coords_px, scalef)
    t = np.asarray(truth, dtype=np.float64)
    if t.ndim == 2 and len(genes) != t.shape[1] and len(panel) == t.shape[1]:
        genes, panel = panel, genes  # called as (genes to show, column names): unambiguous from the lengths
    if t.shape != (len(xy), len(genes)):
        raise ValueError(f"truth shape {t.shape} does not match {len(xy)} spots x {len(genes)} genes")
    for name, p in preds.items():
        if np.shape(p) != t.shape:
            raise ValueError(f"prediction of {name!r} has shape {np.shape(p)}, expected {t.shape}")
    gene_list = [str(g) for g in genes]
    rows = [gene_list.index(g) for g in panel if g in gene_list]
    if not rows:
        var = t.var(axis=0) if len(t) else np.zeros(len(gene_list))
        rows = list(np.lexsort((np.arange(var.size), -var))[:FALLBACK_GENES])
    if not rows:
        raise ValueError("no genes to plot")
    stats = {m: pcc_columns(np.asarray(p, dtype=np.float64), t) for m, p in preds.items()} if len(t) else {}
    titles: dict[str, list[str]] = {"measured": [""] * len(rows)}
    for m, p in preds.items():
        titles[m] = []
        for g in rows:
            r, const = stats[m] if m in stats else (np.zeros(t.shape[1]), np.ones(t.shape[1], bool))
            mae = float(np.abs(np.asarray(p, dtype=np.float64)[:, g] - t[:, g]).mean()) if len(t) else float("nan")
            titles[m].append(f"PCC {'n/a' if const[g] else f'{r[g]:.2f}'}, MAE {mae:.2f}")
    columns = {"measured": t[:, rows], **{m: np.asarray(p, dtype=np.float64)[:, rows] for m, p in preds.items()}}
    return plot_spot_maps(out_png, thumbnail, scalef, coords_px, columns, [gene_list[g] for g in rows],
                          spot_diameter_px, label=label, titles=titles)


def plot_training_curves(out_png: str | os.PathLike[str], curves: Mapping[str, pd.DataFrame]) -> Path:
    """One panel per model: train loss (and val loss where logged) against epoch, averaged within an epoch.

    Logger tables often hold train and val losses on different rows with NaN elsewhere; NaNs are skipped.
    """
    names = list(curves)
    ncol = max(1, min(3, len(names)))
    nrow = max(1, -(-len(names) // ncol))
    fig = _figure(4.0 * ncol, 3.0 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        df = curves[name]
        if "epoch" not in df.columns or "train_loss" not in df.columns:
            raise ValueError(f"curves of {name!r} need columns epoch and train_loss, got {list(df.columns)}")
        cols = [c for c in ("train_loss", "val_loss") if c in df.columns]
        per_epoch = df[["epoch", *cols]].apply(pd.to_numeric, errors="coerce").groupby("epoch").mean()
        for c, style in zip(cols, ("-", "--")[: len(cols)], strict=True):
            s = per_epoch[c].dropna()
            if len(s):
                ax.plot(
                    s.index.to_numpy(),
                    s.to_numpy(),
                    style,
                    marker="o" if len(s) < 30 else None,
                    markersize=3,
                    label=c.replace("_", " "),
                )
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if ax.lines:
            ax.legend(fontsize=8)
    if not names:
        axes[0].text(0.5, 0.5, "no training curves", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax in axes[len(names) :] if names else []:
        ax.set_axis_off()
    return _save(fig, out_png)


def plot_ablation_lines(
    out_png: str | os.PathLike[str],
    x: np.ndarray,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    xlabel: str,
    title: str = "",
) -> Path:
    """One panel per metric (e.g. PCC-gene, MSE): mean over test sections against an ablated option, ± std bars.

    The layout of the paper's ablation figures (metric against token count or neighbour size), one line per panel.
    """
    xs = np.asarray(x, dtype=np.float64)
    names = list(series)
    fig = _figure(3.6 * max(1, len(names)), 3.0)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        mean, std = (np.asarray(a, dtype=np.float64) for a in series[name])
        if mean.shape != xs.shape or std.shape != xs.shape:
            raise ValueError(f"series {name!r} has {mean.size} values for {xs.size} x positions")
        ax.errorbar(xs, mean, yerr=np.nan_to_num(std), marker="o", capsize=3)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)
