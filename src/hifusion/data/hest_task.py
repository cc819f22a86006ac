"""HEST-Benchmark task folders, read as HEST lays them out (`bench_data/<task>/`, e.g. `IDC/`).

- `splits/train_{i}.csv`, `splits/test_{i}.csv`: one fold each, columns `sample_id`, `patches_path`, `expr_path`
  (paths relative to the task folder);
- `patches/<id>.h5`: datasets `img` (N, H, W, 3 uint8), `barcode` (N, 1 bytes) and `coords` (N, 2);
- `adata/<id>.h5ad`: raw counts, spots named by the patches' barcodes;
- `var_50genes.json`: `{"genes": [...]}`, the task's gene list.

Expression follows HEST's loader: the spots of the patch file, in its order, and the listed genes, then log1p of
the counts as stored (HEST normalises no library size).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hifusion import constants as C
from hifusion.errors import InputError


@dataclass(frozen=True)
class HestSample:
    sample_id: str
    patches: Path
    expression: Path


@dataclass(frozen=True)
class HestFold:
    index: int
    train: list[HestSample]
    test: list[HestSample]


@dataclass(frozen=True)
class HestTask:
    root: Path  # the task folder
    genes: list[str]
    folds: list[HestFold]


def _read_split(path: Path, task_dir: Path) -> list[HestSample]:
    if not path.is_file():
        raise InputError("HEST split file not found", path)
    df = pd.read_csv(path)
    missing = [c for c in C.HEST_SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"HEST split file lacks columns {missing} (has {list(df.columns)})", path)
    if df.empty:
        raise InputError("HEST split file lists no samples", path)
    out = []
    for r in df.itertuples(index=False):
        patches, expr = task_dir / str(r.patches_path), task_dir / str(r.expr_path)
        for f in (patches, expr):
            if not f.is_file():
                raise InputError(f"sample {r.sample_id}: file listed in {path.name} not found", f)
        out.append(HestSample(str(r.sample_id), patches, expr))
    return out


def read_task(root: str | Path, task: str, gene_list: str = C.HEST_GENES_JSON) -> HestTask:
    """The folds and genes of one task folder `<root>/<task>`; every listed file must exist."""
    task_dir = Path(root) / task
    split_dir = task_dir / C.HEST_SPLITS_DIR
    if not split_dir.is_dir():
        raise InputError(f"not a HEST-Benchmark task folder (no {C.HEST_SPLITS_DIR}/)", task_dir)
    n = 0
    while (split_dir / C.HEST_TRAIN_SPLIT.format(i=n)).is_file():
        n += 1
    if n == 0:
        raise InputError(f"no {C.HEST_TRAIN_SPLIT.format(i=0)} in the splits folder", split_dir)
    folds = []
    for i in range(n):
        train = _read_split(split_dir / C.HEST_TRAIN_SPLIT.format(i=i), task_dir)
        test = _read_split(split_dir / C.HEST_TEST_SPLIT.format(i=i), task_dir)
        shared = sorted({s.sample_id for s in train} & {s.sample_id for s in test})
        if shared:
            raise InputError(f"fold {i}: samples {shared} are in both train and test", split_dir)
        folds.append(HestFold(i, train, test))
    genes_path = task_dir / gene_list
    if not genes_path.is_file():
        raise InputError("HEST gene list not found", genes_path)
    try:
        genes = json.loads(genes_path.read_text())["genes"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"expected a JSON object with a 'genes' list ({exc.__class__.__name__})", genes_path) from exc
    if not isinstance(genes, list) or not genes:
        raise InputError("the 'genes' list is empty or not a list", genes_path)
    return HestTask(task_dir, [str(g) for g in genes], folds)


def _decode(values: np.ndarray) -> list[str]:
    flat = np.asarray(values).reshape(len(values), -1)[:, 0]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]


def read_patch_index(path: Path) -> tuple[list[str], int]:
    """Barcodes of a patch file, in order, and its patch count (images stay on disk)."""
    import h5py

    with h5py.File(path, "r") as f:
        if C.HEST_PATCH_IMG not in f:
            raise InputError(f"patch file has no '{C.HEST_PATCH_IMG}' dataset (has {list(f)})", path)
        key = next((k for k in C.HEST_PATCH_BARCODES if k in f), None)
        if key is None:
            raise InputError(f"patch file has no barcode dataset ({' or '.join(C.HEST_PATCH_BARCODES)})", path)
        barcodes = _decode(f[key][:])
        n = int(f[C.HEST_PATCH_IMG].shape[0])
    if len(barcodes) != n:
        raise InputError(f"{n} patches but {len(barcodes)} barcodes", path)
    return barcodes, n


def iter_patches(path: Path, batch: int = 128) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 chunks of a patch file, in order."""
    import h5py

    with h5py.File(path, "r") as f:
        img = f[C.HEST_PATCH_IMG]
        if img.ndim != 4 or img.shape[-1] != 3:
            raise InputError(f"'{C.HEST_PATCH_IMG}' must be (N, H, W, 3), got {img.shape}", path)
        for start in range(0, img.shape[0], batch):
            yield np.asarray(img[start : start + batch], dtype=np.uint8)


def read_expression(path: Path, genes: list[str], barcodes: list[str]) -> np.ndarray:
    """log1p counts (spots of `barcodes`, in that order) x `genes`, float64, as HEST's loader makes them."""
    import anndata as ad
    import scipy.sparse as sp

    adata = ad.read_h5ad(path)
    names = pd.Index(adata.obs_names.astype(str))
    missing_spots = [b for b in barcodes if b not in names]
    if missing_spots:
        raise InputError(f"{len(missing_spots)} patch barcodes have no expression (first: {missing_spots[0]})", path)
    var = pd.Index(adata.var_names.astype(str))
    missing = [g for g in genes if g not in var]
    if missing:
        raise InputError(f"genes of the task's list are missing: {missing[:5]}", path)
    x = adata.X[names.get_indexer(barcodes)][:, var.get_indexer(genes)]
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if not np.isfinite(x).all() or (x < 0).any():
        raise InputError("expression must be finite, non-negative counts", path)
    return np.log1p(x)
