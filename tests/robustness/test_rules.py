"""Documented rules for odd but valid inputs, storage failures while writing, and checkpoint safety.

- Duplicate gene names: a warning, then made unique the scanpy way (`-1`, `-2`); the run succeeds.
- Nearly empty spots (total < 100, including all-zero ones) are kept and flagged `low_counts`; `data.drop_low_counts`
  removes them from training and evaluation.
- A panel gene missing from a test section is an error unless `data.genes.zero_fill`.
- A full disk while writing a patch file or an h5ad: one InputError naming the file, nothing half-written left.
- Checkpoints load with `torch.load(weights_only=True)` after their SHA-256 sidecar is checked, in predict and resume.
"""

from __future__ import annotations

import errno
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from hifusion import constants as C
from hifusion.config import DataConfig, ValConfig
from hifusion.data.cache.reader import load_cache
from hifusion.data.splitdata import load_split
from hifusion.data.splits import Split
from hifusion.errors import InputError
from tests.robustness.helpers import (
    SPOT_PX,
    SPOT_UM,
    assert_clean_error,
    last_checkpoint,
    partial_files,
    prepare_args,
    run_inprocess,
    run_subprocess,
    spot_table,
    write_her2st,
)
from tests.synthetic import prepare_cache, write_section

ZERO_ROWS = (0, 5)  # spots with no counts at all
LOW_ROW = 7  # a spot with 12 counts in total


def _counts_with_empty_spots(n: int, seed: int) -> np.ndarray:
    counts = np.random.default_rng(seed).integers(100, 150, size=(n, 8))
    counts[list(ZERO_ROWS)] = 0
    counts[LOW_ROW] = [3, 0, 2, 0, 4, 0, 3, 0]
    return counts


def test_duplicate_gene_names_warn_and_are_made_unique(tmp_path: Path) -> None:
    f = write_her2st(tmp_path / "raw", genes=["G0", "G1", "G0", "G3", "G1", "G0", "G6", "G7"])
    res = run_subprocess(prepare_args(f, tmp_path / "cache"))
    assert res.code == 0, res.stderr
    assert "duplicate gene names made unique" in res.stderr and str(f.counts) in res.stderr
    assert "Traceback" not in res.stderr
    adata, _ = load_cache(tmp_path / "cache", "T1")
    assert list(adata.var_names) == ["G0", "G1", "G0-1", "G3", "G1-1", "G0-2", "G6", "G7"]


def test_empty_spots_are_kept_and_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    f = write_her2st(tmp_path / "raw", counts=_counts_with_empty_spots(12, 0))
    res = run_inprocess(prepare_args(f, tmp_path / "cache"), monkeypatch, capsys)
    assert res.code == 0, res.stderr
    adata, patches = load_cache(tmp_path / "cache", "T1")
    assert adata.n_obs == 12 and len(patches) == 12
    low = adata.obs[C.OBS_LOW_COUNTS].to_numpy(bool)
    assert np.flatnonzero(low).tolist() == sorted([*ZERO_ROWS, LOW_ROW])
    assert adata.obs[C.OBS_TOTAL_COUNTS].iloc[list(ZERO_ROWS)].tolist() == [0.0, 0.0]
    assert adata.obs[C.OBS_TOTAL_COUNTS].iloc[LOW_ROW] == 12.0


