"""Score a model on a HEST-Benchmark task with HEST's protocol for frozen encoders, so that HiFusion and the
baselines can be put next to HEST's published table.

Per fold (HEST's `splits/train_i.csv` / `test_i.csv`): the model's frozen spot features of every patch; a
StandardScaler and PCA to 256 components fitted on the training spots; ridge regression with HEST's fixed
regularisation, alpha = 100 / (components x genes), no intercept, lsqr solver; targets log1p counts of the task's
genes (`data.hest_task`). Score: Pearson r per gene over ALL test spots of the fold pooled across its samples,
averaged over genes; the task's number is the mean ± std (ddof 0) of those fold means. One difference from HEST's
code: a gene whose test truth is constant is left out and counted (scipy gives NaN there, and HEST's mean with it).

Features: a registered model with `features(spot)` (the linear probe: any registered or timm encoder, local weights
via `encoder_weights`), or a model whose spot encoder is `spot_encoder` / `encoder` (HiFusion, ST-Net, TRIPLEX,
BLEEP; from a checkpoint, its trained encoder). Registry models see HEST's patches at their native size with
ImageNet normalisation (HEST's transform for ImageNet encoders); a checkpoint's model sees them resampled to its
training scale (`patch_mpp` -> the checkpoint's um/px) with its own normalisation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hifusion import constants as C
from hifusion.data.hest_task import HestSample, HestTask, iter_patches, read_expression, read_patch_index, read_task
from hifusion.errors import ConfigError
from hifusion.io import atomic_path, atomic_write_text, check_results_folder, make_dir
from hifusion.metrics import pcc_columns
from hifusion.progress import say

IMAGENET = {"mode": "dataset", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LATENT_DIM = 256  # HEST's bench_config: dimreduce PCA, latent_dim 256
HEST_SEED = 1  # HEST's default --seed (PCA and ridge random_state)


@dataclass(frozen=True)
class FeatureSource:
    """Whose frozen spot features are probed: a registered model built with `options`, or a trained
    `checkpoint`'s model (exactly one of `model` and `checkpoint`)."""

    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass
class Embedder:
    """A frozen feature extractor: uint8 (B, H, W, 3) patches -> (B, C) features."""

    model: torch.nn.Module
    norm: dict[str, Any]
    size: int | None  # patches resampled to this many px first (None: native size)
    name: str

    @torch.no_grad()
    def __call__(self, patches: np.ndarray) -> np.ndarray:
        from hifusion.preprocess import standardise

        x = torch.from_numpy(patches).permute(0, 3, 1, 2).float().div_(255.0)
        if self.size is not None and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                                align_corners=False)
        x = standardise(x, self.norm["mode"], self.norm.get("mean"), self.norm.get("std"))
        return spot_features(self.model, x).float().cpu().numpy()


def spot_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled spot features of a model: its own `features`, else its spot encoder's embedding (`Encoder.embed`: the
    pooled map of a CNN, the published rule of a preset)."""
    if callable(getattr(model, "features", None)):
        return model.features(x)
    enc = getattr(model, "spot_encoder", None) or getattr(model, "encoder", None)
    if not callable(getattr(enc, "embed", None)):
        raise ConfigError(f"model {type(model).__name__} has no spot encoder to take frozen features from")
    return enc.embed(x).float()


def make_embedder(source: FeatureSource, patch_mpp: float, patch_px: int) -> Embedder:
    """The features of a registry model (`model`, `options`) or of a checkpoint's model (`checkpoint`)."""
    model, options, checkpoint = source.model, dict(source.options), source.checkpoint
    if (model is None) == (checkpoint is None):
        raise ConfigError("give either a model name or a checkpoint")
    if checkpoint is not None:
        from hifusion.models.loading import load_checkpoint

        net, meta = load_checkpoint(checkpoint)
        size = max(8, int(round(patch_px * patch_mpp / meta.patch.pixel_size)))
        return Embedder(net.eval(), dict(meta.normalisation), size, f"{meta.model_name} ({checkpoint.name})")
    from hifusion.models import create_model

    net = create_model(model, **options)
    enc = getattr(net, "spot_encoder", None) or getattr(net, "encoder", None)
    preset = getattr(enc, "preset", None)
    if preset is not None:  # HEST feeds each encoder its own transform: the preset's input side and mean/std
        norm = {"mode": "dataset", "mean": list(preset.mean), "std": list(preset.std)}
        return Embedder(net.eval(), norm, preset.input_px, f"{model} ({preset.name})")
    return Embedder(net.eval(), IMAGENET, None, str(model))


def _embed(emb: Embedder, sample: HestSample, batch: int) -> tuple[np.ndarray, list[str]]:
    barcodes, n = read_patch_index(sample.patches)
    feats = [emb(chunk) for chunk in iter_patches(sample.patches, batch)]
    x = np.concatenate(feats) if feats else np.zeros((0, 0))
    if len(x) != n:
        raise ConfigError(f"sample {sample.sample_id}: {len(x)} features for {n} patches")
    return x.astype(np.float64), barcodes


