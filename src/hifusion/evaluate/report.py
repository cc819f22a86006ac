"""The benchmark's written outputs: ``report.md`` (Table-1 layout and the context needed to read it) and CSV tables.

Inputs are long tables so that any protocol (one split or k folds) reports the same way:
- ``metrics``: columns model, split, section, metric, value; metric names are the keys of `section_metrics`.
- ``per_gene``: columns model, split, section, gene, pcc, mse, mae (optionally const_truth).
Every row is a TEST-section result; ``split`` names the fold it came from, and a (split, section) pair is one unit.
Means and stds are over those units (std with ddof=0, so one section shows ± 0.0000).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion import constants as C
from hifusion import metrics as M
from hifusion.constants import FLATTERING_VARIANT, MARKER_GENES, PER_GENE_CSV, REPORT_MD, RUN_METRICS
from hifusion.io import atomic_write_text
from hifusion.stats import MIN_SECTIONS, compare_models

METRIC_COLUMNS = ("model", "split", "section", "metric", "value")
PER_GENE_COLUMNS = ("model", "split", "section", "gene", "pcc", "mse", "mae")
TABLE1 = (
    (M.MSE, "MSE"),
    (M.MSE_BIAS, "MSE bias"),
    (M.MSE_SPATIAL, "MSE spatial"),
    (M.MAE, "MAE"),
    (M.PCC_SPOT, "PCC-spot"),
    (M.PCC_GENE, "PCC-gene"),
    (M.PCC_GENE_TOP50, "PCC-gene top-50"),
)
NA = "n/a"
POOLED = "(fold)"  # the `section` of a row scored over all test sections of its split together (a convention)
OURS = "ours"
HONEST, FLATTERING = "validation or last epoch", "test sections (flattering)"  # metrics.csv `selection` column
# the conventions table: our headline scores (mean over test sections) first, then other papers' (mean over folds)
_OURS_COLUMNS = ((M.PCC_GENE, "Ours PCC-gene"), (M.PCC_SPOT, "Ours PCC-spot"), (M.MSE, "Ours MSE"))
_CONVENTION_LABELS = {
    M.HIFUSION_PCC_SPOT: "HiFusion/ASIGN PCC-spot",
    M.HIFUSION_MSE: "HiFusion/ASIGN MSE",
    M.HEST_PCC_GENE: "HEST PCC",
    M.TRIPLEX_PCC_ALL: "TRIPLEX PCC(A)",
    M.TRIPLEX_PCC_HEG: "TRIPLEX PCC(M)",
    M.TRIPLEX_PCC_HVG: "TRIPLEX PCC(H)",
}
_META = (
    ("dataset", "Dataset"),
    ("protocol", "Protocol"),
    ("train_sections", "Train sections"),
    ("test_sections", "Test sections"),
    ("panel_size", "Gene panel size"),
    ("label_transform", "Labels"),
)
_META_SKIP = {"command", "title", "splits", "gene_panels"}


def _check(df: pd.DataFrame, cols: Sequence[str], name: str) -> pd.DataFrame:
    """Fail early with the missing column names rather than with a KeyError deep inside a table.

    An empty table (e.g. ``pd.DataFrame()`` when nothing was scored) is given the expected columns instead.
    """
    if df.empty and len(df.columns) == 0:
        return pd.DataFrame(columns=list(cols))
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{name} table lacks columns {missing}")
    return df


def _fill_keys(df: pd.DataFrame) -> pd.DataFrame:
    """A missing split or section name becomes '-': pandas group-bys silently drop NaN keys, and rows with them."""
    df = df.copy()
    for key in ("split", "section"):
        df[key] = df[key].astype(object).where(df[key].notna(), "-").astype(str)
    return df


def fmt_value(x: float, digits: int = 4) -> str:
    return NA if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_p(p: float, na: str = NA) -> str:
    """Small p-values in scientific notation so they stay readable; `na` where no test was run."""
    if p is None or not np.isfinite(p):
        return na
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row (cells as `str`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def _models(metrics: pd.DataFrame, reference: str) -> list[str]:
    """Models in order of appearance, the reference first (the row a reader compares everything against)."""
    models = [str(m) for m in pd.unique(metrics["model"])]
    return ([reference] if reference in models else []) + [m for m in models if m != reference]


def _wide(metrics: pd.DataFrame) -> pd.DataFrame:
    """(model, split, section) x metric."""
    return metrics.pivot_table(
        index=["model", "split", "section"], columns="metric", values="value", aggfunc="mean", sort=False
    )


def _table1(wide: pd.DataFrame, models: list[str]) -> list[str]:
    rows = []
    for m in models:
        sub = wide.xs(m, level="model") if m in wide.index.get_level_values("model") else wide.iloc[:0]
        cells = [m]
        for key, _ in TABLE1:
            v = sub[key].dropna().to_numpy(dtype=np.float64) if key in sub.columns else np.empty(0)
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}" if v.size else NA)
        rows.append(cells)
    return md_table(["Model", *(label for _, label in TABLE1)], rows)


def _per_section(wide: pd.DataFrame, models: list[str]) -> list[str]:
    rows = []
    for m in models:
        for (model, split, section), r in wide.iterrows():
            if model != m:
                continue
            n = r.get(M.N_SPOTS, np.nan)
            cells = [m, str(split), str(section), NA if not np.isfinite(n) else str(int(n))]
            cells += [fmt_value(r.get(key, np.nan)) for key, _ in TABLE1]
            rows.append(cells)
    return md_table(["Model", "Split", "Section", "Spots", *(label for _, label in TABLE1)], rows)


def _const_line(wide: pd.DataFrame, per_gene: pd.DataFrame) -> str:
    """Constant genes depend on the truth only, so one count per section (the largest over models, to be safe)."""
    parts = []
    units = list(dict.fromkeys((s, sec) for _, s, sec in wide.index))
    for split, section in units:
        sub = wide.xs((split, section), level=("split", "section"))
        n_const = sub[M.N_CONST_GENES].max() if M.N_CONST_GENES in sub.columns else np.nan
        n_genes = sub[M.N_GENES].max() if M.N_GENES in sub.columns else np.nan
        if not np.isfinite(n_const) and "const_truth" in per_gene.columns:
            pg = per_gene[(per_gene["split"] == split) & (per_gene["section"] == section)]
            if len(pg):
                counts = pg.groupby("model")["const_truth"].sum()
                n_const = float(counts.max())
                n_genes = float(pg.groupby("model")["gene"].nunique().max())
        label = str(section) if len({s for s, _ in units}) == 1 else f"{section} ({split})"
        if np.isfinite(n_const):
            parts.append(f"{label}: {int(n_const)}" + (f" of {int(n_genes)}" if np.isfinite(n_genes) else ""))
        else:
            parts.append(f"{label}: not recorded")
    return (
        "Genes excluded from PCC-gene because their truth is constant in the section (a constant prediction "
        "scores 0 instead): " + ("; ".join(parts) if parts else "no sections") + "."
    )


def _markers(per_gene: pd.DataFrame, models: list[str]) -> list[str]:
    genes = set(per_gene["gene"].astype(str))
    present = [g for g in MARKER_GENES if g in genes]
    if not present:
        return [f"None of the marker genes ({', '.join(MARKER_GENES)}) is in the panel."]
    pg = per_gene[per_gene["gene"].astype(str).isin(present)]
    const = pg["const_truth"].astype(bool) if "const_truth" in pg.columns else pd.Series(False, index=pg.index)
    pcc = pg[~const].groupby(["gene", "model"])["pcc"].mean()
    mae = pg.groupby(["gene", "model"])["mae"].mean()
    rows = []
    for g in present:
        cells = [g]
        for m in models:
            p = pcc.get((g, m), np.nan)
            a = mae.get((g, m), np.nan)
            cells.append(f"{fmt_value(p)} / {fmt_value(a)}")
        rows.append(cells)
    return [
        "Cells are PCC / MAE, each the mean over test sections (PCC over sections where the gene varies).",
        "",
        *md_table(["Gene", *models], rows),
    ]


def _wilcoxon(per_gene: pd.DataFrame, reference: str) -> list[str]:
    if reference not in set(per_gene["model"].astype(str)):
        return [f"The reference model '{reference}' is not in the results: no tests."]
    if per_gene["model"].nunique() < 2:
        return ["Only one model: no tests."]
    lines = [
        f"Two-sided paired Wilcoxon signed-rank tests of each model against **{reference}**. Over genes: a gene's "
        "value is its mean over test sections. Over sections: a section's value is its mean over genes. "
        "Δ is the median of (model − reference); p = 1 when every difference is zero.",
        "",
    ]
    rows = []
    for by in ("gene", "section"):
        for metric, label in (("pcc", "PCC"), ("mse", "MSE")):
            res = compare_models(per_gene, reference=reference, by=by, metric=metric)
            for _, r in res.iterrows():
                if r["skipped"]:
                    rows.append(
                        [
                            r["model"],
                            f"{label} over {by}s",
                            str(r["n"]),
                            fmt_value(r["median_diff"]),
                            NA,
                            f"skipped: {r['skipped']}",
                        ]
                    )
                else:
                    rows.append(
                        [
                            r["model"],
                            f"{label} over {by}s",
                            str(r["n"]),
                            fmt_value(r["median_diff"]),
                            fmt_value(r["statistic"], 1),
                            fmt_p(r["p_value"]),
                        ]
                    )
    return lines + md_table(["Model", "Test", "n", "Median Δ", "W", "p-value"], rows)


def is_flattering(model: str) -> bool:
    """Whether a model label is a row whose epoch was chosen on the test sections (`train.select_on_test`): its
    suffix is `[test-selected, flattering]` or `[plain, test-selected, flattering]`."""
    return str(model).endswith(f"{FLATTERING_VARIANT}]")


def _mean_std(v: np.ndarray) -> str:
    return f"{v.mean():.4f} ± {v.std():.4f}" if v.size else NA


def _conventions(metrics: pd.DataFrame, wide: pd.DataFrame, models: list[str]) -> list[str]:
    """Our headline scores beside published papers' conventions, each labelled by its source."""
    pooled = metrics[metrics["section"] == POOLED]
    if pooled.empty:
        return []
    rows = []
    for m in models:
        cells = [m]
        sub = wide.xs(m, level="model") if m in wide.index.get_level_values("model") else wide.iloc[:0]
        for key, _ in _OURS_COLUMNS:
            cells.append(_mean_std(sub[key].dropna().to_numpy(np.float64) if key in sub.columns else np.empty(0)))
        mine = pooled[pooled["model"] == m]
        for key in _CONVENTION_LABELS:
            cells.append(_mean_std(mine.loc[mine["metric"] == key, "value"].to_numpy(np.float64)))
        rows.append(cells)
    header = ["Model", *(lab for _, lab in _OURS_COLUMNS), *_CONVENTION_LABELS.values()]
    notes = [f"- **{_CONVENTION_LABELS[k]}** ({src}): {what}. Rewards {rewards}."
             for k, (src, what, rewards) in M.CONVENTIONS.items()]
    return [
        "Our scores (per test section, mean ± std over sections) stay the headline. The other columns compute the "
        "same predictions as other papers do, each over all test sections of a fold together, mean ± std over "
        "folds, so a published table can be placed against ours. Gene subsets are chosen on training sections. "
        "Where those papers' code gives NaN, our rules apply: a gene or spot whose truth is constant is left out, "
        "a constant prediction (the mean profile's) scores 0.",
        "",
        *md_table(header, rows),
        "",
        f"- **Ours** ({OURS}): PCC-gene per gene across the spots of one test section, averaged over genes, then "
        "over sections; PCC-spot per spot across genes, averaged over the section's spots, then over sections.",
        *notes,
        "- HiFusion/ASIGN PCC-spot uses the same per-spot values as our PCC-spot; it averages them over all spots "
        "of the fold instead of per section, so the two are equal when a fold tests one section (or sections "
        "of equal size) and otherwise differ only by weighting sections by their spot counts.",
    ]