@pytest.fixture
def low_count_cache(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_her2st(raw, "T1", counts=_counts_with_empty_spots(12, 1))
    write_her2st(raw, "U1", counts=_counts_with_empty_spots(12, 2))
    cache = tmp_path / "cache"
    prepare_cache("her2st", raw, ["T1", "U1"], cache, spot_um=SPOT_UM, spot_px=SPOT_PX, progress=False)
    return cache


@pytest.mark.parametrize("drop", [False, True])
def test_drop_low_counts_option(low_count_cache: Path, drop: bool) -> None:
    cfg = DataConfig(cache=low_count_cache, drop_low_counts=drop, genes={"method": "top_mean", "n": 5})
    data = load_split(low_count_cache, Split("fixed", ["T1"], ["U1"]), cfg, ValConfig())
    kept = [i for i in range(12) if i not in (*ZERO_ROWS, LOW_ROW)]
    expected = kept if drop else list(range(12))
    for s in ("T1", "U1"):  # training and evaluation alike
        assert data.rows[s].tolist() == expected
        assert data.labels[s].shape == (len(expected), 5) and np.isfinite(data.labels[s]).all()
    assert data.train_labels().shape == (len(expected), 5)


def test_missing_panel_gene_is_an_error_unless_zero_fill(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_section(raw, "P1", seed=1)
    write_section(raw, "Q1", seed=2, n_genes=10)
    cache = tmp_path / "cache"
    prepare_cache("her2st", raw, None, cache, spot_um=80.0, spot_px=16, progress=False)
    split = Split("fixed", ["P1"], ["Q1"])
    with pytest.raises(InputError, match="panel gene") as info:
        load_split(cache, split, DataConfig(cache=cache, genes={"n": 20}), ValConfig())
    assert info.value.path == str(cache / "Q1.h5ad")
    data = load_split(cache, split, DataConfig(cache=cache, genes={"n": 20, "zero_fill": True}), ValConfig())
    missing = [i for i, g in enumerate(data.panel) if int(g[1:]) >= 10]
    assert missing and np.isfinite(data.labels["Q1"]).all()


# ------------------------------------------------------------------------------------------- storage failures
def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_patches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import hifusion.data.prepare as prep

    real = prep.iter_patches

    def fill_up(*args: object, **kw: object):  # the first patch lands, then the disk is full
        gen = real(*args, **kw)  # type: ignore[arg-type]
        yield next(gen)
        raise _enospc()

    monkeypatch.setattr(prep, "iter_patches", fill_up)
    f = write_her2st(tmp_path / "raw")
    cache = tmp_path / "cache"
    res = run_inprocess(prepare_args(f, cache), monkeypatch, capsys)
    assert_clean_error(res, cache, str(cache / "T1.patches.h5"), "No space left on device")


def test_disk_full_while_writing_h5ad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def fill_up(self: ad.AnnData, filename: Path, *args: object, **kw: object) -> None:
        Path(filename).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 4096)  # part of a file, then the disk is full
        raise _enospc()

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fill_up)
    f = write_her2st(tmp_path / "raw")
    cache = tmp_path / "cache"
    res = run_inprocess(prepare_args(f, cache), monkeypatch, capsys)
    assert_clean_error(res, cache, str(cache / "T1.h5ad"), "No space left on device")
    assert not (cache / "T1.patches.h5").exists()  # the section's other file is not left half-prepared


def test_permission_denied_on_replace_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Root ignores file modes, so a read-only target is simulated at the rename that publishes a file."""
    import os

    real = os.replace

    def deny(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith(".h5"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", deny)
    f = write_her2st(tmp_path / "raw")
    cache = tmp_path / "cache"
    res = run_inprocess(prepare_args(f, cache), monkeypatch, capsys)
    assert_clean_error(res, cache, str(cache / "T1.patches.h5"), "Permission denied")


# ---------------------------------------------------------------------------------------- checkpoint safety
def test_checkpoint_loads_weights_only(trained_run: Path) -> None:
    ckpt = last_checkpoint(trained_run)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert {"state_dict", "hifusion", "optimizer_states", "lr_schedulers"} <= set(raw)
    assert raw["hifusion"]["patch"] == {"pixel_size": 5.0, "spot_px": 16, "region_px": 32}
    assert ckpt.with_name(ckpt.name + ".sha256").is_file()


@pytest.mark.parametrize("path", ["predict", "resume"])
def test_integrity_checked_before_weights_only_load(trained_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                    path: str) -> None:
    """Predict and resume both check the SHA-256 sidecar first, then load with weights_only=True."""
    import hifusion.checkpoint as ck

    events: list[str] = []
    real_hash, real_load = ck.file_sha256, torch.load

    def spy_hash(p: Path) -> str:
        events.append("sha256")
        return real_hash(p)

    def spy_load(*args: object, **kw: object) -> object:
        events.append(f"load weights_only={kw.get('weights_only')}")
        return real_load(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ck, "file_sha256", spy_hash)
    monkeypatch.setattr(torch, "load", spy_load)
    ckpt = last_checkpoint(trained_run)
    if path == "predict":
        pytest.importorskip("hifusion.predict")
        from hifusion.predict import load_predictor

        load_predictor(ckpt, device="cpu")
    else:
        from hifusion.checkpoint_meta import CheckpointMeta

        meta = real_load(ckpt, map_location="cpu", weights_only=True)["hifusion"]
        ck.check_resumable(ckpt, CheckpointMeta.from_dict(meta))
    assert events[:2] == ["sha256", "load weights_only=True"], events


def test_prepare_rejects_with_no_partial_files_in_process(tmp_path: Path) -> None:
    """The Python API raises the same InputError the CLI prints."""
    table = spot_table()
    table.loc[3, "pixel_x"] = 10_000.0
    f = write_her2st(tmp_path / "raw", spots=table, size=(600, 500))
    with pytest.raises(InputError, match="outside the image") as info:
        prepare_cache("her2st", f.root, ["T1"], tmp_path / "cache", spot_um=SPOT_UM, spot_px=SPOT_PX,
                         progress=False)
    assert info.value.path == str(f.spots)
    assert partial_files(tmp_path / "cache") == []
