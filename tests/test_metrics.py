"""Metrics agree with anchors.py's formulas, scipy/numpy references and the design brief's section 8 conventions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from hifusion.data.genes import top_variable_genes
from hifusion.metrics import (
    pcc_columns,
    per_gene_metrics,
    section_metrics,
)


def _anchor_pcc(a: np.ndarray, b: np.ndarray) -> float:
    """anchors.py's pcc(), verbatim."""
    return 0.0 if a.std() < 1e-12 else float(np.corrcoef(a, b)[0, 1])


def _anchor_scores(P: np.ndarray, T: np.ndarray) -> tuple[float, float, float, float]:
    """anchors.py's scores(), verbatim."""
    pg = [_anchor_pcc(P[:, g], T[:, g]) for g in range(T.shape[1]) if T[:, g].std() > 0]
    ps = [_anchor_pcc(P[i], T[i]) for i in range(len(T)) if T[i].std() > 0]
    return ((P - T) ** 2).mean(), np.abs(P - T).mean(), np.mean(ps), np.mean(pg)


def _data(seed: int = 0, n: int = 40, g: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, g)) + rng.normal(size=g)
    pred = 0.5 * truth + rng.normal(scale=0.8, size=(n, g))
    return pred, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_section_metrics_match_anchors(seed: int) -> None:
    pred, truth = _data(seed)
    m = section_metrics(pred, truth)
    mse, mae, ps, pg = _anchor_scores(pred, truth)
    assert m["mse"] == pytest.approx(mse, abs=1e-12)
    assert m["mae"] == pytest.approx(mae, abs=1e-12)
    assert m["pcc_spot"] == pytest.approx(ps, abs=1e-12)
    assert m["pcc_gene"] == pytest.approx(pg, abs=1e-12)
    assert (m["n_spots"], m["n_genes"], m["n_const_genes"], m["n_const_spots"]) == (40, 30, 0, 0)
    assert "pcc_gene_top50" not in m


def test_pcc_matches_scipy_pearsonr() -> None:
    pred, truth = _data(3, n=25, g=7)
    r, const = pcc_columns(pred, truth)
    ref = [sps.pearsonr(pred[:, j], truth[:, j])[0] for j in range(7)]
    np.testing.assert_allclose(r, ref, atol=1e-12)
    assert not const.any()


def test_float32_input_is_scored_in_float64() -> None:
    pred, truth = _data(4)
    m32 = section_metrics(pred.astype(np.float32), truth.astype(np.float32))
    m64 = section_metrics(pred.astype(np.float32).astype(np.float64), truth.astype(np.float32).astype(np.float64))
    assert m32 == m64


def test_constant_truth_gene_excluded_and_counted() -> None:
    pred, truth = _data(5)
    truth[:, 3] = 0.1  # np.std of this column is ~1e-17, not 0: our exact test still calls it constant
    truth[:, 7] = -2.0
    m = section_metrics(pred, truth)
    assert m["n_const_genes"] == 2
    r, const = pcc_columns(pred, truth)
    assert const.sum() == 2 and const[3] and const[7]
    assert r[3] == 0.0 and r[7] == 0.0
    keep = [j for j in range(truth.shape[1]) if j not in (3, 7)]
    ref = np.mean([np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in keep])
    assert m["pcc_gene"] == pytest.approx(ref, abs=1e-12)


def test_constant_prediction_scores_zero_not_excluded() -> None:
    pred, truth = _data(6)
    pred[:, 2] = 0.7  # a gene predicted flat across spots
    pred[5, :] = 0.7  # a spot predicted flat across genes (same value, so gene 2 stays flat)
    m = section_metrics(pred, truth)
    assert m["n_const_genes"] == 0 and m["n_const_spots"] == 0
    r, const = pcc_columns(pred, truth)
    assert r[2] == 0.0 and not const[2]
    assert m["pcc_gene"] == pytest.approx(_anchor_scores(pred, truth)[3], abs=1e-12)
    assert m["pcc_spot"] == pytest.approx(_anchor_scores(pred, truth)[2], abs=1e-12)


def test_mean_profile_prediction_scores_zero_pcc_gene() -> None:
    _, truth = _data(7)
    pred = np.tile(truth.mean(0), (len(truth), 1))
    m = section_metrics(pred, truth)
    assert m["pcc_gene"] == 0.0
    assert m["pcc_spot"] > 0.5  # the mean profile is what PCC-spot rewards


def test_constant_truth_spot_excluded_and_counted() -> None:
    pred, truth = _data(8)
    truth[4, :] = 3.0
    m = section_metrics(pred, truth)
    assert m["n_const_spots"] == 1
    keep = [i for i in range(len(truth)) if i != 4]
    ref = np.mean([np.corrcoef(pred[i], truth[i])[0, 1] for i in keep])
    assert m["pcc_spot"] == pytest.approx(ref, abs=1e-12)


