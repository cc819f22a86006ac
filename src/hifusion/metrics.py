"""Per-section metrics of predicted expression, identical to ``shared/tools/anchors.py`` (the design brief, s. 4, 8).

Conventions, shared by PCC-gene (per gene, across the spots of a section) and PCC-spot (per spot, across genes):

- a vector whose TRUTH is constant has no defined correlation: it is excluded from the average and counted
  (``n_const_genes`` / ``n_const_spots``). "Constant" means all values identical (peak-to-peak 0); this is the exact
  form of anchors.py's ``std() > 0`` test, which can be fooled by rounding (``np.std([0.1] * 3)`` is 1.4e-17).
- a constant PREDICTION for a varying truth scores 0 (not excluded): a model that predicts no pattern gets no
  credit. "Constant" here is anchors.py's rule, ``std < 1e-12`` (or peak-to-peak 0).
- when every vector is excluded (e.g. a one-spot section for PCC-gene) the average is reported as 0.0, never NaN.

Everything is computed in float64 and every output is finite; non-finite inputs are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

PRED_CONST_STD = 1e-12  # anchors.py: a prediction with a smaller std scores 0

# Keys of `section_metrics`; the long-format metrics tables use these names in their `metric` column.
MSE = "mse"
MSE_BIAS = "mse_bias"  # squared offset of the per-gene section means: the level of the whole section
MSE_SPATIAL = "mse_spatial"  # MSE of the section-centred prediction against the section-centred truth
MAE = "mae"
PCC_SPOT = "pcc_spot"
PCC_GENE = "pcc_gene"
PCC_GENE_TOP50 = "pcc_gene_top50"
N_SPOTS = "n_spots"
N_GENES = "n_genes"
N_CONST_GENES = "n_const_genes"
N_CONST_SPOTS = "n_const_spots"
SCORE_KEYS = (MSE, MSE_BIAS, MSE_SPATIAL, MAE, PCC_SPOT, PCC_GENE, PCC_GENE_TOP50)


def _as_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two (spots, genes) matrices and return float64 copies; a silent NaN would corrupt every average."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.ndim != 2 or t.ndim != 2:
        raise ValueError(f"expected 2-D (spots, genes) arrays, got shapes {p.shape} and {t.shape}")
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    if p.size == 0:
        raise ValueError(f"empty arrays (shape {p.shape}): nothing to score")
    if not np.isfinite(p).all():
        raise ValueError("prediction contains NaN or infinite values")
    if not np.isfinite(t).all():
        raise ValueError("truth contains NaN or infinite values")
    return p, t


def _pcc_axis0(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of each column pair of two float64 matrices, with the module's conventions; returns (r, const)."""
    const_truth = np.ptp(t, axis=0) == 0
    pc = p - p.mean(axis=0)
    tc = t - t.mean(axis=0)
    n = p.shape[0]
    ss_p = (pc * pc).sum(axis=0)
    ss_t = (tc * tc).sum(axis=0)
    const_pred = (np.ptp(p, axis=0) == 0) | (np.sqrt(ss_p / n) < PRED_CONST_STD)
    den = np.sqrt(ss_p * ss_t)
    ok = ~const_truth & ~const_pred & (den > 0) & np.isfinite(den)
    r = np.zeros(p.shape[1], dtype=np.float64)
    r[ok] = (pc[:, ok] * tc[:, ok]).sum(axis=0) / den[ok]
    np.clip(r, -1.0, 1.0, out=r)  # like np.corrcoef: rounding can overshoot 1 by an ulp
    return r, const_truth


