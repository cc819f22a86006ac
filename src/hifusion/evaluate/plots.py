"""Figures of the report: marker-gene maps on the H&E thumbnail, training curves, single-gene expression maps.

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

from hifusion.evaluate.metrics import pcc_columns
from hifusion.io import atomic_path

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


def _spots(ax: Any, xy: np.ndarray, values: np.ndarray, diameter: float, norm: Any, cmap: str) -> Any:
    """Draw spots as circles of their true size in thumbnail pixels (scatter sizes are in points, not data units)."""
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


def _background(ax: Any, thumbnail: np.ndarray | None, xy: np.ndarray, diameter: float) -> None:
    """Show the thumbnail (if any) and zoom to the spots, with image orientation (y down)."""
    if thumbnail is not None:
        ax.imshow(np.asarray(thumbnail), interpolation="antialiased")
    pad = diameter
    if len(xy):
        x0, y0 = xy.min(axis=0) - pad
        x1, y1 = xy.max(axis=0) + pad
    else:
        x0 = y0 = 0.0
        x1 = y1 = 1.0
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _display_xy(coords_px: np.ndarray, scalef: float) -> np.ndarray:
    xy = np.asarray(coords_px, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords_px must be (N, 2) full-resolution (x, y), got shape {xy.shape}")
    return xy * float(scalef)


def _limits(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """Shared colour range of a row: 1st-99th percentile of all values, so one outlier spot does not wash it out."""
    v = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in values])
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99])
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


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
) -> Path:
    """Grid of maps: rows = genes of `panel` present in `genes`, columns = ground truth then each model.

    `genes` names the columns of `truth` and of each prediction; `panel` lists the genes to show (usually
    MARKER_GENES). Passed the other way round, they are swapped when the lengths make the intent unambiguous.

    Each row shares one colour scale (and colorbar) so models are compared on the truth's scale. When no panel gene
    is present, the `FALLBACK_GENES` genes most variable in the truth are shown instead (a figure beats no figure).
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
    from matplotlib.colors import Normalize

    models = list(preds)
    stats = {m: pcc_columns(np.asarray(p, dtype=np.float64), t) for m, p in preds.items()} if len(t) else {}
    diameter = float(spot_diameter_px) * float(scalef)
    ncol = 1 + len(models)
    fig = _figure(PANEL_INCH * ncol + 0.8, PANEL_INCH * len(rows))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, g in enumerate(rows):
        cols = [t[:, g]] + [np.asarray(preds[m], dtype=np.float64)[:, g] for m in models]
        norm = Normalize(*_limits(cols))
        coll = None
        for j, values in enumerate(cols):
            ax = axes[i, j]
            _background(ax, thumbnail, xy, diameter)
            coll = _spots(ax, xy, values, diameter, norm, CMAP)
            if j == 0:
                ax.set_title(f"ground truth\n{gene_list[g]}", fontsize=9)
                ax.set_ylabel(gene_list[g])
            else:
                m = models[j - 1]
                r, const = stats[m] if m in stats else (np.zeros(t.shape[1]), np.ones(t.shape[1], bool))
                mae = float(np.abs(values - t[:, g]).mean()) if len(t) else float("nan")
                pcc = "n/a" if const[g] else f"{r[g]:.2f}"
                ax.set_title(f"{m}\nPCC={pcc} MAE={mae:.2f}", fontsize=9)
        fig.colorbar(coll, ax=list(axes[i, :]), shrink=0.8, label=gene_list[g])
    return _save(fig, out_png)


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


def plot_expression_map(
    out_png: str | os.PathLike[str],
    thumbnail: np.ndarray | None,
    scalef: float,
    coords_px: np.ndarray,
    values: np.ndarray,
    title: str,
    spot_diameter_px: float,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = CMAP,
) -> Path:
    """One gene's values (measured or predicted) over the slide; whole-slide prediction uses it per gene."""
    from matplotlib.colors import Normalize

    xy = _display_xy(coords_px, scalef)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.shape[0] != len(xy):
        raise ValueError(f"{v.shape[0]} values for {len(xy)} spots")
    lo, hi = _limits([v])
    norm = Normalize(lo if vmin is None else vmin, hi if vmax is None else vmax)
    fig = _figure(PANEL_INCH * 2 + 0.8, PANEL_INCH * 2)
    ax = fig.subplots()
    diameter = float(spot_diameter_px) * float(scalef)
    _background(ax, thumbnail, xy, diameter)
    coll = _spots(ax, xy, v, diameter, norm, cmap)
    ax.set_title(title, fontsize=10)
    fig.colorbar(coll, ax=ax, shrink=0.8)
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