def _flattering_banner(models: list[str]) -> list[str]:
    bad = [m for m in models if is_flattering(m)]
    if not bad:
        return []
    return [
        f"> **FLATTERING ROWS**: {', '.join(bad)} chose their epoch by MSE on the TEST sections (as the HiFusion "
        "reference code does, `train.select_on_test`). They are not honest estimates: they show how much selecting "
        "on the test fold inflates a score. The row of the same model without the suffix, from the same training "
        "run, chose on validation carved from training sections (or took the last epoch).",
        "",
    ]


def _floor_note(wide: pd.DataFrame) -> str:
    note = (
        "**Reading the numbers.** The mean profile (the training mean of each gene, predicted for every spot, "
        "ignoring the image) is the floor every model must clear. PCC-spot correlates genes within a spot, so it "
        "is dominated by the mean expression profile and is high even for the mean profile; PCC-gene (per gene, "
        "across the spots of a section) shows whether spatial patterns are predicted, and the mean profile "
        "scores 0 on it. MSE = MSE bias + MSE spatial: the bias is the squared offset of each gene's section "
        "mean (the level of the whole section, which follows the slide's stain and depth), the spatial part the "
        "error of the pattern around it; a model above the floor on MSE only through its bias has learnt the "
        "pattern but not the level."
    )
    if C.MEAN_PROFILE in wide.index.get_level_values("model") and M.PCC_SPOT in wide.columns:
        v = wide.xs(C.MEAN_PROFILE, level="model")[M.PCC_SPOT].dropna()
        if len(v):
            note += f" Here the mean profile alone reaches PCC-spot {v.mean():.4f}."
    return note


