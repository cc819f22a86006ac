"""HEST-Benchmark task folders, generated in code in HEST's layout, read by `data.hest_task`."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from hifusion.data.hest_task import read_expression, read_patch_index, read_task
from hifusion.errors import InputError

GENES = ["ERBB2", "GATA3", "KRT5", "CD74"]


def write_hest_task(root: Path, task: str = "IDC", samples: tuple[str, ...] = ("S0", "S1", "S2"), n: int = 12,
                    px: int = 32) -> Path:
    """A task folder as HEST lays it out; a patch's red level drives ERBB2 and GATA3, so features carry signal.
    The expression file lists its spots in reverse order of the patch file, and holds one extra gene."""
    tdir = root / task
    for d in ("splits", "patches", "adata"):
        (tdir / d).mkdir(parents=True, exist_ok=True)
    for k, sid in enumerate(samples):
        rng = np.random.default_rng(k)
        signal = rng.random(n)
        img = np.zeros((n, px, px, 3), np.uint8)
        img[..., 0] = (50 + 200 * signal)[:, None, None]
        img[..., 1:] = 120
        barcodes = [f"{sid}_{i}" for i in range(n)]
        with h5py.File(tdir / "patches" / f"{sid}.h5", "w") as f:
            f["img"] = img
            f["barcode"] = np.array(barcodes, dtype="S")[:, None]
            f["coords"] = np.stack([np.arange(n), np.arange(n)], 1) * 100
        lam = np.stack([20 * signal + 1, 20 * (1 - signal) + 1, np.full(n, 5.0), np.full(n, 2.0), np.ones(n)], 1)
        counts = rng.poisson(lam).astype(np.float32)
        a = ad.AnnData(X=counts[::-1].copy(), obs=pd.DataFrame(index=barcodes[::-1]),
                       var=pd.DataFrame(index=[*GENES, "EXTRA"]))
        a.write_h5ad(tdir / "adata" / f"{sid}.h5ad")
    for i, test in enumerate(samples[:2]):
        for name, ids in ((f"train_{i}.csv", [s for s in samples if s != test]), (f"test_{i}.csv", [test])):
            pd.DataFrame({"sample_id": ids, "patches_path": [f"patches/{s}.h5" for s in ids],
                          "expr_path": [f"adata/{s}.h5ad" for s in ids]}).to_csv(tdir / "splits" / name, index=False)
    (tdir / "var_50genes.json").write_text(json.dumps({"genes": GENES}))
    return root


def test_read_task_and_expression(tmp_path: Path) -> None:
    root = write_hest_task(tmp_path)
    task = read_task(root, "IDC")
    assert task.genes == GENES and len(task.folds) == 2
    assert [s.sample_id for s in task.folds[0].train] == ["S1", "S2"] and task.folds[0].test[0].sample_id == "S0"
    barcodes, n = read_patch_index(task.folds[0].test[0].patches)
    assert n == 12 and barcodes[0] == "S0_0"
    y = read_expression(task.folds[0].test[0].expression, GENES, barcodes)
    raw = ad.read_h5ad(task.folds[0].test[0].expression)
    # in the patch file's order (the h5ad holds them reversed), log1p of the raw counts, the listed genes only
    np.testing.assert_allclose(y, np.log1p(raw[barcodes, GENES].X))
    assert y.shape == (12, 4)


def test_task_problems_name_the_file(tmp_path: Path) -> None:
    root = write_hest_task(tmp_path)
    with pytest.raises(InputError, match="not a HEST-Benchmark task"):
        read_task(root, "LUNG")
    with pytest.raises(InputError, match="genes of the task's list are missing"):
        read_expression(root / "IDC" / "adata" / "S0.h5ad", ["NOPE"], ["S0_0"])
    pd.DataFrame({"sample_id": ["S1"], "patches_path": ["patches/S1.h5"], "expr_path": ["adata/S1.h5ad"]}).to_csv(
        root / "IDC" / "splits" / "test_0.csv", index=False)
    with pytest.raises(InputError, match="both train and test"):
        read_task(root, "IDC")
