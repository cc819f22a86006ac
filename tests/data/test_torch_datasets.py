import numpy as np
import torch

from hifusion.data.torch_datasets import EpochSampler, SpotDataset, augment_d4, centre_crop


class ArrayPatches:
    """In-memory stand-in with the PatchFile reading interface (get(i) -> uint8 region patch)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def get(self, i: int) -> np.ndarray:
        return self.arr[i]


def _patches(n: int = 5, side: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(n, side, side, 3), dtype=np.uint8)


def test_spot_is_centre_of_region_under_augmentation():
    arr = _patches()
    ds = SpotDataset([ArrayPatches(arr)], [np.arange(5)], [np.zeros((5, 3))], spot_px=8, region_px=16, augment=True)
    for key in range(15):  # three epochs' worth of encoded keys
        item = ds[key]
        region = item["region"].permute(1, 2, 0).numpy()
        assert np.array_equal(item["spot"].permute(1, 2, 0).numpy(), centre_crop(region, 8))
        assert item["spot"].dtype == torch.uint8


def test_augmentation_is_a_function_of_seed_epoch_index():
    arr = _patches()
    ds = SpotDataset([ArrayPatches(arr)], [np.arange(5)], None, spot_px=8, region_px=16, augment=True, seed=1)
    a = [ds[k]["region"] for k in range(10)]
    b = [ds[k]["region"] for k in range(10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # the D4 group: 8 distinct transforms of a generic patch, each a permutation of its pixels
    rng = np.random.default_rng(5)
    outs = {augment_d4(arr[0], rng).tobytes() for _ in range(200)}
    assert len(outs) == 8


def test_region_crop_to_smaller_factor():
    arr = _patches(side=24)
    ds = SpotDataset([ArrayPatches(arr)], [np.arange(5)], None, spot_px=8, region_px=16)
    assert ds[0]["region"].shape == (3, 16, 16)
    assert np.array_equal(ds[0]["region"].permute(1, 2, 0).numpy(), centre_crop(arr[0], 16))


def test_epoch_sampler_shards_cover_everything_and_replay():
    s = EpochSampler(10, shuffle=True, seed=3)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(2)
    assert list(s) == first and sorted(k % 10 for k in first) == list(range(10))
    assert all(k // 10 == 2 for k in first)
    shards = [EpochSampler(10, shuffle=False, rank=r, world_size=3) for r in range(3)]
    seen = sorted({k for sh in shards for k in sh})
    assert seen == list(range(10)) and all(len(sh) == 4 for sh in shards)
