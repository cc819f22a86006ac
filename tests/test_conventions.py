"""Published papers' conventions (`metrics.convention_metrics`) on a hand-checked example, and their report table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hifusion import metrics as M
from hifusion.evaluate.report import FLATTERING, HONEST, POOLED, label_metrics, write_report

# Fold with two test sections, three genes (g0, g1, g2).
# Section A, 2 spots:  truth s1 = [0, 1, 2], s2 = [0, 2, 4];  pred s1 = [0, 1, 2], s2 = [4, 2, 0]
# Section B, 1 spot:   truth s3 = [0, 1, 10];                 pred s3 = [0, 1, 10]
TRUTH_A = np.array([[0, 1, 2], [0, 2, 4]], float)
PRED_A = np.array([[0, 1, 2], [4, 2, 0]], float)
TRUTH_B = np.array([[0, 1, 10]], float)
PRED_B = TRUTH_B.copy()


def test_conventions_by_hand() -> None:
    cm = M.convention_metrics([PRED_A, PRED_B], [TRUTH_A, TRUTH_B], heg_idx=[2], hvg_idx=[1])
    # HiFusion/ASIGN PCC-spot: per-spot r across genes: s1 = 1 (identical), s2 = -1 ([0,2,4] vs [4,2,0]),
    # s3 = 1 (identical); mean over the fold's 3 spots = 1/3.
    assert cm[M.HIFUSION_PCC_SPOT] == pytest.approx(1 / 3)
    # Ours per section: A = (1 - 1)/2 = 0, B = 1, mean over sections = 0.5: same per-spot values, other weights.
    ours = [M.section_metrics(p, t) for p, t in ((PRED_A, TRUTH_A), (PRED_B, TRUTH_B))]
    assert np.mean([o[M.PCC_SPOT] for o in ours]) == pytest.approx(0.5)
    # HiFusion MSE: only s2 errs, by [4, 0, -4] -> 32 over the fold's 9 entries. Ours: A 32/6, B 0 -> mean 8/3.
    assert cm[M.HIFUSION_MSE] == pytest.approx(32 / 9)
    assert np.mean([o[M.MSE] for o in ours]) == pytest.approx(8 / 3)
    # HEST, per gene over the 3 pooled spots: g0 truth [0,0,0] constant -> left out; g1 truth = pred = [1,2,1] -> 1;
    # g2 truth [2,4,10], pred [2,0,10]: centred truth [-10,-4,14]/3, centred pred [-2,-4,6]; covariance sum 40,
    # sums of squares 312/9 and 56 -> r = 40 / sqrt(312/9 * 56) = 120 / sqrt(17472). Mean over g1, g2.
    r_g2 = 120 / np.sqrt(17472)
    assert cm[M.HEST_PCC_GENE] == pytest.approx((1 + r_g2) / 2)
    # TRIPLEX, per gene per slide: A: g0 constant (NaN), g1 [1,2] vs [1,2] -> 1, g2 [2,4] vs [2,0] -> -1; B has one
    # spot, every gene NaN. Nan-mean over slides: g0 NaN, g1 1, g2 -1; mean over genes with a value: 0.
    assert cm[M.TRIPLEX_PCC_ALL] == pytest.approx(0.0)
    assert cm[M.TRIPLEX_PCC_HVG] == pytest.approx(1.0)  # the "most variable" subset here is g1
    assert cm[M.TRIPLEX_PCC_HEG] == pytest.approx(-1.0)  # the "most expressed" subset here is g2
    # HEST rewards the level difference between sections (g2 above 0.9) where within A the pattern is reversed.
    assert cm[M.HEST_PCC_GENE] > 0.9 > ours[0][M.PCC_GENE]


def test_conventions_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="no test sections"):
        M.convention_metrics([], [])
    with pytest.raises(ValueError, match="shape"):
        M.convention_metrics([PRED_A], [TRUTH_B])


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, genes = [], []
    for model in ("hifusion", "hifusion [test-selected, flattering]", "mean_profile"):
        for sec, (p, t) in {"A": (PRED_A, TRUTH_A), "B": (PRED_B, TRUTH_B)}.items():
            rows += [{"model": model, "split": "f1", "section": sec, "metric": k, "value": float(v)}
                     for k, v in M.section_metrics(p, t).items()]
            g = M.per_gene_metrics(p, t, ["g0", "g1", "g2"])
            genes.append(g.assign(model=model, split="f1", section=sec))
        cm = M.convention_metrics([PRED_A, PRED_B], [TRUTH_A, TRUTH_B], heg_idx=[2], hvg_idx=[1])
        rows += [{"model": model, "split": "f1", "section": POOLED, "metric": k, "value": v} for k, v in cm.items()]
    return pd.DataFrame(rows), pd.concat(genes, ignore_index=True)


def test_report_shows_conventions_and_flags_flattering_rows(tmp_path) -> None:
    metrics, per_gene = _tables()
    text = write_report(tmp_path, metrics, per_gene).read_text()
    assert "## Conventions of published tables" in text
    for label in ("HEST PCC", "TRIPLEX PCC(H)", "HiFusion/ASIGN PCC-spot", "Ours PCC-gene"):
        assert label in text
    assert "FLATTERING ROWS" in text.split("## Results")[0]  # the banner comes before any table
    # the fold rows are not sections: the per-section table lists A and B only
    per_section = text.split("## Per section")[1].split("##")[0]
    assert POOLED not in per_section and "| A |" in per_section
    labelled = label_metrics(metrics)
    assert set(labelled.loc[labelled.metric == M.HEST_PCC_GENE, "convention"]) == {"HEST-Benchmark"}
    assert set(labelled.loc[labelled.metric == M.PCC_GENE, "convention"]) == {"ours"}
    flat = labelled[labelled.model.str.contains("flattering")]
    assert set(flat["selection"]) == {FLATTERING}
    assert set(labelled[~labelled.model.str.contains("flattering")]["selection"]) == {HONEST}
