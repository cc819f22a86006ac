"""Torch datasets over the patch cache.

Randomness (shuffling and augmentation) is a pure function of (seed, epoch, index): a run resumed from an
end-of-epoch checkpoint replays exactly the batches the uninterrupted run would have seen, whatever the number
of DataLoader workers or ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hifusion.data.patches import centre_crop


def augment_d4(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip, vertical flip and 90-degree rotation (the dihedral group of the square)."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1, :]
    k = int(rng.integers(0, 4))
    if k:
        img = np.rot90(img, k, axes=(0, 1))
    return img


def encode_epoch_index(epoch: int, index: int, n: int) -> int:
    """Samplers pass the epoch to the dataset inside the index, so persistent workers need no shared state."""
    return epoch * n + index


class SpotDataset(Dataset):
    """Spots of one or more sections: uint8 (spot, region) patches and float labels.

    Patches stay uint8 until they reach the device, where the training module converts and normalises them:
    a quarter of the bytes through the loader and the host-to-device copy.
    """

    def __init__(
        self,
        patches: Sequence[Any],
        rows: Sequence[np.ndarray],
        labels: Sequence[np.ndarray] | None,
        *,
        spot_px: int,
        region_px: int,
        augment: bool = False,
        seed: int = 0,
        stain_stats: Sequence[np.ndarray] | None = None,
    ) -> None:
        if len(patches) != len(rows) or (labels is not None and len(labels) != len(rows)):
            raise ValueError("patches, rows and labels must have one entry per section")
        self.stain_stats = _stain_stats(stain_stats, len(rows))
        self.patches = list(patches)
        self.section_of = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(rows)])
        self.row_of = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        self.labels = None if labels is None else np.concatenate([np.asarray(y, np.float32) for y in labels])
        if self.labels is not None and len(self.labels) != len(self.row_of):
            raise ValueError("labels must have one row per selected spot")
        self.spot_px, self.region_px = int(spot_px), int(region_px)
        if self.spot_px > self.region_px:
            raise ValueError(f"spot patch ({spot_px} px) larger than region patch ({region_px} px)")
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.row_of)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        n = len(self)
        epoch, index = divmod(int(key), n)
        region = self.patches[self.section_of[index]].get(int(self.row_of[index]))
        if region.shape[0] != self.region_px:
            region = centre_crop(region, self.region_px)
        if self.augment:
            region = augment_d4(region, np.random.default_rng([self.seed, epoch, index]))
        spot = centre_crop(region, self.spot_px)  # same transform as the region: the spot is its centre
        item = {
            "spot": torch.from_numpy(np.ascontiguousarray(spot.transpose(2, 0, 1))),
            "region": torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1))),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.stain_stats is not None:
            item["stain_src"] = self.stain_stats[self.section_of[index]]
        if self.labels is not None:
            item["y"] = torch.from_numpy(self.labels[index])
        return item


class EmbeddingDataset(Dataset):
    """Spots as frozen-encoder embeddings: the training data of a model whose encoder does not train.

    `views`: per section, (V, n, C) float32 embeddings of its selected spots under V D4 views (view 0 as stored);
    with `augment` each item is one view drawn from (seed, epoch, index), as `SpotDataset` draws its flips and
    rotations, otherwise view 0. Colour and resolution augmentation act on pixels and so never reach these."""

    def __init__(self, views: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, augment: bool = False,
                 seed: int = 0) -> None:
        if len(views) != len(labels):
            raise ValueError("views and labels must have one entry per section")
        shapes = {(v.shape[0], v.shape[2]) for v in views}
        if len(shapes) != 1 or any(v.ndim != 3 or v.shape[1] != len(y) for v, y in zip(views, labels, strict=True)):
            raise ValueError("embeddings must be (views, spots, features) with one label row per spot and the same "
                             "views and width in every section")
        self.x = np.concatenate([np.asarray(v, np.float32) for v in views], axis=1)  # (V, N, C)
        self.labels = np.concatenate([np.asarray(y, np.float32) for y in labels])
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return self.x.shape[1]

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(int(key), len(self))
        n_views = self.x.shape[0]
        view = int(np.random.default_rng([self.seed, epoch, index]).integers(n_views)) if self.augment else 0
        return {"features": torch.from_numpy(self.x[view, index]), "y": torch.from_numpy(self.labels[index]),
                "index": torch.tensor(index, dtype=torch.long)}


def _stain_stats(stats: Sequence[np.ndarray] | None, n_sections: int) -> torch.Tensor | None:
    """Per-section (2, 3) LAB mean/std (stain normalisation sources) as one (n_sections, 2, 3) float32 tensor."""
    if stats is None:
        return None
    if len(stats) != n_sections:
        raise ValueError("stain statistics must have one entry per section")
    return torch.as_tensor(np.stack([np.asarray(x, np.float32).reshape(2, 3) for x in stats]))


class EpochSampler(Sampler[int]):
    """Seeded shuffling that is a function of (seed, epoch), sharded over ranks like DistributedSampler.

    Yields encoded (epoch, index) keys for `SpotDataset`. Lightning calls `set_epoch` at each epoch start.
    Without shuffling (evaluation) every index appears once in order; with several ranks the last shard is
    padded by repeating the first indices, as DistributedSampler does (evaluation gathers and de-duplicates by index).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(n / world_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:
            order = np.concatenate([order, order[: total - self.n]])
        mine = order[self.rank : total : self.world_size]
        epoch = self.epoch if self.shuffle else 0
        return iter(encode_epoch_index(epoch, int(i), self.n) for i in mine)


def patch_mean_std(patches: Sequence[Any], rows: Sequence[np.ndarray], side: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) of the centre `side` crops over training spots: dataset normalisation."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for pf, rr in zip(patches, rows, strict=True):
        for r in rr:
            x = centre_crop(pf.get(int(r)), side).reshape(-1, 3).astype(np.float64) / 255.0
            total += x.sum(0)
            total_sq += (x**2).sum(0)
            count += len(x)
    if count == 0:
        raise ValueError("no training patches to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def section_stain_stats(patches: Any, rows: np.ndarray, side: int, batch: int = 64) -> np.ndarray:
    """(2, 3) LAB mean and std over the centre `side` crops of a section's spots: its stain, from its images only."""
    from hifusion.stain import lab_stats

    def batches() -> Iterator[torch.Tensor]:
        rr = np.asarray(rows, np.int64)
        for i in range(0, len(rr), batch):
            crops = [centre_crop(patches.get(int(r)), side) for r in rr[i : i + batch]]
            yield torch.from_numpy(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))

    return lab_stats(batches())


class SectionDataset(Dataset):
    """Whole sections (or the selected spots of them): one item = every spot of one section.

    For models that look at all spots of a section at once (HisToGene, Hist2ST, TRIPLEX). An item holds uint8
    ``spot`` (N, 3, s, s) and, when asked, ``region`` (N, 3, R, R) patches, integer array ``coords`` (N, 2),
    ``index`` (N,) (positions in the concatenation of all items, for de-duplicating validation) and ``y``
    (N, G). Augmentation follows `SpotDataset`: each spot gets its own flip/rotation, a function of
    (seed, epoch, spot index); the array coordinates are left as they are. Memory per item: N x 3 x (s^2 + R^2)
    bytes (about 15 MB for 180 spots at 112 / 224 px).
    """

    def __init__(
        self,
        patches: Sequence[Any],
        rows: Sequence[np.ndarray],
        coords: Sequence[np.ndarray],
        labels: Sequence[np.ndarray] | None,
        *,
        spot_px: int,
        region_px: int,
        augment: bool = False,
        seed: int = 0,
        with_region: bool = True,
        stain_stats: Sequence[np.ndarray] | None = None,
    ) -> None:
        if len(patches) != len(rows) or len(coords) != len(rows) or (labels is not None and len(labels) != len(rows)):
            raise ValueError("patches, rows, coords and labels must have one entry per section")
        self.stain_stats = _stain_stats(stain_stats, len(rows))
        self.patches = list(patches)
        self.rows = [np.asarray(r, dtype=np.int64) for r in rows]
        self.coords = [np.asarray(c, dtype=np.int64).reshape(-1, 2) for c in coords]
        self.labels = None if labels is None else [np.asarray(y, np.float32) for y in labels]
        for i, r in enumerate(self.rows):
            if len(self.coords[i]) != len(r) or (self.labels is not None and len(self.labels[i]) != len(r)):
                raise ValueError("coords and labels must have one row per selected spot")
        self.offsets = np.concatenate([[0], np.cumsum([len(r) for r in self.rows])]).astype(np.int64)
        self.spot_px, self.region_px = int(spot_px), int(region_px)
        if self.spot_px > self.region_px:
            raise ValueError(f"spot patch ({spot_px} px) larger than region patch ({region_px} px)")
        self.augment, self.seed, self.with_region = augment, seed, with_region

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(key), len(self))
        rows, start = self.rows[i], int(self.offsets[i])
        spots, regions = [], []
        for j, r in enumerate(rows):
            region = self.patches[i].get(int(r))
            if region.shape[0] != self.region_px:
                region = centre_crop(region, self.region_px)
            if self.augment:
                region = augment_d4(region, np.random.default_rng([self.seed, epoch, start + j]))
            spots.append(centre_crop(region, self.spot_px))
            if self.with_region:
                regions.append(region)
        item = {
            "spot": torch.from_numpy(np.ascontiguousarray(np.stack(spots).transpose(0, 3, 1, 2))),
            "coords": torch.from_numpy(self.coords[i]),
            "index": torch.arange(start, start + len(rows), dtype=torch.long),
        }
        if self.with_region:
            item["region"] = torch.from_numpy(np.ascontiguousarray(np.stack(regions).transpose(0, 3, 1, 2)))
        if self.stain_stats is not None:
            item["stain_src"] = self.stain_stats[i].expand(len(rows), 2, 3)
        if self.labels is not None:
            item["y"] = torch.from_numpy(self.labels[i])
        return item
