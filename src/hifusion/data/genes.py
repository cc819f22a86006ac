"""Gene panels (which genes a model predicts) and label transforms (what number it predicts per spot and gene).

Both are computed per run from the raw counts in the cache, on training sections only, so the test sections never
influence which genes are chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from hifusion.constants import UNS_HIFUSION
from hifusion.data.section import Section
from hifusion.errors import ConfigError, InputError

CountsLike = ad.AnnData | pd.DataFrame | Section
TARGET_SUM = 1e4  # log1p_cpm: counts per spot scaled to this total (scanpy's normalize_total(target_sum=1e4))


def _as_counts(obj: CountsLike) -> tuple[sp.csr_matrix, list[str], str]:
    """(spots x genes CSR, gene names, a name for errors) from an AnnData, a DataFrame or a Section."""
    if isinstance(obj, ad.AnnData):
        x = obj.X
        info = obj.uns.get(UNS_HIFUSION, {}) if isinstance(obj.uns, dict) or hasattr(obj.uns, "get") else {}
        name = str(info.get("h5ad_path") or info.get("counts_file") or _section_name(obj))
        return sp.csr_matrix(x), [str(g) for g in obj.var_names], name
    if isinstance(obj, Section):
        return obj.counts, obj.genes.tolist(), str(obj.files.get("counts", obj.section_id))
    if isinstance(obj, pd.DataFrame):
        return sp.csr_matrix(obj.to_numpy(dtype=np.float64)), [str(c) for c in obj.columns], "counts table"
    raise TypeError(f"expected AnnData, DataFrame or Section, got {type(obj).__name__}")


def _section_name(adata: ad.AnnData) -> str:
    if "section" in adata.obs and adata.n_obs:
        return f"section {adata.obs['section'].iloc[0]}"
    return "section"


def _common_genes(mats: list[tuple[sp.csr_matrix, list[str], str]]) -> list[str]:
    """Genes present in every section, in the first section's order."""
    common = set(mats[0][1])
    for _, genes, _ in mats[1:]:
        common &= set(genes)
    return [g for g in mats[0][1] if g in common]


def _pooled(mats: list[tuple[sp.csr_matrix, list[str], str]], genes: list[str]) -> sp.csr_matrix:
    blocks = []
    for x, names, _ in mats:
        pos = {g: i for i, g in enumerate(names)}
        blocks.append(sp.csr_matrix(x)[:, [pos[g] for g in genes]])
    return sp.vstack(blocks).tocsr()


def _top_mean(mats: Iterable[tuple[sp.csr_matrix, list[str], str]], n: int, **_: Any) -> list[str]:
    """Top-n by mean raw count pooled over all spots; ties by gene name. Sums of integers are exact in float64.

    Streams: one section's counts at a time, so choosing a panel on a 1,000-section cohort holds per-gene sums only.
    """
    order: list[str] | None = None
    sums: dict[str, float] = {}
    common: set[str] = set()
    for x, names, _ in mats:
        col = np.asarray(sp.csr_matrix(x).sum(axis=0, dtype=np.float64)).ravel()
        if order is None:
            order, common = list(names), set(names)
        else:
            common &= set(names)
        for g, v in zip(names, col.tolist(), strict=True):
            if g in common:
                sums[g] = sums.get(g, 0.0) + v
    if order is None:
        return []
    genes = [g for g in order if g in common]
    ranked = sorted(genes, key=lambda g: (-sums[g], g))
    return ranked[:n]


def _hvg(mats: Iterable[tuple[sp.csr_matrix, list[str], str]], n: int, **_: Any) -> list[str]:
    """scanpy highly_variable_genes (flavour 'seurat') on normalize_total(1e4) + log1p of pooled counts.

    Needs the training sections' counts pooled in memory (scanpy's binning by mean is over all genes at once).
    """
    import scanpy as sc

    mats = list(mats)
    if not mats:
        return []
    genes = _common_genes(mats)
    a = ad.AnnData(X=_pooled(mats, genes).astype(np.float32))
    a.var_names = pd.Index(genes)
    sc.pp.normalize_total(a, target_sum=TARGET_SUM)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, flavor="seurat", n_top_genes=min(n, len(genes)))
    var = a.var.copy()
    var["gene"] = var.index
    var = var[var["highly_variable"]].sort_values(["dispersions_norm", "gene"], ascending=[False, True])
    return var["gene"].tolist()[:n]