def pcc_columns(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r per column (gene, across spots). Returns (r, const_truth); r is 0.0 where const_truth is True.

    Callers average ``r[~const_truth]``: excluded genes must not pull the mean towards 0.
    """
    p, t = _as_pair(pred, truth)
    return _pcc_axis0(p, t)


def _mean_or_zero(x: np.ndarray) -> float:
    """Mean of the included values; 0.0 when nothing is included (NaN is never reported)."""
    return float(x.mean()) if x.size else 0.0


def pcc_gene(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Pearson r per gene over spots, with `section_metrics`' conventions (its ``pcc_gene`` alone)."""
    r, const = pcc_columns(pred, truth)
    return _mean_or_zero(r[~const])


def section_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    genes: Sequence[str] | None = None,
    hvg_top50_idx: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float | int]:
    """All scores of one test section (spots x genes), for the per-section and Table-1 reports.

    `hvg_top50_idx` are gene column indices chosen from TRAINING labels (`top_variable_genes`), never from the test
    truth; when None the ``pcc_gene_top50`` key is omitted. `genes`, when given, only checks the gene count.
    A one-spot section has every gene constant in its truth: ``pcc_gene`` is 0.0 with ``n_const_genes`` = all genes.
    """
    p, t = _as_pair(pred, truth)
    n_spots, n_genes = t.shape
    if genes is not None and len(genes) != n_genes:
        raise ValueError(f"{len(genes)} gene names for {n_genes} gene columns")
    diff = p - t
    r_gene, const_gene = _pcc_axis0(p, t)
    r_spot, const_spot = _pcc_axis0(p.T, t.T)
    offset = diff.mean(axis=0)  # per gene: section mean of the prediction minus section mean of the truth
    spatial = diff - offset
    out: dict[str, float | int] = {
        MSE: float((diff * diff).mean()),
        MSE_BIAS: float((offset * offset).mean()),
        MSE_SPATIAL: float((spatial * spatial).mean()),
        MAE: float(np.abs(diff).mean()),
        PCC_SPOT: _mean_or_zero(r_spot[~const_spot]),
        PCC_GENE: _mean_or_zero(r_gene[~const_gene]),
    }
    if hvg_top50_idx is not None:
        idx = np.asarray(hvg_top50_idx, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n_genes):
            raise ValueError(f"top-variable gene indices out of range for {n_genes} genes")
        sel = np.zeros(n_genes, dtype=bool)
        sel[idx] = True
        out[PCC_GENE_TOP50] = _mean_or_zero(r_gene[sel & ~const_gene])
    out.update(
        {
            N_SPOTS: int(n_spots),
            N_GENES: int(n_genes),
            N_CONST_GENES: int(const_gene.sum()),
            N_CONST_SPOTS: int(const_spot.sum()),
        }
    )
    return out


def per_gene_metrics(pred: np.ndarray, truth: np.ndarray, genes: Sequence[str]) -> pd.DataFrame:
    """One row per gene: gene, pcc, mse, mae, const_truth; feeds the marker table and the Wilcoxon tests.

    A gene with constant truth has pcc 0.0 and const_truth True; aggregate its pcc only over rows where it is False.
    """
    p, t = _as_pair(pred, truth)
    if len(genes) != t.shape[1]:
        raise ValueError(f"{len(genes)} gene names for {t.shape[1]} gene columns")
    r, const = _pcc_axis0(p, t)
    diff = p - t
    return pd.DataFrame(
        {
            "gene": [str(g) for g in genes],
            "pcc": r,
            "mse": (diff * diff).mean(axis=0),
            "mae": np.abs(diff).mean(axis=0),
            "const_truth": const,
        }
    )