def _below_floor(wide: pd.DataFrame, models: list[str]) -> str | None:
    """How many test sections each model scores a lower MSE than the mean profile on (same split and section)."""
    if C.MEAN_PROFILE not in wide.index.get_level_values("model") or M.MSE not in wide.columns:
        return None
    floor = wide.xs(C.MEAN_PROFILE, level="model")[M.MSE]
    parts = []
    for m in models:
        if m == C.MEAN_PROFILE:
            continue
        mine = wide.xs(m, level="model")[M.MSE].reindex(floor.index).dropna()
        parts.append(f"{m} {int((mine < floor.reindex(mine.index)).sum())}/{len(mine)}")
    return "MSE below the mean profile's (test sections): " + ", ".join(parts) + "." if parts else None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, np.integer, np.floating))


def _show(v: Any) -> str | None:
    """One-line rendering of a meta value; None for nested structures (those belong in run.json, not the report)."""
    if isinstance(v, float):
        return f"{v:g}"
    if _scalar(v):
        return str(v)
    if isinstance(v, Mapping) and all(_scalar(x) for x in v.values()):
        return ", ".join(f"{k}={_show(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)) and all(_scalar(x) for x in v):
        return ", ".join(str(x) for x in v)
    return None


def _meta_lines(meta: Mapping[str, Any]) -> list[str]:
    """Known keys first in a fixed order; `splits` and `gene_panels` as the benchmark runner passes them."""
    lines = []
    for key, label in _META:
        if meta.get(key) is not None and _show(meta[key]) is not None:
            lines.append(f"- {label}: {_show(meta[key])}")
    panels = meta.get("gene_panels")
    if isinstance(panels, Mapping) and panels and "panel_size" not in meta:
        sizes = {str(k): len(v) for k, v in panels.items()}
        same = len(set(sizes.values())) == 1
        shown = str(next(iter(sizes.values()))) if same else ", ".join(f"{k}: {n}" for k, n in sizes.items())
        lines.append(
            f"- Gene panel size: {shown}" + (" (chosen on each split's training sections)" if not same else "")
        )
    splits = meta.get("splits")
    if isinstance(splits, (list, tuple)) and splits:
        lines.append("- Splits (train / validation / test sections):")
        for sp in splits:
            if isinstance(sp, Mapping):
                parts = [_show(sp.get(k) or []) or "" for k in ("train", "val", "test")]
                lines.append(f"  - {sp.get('name', '?')}: {parts[0]} / {parts[1] or '-'} / {parts[2]}")
    for key, v in meta.items():
        if key in _META_SKIP or key in dict(_META):
            continue
        shown = _show(v)
        if shown is not None and v is not None:
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {shown}")
    if meta.get("command"):
        lines += ["", "Command:", "", "```", str(meta["command"]), "```"]
    return lines


def _figure_lines(out_dir: Path, figures: Mapping[str, Sequence[Path]] | None) -> list[str]:
    lines: list[str] = []
    for caption, paths in (figures or {}).items():
        lines += [f"### {caption}", ""]
        for p in paths:
            p = Path(p)
            rel = os.path.relpath(p if p.is_absolute() else out_dir / p, out_dir)
            rel = Path(rel).as_posix()
            lines += [f"![{p.stem}]({rel})", ""]
    return lines


def write_report(
    out_dir: str | os.PathLike[str],
    metrics: pd.DataFrame,
    per_gene: pd.DataFrame,
    *,
    reference: str = "hifusion",
    figures: Mapping[str, Sequence[Path]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir>/report.md`` atomically and return its path.

    `figures` maps a caption to image paths (absolute, or relative to `out_dir`); links are written relative to
    `out_dir` so the folder can be moved. `meta` keys shown first: dataset, protocol,
    train_sections, test_sections, panel_size, label_transform, command (others are listed after them).
    """
    metrics = _check(metrics, METRIC_COLUMNS, "metrics")
    per_gene = _check(per_gene, PER_GENE_COLUMNS, "per-gene")
    out = Path(out_dir)
    meta = dict(meta or {})
    metrics, per_gene = _fill_keys(metrics), _fill_keys(per_gene)
    wide = _wide(metrics[metrics["section"] != POOLED])
    models = _models(metrics, reference)
    meta_lines = _meta_lines(meta)
    lines = [f"# {meta.get('title', 'hifusion benchmark report')}", "", *_flattering_banner(models), *meta_lines]
    lines += [""] if meta_lines else []
    lines += [
        "## Results over test sections",
        "",
        "Mean ± std over test sections (std with ddof=0, so a single section shows ± 0.0000).",
        "",
    ]
    lines += _table1(wide, models) + [""]
    lines += [_floor_note(wide), ""]
    below = _below_floor(wide, models)
    if below:
        lines += [below, ""]
    conv = _conventions(metrics, wide, models)
    if conv:
        lines += ["## Conventions of published tables", "", *conv, ""]
    lines += ["## Per section", ""] + _per_section(wide, models) + [""]
    lines += [_const_line(wide, per_gene), ""]
    lines += ["## Marker genes", ""] + _markers(per_gene, models) + [""]
    lines += ["## Paired tests", ""] + _wilcoxon(per_gene, reference) + [""]
    lines += [f"Tests over sections are run only with at least {MIN_SECTIONS} test sections.", ""]
    fig_lines = _figure_lines(out, figures)
    if fig_lines:
        lines += ["## Figures", "", *fig_lines]
    path = out / REPORT_MD
    atomic_write_text(path, "\n".join(lines).rstrip("\n") + "\n")
    return path


def summary_table(metrics: pd.DataFrame, reference: str = "hifusion") -> str:
    """Table 1 (mean ± std over test sections) as Markdown text, for the CLI to print after a run."""
    metrics = _check(metrics, METRIC_COLUMNS, "metrics")
    if metrics.empty:
        return "(no results)"
    metrics = _fill_keys(metrics)
    return "\n".join(_table1(_wide(metrics[metrics["section"] != POOLED]), _models(metrics, reference)))


def label_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv's labels: `convention` (whose way of computing the score: ours or a paper's) and `selection`
    (how the row's epoch was chosen; test-selected rows are flattering)."""
    out = metrics.copy()
    out["convention"] = [M.CONVENTIONS[k][0] if k in M.CONVENTIONS else OURS for k in out["metric"]]
    out["selection"] = [FLATTERING if is_flattering(m) else HONEST for m in out["model"]]
    return out


def write_tables(out_dir: str | os.PathLike[str], metrics: pd.DataFrame, per_gene: pd.DataFrame) -> tuple[Path, Path]:
    """Write metrics.csv (with `label_metrics`' columns) and per_gene.csv atomically (the report's twins)."""
    metrics = label_metrics(_check(metrics, METRIC_COLUMNS, "metrics"))
    per_gene = _check(per_gene, PER_GENE_COLUMNS, "per-gene")
    out = Path(out_dir)
    paths = (out / RUN_METRICS, out / PER_GENE_CSV)
    for path, df in zip(paths, (metrics, per_gene), strict=True):
        atomic_write_text(path, df.to_csv(index=False))
    return paths