def read_gene_file(path: str | Path) -> list[str]:
    """One gene per line; blank lines and `#` comments ignored; duplicates are an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("gene list file not found", path)
    genes = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    genes = [g for g in genes if g]
    if not genes:
        raise InputError("gene list file names no genes", path)
    dup = sorted({g for g in genes if genes.count(g) > 1})
    if dup:
        raise InputError(f"genes listed twice: {dup[:5]}", path)
    return genes


def _from_file(
    mats: Iterable[tuple[sp.csr_matrix, list[str], str]], n: int, gene_file: str | Path | None = None, **_: Any
) -> list[str]:
    if gene_file is None:
        raise ConfigError("gene panel method 'file' needs a gene list file")
    genes = read_gene_file(gene_file)
    common: set[str] | None = None
    for _, names, _ in mats:
        common = set(names) if common is None else common & set(names)
    if common is not None:
        unknown = [g for g in genes if g not in common]
        if unknown:
            raise InputError(
                f"{len(unknown)} listed gene(s) missing from the training sections, e.g. {unknown[:5]}", gene_file
            )
    return genes


PANEL_METHODS: dict[str, Callable[..., list[str]]] = {"top_mean": _top_mean, "hvg": _hvg, "file": _from_file}


def select_panel(
    adatas_or_counts: Iterable[CountsLike],
    method: str = "top_mean",
    n: int = 250,
    gene_file: str | Path | None = None,
) -> list[str]:
    """The gene panel chosen on the given (training) sections, in rank order.

    Sections may come from a generator: `top_mean` and `file` then read one at a time (memory flat in the cohort).
    """
    if method not in PANEL_METHODS:
        raise ConfigError(f"unknown gene panel method {method!r}; choose one of {sorted(PANEL_METHODS)}")
    if n < 1:
        raise ConfigError(f"gene panel size must be positive, got {n}")
    seen: list[str] = []  # the first section's name, for the error below

    def mats() -> Iterator[tuple[sp.csr_matrix, list[str], str]]:
        for a in adatas_or_counts:
            m = _as_counts(a)
            if not seen:
                seen.append(m[2])
            yield m

    panel = PANEL_METHODS[method](mats(), n, gene_file=gene_file)
    if not seen and method != "file":
        raise ConfigError(f"gene panel method {method!r} needs at least one training section")
    if not panel:
        raise InputError("the training sections share no gene", seen[0] if seen else None)
    return panel


def _logprop(panel_counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """ln((c_g + 1) / sum over the panel of (c_g' + 1)): the HiFusion paper's label."""
    x = panel_counts + 1.0
    return np.log(x / x.sum(axis=1, keepdims=True))


def _log1p_cpm(panel_counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """log1p(counts / total counts of the spot over all genes * 1e4) (ST-Net, TRIPLEX, HEST); empty spots give 0."""
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(panel_counts * scale[:, None])


LABEL_TRANSFORMS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "logprop": _logprop,
    "log1p_cpm": _log1p_cpm,
}


def make_labels(
    adata: CountsLike, panel: Sequence[str], transform: str = "logprop", zero_fill: bool = False
) -> np.ndarray:
    """float32 (spots, len(panel)) labels from raw counts; a missing panel gene is an error unless `zero_fill`."""
    if transform not in LABEL_TRANSFORMS:
        raise ConfigError(f"unknown label transform {transform!r}; choose one of {sorted(LABEL_TRANSFORMS)}")
    x, genes, name = _as_counts(adata)
    pos = {g: i for i, g in enumerate(genes)}
    missing = [g for g in panel if g not in pos]
    if missing and not zero_fill:
        raise InputError(
            f"{len(missing)} panel gene(s) missing, e.g. {missing[:5]}; use zero-fill or another panel", name
        )
    x = sp.csr_matrix(x, dtype=np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    present = [i for i, g in enumerate(panel) if g in pos]
    panel_counts = np.zeros((x.shape[0], len(panel)), dtype=np.float64)
    if present:
        panel_counts[:, present] = x[:, [pos[panel[i]] for i in present]].toarray()
    return LABEL_TRANSFORMS[transform](panel_counts, totals).astype(np.float32)


TOP_VARIABLE_K = 50  # the `pcc_gene_top50` metric's genes


def top_variable_genes(train_labels: np.ndarray | Sequence[np.ndarray], k: int = TOP_VARIABLE_K) -> np.ndarray:
    """Indices of the `k` genes with the largest variance across TRAINING spots (most variable first; ties by index).

    A sequence of per-section label matrices is pooled first. Fewer than `k` genes returns all of them.
    """
    if isinstance(train_labels, np.ndarray):
        y = np.asarray(train_labels, dtype=np.float64)
    else:
        y = np.vstack([np.asarray(a, dtype=np.float64) for a in train_labels])
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"expected non-empty 2-D (spots, genes) training labels, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("training labels contain NaN or infinite values")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    var = y.var(axis=0)
    order = np.lexsort((np.arange(var.size), -var))  # last key is primary: variance descending, then index
    return order[:k].astype(np.int64)