# ------------------------------------------------------------------------------------ published conventions
# Scores as other papers compute them, on the test sections of ONE split (fold) together, so that a reader holding a
# published table can tell where our numbers stand. Our per-section scores above stay the headline.
HIFUSION_PCC_SPOT = "hifusion_pcc_spot"  # HiFusion / ASIGN reference code: per-spot PCC across genes, mean over spots
HIFUSION_MSE = "hifusion_mse"  # the same code's MSE: every (spot, gene) of the fold pooled
HEST_PCC_GENE = "hest_pcc_gene"  # HEST-Benchmark: per gene over all test spots of the fold pooled, mean over genes
TRIPLEX_PCC_ALL = "triplex_pcc_all"  # TRIPLEX: per gene per test slide, nan-mean over slides, then mean over genes
TRIPLEX_PCC_HEG = "triplex_pcc_heg50"  # ... over the 50 most highly expressed genes (PCC(M))
TRIPLEX_PCC_HVG = "triplex_pcc_hvg50"  # ... over the 50 most variable genes (PCC(H))
CONVENTION_KEYS = (HIFUSION_PCC_SPOT, HIFUSION_MSE, HEST_PCC_GENE, TRIPLEX_PCC_ALL, TRIPLEX_PCC_HEG, TRIPLEX_PCC_HVG)
# key -> (source, what it is, what it rewards): the report's conventions table and metrics.csv's `convention` column
CONVENTIONS: dict[str, tuple[str, str, str]] = {
    HIFUSION_PCC_SPOT: (
        "HiFusion / ASIGN",
        "PCC per spot across genes, averaged over all test spots of the fold",
        "the mean expression profile: genes' levels differ far more than spots do, so it is high for any model "
        "that predicts the profile, the mean profile included",
    ),
    HIFUSION_MSE: (
        "HiFusion / ASIGN",
        "MSE over every (spot, gene) of the fold pooled",
        "getting each gene's level right; sections with more spots weigh more",
    ),
    HEST_PCC_GENE: (
        "HEST-Benchmark",
        "PCC per gene over all test spots of the fold pooled across sections, averaged over genes",
        "differences between test sections as well as patterns within them: a model that only gets each "
        "section's level right scores above 0",
    ),
    TRIPLEX_PCC_ALL: (
        "TRIPLEX",
        "PCC per gene per test slide, averaged over slides per gene (nan-mean), then over all genes",
        "spatial patterns within each slide (close to our PCC-gene; only the averaging order differs)",
    ),
    TRIPLEX_PCC_HEG: (
        "TRIPLEX",
        "as PCC(A), over the 50 most highly expressed genes (PCC(M)): highest mean training label (TRIPLEX ranks "
        "total counts)",
        "patterns of abundant genes, whose counts are least noisy",
    ),
    TRIPLEX_PCC_HVG: (
        "TRIPLEX",
        "as PCC(A), over the 50 most variable genes (PCC(H)): largest variance of the training labels (TRIPLEX uses "
        "scanpy's highly-variable-gene ranking)",
        "patterns of the genes that vary most, where there is most pattern to find",
    ),
}


def _nan_mean_rows(r: np.ndarray, const: np.ndarray) -> np.ndarray:
    """Per column: the mean of `r` over the rows where `const` is False; NaN where every row is excluded."""
    keep = ~const
    n = keep.sum(axis=0)
    total = np.where(keep, r, 0.0).sum(axis=0)
    out = np.full(r.shape[1], np.nan)
    out[n > 0] = total[n > 0] / n[n > 0]
    return out


def convention_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    heg_idx: Sequence[int] | np.ndarray | None = None,
    hvg_idx: Sequence[int] | np.ndarray | None = None,
) -> dict[str, float]:
    """Published papers' scores over the test sections of one fold (lists of per-section (spots, genes) arrays).

    Where those papers' code meets a constant vector (scipy's pearsonr gives NaN), this module's rules apply:
    a gene or spot whose truth is constant is left out (HEST's plain mean would be NaN; TRIPLEX's nan-mean leaves
    it out too), and a constant prediction scores 0 (their code gives NaN, which TRIPLEX's nan-mean would drop).
    `heg_idx` / `hvg_idx` are gene indices chosen on TRAINING sections.
    """
    pairs = [_as_pair(p, t) for p, t in zip(preds, truths, strict=True)]
    if not pairs:
        raise ValueError("no test sections to score")
    p_all = np.vstack([p for p, _ in pairs])
    t_all = np.vstack([t for _, t in pairs])
    r_spot, c_spot = _pcc_axis0(p_all.T, t_all.T)
    r_gene, c_gene = _pcc_axis0(p_all, t_all)
    per_slide = [_pcc_axis0(p, t) for p, t in pairs]
    by_gene = _nan_mean_rows(np.vstack([r for r, _ in per_slide]), np.vstack([c for _, c in per_slide]))
    diff = p_all - t_all

    def subset_mean(idx: Sequence[int] | np.ndarray | None) -> float:
        v = by_gene if idx is None else by_gene[np.asarray(idx, dtype=np.int64)]
        v = v[np.isfinite(v)]
        return _mean_or_zero(v)

    out = {
        HIFUSION_PCC_SPOT: _mean_or_zero(r_spot[~c_spot]),
        HIFUSION_MSE: float((diff * diff).mean()),
        HEST_PCC_GENE: _mean_or_zero(r_gene[~c_gene]),
        TRIPLEX_PCC_ALL: subset_mean(None),
    }
    if heg_idx is not None:
        out[TRIPLEX_PCC_HEG] = subset_mean(heg_idx)
    if hvg_idx is not None:
        out[TRIPLEX_PCC_HVG] = subset_mean(hvg_idx)
    return out