def _features(emb: Embedder, sample: HestSample, batch: int, folder: Path) -> tuple[np.ndarray, list[str]]:
    """A sample's features, kept in `folder/<id>.npy` so a resumed run embeds nothing twice."""
    path = folder / f"{sample.sample_id}.npy"
    if path.is_file():
        barcodes, n = read_patch_index(sample.patches)
        x = np.load(path)
        if len(x) == n:
            return x, barcodes
    x, barcodes = _embed(emb, sample, batch)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, x)
    return x, barcodes


def _fold_data(emb: Embedder, task: HestTask, samples: list[HestSample], cache: dict[str, Any],
               batch: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and log1p expression of samples, pooled in the split file's order (each sample embedded once)."""
    xs, ys = [], []
    for s in samples:
        if s.sample_id not in cache:
            x, barcodes = _features(emb, s, batch, folder)
            cache[s.sample_id] = (x, read_expression(s.expression, task.genes, barcodes))
        xs.append(cache[s.sample_id][0])
        ys.append(cache[s.sample_id][1])
    return np.vstack(xs), np.vstack(ys)


def hest_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, latent_dim: int = LATENT_DIM,
               seed: int = HEST_SEED) -> tuple[np.ndarray, dict[str, Any]]:
    """HEST's probe: StandardScaler -> PCA(latent_dim) on training features, ridge alpha 100/(k x genes), no
    intercept, lsqr. PCA keeps min(latent_dim, spots, features) components when there are fewer."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(latent_dim, x_train.shape[0], x_train.shape[1])
    pipe = Pipeline([("scaler", StandardScaler()), ("pca", PCA(n_components=k, random_state=seed))])
    z_train, z_test = pipe.fit_transform(x_train), pipe.transform(x_test)
    alpha = 100.0 / (z_train.shape[1] * y_train.shape[1])
    reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
    reg.fit(z_train, y_train)
    return reg.predict(z_test), {"n_components": int(k), "alpha": float(alpha)}


@dataclass
class HestBenchResult:
    out: Path
    per_gene: pd.DataFrame  # fold, gene, pearson, const_truth
    summary: dict[str, Any]


def run_hest_bench(root: str | Path, task: str, out: str | Path, features: FeatureSource, *,
                   gene_list: str = C.HEST_GENES_JSON, patch_mpp: float = C.HEST_PATCH_MPP, batch_size: int = 128,
                   latent_dim: int = LATENT_DIM, seed: int = HEST_SEED, resume: bool = False) -> HestBenchResult:
    """Every fold of a HEST-Benchmark task; writes `hest_bench.csv` (per fold and gene) and `hest_bench.json`.

    Features are kept per sample under `<out>/features/` (from this model: a new model needs a new `out`), so a
    `resume` embeds nothing twice."""
    t0 = time.perf_counter()
    out = Path(out)
    check_results_folder(out, resume)
    hest = read_task(root, task, gene_list)
    first = hest.folds[0].train[0].patches
    patch_px = next(iter_patches(first, 1)).shape[1]
    emb = make_embedder(features, patch_mpp, patch_px)
    cache: dict[str, Any] = {}
    frames, folds = [], []
    feat_dir = make_dir(out / "features")
    for fold in hest.folds:
        x_tr, y_tr = _fold_data(emb, hest, fold.train, cache, batch_size, feat_dir)
        x_te, y_te = _fold_data(emb, hest, fold.test, cache, batch_size, feat_dir)
        pred, info = hest_probe(x_tr, y_tr, x_te, latent_dim=latent_dim, seed=seed)
        r, const = pcc_columns(pred, y_te)  # per gene over every test spot of the fold, pooled
        mean = float(r[~const].mean()) if (~const).any() else 0.0
        frames.append(pd.DataFrame({"fold": fold.index, "gene": hest.genes, "pearson": r, "const_truth": const}))
        folds.append({"fold": fold.index, "pearson_mean": mean, "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
                      "n_const_genes": int(const.sum()), **info})
        say(f"hest-bench {task} fold {fold.index}: Pearson {mean:.4f} ({len(y_tr)} train / {len(y_te)} test spots)")
    means = np.array([f["pearson_mean"] for f in folds])
    summary = {"task": task, "model": emb.name, "genes": len(hest.genes), "gene_list": gene_list,
               "pearson_mean": float(means.mean()), "pearson_std": float(means.std()), "folds": folds,
               "patch_mpp": patch_mpp, "latent_dim": latent_dim, "seed": seed,
               "seconds": time.perf_counter() - t0}
    per_gene = pd.concat(frames, ignore_index=True)
    atomic_write_text(out / C.HEST_RESULTS_CSV, per_gene.to_csv(index=False))
    atomic_write_text(out / C.HEST_SUMMARY_JSON, json.dumps(summary, indent=2))
    return HestBenchResult(out, per_gene, summary)
