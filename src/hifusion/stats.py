"""Paired significance tests between models: Wilcoxon signed-rank over genes and over sections.

Rules, chosen so that a report never shows NaN for a test that was run:
- pairs with a NaN on either side are dropped; ``n`` is the number of pairs left (zero differences included).
- when ``n < 2`` or every difference is zero there is no evidence of a difference: statistic 0.0, p-value 1.0.
- otherwise ``scipy.stats.wilcoxon`` (two-sided, zero differences dropped: ``zero_method='wilcox'``).
- over sections the test needs at least `MIN_SECTIONS` sections; with fewer the row is kept with NaN statistic and
  p-value and a ``skipped`` reason, because a p-value from 2-4 pairs can never be small and would mislead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

MIN_SECTIONS = 5
_SECTION_KEYS = ("split", "section")


def paired_wilcoxon(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Two-sided Wilcoxon signed-rank test of a vs b over paired values; returns (statistic, p_value, n)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    n = int(d.size)
    if n < 2 or not np.any(d != 0):
        return 0.0, 1.0, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about ties/zeros and switches to the normal approximation
        try:
            res = sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        except ValueError:  # e.g. too few non-zero differences for this scipy version
            return 0.0, 1.0, n
    stat, p = float(res.statistic), float(res.pvalue)
    if not np.isfinite(p):
        return 0.0 if not np.isfinite(stat) else stat, 1.0, n
    return stat, p, n


def _unit_values(df: pd.DataFrame, by: str, metric: str) -> pd.DataFrame:
    """Wide table (units x models) of `metric`: a gene averaged over sections, or a section averaged over genes."""
    d = df
    if metric == "pcc" and "const_truth" in d.columns:
        d = d[~d["const_truth"].astype(bool)]  # genes constant in a section's truth carry no correlation
    if by == "gene":
        keys = ["gene"]
    elif by == "section":
        keys = [k for k in _SECTION_KEYS if k in d.columns]
    else:
        raise ValueError(f"by must be 'gene' or 'section', got {by!r}")
    return d.groupby(["model", *keys], sort=False, dropna=False)[metric].mean().unstack("model")


def compare_models(
    per_gene_df: pd.DataFrame,
    reference: str = "hifusion",
    by: str = "gene",
    metric: str = "pcc",
    min_sections: int = MIN_SECTIONS,
) -> pd.DataFrame:
    """Each model vs `reference` by paired Wilcoxon over genes or over (split, section) units.

    `per_gene_df` has columns model, section, gene, `metric` (and optionally split, const_truth). Over genes, a
    gene's value is its mean over sections (sections are not pseudo-replicates of a gene); over sections, a
    section's value is the mean over its genes (its PCC-gene). Rows with const_truth True are ignored for pcc.
    Returns columns model, reference, by, metric, n, median_diff (model - reference), statistic, p_value, skipped.
    """
    need = {"model", "section", "gene", metric}
    missing = need - set(per_gene_df.columns)
    if missing:
        raise ValueError(f"per-gene table lacks columns {sorted(missing)}")
    cols = ["model", "reference", "by", "metric", "n", "median_diff", "statistic", "p_value", "skipped"]
    models = [m for m in pd.unique(per_gene_df["model"]) if m != reference]
    if reference not in set(per_gene_df["model"]) or not models:
        return pd.DataFrame(columns=cols)
    wide = _unit_values(per_gene_df, by, metric)
    rows = []
    for m in models:
        pair = wide[[reference, m]].dropna() if m in wide.columns and reference in wide.columns else wide.iloc[:0]
        row = {"model": m, "reference": reference, "by": by, "metric": metric, "n": int(len(pair))}
        diff = (pair[m] - pair[reference]).to_numpy(dtype=np.float64)
        row["median_diff"] = float(np.median(diff)) if diff.size else 0.0
        if by == "section" and len(pair) < min_sections:
            row.update(statistic=np.nan, p_value=np.nan, skipped=f"only {len(pair)} sections (< {min_sections})")
        else:
            stat, p, n = paired_wilcoxon(pair[m].to_numpy(), pair[reference].to_numpy())
            row.update(statistic=stat, p_value=p, n=n, skipped="")
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)
