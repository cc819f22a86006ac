"""Paired Wilcoxon tests and model comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from hifusion.stats import compare_models, paired_wilcoxon


def test_wilcoxon_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    b = a + rng.normal(0.3, 1.0, size=40)
    stat, p, n = paired_wilcoxon(a, b)
    ref = sps.wilcoxon(a, b)
    assert n == 40
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)


def test_wilcoxon_all_zero_and_tiny() -> None:
    x = np.arange(10.0)
    assert paired_wilcoxon(x, x) == (0.0, 1.0, 10)
    assert paired_wilcoxon([1.0], [2.0]) == (0.0, 1.0, 1)
    assert paired_wilcoxon([], []) == (0.0, 1.0, 0)


def test_wilcoxon_drops_nan_pairs() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=20)
    b = rng.normal(size=20)
    a2, b2 = a.copy(), b.copy()
    a2[3] = np.nan
    b2[7] = np.nan
    stat, p, n = paired_wilcoxon(a2, b2)
    keep = np.ones(20, bool)
    keep[[3, 7]] = False
    ref = sps.wilcoxon(a[keep], b[keep])
    assert n == 18 and stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError):
        paired_wilcoxon([1.0, 2.0], [1.0])


def _per_gene(n_sections: int, seed: int = 0, n_genes: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sections):
        for g in range(n_genes):
            base = rng.uniform(0, 0.5)
            for model, shift in (("hifusion", 0.1), ("stnet", 0.0), ("mean_profile", -base)):
                rows.append(
                    {
                        "model": model,
                        "split": "fold0",
                        "section": f"S{s}",
                        "gene": f"G{g}",
                        "pcc": base + shift + rng.normal(0, 0.01),
                        "mse": 0.3 - shift + rng.normal(0, 0.01),
                        "mae": 0.4,
                        "const_truth": False,
                    }
                )
    return pd.DataFrame(rows)


def test_compare_models_over_genes() -> None:
    df = _per_gene(2)
    res = compare_models(df, reference="hifusion", by="gene", metric="pcc")
    assert list(res["model"]) == ["stnet", "mean_profile"]
    row = res.iloc[0]
    assert row["n"] == 30 and row["median_diff"] < 0 and row["p_value"] < 1e-3 and row["skipped"] == ""
    wide = df.groupby(["gene", "model"])["pcc"].mean().unstack()
    ref = sps.wilcoxon(wide["stnet"], wide["hifusion"])
    assert row["statistic"] == pytest.approx(ref.statistic) and row["p_value"] == pytest.approx(ref.pvalue)


def test_compare_models_over_sections_needs_five() -> None:
    res = compare_models(_per_gene(3), by="section")
    assert res["skipped"].str.contains("only 3 sections").all()
    assert res["p_value"].isna().all() and (res["n"] == 3).all()
    res = compare_models(_per_gene(6), by="section", metric="mse")
    assert (res["skipped"] == "").all() and (res["n"] == 6).all()
    assert res["p_value"].between(0, 1).all()


def test_compare_models_ignores_constant_truth_genes() -> None:
    df = _per_gene(1)
    df.loc[df["gene"] == "G0", "const_truth"] = True
    res = compare_models(df, by="gene")
    assert (res["n"] == 29).all()
    res = compare_models(df.drop(columns="const_truth"), by="gene")
    assert (res["n"] == 30).all()


def test_compare_models_missing_reference() -> None:
    res = compare_models(_per_gene(1), reference="nope")
    assert res.empty and "p_value" in res.columns
