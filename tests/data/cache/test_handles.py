"""Patch files are read through a bounded LRU of open HDF5 handles: many sections, few descriptors, right patches."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hifusion import constants as C
from hifusion.data.cache import handles
from hifusion.data.cache.handles import H5Handles
from hifusion.data.cache.reader import PatchFile
from hifusion.data.torch_datasets import SpotDataset


def _write_patch_file(path: Path, section: int, n: int = 4, side: int = 8) -> None:
    """A patch file in the cache layout `prepare` writes; patch i of section s is filled with s * 10 + i."""
    img = np.stack([np.full((side, side, 3), section * 10 + i, np.uint8) for i in range(n)])
    with h5py.File(path, "w") as f:
        f.create_dataset(C.H5_IMG, data=img, chunks=(1, side, side, 3))
        f.create_dataset(C.H5_COORDS, data=np.zeros((n, 2), np.int64))
        f.create_dataset(C.H5_BARCODE, data=np.asarray([f"b{i}" for i in range(n)]).astype("S"))
        f.attrs.update({C.H5_ATTR_SPOT_PX: side // 2, C.H5_ATTR_REGION_PX: side, C.H5_ATTR_PIXEL_SIZE: 1.0,
                        C.H5_ATTR_SECTION: f"S{section}"})


def _open_under(folder: Path) -> int:
    """Descriptors of this process pointing into `folder`."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
    return n


@pytest.fixture
def patch_files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / f"S{s}.patches.h5" for s in range(12)]
    for s, p in enumerate(paths):
        _write_patch_file(p, s)
    return paths


def test_lru_keeps_at_most_max_open_files(patch_files: list[Path], tmp_path: Path) -> None:
    handles = H5Handles(max_open=3)
    for _ in range(2):
        for s, p in enumerate(patch_files):
            assert handles.get(p)[C.H5_IMG][1][0, 0, 0] == s * 10 + 1
            assert len(handles) <= 3
    assert _open_under(tmp_path) <= 3
    recent = patch_files[-1]
    assert handles.get(recent) is handles.get(recent)  # a hit returns the open handle
    handles.close(recent)
    assert len(handles) == 2
    handles.clear()
    assert len(handles) == 0 and _open_under(tmp_path) == 0


class _WithOpenCount(torch.utils.data.Dataset):
    """The real SpotDataset, plus how many patch files the worker process holds open after reading the item."""

    def __init__(self, ds: SpotDataset, folder: Path) -> None:
        self.ds, self.folder = ds, folder

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.ds[i]
        item["open"] = torch.tensor([len(handles.HANDLES), _open_under(self.folder)])
        return item


def test_dataloader_workers_hold_a_bounded_number_of_patch_files(
    patch_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handles.HANDLES, "max_open", 4)
    files = [PatchFile(p) for p in patch_files]
    ds = SpotDataset(files, [np.arange(len(f)) for f in files], None, spot_px=4, region_px=8)
    loader = torch.utils.data.DataLoader(_WithOpenCount(ds, tmp_path), batch_size=6, num_workers=2,
                                         multiprocessing_context="fork")
    seen = []
    for b in loader:
        assert int(b["open"].max()) <= 4  # every worker: at most 4 handles, 4 descriptors into the cache folder
        seen.append(b["region"][:, 0, 0, 0])
    values = torch.cat(seen).tolist()
    assert values == [s * 10 + i for s in range(12) for i in range(4)]  # every spot, the right patch, in order
    for f in files:
        f.close()
    assert _open_under(tmp_path) == 0


def test_patch_file_pickles_without_a_handle(patch_files: list[Path]) -> None:
    import pickle

    pf = PatchFile(patch_files[0])
    assert pf.get(2)[0, 0, 0] == 2
    clone = pickle.loads(pickle.dumps(pf))
    assert clone.get(3)[0, 0, 0] == 3 and clone.section == "S0"
    pf.close()
