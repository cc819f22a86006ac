"""Everything one (train, test) split needs, derived from its training sections only.

The gene panel, any label statistics, the 50 most variable genes and dataset normalisation statistics are all
computed on training spots; test sections contribute nothing but their own labels, which only scoring reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hifusion import constants as C
from hifusion.config import DataConfig, ValConfig
from hifusion.data.splits import Split, validation_rows
from hifusion.errors import ConfigError
from hifusion.geometry import PatchGeometry


@dataclass
class SplitData:
    split: Split
    panel: list[str]
    label: str
    adatas: dict[str, Any]
    patches: dict[str, Any]
    rows: dict[str, np.ndarray]  # spot rows used per section (all, or those above the low-count threshold)
    labels: dict[str, np.ndarray]  # (len(rows), G) per section
    train_rows: dict[str, np.ndarray]  # rows of training sections used for fitting
    val_rows: dict[str, np.ndarray]  # rows held out for validation (training sections only)
    spot_px: int
    region_px: int
    pixel_size: float
    normalise: str = "patch"
    norm_stats: dict[str, Any] | None = None  # dataset normalisation, computed once per split (train.fit)
    stain: Any = None  # the config's StainConfig (augmentation and normalisation options)
    stain_stats: dict[str, np.ndarray] | None = None  # per-section LAB mean/std of its images, computed once
    train_level: np.ndarray | None = None  # pooled training label mean, computed once (`fit_labels`)
    embedding_cache: bool = True  # frozen-encoder embeddings read from / written to <cache>/embeddings
    top50: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def geometry(self) -> PatchGeometry:
        """The sizes this split's patches are read at (what a checkpoint trained on it records)."""
        return PatchGeometry(float(self.pixel_size), int(self.spot_px), int(self.region_px))

    @property
    def train_sections(self) -> list[str]:
        return self.split.train

    @property
    def test_sections(self) -> list[str]:
        return self.split.test

    def label_rows(self, section: str, rows: np.ndarray) -> np.ndarray:
        """Labels of the given cache rows of a section."""
        pos = np.searchsorted(self.rows[section], rows)
        return self.labels[section][pos]

    def spot_um(self, section: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Centres of the given cache rows (default: the section's used spots) in microns (pixels times um/px)."""
        adata = self.adatas[section]
        mpp = adata.uns.get(C.UNS_HIFUSION, {}).get("mpp")
        if mpp is None or not float(mpp) > 0:
            raise ValueError(f"section {section} records no um/px (uns['{C.UNS_HIFUSION}']['mpp']); prepare it again")
        rows = self.rows[section] if rows is None else rows
        return np.asarray(adata.obsm[C.OBSM_SPATIAL], dtype=np.float64)[rows] * float(mpp)

    def stain_source(self, section: str) -> np.ndarray | None:
        """The section's (2, 3) LAB statistics when stain normalisation is on (from its images only), else None."""
        if self.stain is None or self.stain.normalise == "none":
            return None
        if self.stain_stats is None:
            from hifusion.data.torch_datasets import section_stain_stats

            self.stain_stats = {s: section_stain_stats(self.patches[s], self.rows[s], self.spot_px) for s in self.rows}
        return self.stain_stats[section]

    def train_labels(self) -> np.ndarray:
        return np.concatenate([self.label_rows(s, r) for s, r in self.train_rows.items() if len(r)])

    def fit_labels(self, section: str, rows: np.ndarray, centre: str = "none") -> np.ndarray:
        """Labels an image model is fitted (or validated) on: as measured, or with `centre="section"` each gene's
        mean over these rows replaced by the pooled training mean (the level predictions are calibrated to)."""
        y = self.label_rows(section, rows)
        if centre == "none" or not len(y):
            return y
        if centre != "section":
            raise ConfigError(f"unknown label centring '{centre}' (known: none, section)")
        if self.train_level is None:
            self.train_level = self.train_labels().mean(0, dtype=np.float64)
        return (y - y.mean(0, dtype=np.float64) + self.train_level).astype(np.float32)

    def fit_train_labels(self, centre: str = "none") -> np.ndarray:
        """`fit_labels` of every training spot, in `train_labels` order."""
        return np.concatenate([self.fit_labels(s, r, centre) for s, r in self.train_rows.items() if len(r)])

    def array_coords(self, section: str, rows: np.ndarray) -> np.ndarray:
        """Integer array coordinates (x, y) of the given cache rows, for whole-section models.

        obs ``array_x``/``array_y`` where present; otherwise the pixel centres binned by the spot pitch (median
        nearest-neighbour distance over the section) and shifted to start at 0.
        """
        return section_array_coords(self.adatas[section])[np.asarray(rows, np.int64)]


def section_array_coords(adata: Any) -> np.ndarray:
    """(N, 2) int64 array coordinates of every spot of a section (see `SplitData.array_coords`)."""
    obs = adata.obs
    if C.OBS_ARRAY_X in obs and C.OBS_ARRAY_Y in obs:
        xy = np.stack([obs[C.OBS_ARRAY_X].to_numpy(np.float64), obs[C.OBS_ARRAY_Y].to_numpy(np.float64)], 1)
        if np.isfinite(xy).all():
            return np.rint(xy).astype(np.int64)
    xy = np.asarray(adata.obsm[C.OBSM_SPATIAL], dtype=np.float64)
    if len(xy) < 2:
        return np.zeros((len(xy), 2), np.int64)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(d[:, 1])) or 1.0
    return np.rint((xy - xy.min(0)) / pitch).astype(np.int64)


def _patch_sizes(cache: Path, sections: list[str], patches: dict[str, Any], spot_px: int | None,
                 factor: float | None) -> tuple[int, int]:
    """(spot, region) patch sides for a split: the cache's spot size, the region centre-cropped to `factor`."""
    first = patches[sections[0]]
    stored_region, stored_spot = int(first.region_px), int(first.spot_px)
    for s in sections[1:]:
        if (int(patches[s].region_px), int(patches[s].spot_px)) != (stored_region, stored_spot):
            raise ConfigError(f"section {s} was prepared at another patch size than {sections[0]}", cache)
    spot = int(spot_px or stored_spot)
    if spot != stored_spot:
        raise ConfigError(f"the cache holds {stored_spot} px spot patches, not {spot}; prepare another cache", cache)
    region = stored_region if factor is None else int(round(spot * factor / 2.0) * 2)
    if region > stored_region:
        raise ConfigError(
            f"region factor {factor} needs {region} px region patches; the cache holds {stored_region} px. "
            "Prepare the cache with a larger --region-factor",
            cache,
        )
    return spot, region


def load_split(
    cache: Path,
    split: Split,
    data_cfg: DataConfig,
    val_cfg: ValConfig,
    *,
    seed: int = 0,
    region_factor: float | None = None,
    spot_px: int | None = None,
) -> SplitData:
    """Load the cache sections of a split, choose the panel on training sections and build labels."""
    from hifusion.data.cache.lean import drop_images, without_counts
    from hifusion.data.cache.reader import load_cache
    from hifusion.data.genes import make_labels, select_panel, top_variable_genes

    sections = list(dict.fromkeys(split.train + split.val + split.test))
    # Two passes so that no more than one section's full counts are in memory at a time: the panel is chosen on
    # the training sections read one by one, then every section is read again and kept as float32 panel labels.
    panel = select_panel(
        (load_cache(cache, s)[0] for s in split.train),
        method=data_cfg.genes.method,
        n=data_cfg.genes.n,
        gene_file=data_cfg.genes.file,
    )
    adatas, patches, rows, labels = {}, {}, {}, {}
    for s in sections:
        a, patches[s] = load_cache(cache, s)
        drop_images(a)  # memory flat in the cohort size: thumbnails are re-read for the few maps drawn
        keep = np.arange(a.n_obs)
        if data_cfg.drop_low_counts and C.OBS_LOW_COUNTS in a.obs:
            keep = np.flatnonzero(~a.obs[C.OBS_LOW_COUNTS].to_numpy(bool))
        rows[s] = keep
        labels[s] = make_labels(a[keep], panel, transform=data_cfg.label, zero_fill=data_cfg.genes.zero_fill)
        adatas[s] = without_counts(a)  # the float32 panel labels are all that training and scoring read
    first = patches[sections[0]]
    spot, region = _patch_sizes(cache, sections, patches, spot_px, region_factor or data_cfg.region_factor)

    train_rows, val_rows = validation_rows(split, adatas, rows, val_cfg, seed)

    data = SplitData(
        split=split,
        panel=panel,
        label=data_cfg.label,
        adatas=adatas,
        patches=patches,
        rows=rows,
        labels=labels,
        train_rows=train_rows,
        val_rows=val_rows,
        spot_px=spot,
        region_px=region,
        pixel_size=float(first.pixel_size),
        normalise=data_cfg.normalise,
        stain=data_cfg.stain,
        embedding_cache=data_cfg.embedding_cache,
    )
    data.top50 = np.asarray(top_variable_genes(data.train_labels(), k=min(50, len(panel))))
    return data