def test_outputs_nan_free_with_everything_constant() -> None:
    truth = np.ones((6, 4))
    pred = np.zeros((6, 4))
    m = section_metrics(pred, truth, hvg_top50_idx=[0, 1])
    assert all(np.isfinite(v) for v in m.values())
    assert m["pcc_gene"] == 0.0 and m["pcc_spot"] == 0.0 and m["pcc_gene_top50"] == 0.0
    assert m["n_const_genes"] == 4 and m["n_const_spots"] == 6
    df = per_gene_metrics(pred, truth, list("abcd"))
    assert not df[["pcc", "mse", "mae"]].isna().any().any()
    assert df["const_truth"].all()


def test_single_spot_section() -> None:
    truth = np.array([[1.0, 2.0, 4.0, 3.0]])
    pred = np.array([[1.5, 2.0, 3.0, 3.5]])
    m = section_metrics(pred, truth, genes=list("abcd"))
    assert m["n_spots"] == 1 and m["n_genes"] == 4
    assert m["n_const_genes"] == 4 and m["pcc_gene"] == 0.0  # every gene is constant in a one-spot truth
    assert m["n_const_spots"] == 0
    assert m["pcc_spot"] == pytest.approx(np.corrcoef(pred[0], truth[0])[0, 1], abs=1e-12)
    assert m["mse"] == pytest.approx(((pred - truth) ** 2).mean())


def test_single_gene_section() -> None:
    pred, truth = _data(9, n=10, g=1)
    m = section_metrics(pred, truth)
    assert m["n_const_spots"] == 10 and m["pcc_spot"] == 0.0
    assert m["pcc_gene"] == pytest.approx(np.corrcoef(pred[:, 0], truth[:, 0])[0, 1], abs=1e-12)


def test_invalid_inputs_rejected() -> None:
    pred, truth = _data(10)
    with pytest.raises(ValueError, match="shape"):
        section_metrics(pred[:, :5], truth)
    bad = pred.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        section_metrics(bad, truth)
    with pytest.raises(ValueError, match="gene names"):
        section_metrics(pred, truth, genes=["a"])
    with pytest.raises(ValueError, match="out of range"):
        section_metrics(pred, truth, hvg_top50_idx=[100])
    with pytest.raises(ValueError, match="empty"):
        section_metrics(np.zeros((0, 3)), np.zeros((0, 3)))


def test_top_variable_genes_and_top50_metric() -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(size=(50, 80))
    train = (z - z.mean(0)) / z.std(0) * np.linspace(0.1, 3.0, 80)  # variance grows exactly with the index
    idx = top_variable_genes(train, k=50)
    assert idx.dtype == np.int64 and len(idx) == 50
    np.testing.assert_array_equal(np.sort(idx), np.arange(30, 80))
    assert idx[0] == np.argmax(train.var(0))
    # ties broken by index; fewer genes than k returns them all
    tied = np.tile(np.array([[0.0, 1.0, 0.0, 1.0]]), (3, 1))
    tied[1] = [1.0, 0.0, 1.0, 0.0]
    np.testing.assert_array_equal(top_variable_genes(tied, k=50), [0, 1, 2, 3])
    np.testing.assert_array_equal(top_variable_genes([train[:20], train[20:]], k=5), top_variable_genes(train, 5))
    pred, truth = _data(12, n=30, g=80)
    m = section_metrics(pred, truth, hvg_top50_idx=idx)
    r, _ = pcc_columns(pred, truth)
    assert m["pcc_gene_top50"] == pytest.approx(r[idx].mean(), abs=1e-12)


def test_per_gene_metrics_columns_and_values() -> None:
    pred, truth = _data(13, n=12, g=5)
    truth[:, 1] = 2.0
    genes = ["ERBB2", "KRT19", "CD74", "FASN", "GNAS"]
    df = per_gene_metrics(pred, truth, genes)
    assert list(df.columns) == ["gene", "pcc", "mse", "mae", "const_truth"]
    assert list(df["gene"]) == genes
    assert df["const_truth"].tolist() == [False, True, False, False, False]
    np.testing.assert_allclose(df["mse"], ((pred - truth) ** 2).mean(0))
    np.testing.assert_allclose(df["mae"], np.abs(pred - truth).mean(0))
    assert df.loc[0, "pcc"] == pytest.approx(sps.pearsonr(pred[:, 0], truth[:, 0])[0], abs=1e-12)
    m = section_metrics(pred, truth)
    assert m["pcc_gene"] == pytest.approx(df.loc[~df["const_truth"], "pcc"].mean(), abs=1e-12)
    assert m["mse"] == pytest.approx(df["mse"].mean(), abs=1e-12)


def test_agrees_with_shared_anchors_module() -> None:
    """The real anchors.py (where the shared folder is present), on random data with flat predictions mixed in."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "tools" / "anchors.py"
    if not path.exists():
        pytest.skip("shared/tools/anchors.py not present")
    spec = importlib.util.spec_from_file_location("_anchors", path)
    anchors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchors)
    for seed in range(3):
        pred, truth = _data(seed, n=60, g=50)
        pred[:, 4] = 0.3
        truth[:, 9] = 2.0
        m = section_metrics(pred, truth)
        ref = anchors.scores(pred, truth)
        got = (m["mse"], m["mae"], m["pcc_spot"], m["pcc_gene"])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
